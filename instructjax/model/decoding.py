"""The decoder's device steps for continuous batching: a cache of a fixed number of slots, each holding one
sequence from cache row 0, filled (`extend`: a prompt, or the rest of one after a copied prefix) and decoded
(`decode`: one token of every slot per step, `chunk` steps per call) while the others go on.

The cache is one [slots, length, kv_heads, head_dim] array per layer for keys and one for values (the layers run
as a Python loop over a list of layers, so each step writes one token per slot in place, never a copy of the
cache), sharded slots over (data, fsdp) and kv heads over tensor. Slot b's keys 0..p are its sequence's
positions 0..p: a query at position p sees the keys at 0..p (within the layer's window). The model must hold its
layers as a list (`unstacked`).

Every function here is pure and jitted (the batcher, model/batching.py, holds the state); the cache is donated, so a
step updates it where it lies. A long-RoPE model (Phi-3) rotates a row with its long factors once that row
reaches past the original context (`rope_for`): the engine re-fills such a row at the switch, as transformers
recomputes its cache there.

Where the weights split over fsdp, each layer's are gathered whole for its turn. Left free, XLA:TPU's scheduler
starts those gathers early and holds many layers' at once (`plan --compile --eval`: LLaMA-2-13B's decode step on a
v5e-16 had 11.5 GiB of temporaries, about 19 of its layers' weights; 8 of its layers on a v5e-8, 4.4 GiB, and 1.9
GiB with what follows); an optimization barrier ties layer i + 1's weights to layer i's input, so at most two
layers' lie gathered (this one's and the next one's, fetched while this one runs).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from instructjax.core.sharding import logical_to_spec, replicated, with_logical_constraint
from instructjax.model import attention, rope
from instructjax.model.config import DecoderConfig
from instructjax.model.decoder import Decoder, DecoderLayer, layer_windows, with_params
from instructjax.model.kernels.common import softcapped

Array = jax.Array
CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")


class SlotCache(NamedTuple):
    """Keys and values of every layer, [slots, kv_heads, length, head_dim] each (heads before length: attention
    reads them as they lie)."""

    keys: tuple[Array, ...]
    values: tuple[Array, ...]

    @property
    def slots(self) -> int:
        return self.keys[0].shape[0]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]


def cache_sharding(config: DecoderConfig, slots: int, length: int, mesh) -> jax.sharding.NamedSharding:
    """Slots over (data, fsdp), kv heads over tensor (each only where it divides)."""
    shape = (slots, config.num_kv_heads, length, config.head_dim)
    return jax.sharding.NamedSharding(mesh, logical_to_spec(CACHE_AXES, mesh, shape, strict=False))


def init_slot_cache(config: DecoderConfig, slots: int, length: int, mesh=None) -> SlotCache:
    """An empty cache (zeros in the compute dtype), placed on `mesh` where one is given."""
    shape = (slots, config.num_kv_heads, length, config.head_dim)
    sharding = cache_sharding(config, slots, length, mesh) if mesh is not None else None
    make = _zeros(shape, jnp.dtype(config.dtype), sharding)
    return SlotCache(tuple(make() for _ in range(config.num_layers)), tuple(make() for _ in range(config.num_layers)))


@functools.lru_cache(maxsize=64)
def _zeros(shape: tuple[int, ...], dtype, sharding) -> jax.stages.Wrapped:
    """One compiled program making zeros of this shape where `sharding` says (each batcher's cache: no compilation
    per `generate` call)."""
    return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)


def cache_bytes(config: DecoderConfig, slots: int, length: int) -> int:
    """The whole cache's size (keys and values of every layer)."""
    return 2 * config.num_layers * slots * length * config.num_kv_heads * config.head_dim * \
        np.dtype(config.dtype).itemsize


def unstacked(model: Decoder) -> Decoder:
    """The model with its layers as a list (the same arrays sliced per layer, on the same devices): decoding
    reads each layer's weights where they lie instead of slicing a stacked array every step."""
    if not model.config.scan_layers:
        return model
    params = nnx.state(model, nnx.Param).to_pure_dict()
    stacked = params["layers"]
    layers = {i: jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(model.config.num_layers)}
    return with_params(model.config.replace(scan_layers=False), {**params, "layers": layers})


def rope_for(positions: Array, last: Array, config: DecoderConfig) -> tuple:
    """cos, sin per type of layer for positions [B, T] (long-RoPE: each row's factors by its own `last` real
    position, as that sequence alone would take them)."""
    if config.positions != "rope":
        return ((None, None),)
    kinds = sorted(set(config.kinds)) if config.local_rope_theta is not None else ["full"]
    return tuple(rope.cos_sin(positions, config, kind, last=last) for kind in kinds)


