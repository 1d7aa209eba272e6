# Derived from DoReMi (https://github.com/sangmichaelxie/doremi: doremi/trainer.py, DoReMiTrainer.update_domain_weights,
# write_weights and training_step's reweighted loss), Copyright (c) 2023 Sang Xie, MIT License. Modified for
# instructjax (JAX, a domain per token rather than per row). See NOTICE.

"""DoReMi's online domain weights (Xie et al., 2023; `doremiv1`): after each step, each domain's score is the mean
excess loss of its trained tokens over a reference model's, clipped at 0 (a domain absent from the step keeps its
last score); the weights take an exponentiated-gradient step on the scores and are smoothed toward uniform:

    w' = (1 - eps) * softmax(log w + eta * scores) + eps / domains        (DoReMi's defaults: eta 1, eps 1e-4)

and their running mean over the updates is the mixture DoReMi proposes. The proxy trains on the domain-weighted loss:
each trained token's loss times its domain's weight, over the sum of those weights in the step (`weighted_loss`).

Here a token carries its domain (a packed row holds examples of several sources); DoReMi's rows are one domain
each, the special case. A run carries the state in its optimizer state (`carrier`: DoReMi's weights are the other
player's iterate, updated by exponentiated gradient), so a checkpoint saves it and a resumed run goes on from it;
the step (train/objectives/doremi.py) calls `update` and `weighted_loss`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

ETA = 1.0  # DoReMi's reweight_eta
EPS = 1e-4  # and its reweight_eps


class DomainWeights(NamedTuple):
    """DoReMi's state: the weights, their running mean over the updates, each domain's last score, the updates."""

    weights: jax.Array  # [domains] float32
    average: jax.Array  # [domains]
    scores: jax.Array  # [domains]
    updates: jax.Array  # int32 scalar

    @classmethod
    def start(cls, weights: jax.Array) -> DomainWeights:
        """The state before the first update: `weights` (DoReMi starts from the uniform or the natural mixture)."""
        weights = jnp.asarray(weights, jnp.float32)
        return cls(weights, jnp.zeros_like(weights), jnp.zeros_like(weights), jnp.int32(0))


def domain_scores(excess: jax.Array, mask: jax.Array, domains: jax.Array, last: jax.Array) -> jax.Array:
    """Each domain's mean of max(excess, 0) over its trained tokens ([domains]); `last` where a domain has none.
    `excess`, `mask`, `domains`: per token (any shape, the same), `mask` true where a token is trained."""
    k = last.shape[0]
    one_hot = (domains.reshape(-1)[:, None] == jnp.arange(k)) & mask.reshape(-1)[:, None].astype(bool)
    clipped = jnp.maximum(excess.reshape(-1).astype(jnp.float32), 0.0)
    counts = one_hot.sum(0)
    sums = (clipped[:, None] * one_hot).sum(0)
    present = (domains.reshape(-1)[:, None] == jnp.arange(k)).any(0)  # DoReMi: a domain with a row in the step
    return jnp.where(present, sums / jnp.maximum(counts, 1), last)


def update(state: DomainWeights, excess: jax.Array, mask: jax.Array, domains: jax.Array, eta: float = ETA,
           eps: float = EPS) -> DomainWeights:
    """DoReMi's update of `state` from one step's per-token excess losses (the model's minus the reference's)."""
    scores = domain_scores(excess, mask, domains, state.scores)
    logits = jnp.log(state.weights) + eta * scores
    weights = (1 - eps) * jnp.exp(logits - jax.nn.logsumexp(logits)) + eps / logits.shape[0]
    updates = state.updates + 1
    average = (state.average * (updates - 1) + weights) / updates
    return DomainWeights(weights, average, scores, updates)


def weighted_loss(loss: jax.Array, mask: jax.Array, domains: jax.Array, weights: jax.Array,
                  sampling: jax.Array | None = None) -> jax.Array:
    """The proxy's loss: each trained token's `loss` times its domain's weight, summed, over the sum of those weights.
    `sampling`: the domains' sampling rates where they are not uniform (each weight is divided by its domain's rate,
    then renormalised, as DoReMi does)."""
    if sampling is not None:
        weights = weights / sampling
        weights = weights / weights.sum()
    token_weights = weights[domains] * mask.astype(weights.dtype)
    return jnp.sum(loss * token_weights) / jnp.maximum(jnp.sum(token_weights), 1e-10)


class Reweighting(NamedTuple):
    """What a run carries in its optimizer state: DoReMi's state and the rates its data is drawn at (constant)."""

    domains: DomainWeights
    sampling: jax.Array  # [domains] float32, summing to 1


def carrier(sampling) -> optax.GradientTransformation:
    """A transformation that changes no update and holds a `Reweighting` as its state, started at the sampling rates
    (DoReMi starts its weights at the reference weights it samples by): chained after the optimizer, the state is
    saved, restored and placed with the optimizer's."""
    rates = jnp.asarray(sampling, jnp.float32)

    def init(params):
        del params
        return Reweighting(DomainWeights.start(rates), rates)

    def update(updates, state, params=None):
        del params
        return updates, state

    return optax.GradientTransformation(init, update)


def _is_state(node) -> bool:
    return isinstance(node, Reweighting)


def carried(opt_state) -> Reweighting:
    """The `Reweighting` an optimizer state with a `carrier` holds."""
    found = [leaf for leaf in jax.tree.leaves(opt_state, is_leaf=_is_state) if _is_state(leaf)]
    if len(found) != 1:
        raise ValueError(f"the optimizer state holds {len(found)} DoReMi states, not one")
    return found[0]


def with_carried(opt_state, state: Reweighting):
    """`opt_state` with its `Reweighting` replaced by `state`."""
    return jax.tree.map(lambda node: state if _is_state(node) else node, opt_state, is_leaf=_is_state)
