"""Self-attention over packed rows: causal, confined to one segment, grouped-query heads.

One interface, several implementations (`LlamaConfig.attention`):

| name         | for              | how                                                                        |
|--------------|------------------|----------------------------------------------------------------------------|
| `xla`        | reference, tests | dense scores per query block of 128, one additive [B, 1, T, T] bias        |
| `blockwise`  | CPU (auto)       | online softmax over [block x block] tiles in plain JAX with a custom VJP   |
|              |                  | that recomputes tiles; the loops visit only the tiles on or below the      |
|              |                  | diagonal whose segments can meet; no [T, T] array exists                   |
| `splash`     | TPU (auto)       | Pallas splash attention (`CausalMask` + `SegmentIds`), per shard of batch   |
|              |                  | and heads (`shard_map`)                                                    |
| `pallas_gpu` | GPU (auto)       | Pallas (Triton) flash attention with `segment_ids`, per shard likewise     |
| `cudnn`      | GPU (bf16/fp16)  | cuDNN fused flash attention, each row's segments as a packed (THD) batch   |
|              |                  | of up to `CUDNN_MAX_SEGMENTS` sequences, per shard likewise                |

Every implementation takes q [B, T, H, D], k and v [B, T, K, D] (query head h uses kv head h // (H / K),
HF's repeat_kv) and segment ids [B, T] (0 = padding, which attends only to padding), and gives
[B, T, H, D] with the softmax in float32. Pallas kernels run in interpret mode off their platform, which is
how the tests check them on CPU. Decoding with a KV cache uses `attend` with an explicit bias.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

AUTO = {"tpu": "splash", "gpu": "pallas_gpu", "cuda": "pallas_gpu", "rocm": "pallas_gpu"}  # else blockwise
FUSED = ("blockwise", "splash", "pallas_gpu", "cudnn")  # never hold a [T, T] score array
DEFAULT_BLOCK = {"xla": 128, "blockwise": 256, "splash": 512, "pallas_gpu": 128, "cudnn": 0}
CUDNN_MAX_SEGMENTS = 64  # runs of equal segment ids (padding included) a row may hold under `cudnn`
MASKED = -1e30  # additive bias of a key a query may not see: finite, so a fully masked row gives no NaN
LANES = 128  # splash tiles are multiples of this
PAD_SEGMENT = -1  # segment of the positions added to fill the last block: they see only each other


def resolve(name: str, platform: str | None = None) -> str:
    """The implementation `name` stands for on `platform` (default: JAX's default backend)."""
    if name != "auto":
        return name
    return AUTO.get(platform or jax.default_backend(), "blockwise")


# ---- masks and the dense reference ----------------------------------------------------------------


def segment_causal_mask(segment_ids: Array) -> Array:
    """Boolean mask [B, 1, T, T]: query i sees key j iff j <= i and both lie in the same segment."""
    t = segment_ids.shape[-1]
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    return (same_segment & causal)[:, None]


def cached_mask(query_segments: Array, key_segments: Array, index: Array) -> Array:
    """Boolean mask [B, 1, T, S] of T queries written at cache slots index.. over S slots: a query sees a
    filled slot (segment > 0) of its own segment at or before its own slot."""
    t, s = query_segments.shape[1], key_segments.shape[1]
    causal = jnp.arange(s)[None, :] <= (index + jnp.arange(t))[:, None]
    same = (query_segments[:, :, None] == key_segments[:, None, :]) & (key_segments[:, None, :] > 0)
    return (causal[None] & same)[:, None]


def attention_bias(mask: Array) -> Array:
    """Additive float32 bias [B, 1, T, S] for a boolean mask: 0 where the query sees the key, MASKED elsewhere."""
    return jnp.where(mask, 0.0, MASKED).astype(jnp.float32)


def _heads_first(q: Array, k: Array, v: Array) -> tuple[Array, Array, Array]:
    """q [B, T, H, D] -> [B, K, G, T, D] (G = H // K query heads per kv head); k, v [B, S, K, D] -> [B, K, S, D]."""
    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4)
    return q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)


def _heads_last(out: Array) -> Array:
    b, k, g, t, d = out.shape
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, k * g, d)


