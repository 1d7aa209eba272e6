"""Attention on a GPU, the entry point of `model.attention: pallas_gpu` (the kernels' glue): tiles that fit Triton and shared memory, rows padded to whole tiles, grouped kv
heads repeated (their gradients sum back), one shard of batch and heads at a time. A layer with a sliding
window or a soft-cap runs our `flash_gpu.flash_attention`; plain causal attention runs JAX's own Pallas
`mha` with segment ids, the kernel measured on an H100 (benchmarks/RESULTS.md), until ours has been too."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from instructjax.model.kernels.common import pad_to_blocks, per_shard, target_platform

Array = jax.Array


def tiles(block: int, length: int, row_bytes: int, backward: int | None = None) -> tuple[int, int]:
    """(forward, backward) tiles: powers of two (Triton's), at least 16, no longer than the padded row, and
    small enough for shared memory. Measured on an H100 (benchmarks/RESULTS.md): with rows of a head of 128
    bytes (bf16, head dim 64) backward tiles of 64 ran the TinyLlama step 10% faster than 32; at 256 bytes
    forward tiles of 128 and backward tiles of 32 run; float32 at head dim 128 (512 bytes) failed with forward
    tiles of 128, so it gets 64. `backward` overrides the backward tiles (still no longer than the row)."""
    longest = max(16, 1 << (length - 1).bit_length())
    block = min(block, longest, 128 if row_bytes <= 256 else 64)
    if backward is not None:
        return block, min(backward, longest)
    return block, min(block, 64 if row_bytes <= 128 else 32)


def gpu_attention(q: Array, k: Array, v: Array, segment_ids: Array, *, block: int = 128, scale: float,
                  window: int | None = None, softcap: float | None = None,
                  backward_block: int | None = None) -> Array:
    """Causal same-segment attention by a Pallas (Triton) kernel; q [B, T, H, D], k/v [B, T, K, D]."""
    from jax.experimental.pallas.ops.gpu import attention as jax_gpu

    from instructjax.model.kernels.flash_gpu import flash_attention

    block, backward = tiles(block, q.shape[1], q.shape[-1] * q.dtype.itemsize, backward_block)
    t = q.shape[1]
    q, k, v, segment_ids = pad_to_blocks(max(block, backward), q, k, v, segment_ids.astype(jnp.int32))
    interpret = target_platform() not in ("gpu", "cuda", "rocm")

    def kernel(q, k, v, segment_ids):
        group = q.shape[2] // k.shape[2]
        k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
        if window is None and softcap is None:
            sizes = jax_gpu.BlockSizes(block_q=block, block_k=block, block_q_dkv=backward, block_kv_dkv=backward,
                                       block_q_dq=backward, block_kv_dq=backward)
            return jax_gpu.mha(q, k, v, segment_ids, sm_scale=scale, causal=True, block_sizes=sizes,
                               interpret=interpret)
        return flash_attention(q, k, v, segment_ids, scale=scale, window=window, softcap=softcap, block_q=block,
                               block_k=block, backward_block=backward, interpret=interpret)

    return per_shard(kernel, q, k, v, segment_ids)[:, :t]
