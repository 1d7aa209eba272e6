"""Self-attention over packed rows: causal, confined to one segment, grouped-query heads, optionally a
sliding window and a soft-cap on the scores.

One interface, several implementations (`DecoderConfig.attention`; the kernels live in `model/kernels/`):

| name         | for              | how                                                                        |
|--------------|------------------|----------------------------------------------------------------------------|
| `xla`        | reference, tests | dense scores per query block of 128, one additive [B, 1, T, T] bias        |
| `blockwise`  | CPU (auto)       | online softmax over [block x block] tiles in plain JAX with a custom VJP   |
|              |                  | that recomputes tiles; only the tiles that can meet are visited            |
| `splash`     | TPU (auto)       | Pallas splash attention (causal or local mask, `SegmentIds`, its soft-cap), |
|              |                  | per shard of batch and heads (`shard_map`)                                 |
| `pallas_gpu` | GPU (auto)       | our Pallas (Triton) flash attention with segment ids, window and soft-cap  |
| `cudnn`      | GPU (bf16/fp16)  | cuDNN fused flash attention, each row's segments as a packed (THD) batch   |

Every implementation takes q [B, T, H, D], k and v [B, T, K, D] (query head h uses kv head h // (H / K),
HF's repeat_kv) and segment ids [B, T] (0 = padding, which attends only to padding), and gives
[B, T, H, D] with the softmax in float32. A query at i sees a key at j of its segment when j <= i and, with a
`window`, i - j < window (transformers' sliding window). Scores are `scale * q.k` (default head_dim ** -0.5),
then `cap * tanh(s / cap)` with a `softcap` (Gemma-2). Pallas kernels run in interpret mode off their
platform (decided by the devices the step is built for, `target_platform`), which is how the tests check
them on CPU. Decoding with a KV cache uses `attend` with an explicit
bias (`cached_mask`).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from instructjax.model.kernels.common import MASKED, heads_first, heads_last, softcapped, target_platform
from instructjax.model.kernels.gpu_attention import gpu_attention

Array = jax.Array

AUTO = {"tpu": "splash", "gpu": "pallas_gpu", "cuda": "pallas_gpu", "rocm": "pallas_gpu"}  # else blockwise
FUSED = ("blockwise", "splash", "pallas_gpu", "cudnn")  # never hold a [T, T] score array
DEFAULT_BLOCK = {"xla": 128, "blockwise": 256, "splash": 512, "pallas_gpu": 128, "cudnn": 0}


def implementation_for(name: str, platform: str | None = None) -> str:
    """The implementation `name` stands for on `platform` (default: `target_platform()`): `auto` picked, any other
    name as it is."""
    if name != "auto":
        return name
    return AUTO.get(platform or target_platform(), "blockwise")




# ---- masks and the dense reference ----------------------------------------------------------------


def segment_causal_mask(segment_ids: Array, window: int | None = None) -> Array:
    """Boolean mask [B, 1, T, T]: query i sees key j iff j <= i (and i - j < window), in the same segment."""
    t = segment_ids.shape[-1]
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    distance = jnp.arange(t)[:, None] - jnp.arange(t)[None, :]
    near = (distance >= 0) if window is None else (distance >= 0) & (distance < window)
    return (same_segment & near)[:, None]


def cached_mask(query_segments: Array, key_segments: Array, index: Array, window: Array | int | None = None) -> Array:
    """Boolean mask [B, 1, T, S] of T queries written at cache slots index.. over S slots: a query sees a
    filled slot (segment > 0) of its own segment at or before its own slot (and within `window` slots, which
    may be traced: one per scanned layer)."""
    t, s = query_segments.shape[1], key_segments.shape[1]
    distance = (index + jnp.arange(t))[:, None] - jnp.arange(s)[None, :]
    near = distance >= 0 if window is None else (distance >= 0) & (distance < window)
    same = (query_segments[:, :, None] == key_segments[:, None, :]) & (key_segments[:, None, :] > 0)
    return (near[None] & same)[:, None]


def attention_bias(mask: Array) -> Array:
    """Additive float32 bias [B, 1, T, S] for a boolean mask: 0 where the query sees the key, MASKED elsewhere."""
    return jnp.where(mask, 0.0, MASKED).astype(jnp.float32)


def _attend_heads_first(q: Array, k: Array, v: Array, bias: Array, scale: float, softcap: float | None) -> Array:
    """softmax(softcap(scale * q k^T) + bias) v with the softmax in float32, heads-first -> [B, K, G, T, D]."""
    scores = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    probs = jax.nn.softmax(softcapped(scores, softcap) + bias[:, :, None], axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bksd->bkgtd", probs, v)


def attend(q: Array, k: Array, v: Array, bias: Array, *, scale: float | None = None,
           softcap: float | None = None) -> Array:
    """Dense grouped-query attention: q [B, T, H, D], k/v [B, S, K, D], additive bias [B, 1, T, S] -> [B, T, H, D].
    A KV cache only has to supply longer k/v and the matching bias."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return heads_last(_attend_heads_first(*heads_first(q, k, v), bias, scale, softcap))


def causal_attend(q: Array, k: Array, v: Array, bias: Array, block: int = 128, *, scale: float,
                  softcap: float | None = None) -> Array:
    """`attend` for causal self-attention (k, v at the same positions as q), in query blocks of `block`.

    Block i needs only the keys up to its last query, so the blocks skip the square's upper triangle: the
    same result with about half the score FLOPs and memory.
    """
    t = q.shape[1]
    q, k, v = heads_first(q, k, v)
    outs = [
        _attend_heads_first(q[:, :, :, s : s + block], k[:, :, : s + block], v[:, :, : s + block],
                            bias[:, :, s : s + block, : s + block], scale, softcap)  # fmt: skip
        for s in range(0, t, block)
    ]
    return heads_last(jnp.concatenate(outs, axis=3))


# ---- the one entry point ---------------------------------------------------------------------------


def mask_input(implementation: str, segment_ids: Array, window: int | None = None) -> Array:
    """What the layers of one forward pass share: the dense bias for `xla` (built once per window), else the
    segment ids."""
    if implementation == "xla":
        return attention_bias(segment_causal_mask(segment_ids, window))
    return segment_ids


def self_attention(q: Array, k: Array, v: Array, mask: Array, implementation: str, block: int | None = None,
                   backward_block: int | None = None, *, window: int | None = None, softcap: float | None = None,
                   scale: float | None = None) -> Array:
    """Causal same-segment attention by `implementation` (resolved, not `auto`); `mask` from `mask_input` (of
    the same `window`); `backward_block` only where the kernel tiles its backward pass on its own (pallas_gpu)."""
    block = block or DEFAULT_BLOCK[implementation]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    options = dict(scale=scale, softcap=softcap)
    if implementation == "xla":
        return causal_attend(q, k, v, mask, block=block, **options)
    if implementation == "blockwise":
        from instructjax.model.kernels.blockwise import blockwise_attention as run
    elif implementation == "splash":
        from instructjax.model.kernels.splash import splash_attention as run
    elif implementation == "pallas_gpu":
        return gpu_attention(q, k, v, mask, block=block, backward_block=backward_block, window=window, **options)
    elif implementation == "cudnn":
        from instructjax.model.kernels.cudnn import cudnn_attention as run
    else:
        raise ValueError(f"unknown attention implementation {implementation!r}")
    return run(q, k, v, mask, block=block, window=window, **options)
