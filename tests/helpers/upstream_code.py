# ruff: noqa
"""Code copied verbatim from the papers' own repositories: the tests' independent references.

Each block below is the upstream text unchanged (trailing whitespace included, hence `ruff: noqa`);
only the two `PROMPT_DICT`s (and FastChat's `logger`) are bound here under other names, as noted. All the projects are
licensed under the Apache License, Version 2.0 (http://www.apache.org/licenses/LICENSE-2.0).

- `encode_with_messages_format`: allenai/open-instruct, open_instruct/finetune.py, commit
  98ccfb460ae4fb98140783b6cf54241926160a06 (2023-10-16; the function is unchanged from the first commit,
  e44fcf5889bea5eefc9ce70e458ae75cad920b6f of 2023-06-09, through Tulu v2): the Tulu paper's (seed 004)
  encoding and loss mask. Copyright the open-instruct authors (Allen Institute for AI).
- `STANFORD_ALPACA_PROMPT_DICT`, `IGNORE_INDEX`, `_tokenize_fn`, `preprocess`: tatsu-lab/stanford_alpaca,
  train.py, commit 3783d185b542c9be78581c5ebc30f7e8688294b2: the Alpaca prompt seed 002 prints (its
  appendix C) and the prompt-masking rule. Copyright 2023 Rohan Taori, Ishaan Gulrajani, Tianyi Zhang,
  Yann Dubois, Xuechen Li.
- `WIZARDLM_PROMPT_DICT`: nlpxucan/WizardLM, WizardLM/src/train_freeform.py, commit
  398baab24ce7e2eb9a8ff5af0a776768ac626843: "the original training prompt from Xu et al." that seed 002
  uses for WizardLM.

- `create_prompt_with_huggingface_tokenizer_template`: allenai/open-instruct, eval/templates.py, commit
  d05effeb4df018dd82c15a956a4a58da82547eb5 (2025-07-02; the function came in 8dadfdf42 of 2024-02-13, then
  without `add_generation_prompt=True`): how open-instruct's eval scripts prompt a model in its own chat template
  (the Tulu suite's `--chat-format model`).

- `parse_score`: lm-sys/FastChat, fastchat/eval/eval_gpt_review.py, commit
  69d085eadab8e9fcf831a97e17e132658c3d2272 (2023-06-27, the last before the old evaluation package was removed;
  the pip package fschat does not ship it): how the pairwise review's score pair is read, the rule AlpaGasus and
  seed 002 follow. Its module's `logger` is bound here under the name `logger`. Copyright the FastChat authors
  (LMSYS).

They call `tokenizer(text, return_tensors="pt", ...)` as on an HF tokenizer;
`pretrained_models.LibraryTokenizer` answers that from the tokenizer libraries themselves.
"""

import copy
from typing import Dict, Sequence

import torch
import transformers

# ---- allenai/open-instruct, open_instruct/finetune.py @ 98ccfb460ae4fb98140783b6cf54241926160a06 ----------


def encode_with_messages_format(example, tokenizer, max_seq_length):
    '''
    Here we assume each example has a 'messages' field Each message is a dict with 'role' and 'content' fields.
    We concatenate all messages with the roles as delimiters and tokenize them together.
    '''
    messages = example['messages']
    if len(messages) == 0:
        raise ValueError('messages field is empty.')
    
    def _concat_messages(messages):
        message_text = ""
        for message in messages:
            if message["role"] == "system":
                message_text += "<|system|>\n" + message["content"].strip() + "\n"
            elif message["role"] == "user":
                message_text += "<|user|>\n" + message["content"].strip() + "\n"
            elif message["role"] == "assistant":
                message_text += "<|assistant|>\n" + message["content"].strip() + tokenizer.eos_token + "\n"
            else:
                raise ValueError("Invalid role: {}".format(message["role"]))
        return message_text
        
    example_text = _concat_messages(messages).strip()
    tokenized_example = tokenizer(example_text, return_tensors='pt', max_length=max_seq_length, truncation=True)
    input_ids = tokenized_example.input_ids
    labels = input_ids.clone()

    # mask the non-assistant part for avoiding loss
    for message_idx, message in enumerate(messages):
        if message["role"] != "assistant":
            if message_idx == 0:
                message_start_idx = 0
            else:
                message_start_idx = tokenizer(
                    _concat_messages(messages[:message_idx]), return_tensors='pt', max_length=max_seq_length, truncation=True
                ).input_ids.shape[1]
            if message_idx < len(messages) - 1 and messages[message_idx+1]["role"] == "assistant":
                # here we also ignore the role of the assistant
                messages_so_far = _concat_messages(messages[:message_idx+1]) + "<|assistant|>\n"
            else:
                messages_so_far = _concat_messages(messages[:message_idx+1])
            message_end_idx = tokenizer(
                messages_so_far,
                return_tensors='pt', 
                max_length=max_seq_length, 
                truncation=True
            ).input_ids.shape[1]
            labels[:, message_start_idx:message_end_idx] = -100
            
            if message_end_idx >= max_seq_length:
                break

    attention_mask = torch.ones_like(input_ids)
    return {
        'input_ids': input_ids.flatten(),
        'labels': labels.flatten(),
        'attention_mask': attention_mask.flatten(),
    }


