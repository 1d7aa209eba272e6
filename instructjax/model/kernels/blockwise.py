"""Blockwise attention in plain JAX (the CPU's kernel): online softmax over [block x block] tiles with a
custom VJP that recomputes tiles (FlashAttention-2's algorithm), no [T, T] array. The loops visit only the
tiles on or below the diagonal, inside the sliding window if there is one, whose segments can meet.

Scores are `scale * q.k`, then soft-capped (`cap * tanh(s / cap)`) where the model caps them; a key is
visible to a query of the same segment at or before it, and within `window` positions of it."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from instructjax.model.kernels.common import MASKED, heads_first, heads_last, pad_to_blocks

Array = jax.Array


def _visible_tiles(segment_ids: Array, block: int, window: int | None) -> Array:
    """bool [nq, nk]: may some query of block i see some key of block j in any row? (j <= i, the blocks'
    segment-id ranges overlap, and the closest pair of positions lies within the window)."""
    b, t = segment_ids.shape
    tiles = segment_ids.reshape(b, t // block, block)
    lo, hi = tiles.min(-1), tiles.max(-1)  # [B, n]
    meet = (lo[:, None, :] <= hi[:, :, None]) & (hi[:, None, :] >= lo[:, :, None])  # [B, q block, kv block]
    n = t // block
    i, j = jnp.arange(n)[:, None], jnp.arange(n)[None, :]
    near = (j <= i) if window is None else (j <= i) & ((i - j - 1) * block + 1 < window)
    return meet.any(0) & near


def _tile_ranges(segment_ids: Array, block: int, window: int | None) -> tuple[Array, Array]:
    """The tiles to visit: for query tile i the key tiles first[i] .. i, for key tile j the query tiles
    j .. last[j] - 1 (the span of the visible tiles; in a packed row, whose documents are contiguous, every
    tile in the span is visible, so the loops skip exactly the tiles no query can use)."""
    visible = _visible_tiles(segment_ids, block, window)
    n = visible.shape[0]
    return jnp.argmax(visible, axis=1), n - jnp.argmax(visible[::-1], axis=0)


def _tile_scores(qi, kj, seg_q, seg_k, i, j, block: int, scale: float, window: int | None, softcap: float | None,
                 *, transposed: bool = False):
    """Scores [B, K, G, bq, bk] of query tile i against key tile j (float32, scaled and capped), where they
    count, and d capped / d scaled (None without a cap). `transposed`: all [B, K, G, bk, bq]."""
    q_pos = i * block + jnp.arange(block)
    k_pos = j * block + jnp.arange(block)
    if transposed:
        scores = jnp.einsum("bksd,bkgqd->bkgsq", kj, qi, preferred_element_type=jnp.float32) * scale
        distance = q_pos[None, :] - k_pos[:, None]
        mask = (seg_k[:, :, None] == seg_q[:, None, :]) & (distance >= 0)[None]
    else:
        scores = jnp.einsum("bkgqd,bksd->bkgqs", qi, kj, preferred_element_type=jnp.float32) * scale
        distance = q_pos[:, None] - k_pos[None, :]
        mask = (seg_q[:, :, None] == seg_k[:, None, :]) & (distance >= 0)[None]
    if window is not None:
        mask = mask & (distance < window)[None]
    slope = None
    if softcap is not None:
        capped = jnp.tanh(scores / softcap)
        scores, slope = softcap * capped, 1.0 - capped * capped
    return scores, mask[:, None, None], slope


def _tile(x: Array, i, block: int, axis: int) -> Array:
    return lax.dynamic_slice_in_dim(x, i * block, block, axis=axis)


def _forward(q, k, v, segment_ids, block: int, scale: float, window, softcap):
    """(out [B, K, G, T, D], logsumexp [B, K, G, T]) by online softmax; q/k/v heads-first, T a multiple of block."""
    b, kh, g, t, d = q.shape
    n = t // block
    first, _ = _tile_ranges(segment_ids, block, window)

    def query_block(i):
        qi, seg_q = _tile(q, i, block, 3), _tile(segment_ids, i, block, 1)

        def key_block(j, carry):
            m, total, acc = carry
            scores, mask, _ = _tile_scores(qi, _tile(k, j, block, 2), seg_q, _tile(segment_ids, j, block, 1),
                                           i, j, block, scale, window, softcap)
            m_new = jnp.maximum(m, jnp.where(mask, scores, MASKED).max(-1))
            p = jnp.where(mask, jnp.exp(scores - m_new[..., None]), 0.0)
            alpha = jnp.exp(m - m_new)
            pv = jnp.einsum("bkgqs,bksd->bkgqd", p.astype(v.dtype), _tile(v, j, block, 2),
                            preferred_element_type=jnp.float32)
            return m_new, alpha * total + p.sum(-1), alpha[..., None] * acc + pv

        init = (jnp.full((b, kh, g, block), MASKED, jnp.float32), jnp.zeros((b, kh, g, block), jnp.float32),
                jnp.zeros((b, kh, g, block, d), jnp.float32))
        m, total, acc = lax.fori_loop(first[i], i + 1, key_block, init)
        return (acc / total[..., None]).astype(q.dtype), m + jnp.log(total)

    out, lse = lax.map(query_block, jnp.arange(n))  # [n, B, K, G, block, (D)]
    out = jnp.moveaxis(out, 0, 3).reshape(b, kh, g, t, d)
    return out, jnp.moveaxis(lse, 0, 3).reshape(b, kh, g, t)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7))
def _blockwise(q, k, v, segment_ids, block: int, scale: float, window, softcap):
    return _forward(q, k, v, segment_ids, block, scale, window, softcap)[0]


def _blockwise_fwd(q, k, v, segment_ids, block, scale, window, softcap):
    out, lse = _forward(q, k, v, segment_ids, block, scale, window, softcap)
    return out, (q, k, v, segment_ids, out, lse)


def _blockwise_bwd(block, scale, window, softcap, residuals, d_out):
    """FlashAttention-2's backward: per key tile j, over the query tiles i >= j that can see it, recompute
    p = exp(s - lse) and accumulate dV_j, dK_j (carried) and dQ_i (one float32 buffer). The loops carry
    no conditional: a `cond` per tile copied the dQ buffer in and out on XLA:CPU (2.8 s -> 2.3 s for one
    layer's backward at T=8192, 8 heads)."""
    q, k, v, segment_ids, out, lse = residuals
    b, kh, g, t, d = q.shape
    n = t // block
    _, last = _tile_ranges(segment_ids, block, window)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, K, G, T]

    def key_block(dq, j):
        kj, vj, seg_k = _tile(k, j, block, 2), _tile(v, j, block, 2), _tile(segment_ids, j, block, 1)

        def query_block(i, carry):
            # transposed tiles [.., key, query]: every [bk, bq] product is a plain row-major matmul, only the
            # small [block, D] operands are transposed (on XLA:CPU transposing p and ds cost 1.5 s a step at T=8192)
            dq, dk, dv = carry
            qi, doi = _tile(q, i, block, 3), _tile(d_out, i, block, 3)
            scores, mask, slope = _tile_scores(qi, kj, _tile(segment_ids, i, block, 1), seg_k, i, j, block, scale,
                                               window, softcap, transposed=True)
            p = jnp.where(mask, jnp.exp(scores - _tile(lse, i, block, 3)[..., None, :]), 0.0)
            dv = dv + jnp.einsum("bkgsq,bkgqd->bksd", p.astype(doi.dtype), doi, preferred_element_type=jnp.float32)
            dp = jnp.einsum("bksd,bkgqd->bkgsq", vj, doi, preferred_element_type=jnp.float32)
            ds = p * (dp - _tile(delta, i, block, 3)[..., None, :])
            if slope is not None:
                ds = ds * slope
            dk = dk + jnp.einsum("bkgsq,bkgqd->bksd", ds.astype(qi.dtype), qi, preferred_element_type=jnp.float32)
            dqi = jnp.einsum("bksd,bkgsq->bkgqd", kj, ds.astype(kj.dtype), preferred_element_type=jnp.float32)
            dq = lax.dynamic_update_slice_in_dim(dq, _tile(dq, i, block, 3) + dqi * scale, i * block, axis=3)
            return dq, dk, dv

        zeros = jnp.zeros((b, kh, block, d), jnp.float32)
        dq, dk, dv = lax.fori_loop(j, last[j], query_block, (dq, zeros, zeros))
        return dq, (dk, dv)

    dq, (dk, dv) = lax.scan(key_block, jnp.zeros(q.shape, jnp.float32), jnp.arange(n))
    dk = jnp.moveaxis(dk, 0, 2).reshape(k.shape) * scale  # [n, B, K, block, D] -> [B, K, T, D]
    dv = jnp.moveaxis(dv, 0, 2).reshape(v.shape)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


def blockwise_attention(q: Array, k: Array, v: Array, segment_ids: Array, *, block: int = 256, scale: float,
                        window: int | None = None, softcap: float | None = None) -> Array:
    """Causal same-segment attention in tiles of `block`; q [B, T, H, D], k/v [B, T, K, D] -> [B, T, H, D]."""
    t = q.shape[1]
    block = min(block, t)
    q, k, v, segment_ids = pad_to_blocks(block, q, k, v, segment_ids.astype(jnp.int32))
    return heads_last(_blockwise(*heads_first(q, k, v), segment_ids, block, scale, window, softcap))[:, :t]
