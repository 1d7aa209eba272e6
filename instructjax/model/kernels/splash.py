"""TPU Pallas splash attention: a causal mask (with a local window where the layer has one) and segment ids,
scores soft-capped by the kernel itself, per shard of batch and heads."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from instructjax.model.kernels.common import pad_to_blocks, per_shard, target_platform

Array = jax.Array

LANES = 128  # splash tiles are multiples of this


def _kernel(length: int, heads: int, block: int, window: int | None, softcap: float | None, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    shape = (length, length)
    # a query sees the `window` keys ending at itself: window - 1 to its left
    one = masks.CausalMask(shape) if window is None else masks.LocalMask(shape, (window - 1, 0), offset=0)
    mask = masks.MultiHeadMask([one for _ in range(heads)])
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret,
                                  attn_logits_soft_cap=softcap)


def splash_attention(q: Array, k: Array, v: Array, segment_ids: Array, *, block: int = 512, scale: float,
                     window: int | None = None, softcap: float | None = None) -> Array:
    """Causal same-segment attention by TPU splash attention; q [B, T, H, D], k/v [B, T, K, D] -> [B, T, H, D]."""
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SegmentIds

    t = q.shape[1]
    block = min(block, -(-t // LANES) * LANES)  # tiles are whole multiples of the TPU's 128 lanes
    if block % LANES:
        raise ValueError(f"splash attention tiles must be multiples of {LANES}, got attention_block={block}")
    q, k, v, segment_ids = pad_to_blocks(block, q, k, v, segment_ids.astype(jnp.int32))
    interpret = target_platform() != "tpu"  # the slice compiled for, not this host

    def kernel(q, k, v, segment_ids):  # one shard: [b, T, h, D], [b, T, kh, D], [b, T]
        run = _kernel(q.shape[1], q.shape[2], block, window, softcap, interpret)
        one_row = lambda q, k, v, s: run(q, k, v, SegmentIds(s, s))  # noqa: E731  [h, T, D] per row
        out = jax.vmap(one_row)((q * scale).astype(q.dtype).transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3),
                                v.transpose(0, 2, 1, 3), segment_ids)
        return out.transpose(0, 2, 1, 3)

    return per_shard(kernel, q, k, v, segment_ids)[:, :t]
