"""The training loss, in one place: masked token cross-entropy, its normalisation, micro-batch accumulation.

Everything is computed as *sums* (weighted loss, weight), which add up exactly over micro-batches and
hosts; the objective is made from the global batch's sums once (`reduce_loss`):
- "mean": the loss sum over the total loss weight of the global batch (0 when nothing counts), i.e. the
  mean cross-entropy of the trained tokens, whatever the number or size of the micro-batches;
- "sum": the loss sum itself (open-instruct's `reduce_loss=sum`: long responses weigh more; it changes
  results). It is what is optimised and what is logged.

Gradient accumulation uses `accumulate` (an explicit micro-batch loop), not `optax.MultiSteps`,
which averages per-micro-batch mean losses with equal weight: wrong when micro-batches hold different
numbers of loss tokens. Cross-entropy is computed in float32 whatever the logits dtype; under jit with
globally sharded arrays the sums already span all hosts.

`chunked_token_nll` is `token_nll` from the final hidden states and the output head, a chunk of tokens at a
time, never holding the [B, T, V] logits (Gemma's vocabulary is 256K).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from instructjax.core.config import LOSS_REDUCTIONS
from instructjax.core.errors import ConfigError
from instructjax.core.sharding import logical_to_spec
from instructjax.model.kernels.common import target_platform


def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-token negative log-likelihood [B, T] in float32 for logits [B, T, V] and int targets [B, T]."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)


def model_nll(model, hidden: jax.Array, targets: jax.Array, chunk: int, temperature: float = 1.0) -> jax.Array:
    """Per-token nll [B, T] (float32) of a decoder's final hidden states: its logits `chunk` tokens at a time
    (`chunked_token_nll`), or all at once with `chunk` 0; with `temperature`, of the logits divided by it (after the
    soft-cap: a rollout's sampling distribution, open-instruct's `forward_for_logprobs`)."""
    if chunk == 0:
        logits = model.logits(hidden)
        return token_nll(logits if temperature == 1.0 else logits.astype(jnp.float32) / temperature, targets)
    head, transposed = model.output_head()
    return chunked_token_nll(hidden, head, targets, chunk=chunk, softcap=model.config.final_softcap,
                             transposed=transposed, dtype=model.config.dtype, temperature=temperature)


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


def accumulate(loss_fn: Callable[[Any, Mapping[str, jax.Array]], tuple[jax.Array, Any]], params: Any,
               micro_batches: Mapping[str, jax.Array]) -> tuple[jax.Array, Any, Any]:
    """(loss, gradients, aux sums) of a global batch split into micro-batches (the leading axis of every array), by
    an explicit loop: `loss_fn(params, micro_batch) -> (loss, aux)` gives a micro-batch's share of the loss (already
    normalised for the whole batch) and any pytree of sums; the shares, their gradients and the sums add up."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(carry, micro_batch):
        sums, p = carry  # the parameters ride in the carry: a model merged from them (nnx) lives at this trace level
        (loss, aux), grads = grad_fn(p, micro_batch)
        return (jax.tree.map(jnp.add, sums, (grads, aux)), p), loss

    first = jax.tree.map(lambda x: x[0], dict(micro_batches))
    aux_shape = jax.eval_shape(lambda p, mb: loss_fn(p, mb)[1], params, first)
    zeros = jax.tree.map(jnp.zeros_like, params), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)
    ((grads, aux), _), losses = jax.lax.scan(step, (zeros, params), dict(micro_batches))
    return jnp.sum(losses), grads, aux


def accumulate_gradients(
    loss_sums_fn: Callable[[Any, Mapping[str, jax.Array]], tuple[jax.Array, Any]],
    params: Any,
    micro_batches: Mapping[str, jax.Array],
    reduction: str = "mean",
    weight: jax.Array | None = None,
) -> Accumulated:
    """The objective, gradients and aux sums of the global batch split into micro-batches (`accumulate`).

    `loss_sums_fn(params, micro_batch) -> (loss_sum, aux)`: the micro-batch's weighted loss sum and any
    pytree of sums to add up over micro-batches (e.g. per-source losses). The total weight comes from
    `micro_batches["loss_weights"]` before any forward pass (or is `weight`: a preference loss's pairs), so each
    micro-batch's gradient is scaled by the objective's normaliser and the total equals the gradient of one big batch.
    """
    if weight is None:
        weight = jnp.sum(micro_batches["loss_weights"].astype(jnp.float32))
    scale = reduce_loss(jnp.float32(1.0), weight, reduction)

    def scaled(p, mb):
        loss_sum, aux = loss_sums_fn(p, mb)
        return loss_sum * scale, aux

    loss, grads, aux = accumulate(scaled, params, micro_batches)
    return Accumulated(loss, grads, aux, weight)


