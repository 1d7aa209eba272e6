"""Supervised fine-tuning (`objective.loss: sft`): the next-token cross-entropy of the trained tokens, normalised by
`optim.loss_reduction` (train/loss.py: `mean` over the global batch's trained-token weight, or `sum`), with each
mixture source's sums for its own logged loss."""

from __future__ import annotations

import jax.numpy as jnp

from instructjax.core.objectives import SFTOptions
from instructjax.train import loss
from instructjax.train.objectives.base import Array, Objective


class SFT(Objective):
    options = SFTOptions

    def weights(self, micro_batches: dict[str, Array]) -> dict[str, Array]:
        weight = jnp.sum(micro_batches["loss_weights"].astype(jnp.float32))
        return {"weight": weight, "scale": loss.reduce_loss(jnp.float32(1.0), weight, self.config.optim.loss_reduction)}

    def loss(self, nll: Array, mb: dict[str, Array], weights: dict[str, Array]):
        tokens = mb["loss_weights"].astype(jnp.float32)
        source_sums, source_weights = loss.per_source_sums(nll, tokens, mb["source_ids"], self.num_sources)
        loss_sum = jnp.sum(nll * tokens)
        return loss_sum * weights["scale"], (loss_sum, source_sums, source_weights)

    def metrics(self, sums, weights: dict[str, Array]) -> dict[str, Array]:
        loss_sum, source_sums, source_weights = sums
        return {"loss_sum": loss_sum, "loss_weight": weights["weight"], "trained_tokens": weights["weight"],
                "source_sums": source_sums, "source_weights": source_weights}
