"""Flash attention for GPUs in Pallas (Triton backend): causal, within one segment, with an optional
sliding window and logit soft-cap; forward and backward (FlashAttention-2).

For query i and key j of one row, key j is visible iff `segment_ids[i] == segment_ids[j]`, `j <= i` and,
with a window, `i - j < window` (so a query sees itself and the `window - 1` keys before it). Scores are
`s = scale * q_i . k_j`, then with a soft-cap `s = softcap * tanh(s / softcap)` (scale first, then cap, as
Gemma-2), and the softmax runs over the visible keys in float32. Every query sees at least itself, so
padding (segment 0, which sees only padding) stays finite.

Forward: grid (T / block_q, B, H). A program holds one query tile and walks the key tiles with an online
softmax; it writes the output tile and the tile's logsumexp. Backward: grid (B, H, T / backward_block); a
program computes dk and dv of key tile j (walking the query tiles that can see it) and dq of query tile j
(walking the key tiles it can see), recomputing the probabilities from the saved logsumexp and
`delta = rowsum(out * d_out)` (one XLA op before the kernel); the soft-cap's chain rule multiplies d s by
`1 - tanh(s / softcap)^2`. Both passes visit only the tiles that meet the causal band: key tiles from the
one holding the oldest key the window reaches (`i * block_q - window + 1`) up to the diagonal tile, query
tiles from the diagonal up to the one holding the last query that still sees the key tile. Segments are
masked inside the tiles (no tile is skipped by segment). Head dims that are not powers of two are padded in
the tiles (masked loads and stores).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

Array = jax.Array

MASKED = -1e30  # score of an invisible key: finite, so a tile with no visible key gives no NaN


def _logits(qk: Array, scale: float, softcap: float | None) -> tuple[Array, Array | None]:
    """Scores of a tile of raw dot products and, with a soft-cap, tanh(scaled / softcap) for the backward."""
    s = qk * scale
    if softcap is None:
        return s, None
    t = jnp.tanh(s / softcap)
    return softcap * t, t


def _visible(q_pos: Array, q_seg: Array, k_pos: Array, k_seg: Array, window: int | None) -> Array:
    """[queries, keys] mask: same segment, causal, within the window."""
    delta = q_pos[:, None] - k_pos[None, :]
    visible = (q_seg[:, None] == k_seg[None, :]) & (delta >= 0)
    if window is not None:
        visible = visible & (delta < window)
    return visible


def _key_tiles(i, block_q: int, block_k: int, window: int | None):
    """[lo, hi) of the key tiles that query tile i can see."""
    hi = lax.div((i + 1) * block_q + block_k - 1, block_k)
    if window is None:
        return 0, hi
    return lax.div(jnp.maximum(i * block_q - window + 1, 0), block_k), hi


def _query_tiles(j, block_q: int, block_k: int, tiles: int, window: int | None):
    """[lo, hi) of the query tiles (of `tiles`) that can see key tile j."""
    lo = lax.div(j * block_k, block_q)
    if window is None:
        return lo, tiles
    return lo, jnp.minimum(lax.div((j + 1) * block_k + window - 2, block_q) + 1, tiles)


def _forward_kernel(q_ref, k_ref, v_ref, seg_ref, o_ref, lse_ref, *, scale: float, window: int | None,
                    softcap: float | None, block_q: int, block_k: int, head_dim: int):
    i = pl.program_id(0)
    head_mask = (jnp.arange(q_ref.shape[-1]) < head_dim)[None, :]
    q = plgpu.load(q_ref, mask=head_mask, other=0.0)
    q_pos = i * block_q + jnp.arange(block_q)
    q_seg = seg_ref[pl.dslice(i * block_q, block_q)]

    def body(j, carry):
        acc, m, total = carry
        keys = pl.dslice(j * block_k, block_k)
        k = plgpu.load(k_ref.at[keys, :], mask=head_mask, other=0.0)
        s, _ = _logits(plgpu.dot(q, k.T), scale, softcap)
        visible = _visible(q_pos, q_seg, j * block_k + jnp.arange(block_k), seg_ref[keys], window)
        s = jnp.where(visible, s, MASKED)
        m_new = jnp.maximum(m, s.max(axis=-1))
        alpha = jnp.exp(m - m_new)  # rescales what was summed against the old maximum
        p = jnp.exp(s - m_new[:, None])
        v = plgpu.load(v_ref.at[keys, :], mask=head_mask, other=0.0)
        acc = alpha[:, None] * acc + plgpu.dot(p.astype(v.dtype), v)
        return acc, m_new, alpha * total + p.sum(axis=-1)

    acc = jnp.zeros((block_q, q_ref.shape[-1]), jnp.float32)
    m = jnp.full((block_q,), -jnp.inf, jnp.float32)
    total = jnp.zeros((block_q,), jnp.float32)  # softmax denominator against the running maximum m
    acc, m, total = lax.fori_loop(*_key_tiles(i, block_q, block_k, window), body, (acc, m, total))
    lse_ref[...] = m + jnp.log(total)
    plgpu.store(o_ref, (acc / total[:, None]).astype(o_ref.dtype), mask=head_mask)


def _grad_tile(q, k, v, do, lse, delta, visible, scale: float, softcap: float | None) -> tuple[Array, Array]:
    """(probabilities, d raw scores) of one [queries, keys] tile, recomputed from the logsumexp."""
    s, t = _logits(plgpu.dot(q, k.T), scale, softcap)
    p = jnp.exp(jnp.where(visible, s, MASKED) - lse[:, None])
    ds = p * (plgpu.dot(do, v.T) - delta[:, None])
    if t is not None:
        ds = ds * (1.0 - t * t)
    return p, ds * scale


def _backward_kernel(q_ref, k_ref, v_ref, seg_ref, do_ref, lse_ref, delta_ref, dq_ref, dk_ref, dv_ref, *,
                     scale: float, window: int | None, softcap: float | None, block: int, head_dim: int):
    tiles = q_ref.shape[0] // block
    padded = q_ref.shape[-1]
    head_mask = (jnp.arange(padded) < head_dim)[None, :]
    j = pl.program_id(2)
    own = pl.dslice(j * block, block)
    pos = j * block + jnp.arange(block)
    seg = seg_ref[own]

    # dk, dv of key tile j: walk the query tiles that see it
    k = plgpu.load(k_ref.at[own, :], mask=head_mask, other=0.0)
    v = plgpu.load(v_ref.at[own, :], mask=head_mask, other=0.0)

    def dkdv_body(i, carry):
        dk, dv = carry
        rows = pl.dslice(i * block, block)
        q = plgpu.load(q_ref.at[rows, :], mask=head_mask, other=0.0)
        do = plgpu.load(do_ref.at[rows, :], mask=head_mask, other=0.0)
        visible = _visible(i * block + jnp.arange(block), seg_ref[rows], pos, seg, window)
        p, ds = _grad_tile(q, k, v, do, lse_ref[rows], delta_ref[rows], visible, scale, softcap)
        dv = dv + plgpu.dot(p.astype(do.dtype).T, do)
        dk = dk + plgpu.dot(ds.astype(q.dtype).T, q)
        return dk, dv

    zeros = jnp.zeros((block, padded), jnp.float32)
    dk, dv = lax.fori_loop(*_query_tiles(j, block, block, tiles, window), dkdv_body, (zeros, zeros))
    plgpu.store(dk_ref, dk.astype(dk_ref.dtype), mask=head_mask)
    plgpu.store(dv_ref, dv.astype(dv_ref.dtype), mask=head_mask)

    # dq of query tile j: walk the key tiles it sees
    q = plgpu.load(q_ref.at[own, :], mask=head_mask, other=0.0)
    do = plgpu.load(do_ref.at[own, :], mask=head_mask, other=0.0)
    lse, delta = lse_ref[own], delta_ref[own]

    def dq_body(i, dq):
        keys = pl.dslice(i * block, block)
        k = plgpu.load(k_ref.at[keys, :], mask=head_mask, other=0.0)
        v = plgpu.load(v_ref.at[keys, :], mask=head_mask, other=0.0)
        visible = _visible(pos, seg, i * block + jnp.arange(block), seg_ref[keys], window)
        _, ds = _grad_tile(q, k, v, do, lse, delta, visible, scale, softcap)
        return dq + plgpu.dot(ds.astype(k.dtype), k)

    dq = lax.fori_loop(*_key_tiles(j, block, block, window), dq_body, zeros)
    plgpu.store(dq_ref, dq.astype(dq_ref.dtype), mask=head_mask)


def _warps(head_dim: int) -> int:
    return 4 if head_dim <= 64 else 8


def _forward(q: Array, k: Array, v: Array, segment_ids: Array, scale: float, window: int | None,
             softcap: float | None, block_q: int, block_k: int, interpret: bool) -> tuple[Array, Array]:
    """(out [B, T, H, D], logsumexp [B, H, T] float32)."""
    b, t, h, d = q.shape
    padded = pl.next_power_of_2(d)
    kernel = functools.partial(_forward_kernel, scale=scale, window=window, softcap=softcap, block_q=block_q,
                               block_k=block_k, head_dim=d)
    row = pl.BlockSpec((None, t, None, padded), lambda i, b, h: (b, 0, h, 0))
    tile = pl.BlockSpec((None, block_q, None, padded), lambda i, b, h: (b, i, h, 0))
    return pl.pallas_call(
        kernel,
        grid=(t // block_q, b, h),
        in_specs=[tile, row, row, pl.BlockSpec((None, t), lambda i, b, h: (b, 0))],
        out_specs=[tile, pl.BlockSpec((None, None, block_q), lambda i, b, h: (b, h, i))],
        out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype), jax.ShapeDtypeStruct((b, h, t), jnp.float32)],
        compiler_params=plgpu.CompilerParams(num_warps=_warps(d), num_stages=2),
        interpret=interpret,
        name="flash_forward",
    )(q, k, v, segment_ids)


def _backward(q: Array, k: Array, v: Array, segment_ids: Array, out: Array, lse: Array, do: Array,
              scale: float, window: int | None, softcap: float | None, block: int,
              interpret: bool) -> tuple[Array, Array, Array]:
    """(dq, dk, dv) in the dtypes of q, k, v."""
    b, t, h, d = q.shape
    padded = pl.next_power_of_2(d)
    delta = jnp.einsum("bthd,bthd->bht", out.astype(jnp.float32), do.astype(jnp.float32))
    kernel = functools.partial(_backward_kernel, scale=scale, window=window, softcap=softcap, block=block,
                               head_dim=d)
    row = pl.BlockSpec((None, t, None, padded), lambda b, h, j: (b, 0, h, 0))
    stat = pl.BlockSpec((None, None, t), lambda b, h, j: (b, h, 0))
    tile = pl.BlockSpec((None, block, None, padded), lambda b, h, j: (b, j, h, 0))
    return pl.pallas_call(
        kernel,
        grid=(b, h, t // block),
        in_specs=[row, row, row, pl.BlockSpec((None, t), lambda b, h, j: (b, 0)), row, stat, stat],
        out_specs=[tile, tile, tile],
        out_shape=[jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v)],
        compiler_params=plgpu.CompilerParams(num_warps=_warps(d), num_stages=2),
        interpret=interpret,
        name="flash_backward",
    )(q, k, v, segment_ids, do.astype(q.dtype), lse, delta)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8, 9, 10))
def _flash(q, k, v, segment_ids, scale, window, softcap, block_q, block_k, backward_block, interpret):
    return _forward(q, k, v, segment_ids, scale, window, softcap, block_q, block_k, interpret)[0]


def _flash_fwd(q, k, v, segment_ids, scale, window, softcap, block_q, block_k, backward_block, interpret):
    out, lse = _forward(q, k, v, segment_ids, scale, window, softcap, block_q, block_k, interpret)
    return out, (q, k, v, segment_ids, out, lse)


def _flash_bwd(scale, window, softcap, block_q, block_k, backward_block, interpret, residuals, do):
    q, k, v, segment_ids, out, lse = residuals
    grads = _backward(q, k, v, segment_ids, out, lse, do, scale, window, softcap, backward_block, interpret)
    return (*grads, None)


_flash.defvjp(_flash_fwd, _flash_bwd)


def flash_attention(q: Array, k: Array, v: Array, segment_ids: Array, *, scale: float,
                    window: int | None = None, softcap: float | None = None, block_q: int = 64,
                    block_k: int = 64, backward_block: int = 32, interpret: bool = False) -> Array:
    """Causal same-segment attention of q, k, v [B, T, H, D] (one kv head per query head) with segment ids
    [B, T] (0 = padding), an optional sliding `window` (query i sees keys i - window < j <= i) and logit
    `softcap`; differentiable in q, k, v. T must be a multiple of every tile; tiles are powers of two >= 16.
    `interpret` runs the kernels in Pallas interpret mode (any backend)."""
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one shape [B, T, H, D], got {q.shape}, {k.shape}, {v.shape}")
    b, t = q.shape[:2]
    if segment_ids.shape != (b, t):
        raise ValueError(f"segment_ids must be [B, T] = {(b, t)}, got {segment_ids.shape}")
    for name, size in (("block_q", block_q), ("block_k", block_k), ("backward_block", backward_block)):
        if size < 16 or size & (size - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {size}")
        if t % size:
            raise ValueError(f"sequence length {t} must be a multiple of {name}={size} (pad it)")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if softcap is not None and softcap <= 0:
        raise ValueError(f"softcap must be > 0, got {softcap}")
    if window is not None and window >= t:
        window = None  # reaches back past the row's start: plain causal
    window = None if window is None else int(window)
    softcap = None if softcap is None else float(softcap)
    return _flash(q, k, v, segment_ids.astype(jnp.int32), float(scale), window, softcap, block_q, block_k,
                  backward_block, interpret)
