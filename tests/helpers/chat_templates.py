"""Real chat templates (tests/assets/chat_templates.json, with their special tokens) over tokenizers trained here
with the `tokenizers` library: the model-template tests' tokenizers and the TRL side-by-side benchmark's."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import ASSETS
from helpers.pretrained_models import corpus

TEMPLATES = json.loads((ASSETS / "chat_templates.json").read_text())


def build(name: str, directory: Path) -> str:
    """A tokenizer directory for `name`: BPE trained on English text (byte-level or SentencePiece-style), the
    family's special tokens added with their strip flags, and its chat template."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as Raw

    spec = TEMPLATES[name]
    raw = Raw(models.BPE())
    if spec["pre_tokenizer"] == "byte_level":
        raw.pre_tokenizer, raw.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        raw.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        raw.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = [chr(c) for c in range(32, 127)] + ["\n", "\t", "’"]  # every character of the tests' text
    raw.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=700, initial_alphabet=alphabet, show_progress=False))
    raw.add_special_tokens([AddedToken(t["content"], lstrip=t["lstrip"], rstrip=t["rstrip"], normalized=False,
                                       special=True) for t in spec["special_tokens"]])
    directory.mkdir(parents=True, exist_ok=True)
    raw.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "chat_template": spec["chat_template"],
              "eos_token": spec["eos_token"], "add_bos_token": spec["add_bos_token"]}
    if spec["bos_token"]:
        config["bos_token"] = spec["bos_token"]
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return str(directory)
