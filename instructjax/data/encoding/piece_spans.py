"""Each token's character span in its text, computed from the ids alone for a SentencePiece-style engine (the
built-in tokenizer, LLaMA-1/2's and Mistral's files): what lets `Tokenizer.encode_offsets` take the engine's fast
batch encode, which tracks no offsets. Any other engine reads the engine's own offsets."""

from __future__ import annotations

import functools
import json
import re
from itertools import chain

import numpy as np
from tokenizers import Tokenizer as Engine
from tokenizers.models import BPE

BYTE_TOKEN = re.compile(r"<0x([0-9A-F]{2})>")  # a byte-fallback token's piece


def engine_ids(encodings: list) -> tuple[np.ndarray, np.ndarray]:
    """(ids int32[n], ids per encoding int64[len(encodings)]) of the engine's encodings, end to end."""
    lengths = np.fromiter(map(len, encodings), np.int64, len(encodings))
    return np.fromiter(chain.from_iterable(e.ids for e in encodings), np.int32, int(lengths.sum())), lengths


class PieceSpans:
    """Each token's character span in its text, from the ids alone, for a SentencePiece-style engine: a
    byte-fallback BPE model on the text with spaces replaced by "▁" (`Replace`), maybe after a dummy-prefix "▁"
    (`Prepend`, on a non-empty text), no pre-tokenizer, and no added token the engine would cut the text at
    (every added one special: `encode_special_tokens` keeps them text). Then each normalized character is one
    character of the text (the dummy prefix sits on the text's first), a piece covers as many characters as
    it has, and a byte-fallback token covers the character its byte belongs to: that is how the engine aligns
    them. A batch whose pieces do not add up to its texts' lengths gets None (the engine's offsets are read)."""

    def __init__(self, chars: np.ndarray, continuation: np.ndarray, prefix: bool, engine: Engine):
        self.chars, self.continuation, self.prefix = chars, continuation, prefix
        self._engine = engine

    @functools.cached_property
    def bare(self) -> Engine:
        """The engine without its normalizer (`ids` normalizes), built when first asked for."""
        bare = Engine.from_str(self._engine.to_str())
        bare.normalizer, bare.encode_special_tokens = None, True
        return bare

    @classmethod
    def of(cls, engine: Engine) -> PieceSpans | None:
        replace = {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}
        steps = json.loads(engine.normalizer.__getstate__()) if engine.normalizer is not None else {}
        steps = steps.get("normalizers", []) if steps.get("type") == "Sequence" else [steps]
        prefix = steps[:1] == [{"type": "Prepend", "prepend": "\u2581"}]
        if (steps[prefix:] != [replace] or engine.pre_tokenizer is not None or not isinstance(engine.model, BPE)
                or not engine.model.byte_fallback or not all(t.special for t in engine.get_added_tokens_decoder().values())):
            return None
        vocab = engine.get_vocab(with_added_tokens=True)
        chars = np.zeros(max(vocab.values()) + 1, np.int64)
        continuation = np.zeros_like(chars)  # a byte token of a character's 2nd..4th byte
        for piece, i in vocab.items():
            byte = BYTE_TOKEN.fullmatch(piece)
            if byte is None:
                chars[i] = len(piece)
            else:
                continuation[i] = 0x80 <= int(byte.group(1), 16) < 0xC0
                chars[i] = 1 - continuation[i]
        return cls(chars, continuation, prefix, engine)

    def ids(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`engine_ids` of the engine's encodings of `texts` (no special tokens added): its two normalizing steps done
        here, one `str.replace` a text, then the engine without them (its alignment-tracking normalizer costs
        about a fifth of its batch encode)."""
        prefix = "\u2581" if self.prefix else ""
        normalized = [(prefix + text if text else text).replace(" ", "\u2581") for text in texts]
        encode = getattr(self.bare, "encode_batch_fast", self.bare.encode_batch)  # tokenizers < 0.21: no fast path
        return engine_ids(encode(normalized, add_special_tokens=False))

    def __call__(self, ids: np.ndarray, lengths: np.ndarray, texts: list[str]) -> np.ndarray | None:
        chars = self.chars[ids]
        firsts = np.cumsum(lengths) - lengths
        filled = lengths > 0
        text_chars = np.fromiter(map(len, texts), np.int64, len(texts)) + self.prefix
        if not np.array_equal(np.add.reduceat(chars, firsts[filled]) if ids.size else chars, text_chars[filled]):
            return None
        ends = np.cumsum(chars)
        ends -= np.repeat(ends[firsts[filled]] - chars[firsts[filled]], lengths[filled])  # within each text
        starts = ends - chars - self.continuation[ids]
        if self.prefix:  # normalized character k + 1 is the text's character k; the prefix sits on character 0
            return np.stack([np.maximum(starts - 1, 0), np.maximum(ends - 1, 1)], axis=1)
        return np.stack([starts, ends], axis=1)
