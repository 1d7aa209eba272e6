"""A seqio Vocabulary over our `Tokenizer`, for seqio Tasks and Mixtures.

Why not `seqio.SentencePieceVocabulary` for .model files: it runs the `sentencepiece` library, which
splits whitespace runs differently from the HF tokenizer we train with and export (e.g. "a  b"), so its
ids would not always match. One engine everywhere: the TF ops call our Tokenizer via `tf.py_function`.
"""

from __future__ import annotations

import functools

import numpy as np
import seqio
import tensorflow as tf

from instructjax.data.encoding.tokenizer import Tokenizer


class TokenizerVocabulary(seqio.Vocabulary):
    """seqio.Vocabulary whose python and TF encode/decode are exactly `Tokenizer.encode`/`.decode`.

    `pad_id` is the tokenizer's pad id, or 0 when it has none (seqio's convention; id 0 is <unk> in
    LLaMA vocabularies, so padding must be read from segment ids, never from the token value).
    """

    def __init__(self, tokenizer: Tokenizer):
        super().__init__(extra_ids=0)
        self.tokenizer = tokenizer

    @property
    def bos_id(self) -> int | None:
        return self.tokenizer.bos_id

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def unk_id(self) -> int | None:
        return self.tokenizer.unk_id

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_id if self.tokenizer.pad_id is not None else seqio.PAD_ID

    @property
    def _base_vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def _encode(self, s: str) -> list[int]:
        return self.tokenizer.encode(s)

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor | tf.RaggedTensor:
        """A scalar string -> int32[None]; a 1-D batch of strings -> a RaggedTensor of ids."""
        s = tf.convert_to_tensor(s, dtype=tf.string)

        def encode_flat(strings: tf.Tensor) -> tuple[np.ndarray, np.ndarray]:
            texts = [b.decode("utf-8") for b in np.asarray(strings.numpy(), dtype=object).reshape(-1)]
            ids = self.tokenizer.encode_batch(texts)
            lengths = np.array([len(x) for x in ids], np.int64)
            flat = np.fromiter((i for x in ids for i in x), np.int32, count=int(lengths.sum()))
            return flat, lengths

        flat, lengths = tf.py_function(encode_flat, [s], (tf.int32, tf.int64))
        flat.set_shape([None])
        if s.shape.rank == 0:
            return flat
        return tf.RaggedTensor.from_row_lengths(flat, tf.reshape(lengths, [-1]))

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        """int ids [..., L] -> strings [...] (special ids dropped)."""
        ids = tf.convert_to_tensor(ids)

        def decode_rows(batch: tf.Tensor) -> np.ndarray:
            rows = batch.numpy().reshape(-1, batch.shape[-1])
            return np.array([self.tokenizer.decode(r).encode("utf-8") for r in rows], dtype=object)

        texts = tf.py_function(decode_rows, [ids], tf.string)
        return tf.reshape(texts, tf.shape(ids)[:-1])

    def __eq__(self, other) -> bool:
        return isinstance(other, TokenizerVocabulary) and other.tokenizer.path == self.tokenizer.path

    def __hash__(self) -> int:
        return hash(("TokenizerVocabulary", self.tokenizer.path))

    def __repr__(self) -> str:
        return f"TokenizerVocabulary({self.tokenizer.path!r})"


@functools.lru_cache(maxsize=8)
def _vocabulary(path: str | None) -> TokenizerVocabulary:
    return TokenizerVocabulary(Tokenizer.load(path))


def get_vocabulary(tokenizer_path: str | None = None) -> TokenizerVocabulary:
    """The seqio Vocabulary for a tokenizer path (None: the default LLaMA SentencePiece model)."""
    return _vocabulary(tokenizer_path)
