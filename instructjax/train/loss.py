"""The training loss, in one place: masked token cross-entropy, its normalisation, micro-batch accumulation.

Everything is computed as *sums* (weighted loss, weight), which add up exactly over micro-batches and
hosts; the objective is made from the global batch's sums once (`reduce_loss`):
- "mean": the loss sum over the total loss weight of the global batch (0 when nothing counts), i.e. the
  mean cross-entropy of the trained tokens, whatever the number or size of the micro-batches;
- "sum": the loss sum itself (open-instruct's `reduce_loss=sum`: long responses weigh more; it changes
  results). It is what is optimised and what is logged.

Gradient accumulation uses `accumulate_gradients` (an explicit micro-batch loop), not `optax.MultiSteps`,
which averages per-micro-batch mean losses with equal weight: wrong when micro-batches hold different
numbers of loss tokens. Cross-entropy is computed in float32 whatever the logits dtype; under jit with
globally sharded arrays the sums already span all hosts.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from instructjax.core.config import LOSS_REDUCTIONS
from instructjax.core.errors import ConfigError


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token negative log-likelihood [B, T] in float32 for logits [B, T, V] and int targets [B, T]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def loss_sums(logits: jax.Array, targets: jax.Array, loss_weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of loss_weights * nll, sum of loss_weights) over the whole batch, both float32 scalars."""
    weights = loss_weights.astype(jnp.float32)
    return jnp.sum(token_nll(logits, targets) * weights), jnp.sum(weights)


def per_source_sums(
    nll: jax.Array, loss_weights: jax.Array, source_ids: jax.Array, num_sources: int
) -> tuple[jax.Array, jax.Array]:
    """Weighted loss sums and weight sums per mixture source: two float32 arrays [num_sources].

    `source_ids` [B, T] holds each token's source index in [0, num_sources); others are dropped.
    """
    weights = loss_weights.astype(jnp.float32).reshape(-1)
    ids = source_ids.reshape(-1)
    sums = jax.ops.segment_sum(nll.reshape(-1) * weights, ids, num_segments=num_sources)
    counts = jax.ops.segment_sum(weights, ids, num_segments=num_sources)
    return sums, counts


def reduce_loss(loss_sum: jax.Array, weight_sum: jax.Array, reduction: str = "mean") -> jax.Array:
    """The objective from global sums: "mean" = sum / weight (0 when no token counts), "sum" = sum."""
    if reduction not in LOSS_REDUCTIONS:
        raise ConfigError(f"loss reduction must be one of {LOSS_REDUCTIONS}, got {reduction!r}")
    if reduction == "sum":
        return loss_sum
    return jnp.where(weight_sum > 0, loss_sum / jnp.where(weight_sum > 0, weight_sum, 1.0), 0.0)


class Accumulated(NamedTuple):
    """What `accumulate_gradients` returns for a global batch."""

    loss: jax.Array  # the objective (see the module doc)
    grads: Any
    aux: Any  # the micro-batches' aux sums, added up
    weight: jax.Array  # the global batch's total loss weight (trained tokens)


def accumulate_gradients(
    loss_sums_fn: Callable[[Any, Mapping[str, jax.Array]], tuple[jax.Array, Any]],
    params: Any,
    micro_batches: Mapping[str, jax.Array],
    reduction: str = "mean",
) -> Accumulated:
    """The objective, gradients and aux sums of the global batch split into micro-batches (the leading
    axis of every array).

    `loss_sums_fn(params, micro_batch) -> (loss_sum, aux)`: the micro-batch's weighted loss sum and any
    pytree of sums to add up over micro-batches (e.g. per-source losses). The total weight comes from
    `micro_batches["loss_weights"]` before any forward pass, so each micro-batch's gradient is scaled by
    the objective's normaliser and the total equals the gradient of one big batch.
    """
    weight = jnp.sum(micro_batches["loss_weights"].astype(jnp.float32))
    scale = reduce_loss(jnp.float32(1.0), weight, reduction)

    def scaled(p, mb):
        loss_sum, aux = loss_sums_fn(p, mb)
        return loss_sum * scale, aux

    grad_fn = jax.value_and_grad(scaled, has_aux=True)

    def step(carry, micro_batch):
        sums, p = carry  # the parameters ride in the carry: a model merged from them (nnx) lives at this trace level
        (loss, aux), grads = grad_fn(p, micro_batch)
        return (jax.tree.map(jnp.add, sums, (grads, aux)), p), loss

    first = jax.tree.map(lambda x: x[0], dict(micro_batches))
    aux_shape = jax.eval_shape(lambda p, mb: loss_sums_fn(p, mb)[1], params, first)
    zeros = jax.tree.map(jnp.zeros_like, params), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)
    ((grads, aux), _), losses = jax.lax.scan(step, (zeros, params), dict(micro_batches))
    return Accumulated(jnp.sum(losses), grads, aux, weight)