def _attend_heads_first(q: Array, k: Array, v: Array, bias: Array) -> Array:
    """softmax(q k^T / sqrt(D) + bias) v with the softmax in float32, heads-first layout -> [B, K, G, T, D]."""
    scores = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
    probs = jax.nn.softmax(scores + bias[:, :, None], axis=-1).astype(v.dtype)
    return jnp.einsum("bkgts,bksd->bkgtd", probs, v)


def attend(q: Array, k: Array, v: Array, bias: Array) -> Array:
    """Dense grouped-query attention: q [B, T, H, D], k/v [B, S, K, D], additive bias [B, 1, T, S] -> [B, T, H, D].
    A KV cache only has to supply longer k/v and the matching bias."""
    return _heads_last(_attend_heads_first(*_heads_first(q, k, v), bias))


def causal_attend(q: Array, k: Array, v: Array, bias: Array, block: int = 128) -> Array:
    """`attend` for causal self-attention (k, v at the same positions as q), in query blocks of `block`.

    Block i needs only the keys up to its last query, so the blocks skip the square's upper triangle: the
    same result with about half the score FLOPs and memory.
    """
    t = q.shape[1]
    q, k, v = _heads_first(q, k, v)
    outs = [
        _attend_heads_first(q[:, :, :, s : s + block], k[:, :, : s + block], v[:, :, : s + block],
                            bias[:, :, s : s + block, : s + block])  # fmt: skip
        for s in range(0, t, block)
    ]
    return _heads_last(jnp.concatenate(outs, axis=3))


# ---- blockwise: online softmax over tiles, custom VJP -----------------------------------------------


def _pad_to_blocks(block: int, q: Array, k: Array, v: Array, segment_ids: Array):
    """Pad the length to a multiple of `block`; added positions get PAD_SEGMENT (they see only each other)."""
    pad = -q.shape[1] % block
    if pad == 0:
        return q, k, v, segment_ids
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)), constant_values=PAD_SEGMENT)
    return jnp.pad(q, widths), jnp.pad(k, widths), jnp.pad(v, widths), segment_ids


