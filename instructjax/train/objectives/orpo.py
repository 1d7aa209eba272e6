"""ORPO (`objective.loss: orpo`; Hong et al., "ORPO: Monolithic Preference Optimization without Reference Model";
TRL's ORPOTrainer): SFT on the chosen side and an odds-ratio term, no reference model.

With c and r a pair's per-token mean log-probs of its chosen and rejected completion, the odds of a completion are
p / (1 - p) in log form c - log(1 - e^c) (`log1mexp`, TRL's), and the step's loss is

    nll - beta * mean over pairs of log sigmoid((c - log(1 - e^c)) - (r - log(1 - e^r)))

where nll is the cross-entropy of every token the chosen side's sequence predicts, its prompt included (TRL's
`chosen_nll_loss`), averaged over those tokens of the whole batch. Logged with TRL's names and meanings: rewards/*
(beta times c and r), `log_odds_ratio` (the mean log sigmoid), `log_odds_chosen` (the mean log odds ratio) and
`nll_loss`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from instructjax.core.objectives import ORPOOptions
from instructjax.train import loss, preference
from instructjax.train.objectives.base import Array
from instructjax.train.objectives.pairs import PairObjective

CHOSEN, REJECTED = preference.CHOSEN, preference.REJECTED


def log1mexp(x: Array) -> Array:
    """log(1 - e^x) for x < 0, branching at -log 2 as TRL does (no cancellation on either side)."""
    return jnp.where(x < -0.6931471805599453, jnp.log1p(-jnp.exp(x)), jnp.log(-jnp.expm1(x)))


def chosen_targets(segment_ids: Array) -> Array:
    """Where a token predicts the next token of a chosen side (an odd segment, 2k - 1, whose next token is its own)."""
    following = jnp.concatenate([segment_ids[..., 1:], jnp.zeros_like(segment_ids[..., :1])], axis=-1)
    return (segment_ids % 2 == 1) & (following == segment_ids)


class ORPO(PairObjective):
    options = ORPOOptions

    def weights(self, micro_batches: dict[str, Array]) -> dict[str, Array]:
        chosen = jnp.sum(chosen_targets(micro_batches["segment_ids"]).astype(jnp.float32))
        return {**super().weights(micro_batches), "nll_scale": loss.reduce_loss(jnp.float32(1.0), chosen, "mean")}

    def loss(self, nll: Array, mb: dict[str, Array], weights: dict[str, Array]):
        beta, tokens = self.options.beta, mb["loss_weights"].astype(jnp.float32)
        pair, side, slots = preference.pair_slots(mb["segment_ids"])
        policy, counts = preference.completion_logps(-nll, tokens, pair, side, slots)
        real = jnp.all(counts > 0, axis=1)
        mean = jnp.where(real[:, None], policy / jnp.maximum(counts, 1.0), -1.0)  # a pair of no tokens: finite
        log_odds = (mean[:, CHOSEN] - mean[:, REJECTED]) - (log1mexp(mean[:, CHOSEN]) - log1mexp(mean[:, REJECTED]))
        ratio = jnp.where(real, jax.nn.log_sigmoid(log_odds), 0.0)
        chosen_nll = jnp.sum(jnp.where(chosen_targets(mb["segment_ids"]), nll, 0.0)) * weights["nll_scale"]
        share = chosen_nll - beta * jnp.sum(ratio) * weights["scale"]
        pairs = weights["pairs"]  # the window's sums are over pairs: a step's means, times its pairs
        logged = {"log_odds_ratio": jnp.sum(ratio), "log_odds_chosen": jnp.sum(jnp.where(real, log_odds, 0.0)),
                  "nll_loss": chosen_nll * pairs}
        sums = {**preference.reward_sums(beta * jax.lax.stop_gradient(mean), real),
                **jax.tree.map(jax.lax.stop_gradient, logged)}
        return share, (share * pairs, sums, jnp.sum(tokens))

    def words(self) -> str:
        return f"orpo, beta {self.options.beta:g}; no reference model (the chosen side's NLL and its odds ratio)"
