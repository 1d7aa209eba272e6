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
"""

from __future__ import annotations

import inspect
import json
import os

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
             pretrain_steps: int = 0, tokens: list[list[int]] | None = None) -> str:
    """A LlamaForCausalLM (GQA, norms randomised) saved with `save_pretrained`, plus the tokenizer files.
    With `pretrain_steps`, first trained (AdamW, in PyTorch) on `tokens`: documents in the model's own ids."""
    import shutil

    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=512, rms_norm_eps=1e-5, bos_token_id=bos,
                                      eos_token_id=eos, pad_token_id=None)
    model = transformers.LlamaForCausalLM(config).float()
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


def reference_ids(path: str, text: str, *, bos: str | None, eos: str) -> list[int]:
    """The tokenizer library's own ids of BOS + `text`, `text` holding `eos` markers between turns.
    `path`: an HF directory (its tokenizer.json, else its tokenizer.model) or a `.model` file."""
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        from tokenizers import Tokenizer

        raw = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
        return raw.encode((bos or "") + text, add_special_tokens=False).ids
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=path if os.path.isfile(path) else os.path.join(path, "tokenizer.model"))
    ids = [sp.piece_to_id(bos)] if bos else []
    pieces = text.split(eos)
    for i, piece in enumerate(pieces):
        ids += sp.encode(piece)
        if i < len(pieces) - 1:
            ids.append(sp.piece_to_id(eos))
    return ids


def reference_example(tokenizer_dir: str, text: str, trained_spans, *, bos: str | None, eos: str
                      ) -> tuple[list[int], np.ndarray]:
    """(ids, loss mask) as open-instruct masks them: the tokens between the encodings of the text before
    and after each trained span (response + EOS) are trained."""
    ids = reference_ids(tokenizer_dir, text, bos=bos, eos=eos)
    mask = np.zeros(len(ids), np.int32)
    for start, end in trained_spans:
        before = reference_ids(tokenizer_dir, text[:start], bos=bos, eos=eos)
        through = reference_ids(tokenizer_dir, text[:end], bos=bos, eos=eos)
        assert ids[: len(through)] == through and through[: len(before)] == before, "token crosses a span edge"
        mask[len(before): len(through)] = 1
    return ids, mask
