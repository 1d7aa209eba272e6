"""Small "pretrained" LLaMA-architecture models whose tokenizer is not the built-in default, built locally.

- `bpe_tokenizer`: a byte-level BPE `tokenizer.json` trained with the `tokenizers` library (GPT-2 style:
  its own end-of-text token, id 0, and no BOS).
- `spm_tokenizer`: a SentencePiece BPE `.model` trained with `sentencepiece`, LLaMA-like (byte fallback,
  identity normalization, unk/bos/eos = 0/1/2), so ids differ from the default's.
- `hf_model`: a random `transformers.LlamaForCausalLM` saved with `save_pretrained` next to a tokenizer.
- `ALPACA_ROWS`: eight real English rows in Alpaca's hub schema (instruction / input / output).

The reference ids (`reference_ids`) come from the tokenizer libraries themselves, never from instructjax:
`tokenizers.Tokenizer.from_file` on the whole string for a `tokenizer.json` (special tokens parsed from
the text), and the `sentencepiece` processor on each piece between special tokens for a `.model`.
The reference loss masks come from the papers' own code (`tests/helpers/upstream_code.py`, copied verbatim):
open-instruct's `encode_with_messages_format` for Tulu, Stanford Alpaca's `preprocess` for Alpaca, each
calling the tokenizer libraries through `LibraryTokenizer`.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import types

import numpy as np

ALPACA_ROWS = [
    {"instruction": "Give three tips for staying healthy.", "input": "",
     "output": "1. Eat a balanced diet with plenty of fruit and vegetables.\n2. Exercise regularly.\n"
               "3. Get enough sleep every night."},
    {"instruction": "What are the three primary colors?", "input": "",
     "output": "The three primary colors are red, blue, and yellow."},
    {"instruction": "Describe the structure of an atom.", "input": "",
     "output": "An atom is made of a nucleus of protons and neutrons, surrounded by electrons that move "
               "in shells around it."},
    {"instruction": "Translate the sentence into French.", "input": "The weather is nice today.",
     "output": "Il fait beau aujourd'hui."},
    {"instruction": "Rewrite the sentence in the passive voice.", "input": "The cat chased the mouse.",
     "output": "The mouse was chased by the cat."},
    {"instruction": "Write a short poem about the sea.", "input": "",
     "output": "The sea is wide and deep and blue,\nit sings of storms and sailors too."},
    {"instruction": "Classify the following animal as a mammal, bird, or fish.", "input": "Dolphin",
     "output": "Mammal."},
    {"instruction": "Explain why the sky is blue.", "input": "",
     "output": "Sunlight is scattered by the molecules of the air, and blue light is scattered more than "
               "red light because it has a shorter wavelength."},
]


def corpus() -> list[str]:
    """English text to train the tokenizers on: the rows above and docstrings of the standard library."""
    import argparse
    import collections
    import json as json_module
    import textwrap
    import unittest

    lines = []
    for row in ALPACA_ROWS:
        lines += [row["instruction"], row["input"], *row["output"].split("\n")]
    for module in (argparse, collections, json_module, textwrap, unittest):
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj) if callable(obj) else None
            if doc:
                lines += [line.strip() for line in doc.splitlines() if line.strip()]
    return [line for line in lines if line]


def bpe_tokenizer(directory: str, vocab_size: int = 1200) -> str:
    """Train a byte-level BPE tokenizer and save it as an HF tokenizer directory; returns the directory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus(), trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(directory)
    return directory


def spm_tokenizer(directory: str, vocab_size: int = 800) -> str:
    """Train a LLaMA-like SentencePiece BPE model into DIRECTORY/tokenizer.model; returns the directory."""
    import sentencepiece as spm

    os.makedirs(directory, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus()), model_prefix=os.path.join(directory, "tokenizer"),
        vocab_size=vocab_size, model_type="bpe", byte_fallback=True, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, unk_id=0, bos_id=1, eos_id=2,
        pad_id=-1, hard_vocab_limit=False, minloglevel=2, num_threads=1)
    os.remove(os.path.join(directory, "tokenizer.vocab"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "add_bos_token": True, "legacy": True}, f)
    return directory