def chunked_token_nll(hidden: jax.Array, head: jax.Array, targets: jax.Array, *, chunk: int = 1024,
                      softcap: float | None = None, transposed: bool = False,
                      dtype: str | jnp.dtype = jnp.bfloat16, temperature: float = 1.0) -> jax.Array:
    """`token_nll` of the output projection's logits (divided by `temperature`, after the soft-cap) without ever
    holding them whole: [B, T] in float32.

    hidden [B, T, E] (the final hidden states, after the final norm); head [E, V], or with `transposed` the
    tied embedding table [V, E]; targets int [B, T]. The logits are made in this order, as in the model:
    the product in `dtype`, `hidden.astype(dtype) @ head.astype(dtype)`, then cast to float32, then (with
    `softcap`) capped in float32, `softcap * tanh(logits / softcap)`, then `token_nll` (float32).

    Memory: the tokens are processed `chunk` at a time by a scan whose body is under `jax.checkpoint`; the
    forward pass keeps only each chunk's [chunk] losses, the backward pass recomputes one chunk's logits at
    a time, so neither holds more than one chunk's [chunk, V] logits (and their softmax). See `_chunked_nll`.

    Sharding: under `jax.set_mesh(mesh)` with the batch dimension sharded by the logical rules ("batch" ->
    data, fsdp), the loss is vocabulary-parallel (Megatron's cross-entropy) inside a `shard_map` over those axes:
    the head enters split along the vocabulary, one slice a device, and is never gathered. Each device loops over
    its own rows `ceil(chunk / shards)` tokens at a time; a chunk's hidden states are gathered from every device,
    each device makes the logits of its vocabulary slice for all of them, and the log-sum-exp and the target's
    logit are summed over the devices (a few floats a token); each device keeps its own tokens' losses. The head's
    gradient is complete on each device for its slice (no all-reduce of a head-sized gradient; the hidden states'
    gradient returns to its devices, a chunk at a time, by an all-to-all and a local sum: `_gather_tokens`). Other
    mesh axes (tensor) stay automatic. Outside a mesh, when the batch does not divide over the mesh, or when the
    vocabulary does not divide over its devices (the head then enters whole, its gradient summed over the devices
    once after the loop), it is the plain loop.
    """
    mesh = jax.sharding.get_abstract_mesh()
    axes = () if mesh.empty else logical_to_spec(("batch",), mesh, hidden.shape[:1], strict=False)[0]
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    options = dict(softcap=softcap, transposed=transposed, dtype=jnp.dtype(dtype), temperature=float(temperature))
    if not axes:
        return _chunked_nll(hidden, head, targets, chunk=chunk, **options)
    shards = math.prod(dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))[a] for a in axes)
    rows = PartitionSpec(axes)
    vocab = head.shape[0 if transposed else 1]
    if vocab % shards:  # the head whole on every device, its gradient summed once after the loop
        def replicated(h, w, y):  # w marked as varying before the loop: its gradient's psum lands here, once
            return _chunked_nll(h, jax.lax.pcast(w, axes, to="varying"), y, chunk=-(-chunk // shards), **options)

        return jax.shard_map(replicated, mesh=mesh, axis_names=set(axes), in_specs=(rows, PartitionSpec(), rows),
                             out_specs=rows)(hidden, head, targets)

    def sliced(h, w, y):
        return _chunked_nll(h, w, y, chunk=-(-chunk // shards), vocab_axes=axes, **options)

    head_spec = PartitionSpec(axes, None) if transposed else PartitionSpec(None, axes)
    return jax.shard_map(sliced, mesh=mesh, axis_names=set(axes), in_specs=(rows, head_spec, rows),
                         out_specs=rows)(hidden, head, targets)


def _chunked_nll(hidden: jax.Array, head: jax.Array, targets: jax.Array, *, chunk: int, softcap: float | None,
                 transposed: bool, dtype: jnp.dtype, vocab_axes: tuple[str, ...] = (),
                 temperature: float = 1.0) -> jax.Array:
    """`chunked_token_nll` on one device's rows (or all of them, left to GSPMD); with `vocab_axes` (inside a
    `shard_map` over them) `head` is this device's slice of the vocabulary (`_sliced_nll`).

    The B*T tokens are flattened and padded at the end to a multiple of `chunk` (the padding, zero vectors
    with target 0, is computed and dropped). Chunks are strided: with n padded tokens and m = n / chunk
    chunks, chunk j holds tokens j, j + m, j + 2m, ..., so that every chunk takes an equal share of every
    part of the token axis (of every device's rows when GSPMD partitions it). The head is a constant of the
    scan, cast to `dtype` inside the checkpointed body (so it is stored once, XLA hoists the cast out of the
    forward loop, and its gradient accumulates over chunks in the head's own dtype).
    """
    batch, length, embed = hidden.shape
    n = batch * length
    chunk = max(1, min(int(chunk), n))
    num = -(-n // chunk)
    pad = num * chunk - n
    x = hidden.reshape(n, embed)
    y = targets.reshape(n).astype(jnp.int32)
    if pad:
        x = jnp.pad(x, ((0, pad), (0, 0)))
        y = jnp.pad(y, (0, pad))
    xs = x.reshape(chunk, num, embed).swapaxes(0, 1)  # [num, chunk, E]: chunk j = tokens j, j + num, ...
    ys = y.reshape(chunk, num).swapaxes(0, 1)
    spec = "ve" if transposed else "ev"

    @functools.partial(jax.checkpoint, prevent_cse=False)  # backward: recompute the chunk's logits
    def one(x_c: jax.Array, y_c: jax.Array) -> jax.Array:
        if vocab_axes:
            return _sliced_nll(x_c, head, y_c, spec=spec, softcap=softcap, dtype=dtype, axes=vocab_axes,
                               temperature=temperature)
        logits = jnp.einsum(f"ce,{spec}->cv", x_c.astype(dtype), head.astype(dtype)).astype(jnp.float32)
        if softcap:
            logits = softcap * jnp.tanh(logits / softcap)
        return token_nll(logits if temperature == 1.0 else logits / temperature, y_c)

    nll = jax.lax.map(lambda xy: one(*xy), (xs, ys))  # [num, chunk]
    return nll.swapaxes(0, 1).reshape(-1)[:n].reshape(batch, length)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _gather_tokens(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    """Every device's [c, E] tokens, [c * shards, E] in device order; the backward sums each device's part of the
    gradient over the devices as an all-to-all and a local sum (a reduce-scatter, which XLA:TPU would emit as an
    all-reduce of the whole gathered chunk and a slice)."""
    return jax.lax.all_gather(x, axes, tiled=True)


def _gather_tokens_forward(x, axes):
    return _gather_tokens(x, axes), None


def _gather_tokens_backward(axes, _, grad):
    parts = grad.reshape(-1, grad.shape[0] // jax.lax.axis_size(axes), grad.shape[1])  # [shards, c, E]
    mine = jax.lax.all_to_all(parts, axes, split_axis=0, concat_axis=0, tiled=True)  # device d's part of each
    return (jnp.sum(mine.astype(jnp.float32), axis=0).astype(grad.dtype),)


_gather_tokens.defvjp(_gather_tokens_forward, _gather_tokens_backward)


def _sliced_nll(x: jax.Array, head: jax.Array, y: jax.Array, *, spec: str, softcap: float | None, dtype: jnp.dtype,
                axes: tuple[str, ...], temperature: float = 1.0) -> jax.Array:
    """One chunk's nll [c] on this device of a `shard_map` over `axes`, with `head` this device's slice of the
    vocabulary (device i holds ids i * V_i .. (i + 1) * V_i - 1, i counted over `axes` as `all_gather` orders
    them): the chunk's tokens of every device gathered (in the hidden states' dtype on a TPU, in float32 elsewhere),
    the logits of this slice for all of them, the log-sum-exp
    and the target's logit summed over the devices, this device's own tokens' losses kept."""
    c = x.shape[0]
    if target_platform() != "tpu":  # XLA:CPU aborts promoting a bfloat16 reduce-scatter (the gather's transpose)
        x = x.astype(jnp.float32)
    xs = _gather_tokens(x, axes)  # [c * shards, E]
    ys = jax.lax.all_gather(y, axes, tiled=True)
    logits = jnp.einsum(f"ce,{spec}->cv", xs.astype(dtype), head.astype(dtype)).astype(jnp.float32)
    if softcap:
        logits = softcap * jnp.tanh(logits / softcap)
    if temperature != 1.0:
        logits = logits / temperature
    width = logits.shape[1]
    index = jax.lax.axis_index(axes)
    top = jax.lax.pmax(jax.lax.stop_gradient(jnp.max(logits, axis=-1)), axes)  # the log-sum-exp's shift
    lse = top + jnp.log(jax.lax.psum(jnp.sum(jnp.exp(logits - top[:, None]), axis=-1), axes))
    local = ys - index * width
    mine = (local >= 0) & (local < width)
    picked = jnp.take_along_axis(logits, jnp.clip(local, 0, width - 1)[:, None], axis=-1)[:, 0]
    target = jax.lax.psum(jnp.where(mine, picked, 0.0), axes)
    return jax.lax.dynamic_slice_in_dim(lse - target, index * c, c)