def _visible_tiles(segment_ids: Array, block: int) -> Array:
    """bool [nq, nk]: may some query of block i see some key of block j in any row? (j <= i, and the
    blocks' segment-id ranges overlap: ranges that do not overlap share no segment)."""
    b, t = segment_ids.shape
    tiles = segment_ids.reshape(b, t // block, block)
    lo, hi = tiles.min(-1), tiles.max(-1)  # [B, n]
    meet = (lo[:, None, :] <= hi[:, :, None]) & (hi[:, None, :] >= lo[:, :, None])  # [B, q block, kv block]
    n = t // block
    return meet.any(0) & jnp.tril(jnp.ones((n, n), bool))


def _tile_ranges(segment_ids: Array, block: int) -> tuple[Array, Array]:
    """The tiles to visit: for query tile i the key tiles first[i] .. i, for key tile j the query tiles
    j .. last[j] - 1 (the span of the visible tiles; in a packed row, whose documents are contiguous, every
    tile in the span is visible, so the loops skip exactly the tiles no query can use)."""
    visible = _visible_tiles(segment_ids, block)
    n = visible.shape[0]
    return jnp.argmax(visible, axis=1), n - jnp.argmax(visible[::-1], axis=0)


def _tile_scores(qi, kj, seg_q, seg_k, i, j, block: int, scale: float, *, transposed: bool = False):
    """Scaled float32 scores [B, K, G, bq, bk] of query tile i against key tile j, and where they count
    (`transposed`: both [B, K, G, bk, bq])."""
    q_pos = i * block + jnp.arange(block)
    k_pos = j * block + jnp.arange(block)
    if transposed:
        scores = jnp.einsum("bksd,bkgqd->bkgsq", kj, qi, preferred_element_type=jnp.float32) * scale
        mask = (seg_k[:, :, None] == seg_q[:, None, :]) & (k_pos[:, None] <= q_pos[None, :])[None]
    else:
        scores = jnp.einsum("bkgqd,bksd->bkgqs", qi, kj, preferred_element_type=jnp.float32) * scale
        mask = (seg_q[:, :, None] == seg_k[:, None, :]) & (k_pos[None, :] <= q_pos[:, None])[None]
    return scores, mask[:, None, None]


def _tile(x: Array, i, block: int, axis: int) -> Array:
    return lax.dynamic_slice_in_dim(x, i * block, block, axis=axis)


def _blockwise_forward(q, k, v, segment_ids, block: int, scale: float):
    """(out [B, K, G, T, D], logsumexp [B, K, G, T]) by online softmax; q/k/v heads-first, T a multiple of block."""
    b, kh, g, t, d = q.shape
    n = t // block
    first, _ = _tile_ranges(segment_ids, block)

    def query_block(i):
        qi, seg_q = _tile(q, i, block, 3), _tile(segment_ids, i, block, 1)

        def key_block(j, carry):
            m, total, acc = carry
            scores, mask = _tile_scores(qi, _tile(k, j, block, 2), seg_q, _tile(segment_ids, j, block, 1),
                                        i, j, block, scale)
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _blockwise(q, k, v, segment_ids, block: int, scale: float):
    return _blockwise_forward(q, k, v, segment_ids, block, scale)[0]


def _blockwise_fwd(q, k, v, segment_ids, block, scale):
    out, lse = _blockwise_forward(q, k, v, segment_ids, block, scale)
    return out, (q, k, v, segment_ids, out, lse)


def _blockwise_bwd(block, scale, residuals, d_out):
    """FlashAttention-2's backward: per key tile j, over the query tiles i >= j that can see it, recompute
    p = exp(s - lse) and accumulate dV_j, dK_j (carried) and dQ_i (one float32 buffer). The loops carry
    no conditional: a `cond` per tile copied the dQ buffer in and out on XLA:CPU (2.8 s -> 2.3 s for one
    layer's backward at T=8192, 8 heads)."""
    q, k, v, segment_ids, out, lse = residuals
    b, kh, g, t, d = q.shape
    n = t // block
    _, last = _tile_ranges(segment_ids, block)
    delta = jnp.sum(d_out.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [B, K, G, T]

    def key_block(dq, j):
        kj, vj, seg_k = _tile(k, j, block, 2), _tile(v, j, block, 2), _tile(segment_ids, j, block, 1)

        def query_block(i, carry):
            # transposed tiles [.., key, query]: every [bk, bq] product is a plain row-major matmul, only the
            # small [block, D] operands are transposed (on XLA:CPU transposing p and ds cost 1.5 s a step at T=8192)
            dq, dk, dv = carry
            qi, doi = _tile(q, i, block, 3), _tile(d_out, i, block, 3)
            scores, mask = _tile_scores(qi, kj, _tile(segment_ids, i, block, 1), seg_k, i, j, block, scale,
                                        transposed=True)
            p = jnp.where(mask, jnp.exp(scores - _tile(lse, i, block, 3)[..., None, :]), 0.0)
            dv = dv + jnp.einsum("bkgsq,bkgqd->bksd", p.astype(doi.dtype), doi, preferred_element_type=jnp.float32)
            dp = jnp.einsum("bksd,bkgqd->bkgsq", vj, doi, preferred_element_type=jnp.float32)
            ds = p * (dp - _tile(delta, i, block, 3)[..., None, :])
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


def blockwise_attention(q: Array, k: Array, v: Array, segment_ids: Array, block: int = 512) -> Array:
    """Causal same-segment attention in tiles of `block` (see the module doc); q [B, T, H, D] -> [B, T, H, D]."""
    t = q.shape[1]
    block = min(block, t)
    q, k, v, segment_ids = _pad_to_blocks(block, q, k, v, segment_ids)
    out = _blockwise(*_heads_first(q, k, v), segment_ids.astype(jnp.int32), block, 1.0 / math.sqrt(q.shape[-1]))
    return _heads_last(out)[:, :t]


# ---- Pallas kernels, one shard of batch and heads at a time ---------------------------------------


def _per_shard(kernel, q: Array, k: Array, v: Array, segment_ids: Array) -> Array:
    """Run `kernel(q, k, v, segment_ids)` on each device's shard of batch and heads (`shard_map` over the
    current mesh; directly without one). Where the kv heads do not split like the query heads, they are
    repeated to one per query head first, so each shard holds whole groups."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return kernel(q, k, v, segment_ids)
    from instructjax.core.sharding import logical_to_spec

    q_spec = logical_to_spec(("batch", "length", "heads", "head_dim"), mesh, q.shape, strict=False)
    kv_spec = logical_to_spec(("batch", "length", "kv_heads", "head_dim"), mesh, k.shape, strict=False)
    if kv_spec[2] != q_spec[2]:
        group = q.shape[2] // k.shape[2]
        k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
        kv_spec = q_spec
    seg_spec = jax.sharding.PartitionSpec(q_spec[0], None)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec), out_specs=q_spec,
                         check_vma=False)(q, k, v, segment_ids)


@functools.lru_cache(maxsize=32)
def _splash_kernel(length: int, heads: int, block: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    mask = masks.MultiHeadMask([masks.CausalMask((length, length)) for _ in range(heads)])
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    with jax.ensure_compile_time_eval():  # the mask tables are constants, not values of the trace that asked
        return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def splash_attention(q: Array, k: Array, v: Array, segment_ids: Array, block: int = 512) -> Array:
    """TPU Pallas splash attention (causal mask and segment ids), per shard of batch and heads."""
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SegmentIds

    t = q.shape[1]
    block = min(block, -(-t // LANES) * LANES)  # tiles are whole multiples of the TPU's 128 lanes
    if block % LANES:
        raise ValueError(f"splash attention tiles must be multiples of {LANES}, got attention_block={block}")
    q, k, v, segment_ids = _pad_to_blocks(block, q, k, v, segment_ids.astype(jnp.int32))
    scale = 1.0 / math.sqrt(q.shape[-1])
    interpret = jax.default_backend() != "tpu"

    def kernel(q, k, v, segment_ids):  # one shard: [b, T, h, D], [b, T, kh, D], [b, T]
        run = _splash_kernel(q.shape[1], q.shape[2], block, interpret)
        one_row = lambda q, k, v, s: run(q, k, v, SegmentIds(s, s))  # noqa: E731  [h, T, D] per row
        out = jax.vmap(one_row)((q * scale).astype(q.dtype).transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3),
                                v.transpose(0, 2, 1, 3), segment_ids)
        return out.transpose(0, 2, 1, 3)

    return _per_shard(kernel, q, k, v, segment_ids)[:, :t]


def pallas_gpu_tiles(block: int, length: int, row_bytes: int, backward: int | None = None) -> tuple[int, int]:
    """(forward, backward) tiles of the GPU kernel: powers of two (Triton's), at least 16, no longer than
    the padded row, and small enough for shared memory. Measured on an H100 (benchmarks/RESULTS.md): with
    rows of a head of 128 bytes (bf16, head dim 64) backward tiles of 64 ran the TinyLlama step 10% faster
    than the kernel's default 32; at 256 bytes forward tiles of 128 and backward tiles of 32 run; float32
    at head dim 128 (512 bytes) failed with forward tiles of 128, so it gets 64. `backward` overrides the
    backward tiles (still no longer than the padded row)."""
    longest = max(16, 1 << (length - 1).bit_length())
    block = min(block, longest, 128 if row_bytes <= 256 else 64)
    if backward is not None:
        return block, min(backward, longest)
    return block, min(block, 64 if row_bytes <= 128 else 32)


def pallas_gpu_attention(q: Array, k: Array, v: Array, segment_ids: Array, block: int = 128,
                         backward_block: int | None = None) -> Array:
    """GPU Pallas (Triton) flash attention with segment ids, per shard of batch and heads. The kernel wants
    one kv head per query head, so grouped kv heads are repeated (their gradients sum back)."""
    from jax.experimental.pallas.ops.gpu import attention as gpu

    block, backward = pallas_gpu_tiles(block, q.shape[1], q.shape[-1] * q.dtype.itemsize, backward_block)
    t = q.shape[1]
    q, k, v, segment_ids = _pad_to_blocks(max(block, backward), q, k, v, segment_ids.astype(jnp.int32))
    interpret = jax.default_backend() not in ("gpu", "cuda", "rocm")
    sizes = gpu.BlockSizes(block_q=block, block_k=block, block_q_dkv=backward, block_kv_dkv=backward,
                           block_q_dq=backward, block_kv_dq=backward)

    def kernel(q, k, v, segment_ids):
        group = q.shape[2] // k.shape[2]
        k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
        return gpu.mha(q, k, v, segment_ids, sm_scale=1.0 / math.sqrt(q.shape[-1]), causal=True,
                       block_sizes=sizes, interpret=interpret)

    return _per_shard(kernel, q, k, v, segment_ids)[:, :t]


def segment_runs(segment_ids: Array, max_segments: int) -> tuple[Array, Array]:
    """(offsets [B, M+1], lengths [B, M]) of each row's runs of equal segment ids (padding is a run too),
    -1 past a row's last run: the packed (THD) description cuDNN takes. Runs past `max_segments` are not
    described (the caller checks the count)."""
    b, t = segment_ids.shape
    starts = jnp.concatenate([jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    offsets = jax.vmap(lambda row: jnp.nonzero(row, size=max_segments + 1, fill_value=-1)[0])(starts)
    ends = jnp.where(offsets[:, 1:] >= 0, offsets[:, 1:], t)
    lengths = jnp.where(offsets[:, :-1] >= 0, ends - offsets[:, :-1], -1)
    return offsets.astype(jnp.int32), lengths.astype(jnp.int32)


def cudnn_attention(q: Array, k: Array, v: Array, segment_ids: Array, block: int = 0,
                    max_segments: int = CUDNN_MAX_SEGMENTS) -> Array:
    """cuDNN's fused flash attention (GPU, bfloat16 or float16), causal within each run of a row's segment
    ids: the runs are handed to cuDNN as a packed batch of sequences (offsets and lengths), so no mask array
    exists. GQA runs natively. A row with more than `max_segments` runs is an error (checked on the host
    where the ids are concrete; under jit the packer's rows hold far fewer)."""
    from jax._src.cudnn.fused_attention_stablehlo import MaskType
    from jax._src.cudnn.fused_attention_stablehlo import dot_product_attention as cudnn_dpa

    if q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"cudnn attention runs in bfloat16 or float16, not {q.dtype} (model.dtype)")
    segment_ids = segment_ids.astype(jnp.int32)
    if not isinstance(segment_ids, jax.core.Tracer):
        runs = int((segment_ids[:, 1:] != segment_ids[:, :-1]).sum(1).max()) + 1
        if runs > max_segments:
            raise ValueError(f"cudnn attention: a row holds {runs} segments, more than {max_segments}")

    def kernel(q, k, v, segment_ids):
        offsets, lengths = segment_runs(segment_ids, max_segments)
        return cudnn_dpa(q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets, kv_offsets=offsets,
                         scale=1.0 / math.sqrt(q.shape[-1]), mask_type=MaskType.CAUSAL, qkv_layout="BTNH")

    return _per_shard(kernel, q, k, v, segment_ids)


# ---- the one entry point ---------------------------------------------------------------------------


def mask_input(implementation: str, segment_ids: Array) -> Array:
    """What the layers of one forward pass share: the dense bias for `xla` (built once), else the segment ids."""
    if implementation == "xla":
        return attention_bias(segment_causal_mask(segment_ids))
    return segment_ids


def self_attention(q: Array, k: Array, v: Array, mask: Array, implementation: str, block: int | None = None,
                   backward_block: int | None = None) -> Array:
    """Causal same-segment attention by `implementation` (resolved, not `auto`); `mask` from `mask_input`;
    `backward_block` only where the kernel tiles its backward pass on its own (pallas_gpu)."""
    block = block or DEFAULT_BLOCK[implementation]
    if implementation == "xla":
        return causal_attend(q, k, v, mask, block=block)
    if implementation == "pallas_gpu":
        return pallas_gpu_attention(q, k, v, mask, block=block, backward_block=backward_block)
    run = {"blockwise": blockwise_attention, "splash": splash_attention, "cudnn": cudnn_attention}
    return run[implementation](q, k, v, mask, block=block)
