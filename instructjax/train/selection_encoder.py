"""The selection paper's instruction encoder, built on the decoder: the mean of the model's last hidden layer
over all tokens.

Seed 002 embeds each instruction with the model being tuned (the final-norm hidden states, averaged
over the instruction's tokens) for k-means and k-center selection. It is the built-in encoder "llama-mean" of
`instructjax.data.selection.embeddings`, which imports this module when the encoder is first asked for:
`select(..., encoder=get_encoder("llama-mean", model="CKPT_OR_HF_DIR"))`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from instructjax.convert.saved import open_model


class LlamaMeanEncoder:
    """Embeds texts as the mean last hidden state of a LLaMA (instructjax checkpoint or HF directory)."""

    def __init__(self, model: str, tokenizer: str | None = None, max_length: int = 512, batch_size: int = 16):
        self.model, self.tokenizer, _ = open_model(model, tokenizer=tokenizer)
        self.max_length, self.batch_size = max_length, batch_size
        graphdef, state = nnx.split(self.model)

        @jax.jit
        def mean_hidden(state, tokens, segment_ids):
            model = nnx.merge(graphdef, state)
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
            hidden = model.hidden_states(tokens, positions, segment_ids)[0].astype(jnp.float32)
            keep = (segment_ids > 0)[..., None]
            return (hidden * keep).sum(1) / jnp.maximum(keep.sum(1), 1)

        self._state, self._mean_hidden = state, mean_hidden

    def encode(self, texts: list[str]) -> np.ndarray:
        """[N, hidden] float32: each text's tokens (after BOS where the tokenizer adds one, truncated to
        max_length), mean-pooled."""
        out = []
        bos = [self.tokenizer.bos_id] if self.tokenizer.adds_bos else []
        for start in range(0, len(texts), self.batch_size):
            chunk = [[*bos, *self.tokenizer.encode(t)][: self.max_length] or [self.tokenizer.eos_id]
                     for t in texts[start:start + self.batch_size]]
            width = max(len(ids) for ids in chunk)
            width = 1 << (width - 1).bit_length()  # few distinct shapes, few compilations
            tokens = np.zeros((self.batch_size, width), np.int32)
            segments = np.zeros((self.batch_size, width), np.int32)
            for row, ids in enumerate(chunk):
                tokens[row, : len(ids)], segments[row, : len(ids)] = ids, 1
            out.append(np.asarray(self._mean_hidden(self._state, tokens, segments))[: len(chunk)])
        return np.concatenate(out) if out else np.zeros((0, self.model.config.hidden_size), np.float32)
