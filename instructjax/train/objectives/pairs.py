"""The preference losses on pairs (`objective.loss: dpo | dpo_norm | simpo`): train/preference.py's pair losses,
averaged over the global batch's pairs, the rewards TRL logs summed over them; each its own class, naming its options
(core/objectives.py)."""

from __future__ import annotations

import jax.numpy as jnp

from instructjax.core.objectives import DPONormOptions, DPOOptions, NoReference, SimPOOptions, StoredLogProbs
from instructjax.data.batches.packing import REFERENCE
from instructjax.train import loss, preference
from instructjax.train.objectives.base import Array, Objective


class PairObjective(Objective):
    """What every objective on pairs shares: the global batch's pairs as its weight, and its metrics."""

    def weights(self, micro_batches: dict[str, Array]) -> dict[str, Array]:
        count = jnp.sum(jnp.max(micro_batches["segment_ids"], axis=-1) // 2).astype(jnp.float32)
        return {"pairs": count, "scale": loss.reduce_loss(jnp.float32(1.0), count, "mean")}

    def metrics(self, sums, weights: dict[str, Array]) -> dict[str, Array]:
        loss_sum, pair_sums, trained = sums
        zeros = jnp.zeros(self.num_sources)
        return {"loss_sum": loss_sum, "loss_weight": weights["pairs"], "pairs": weights["pairs"],
                "trained_tokens": trained, **pair_sums, "source_sums": zeros, "source_weights": zeros}


class PairLoss(PairObjective):
    """DPO (`dpo`), its per-token form (`dpo_norm`) and SimPO (`simpo`): train/preference.py `pair_losses`."""

    def loss(self, nll: Array, mb: dict[str, Array], weights: dict[str, Array]):
        tokens = mb["loss_weights"].astype(jnp.float32)
        pair, side, slots = preference.pair_slots(mb["segment_ids"])
        policy, counts = preference.completion_logps(-nll, tokens, pair, side, slots)
        ref = None if self.reference is NoReference else preference.completion_logps(
            mb[REFERENCE], tokens, pair, side, slots)[0]
        losses, rewards = preference.pair_losses(self.options, policy, counts, ref)
        real = jnp.all(counts > 0, axis=1)
        loss_sum = jnp.sum(jnp.where(real, losses, 0.0))
        return loss_sum * weights["scale"], (loss_sum, preference.reward_sums(rewards, real), jnp.sum(tokens))

    def words(self) -> str:
        s = self.options
        words = f"{s.loss}, beta {s.beta:g}" + (f", gamma {s.gamma:g}" if s.loss == "simpo" else "")
        if self.reference is NoReference:
            return f"{words}; no reference model"
        if self.reference is StoredLogProbs:
            return (f"{words}; reference cached: one forward pass over the epoch's pairs before step 1 (one a row, "
                    "about a third of an epoch's step time), no memory while training")
        return (f"{words}; reference live: a frozen copy of the starting model (a LoRA: its starting adapters), one "
                "more forward a step")


class DPO(PairLoss):
    options = DPOOptions


class DPONorm(PairLoss):
    options = DPONormOptions


class SimPO(PairLoss):
    options = SimPOOptions