def hf_model(directory: str, tokenizer_dir: str, *, vocab_size: int, bos: int | None, eos: int, seed: int = 0,
             pretrain_steps: int = 0, tokens: list[list[int]] | None = None, experts: int = 0) -> str:
    """A LlamaForCausalLM (GQA, norms randomised) saved with `save_pretrained`, plus the tokenizer files; with
    `experts`, a MixtralForCausalLM of the same sizes with that many experts, top 2. With `pretrain_steps`, first
    trained (AdamW, in PyTorch) on `tokens`: documents in the model's own ids."""
    import shutil

    import torch
    import transformers

    torch.manual_seed(seed)
    sizes = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5,
                 bos_token_id=bos, eos_token_id=eos, pad_token_id=None)
    if experts:
        config = transformers.MixtralConfig(**sizes, num_local_experts=experts, num_experts_per_tok=2)
        model = transformers.MixtralForCausalLM(config).float()
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**sizes)).float()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    if pretrain_steps:
        stream = torch.tensor([i for doc in tokens for i in doc])
        blocks = stream[: len(stream) // 64 * 64].view(-1, 64)
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(pretrain_steps):
            batch = blocks[torch.randint(len(blocks), (16,), generator=generator)]
            loss = model(batch, labels=batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.save_pretrained(directory)
    for name in os.listdir(tokenizer_dir):
        shutil.copy(os.path.join(tokenizer_dir, name), directory)
    return directory


@functools.lru_cache(maxsize=16)
def _raw_tokenizer(file: str, mtime: float):  # mtime: a rewritten file is read again
    from tokenizers import Tokenizer

    return Tokenizer.from_file(file)


@functools.lru_cache(maxsize=16)
def _sentencepiece(file: str, mtime: float):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=file)


def reference_ids(path: str, text: str, *, bos: str | None, eos: str) -> list[int]:
    """The tokenizer library's own ids of BOS + `text`, `text` holding `eos` markers between turns.
    `path`: an HF directory (its tokenizer.json, else its tokenizer.model) or a `.model` file."""
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        file = os.path.join(path, "tokenizer.json")
        raw = _raw_tokenizer(file, os.path.getmtime(file))
        return raw.encode((bos or "") + text, add_special_tokens=False).ids
    file = path if os.path.isfile(path) else os.path.join(path, "tokenizer.model")
    sp = _sentencepiece(file, os.path.getmtime(file))
    ids = [sp.piece_to_id(bos)] if bos else []
    pieces = text.split(eos)
    for i, piece in enumerate(pieces):
        ids += sp.encode(piece)
        if i < len(pieces) - 1:
            ids.append(sp.piece_to_id(eos))
    return ids


class LibraryTokenizer:
    """What the reference scripts call on an HF tokenizer (`tokenizer(text, return_tensors="pt", max_length=...,
    truncation=True).input_ids`, `eos_token`, `bos_token`, `pad_token_id`, `model_max_length`), answered
    by `reference_ids`: BOS first where the model adds one (as LLaMA's tokenizer does), and the EOS string
    in a text is the EOS id."""

    def __init__(self, path: str, *, bos: str | None, eos: str):
        self.path, self.bos_token, self.eos_token = path, bos, eos
        self.pad_token_id = -1  # no id: one text at a time, nothing is padded
        self.model_max_length = 1 << 30

    def __call__(self, text: str, return_tensors: str = "pt", max_length: int | None = None,
                 truncation: bool = False, padding: bool | str = False) -> types.SimpleNamespace:
        import torch

        assert return_tensors == "pt"
        ids = reference_ids(self.path, text, bos=self.bos_token, eos=self.eos_token)
        if truncation and max_length is not None:
            ids = ids[:max_length]
        return types.SimpleNamespace(input_ids=torch.tensor([ids], dtype=torch.long))


def open_instruct_example(tokenizer_dir: str, messages: list[dict[str, str]], *, bos: str | None, eos: str,
                          max_seq_length: int = 1 << 30) -> tuple[list[int], np.ndarray]:
    """(ids, loss mask) of a conversation by open-instruct's own `encode_with_messages_format` (Tulu v1/v2):
    a token is trained where its label is not -100."""
    from helpers.upstream_code import encode_with_messages_format

    out = encode_with_messages_format({"messages": messages}, LibraryTokenizer(tokenizer_dir, bos=bos, eos=eos),
                                      max_seq_length)
    return out["input_ids"].tolist(), (out["labels"] != -100).numpy().astype(np.int32)


ALPACA_RESPONSE_SEPARATOR = "\n"  # ours after "### Response:" (docs/fidelity.md); Stanford Alpaca's code has none


def stanford_alpaca_example(tokenizer_dir: str, row: dict, *, bos: str | None, eos: str) -> tuple[list[int], np.ndarray]:
    """(ids, loss mask) of an Alpaca row by Stanford Alpaca's own prompt and `preprocess` (the prompt tokens
    are masked), with our newline after "### Response:"."""
    from helpers.upstream_code import STANFORD_ALPACA_PROMPT_DICT, preprocess

    key = "prompt_input" if row.get("input", "") != "" else "prompt_no_input"
    source = STANFORD_ALPACA_PROMPT_DICT[key].format_map(row) + ALPACA_RESPONSE_SEPARATOR
    out = preprocess([source], [f"{row['output']}{eos}"], LibraryTokenizer(tokenizer_dir, bos=bos, eos=eos))
    return out["input_ids"][0].tolist(), (out["labels"][0] != -100).numpy().astype(np.int32)


def torch_masked_nll(model, ids: list[int], mask: np.ndarray) -> tuple[float, int]:
    """The summed negative log-likelihood, in float64, of the tokens `mask` marks, under a transformers model
    `model`, and how many tokens that is: the reference a first training step's loss is compared with."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double().numpy()
    logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    trained = np.flatnonzero(mask[1:]) + 1
    return -float(logp[trained - 1, np.asarray(ids)[trained]].sum()), len(trained)