# ---- tatsu-lab/stanford_alpaca, train.py @ 3783d185b542c9be78581c5ebc30f7e8688294b2 ---------------------

IGNORE_INDEX = -100
STANFORD_ALPACA_PROMPT_DICT = {  # upstream name: PROMPT_DICT
    "prompt_input": (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
    "prompt_no_input": (
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
}


def _tokenize_fn(strings: Sequence[str], tokenizer: transformers.PreTrainedTokenizer) -> Dict:
    """Tokenize a list of strings."""
    tokenized_list = [
        tokenizer(
            text,
            return_tensors="pt",
            padding="longest",
            max_length=tokenizer.model_max_length,
            truncation=True,
        )
        for text in strings
    ]
    input_ids = labels = [tokenized.input_ids[0] for tokenized in tokenized_list]
    input_ids_lens = labels_lens = [
        tokenized.input_ids.ne(tokenizer.pad_token_id).sum().item() for tokenized in tokenized_list
    ]
    return dict(
        input_ids=input_ids,
        labels=labels,
        input_ids_lens=input_ids_lens,
        labels_lens=labels_lens,
    )


def preprocess(
    sources: Sequence[str],
    targets: Sequence[str],
    tokenizer: transformers.PreTrainedTokenizer,
) -> Dict:
    """Preprocess the data by tokenizing."""
    examples = [s + t for s, t in zip(sources, targets)]
    examples_tokenized, sources_tokenized = [_tokenize_fn(strings, tokenizer) for strings in (examples, sources)]
    input_ids = examples_tokenized["input_ids"]
    labels = copy.deepcopy(input_ids)
    for label, source_len in zip(labels, sources_tokenized["input_ids_lens"]):
        label[:source_len] = IGNORE_INDEX
    return dict(input_ids=input_ids, labels=labels)


# ---- nlpxucan/WizardLM, WizardLM/src/train_freeform.py @ 398baab24ce7e2eb9a8ff5af0a776768ac626843 ---------

WIZARDLM_PROMPT_DICT = {  # upstream name: PROMPT_DICT
    "prompt_input": (
        "{instruction}\n\n### Response:"
    ),
    "prompt_no_input": (
        "{instruction}\n\n### Response:"
    ),
}


# ---- allenai/open-instruct, eval/templates.py @ d05effeb4df018dd82c15a956a4a58da82547eb5 -----------------------


def create_prompt_with_huggingface_tokenizer_template(messages, tokenizer, add_bos=False):
    formatted_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if add_bos:
        formatted_text = tokenizer.bos_token + formatted_text
    return formatted_text


# ---- lm-sys/FastChat, fastchat/eval/eval_gpt_review.py @ 69d085eadab8e9fcf831a97e17e132658c3d2272 ------------

import logging

logger = logging.getLogger("fastchat.eval.eval_gpt_review")


def parse_score(review):
    try:
        score_pair = review.split("\n")[0]
        score_pair = score_pair.replace(",", " ")
        sp = score_pair.split(" ")
        if len(sp) == 2:
            return [float(sp[0]), float(sp[1])]
        else:
            raise Exception("Invalid score pair.")
    except Exception as e:
        logger.error(
            f"{e}\nContent: {review}\n" "You must manually fix the score pair."
        )
        return [-1, -1]