def span_bucket(n: int, length: int) -> int:
    """The cache rows a decode call attends over for positions below n: a multiple of 128 up to 512, then a power of
    two, at most the cache's `length` (few spans, few compilations)."""
    span = -(-n // 128) * 128 if n <= 512 else 1 << (n - 1).bit_length()
    return min(span, length)


def _bias(positions: Array, length: int, window: int | None) -> Array:
    """Additive bias [B, 1, T, length]: a query at position p sees cache rows 0..p (and p - j < window)."""
    distance = positions[:, :, None] - jnp.arange(length)[None, None, :]
    seen = distance >= 0 if window is None else (distance >= 0) & (distance < window)
    return attention.attention_bias(seen[:, None])


def _layer(layer: DecoderLayer, x: Array, cos_sin, bias: Array, keys: Array, values: Array, rows: Array | None,
           positions: Array) -> tuple[Array, Array, Array]:
    """One layer over x [B, T, E] whose tokens sit at `positions` [B, T] of cache slots `rows` [B] (None: slot b is
    row b): their keys and values written into the cache, attention over the slots' first bias.shape[-1] rows."""
    attn = layer.self_attn
    q, k, v = attn.qkv(layer.input_layernorm(x), *cos_sin)
    slot = jnp.arange(x.shape[0]) if rows is None else rows
    where = (slot[:, None, None], jnp.arange(k.shape[2])[None, :, None], positions[:, None, :])
    keys = keys.at[where].set(jnp.swapaxes(k, 1, 2).astype(keys.dtype), mode="drop")
    values = values.at[where].set(jnp.swapaxes(v, 1, 2).astype(values.dtype), mode="drop")
    span = bias.shape[-1]
    seen = keys.shape[0] if rows is not None else x.shape[0]  # without rows: the first B slots
    seen_k, seen_v = keys[:seen, :, :span], values[:seen, :, :span]
    if rows is not None:
        seen_k, seen_v = seen_k[rows], seen_v[rows]
    out = _attend(q, seen_k.astype(q.dtype), seen_v.astype(q.dtype), bias, attn.scale, attn.softcap)
    return layer._rest(x, attn.o_proj(out))[0], keys, values


def _attend(q: Array, keys: Array, values: Array, bias: Array, scale: float, softcap: float | None) -> Array:
    """Grouped-query attention of q [B, T, H, D] over a cache's keys and values [B, K, S, D] with an additive bias
    [B, 1, T, S] (query head h reads kv head h // (H / K), as HF's repeat_kv), the softmax in float32."""
    b, t, h, d = q.shape
    grouped = q.reshape(b, t, keys.shape[1], h // keys.shape[1], d)
    scores = jnp.einsum("btkgd,bksd->bkgts", grouped, keys, preferred_element_type=jnp.float32) * scale
    probs = jax.nn.softmax(softcapped(scores, softcap) + bias[:, :, None], axis=-1).astype(values.dtype)
    return jnp.einsum("bkgts,bksd->btkgd", probs, values).reshape(b, t, h, d)


def _forward(model: Decoder, cache: SlotCache, tokens: Array, positions: Array, last: Array,
             rows: Array | None, span: int | None = None) -> tuple[Array, SlotCache]:
    """Hidden states [B, T, E] after the final norm of tokens at `positions` of slots `rows` (row b's last real one
    at last[b]), and the cache with their keys and values written; attention over the first `span` cache rows (all
    by default: every position must be below it)."""
    config = model.config
    x = model.embed_tokens(tokens)
    if model.embed_positions is not None:
        x = x + model.embed_positions(positions + config.position_offset)
    x = with_logical_constraint(x, ("batch", "length", "embed"))
    ropes = rope_for(positions, last, config)
    windows = layer_windows(config)
    biases = [_bias(positions, span or cache.length, w) for w in windows]
    types = sorted(set(config.kinds))
    keys, values = list(cache.keys), list(cache.values)
    layers = [nnx.split(layer) for layer in model.layers]  # (graphdef, weights) each
    ahead = layers[0][1]
    for i, (graphdef, _) in enumerate(layers):
        weights = ahead
        if i + 1 < len(layers):  # the next layer's weights gathered no sooner than this one's input is ready
            x, ahead = jax.lax.optimization_barrier((x, layers[i + 1][1]))
        layer = nnx.merge(graphdef, weights)
        kind = types.index(config.kinds[i])
        cos_sin = ropes[kind] if len(ropes) > 1 else ropes[0]
        x, keys[i], values[i] = _layer(layer, x, cos_sin, biases[kind], keys[i], values[i], rows, positions)
    return model.norm(x), SlotCache(tuple(keys), tuple(values))


def sample(logits: Array, keys: Array, temperature: Array, top_p: Array) -> Array:
    """Next ids [B] from logits [B, V] (float32): argmax (the first of equal ones, as torch) when temperature is
    0, else a nucleus draw with row b's own key `keys[b]`."""

    def nucleus(logits):  # the smallest set of most likely ids whose mass reaches top_p; the rest -inf
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability mass of strictly more likely tokens
        threshold = jnp.min(jnp.where(before < top_p, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        return jnp.where(logits >= threshold, logits, -jnp.inf)

    def draw(logits):
        logits = logits / temperature  # top_p 1 keeps every id: no sort of the vocabulary (a GRPO rollout's case)
        logits = jax.lax.cond(top_p < 1.0, nucleus, lambda x: x, logits)
        return jax.vmap(lambda key, row: jax.random.categorical(key, row))(keys, logits).astype(jnp.int32)

    def greedy(logits):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.lax.cond(temperature == 0.0, greedy, draw, logits)


def sampled_logp(logits: Array, token: Array, temperature: Array) -> Array:
    """[B] the log-prob of each drawn id under the distribution it was drawn from: the logits over `temperature`
    (the logits themselves when greedy), before any nucleus cut (what a learner recomputes)."""
    scaled = logits / jnp.where(temperature == 0.0, 1.0, temperature)
    return jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), token[:, None], axis=-1)[:, 0]


def _step_keys(keys: Array, counts: Array) -> Array:
    """Row b's key for its token number counts[b]."""
    return jax.vmap(jax.random.fold_in)(keys, counts)


@functools.partial(jax.jit, static_argnames=("graphdef", "span"), donate_argnames=("cache",))
def extend(graphdef, state, cache: SlotCache, tokens: Array, starts: Array, lengths: Array, rows: Array,
           keys: Array, counts: Array, temperature: Array, top_p: Array, candidates: Array, *, span: int | None = None):
    """Fill slots `rows` [n] with tokens [n, T] (row i's first lengths[i] are real) at positions starts[i]..; rows
    past the cache's slots are padding and write nothing; attention over the first `span` cache rows (`span_bucket`
    of the last position filled: a prompt need not read the rows its reply will take; default: all). Returns (the
    cache, the first new id of each row drawn from its last real token's logits, its log-prob (`sampled_logp`),
    those logits' log-softmax over `candidates`)."""
    model = nnx.merge(graphdef, state)
    positions = starts[:, None] + jnp.arange(tokens.shape[1])[None, :]
    hidden, cache = _forward(model, cache, tokens, positions, starts + lengths - 1, rows, span)
    last = jnp.take_along_axis(hidden, jnp.maximum(lengths - 1, 0)[:, None, None], axis=1)
    logits = model.logits(last)[:, 0].astype(jnp.float32)
    first = sample(logits, _step_keys(keys, counts), temperature, top_p)
    return (cache, replicated(first), replicated(sampled_logp(logits, first, temperature)),
            replicated(jax.nn.log_softmax(logits[:, candidates], axis=-1)))


@functools.partial(jax.jit, static_argnames=("graphdef", "chunk", "span"), donate_argnames=("cache",))
def decode(graphdef, state, cache: SlotCache, tokens: Array, positions: Array, keys: Array, counts: Array,
           temperature: Array, top_p: Array, *, chunk: int, span: int) -> tuple[SlotCache, Array, Array]:
    """`chunk` steps of the first n = len(tokens) slots (all of them, or the live ones packed in front: `move_slots`):
    slot b feeds tokens[b] at positions[b] and draws the next id (key counts[b] + step), attending over the first
    `span` cache rows (`span_bucket`: above every position fed). Returns (the cache, the ids drawn [n, chunk], their
    log-probs [n, chunk]: `sampled_logp`); a slot that has finished goes on harmlessly in its own rows (the engine
    reads what it needs)."""
    model = nnx.merge(graphdef, state)

    def step(carry, i):
        cache, token = carry
        hidden, cache = _forward(model, cache, token[:, None], (positions + i)[:, None], positions + i, None, span)
        logits = model.logits(hidden)[:, 0].astype(jnp.float32)
        token = sample(logits, _step_keys(keys, counts + i), temperature, top_p)
        return (cache, token), (token, sampled_logp(logits, token, temperature))

    (cache, _), (drawn, logps) = jax.lax.scan(step, (cache, tokens), jnp.arange(chunk))
    return cache, replicated(drawn.T), replicated(logps.T)


@functools.partial(jax.jit, static_argnames=("length",), donate_argnames=("cache",))
def copy_prefix(cache: SlotCache, prefix: SlotCache, rows: Array, *, length: int) -> SlotCache:
    """The first `length` cache rows of `prefix` (one slot) copied into slots `rows`."""
    def put(dst, src):
        block = jnp.broadcast_to(src[:1, :, :length], (rows.shape[0], *src.shape[1:2], length, src.shape[3]))
        return dst.at[rows, :, :length].set(block, mode="drop")

    return SlotCache(tuple(map(put, cache.keys, prefix.keys)), tuple(map(put, cache.values, prefix.values)))


@functools.partial(jax.jit, donate_argnames=("cache",))
def move_slots(cache: SlotCache, sources: Array, targets: Array) -> SlotCache:
    """The cache with slot sources[i]'s rows copied into slot targets[i] (a target past the last slot: nothing)."""
    def move(layer):
        return layer.at[targets].set(layer[sources], mode="drop")

    return SlotCache(tuple(move(k) for k in cache.keys), tuple(move(v) for v in cache.values))
