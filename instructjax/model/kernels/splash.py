"""TPU Pallas splash attention: a causal mask (with a local window where the layer has one) and segment ids,
scores soft-capped by the kernel itself, per shard of batch and heads."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from instructjax.model.kernels.common import pad_to_blocks, per_shard, target_platform

Array = jax.Array

LANES = 128  # splash tiles are multiples of this


def kernel(length: int, heads: int, block: int, window: int | None, softcap: float | None, interpret: bool, *,
           query_order: np.ndarray | None = None, query_shards: int = 1):
    """The splash kernel for rows of `length` tokens and `heads` query heads: causal (within `window` where the layer
    has one). `query_order`: each query's place in the row where the queries come in another order than the keys
    (rows split over a `context` axis after a reorder, model/context.py); `query_shards`: the devices the queries are
    split over, the kernel's mask information split alike (pass the kernel into `shard_map` with
    `kernel.manual_sharding_spec`)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    # the mask compares places in the row (as MaxText's load-balanced masks): a query sees the keys at or before
    # its place, the `window` of them ending at it where the layer has one
    places = np.arange(length, dtype=np.int32) if query_order is None else np.asarray(query_order, np.int32)
    see_from = np.zeros_like(places) if window is None else np.maximum(places - window + 1, 0)

    def sees(q, kv):  # numpy or jnp (in the kernel) alike
        return kv <= q if window is None else (kv <= q) & (q - kv < window)

    one = range_mask((length, length), places, see_from, places + 1, sees, ("causal", window))
    mask = masks.MultiHeadMask([one for _ in range(heads)])
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=query_shards,
                                  interpret=interpret, attn_logits_soft_cap=softcap)


def range_mask(shape: tuple[int, int], q_sequence: np.ndarray, see_from: np.ndarray, see_to: np.ndarray, sees,
               key: tuple):
    """A splash mask [queries, keys] where query i sees keys `see_from[i]` to `see_to[i]` (exclusive), `sees(q, kv)`
    saying the same in the kernel from the query's `q_sequence` value and the key's index (numpy or jnp alike).
    Splash builds its mask information a block at a time: here a block whose queries see all or none of its keys
    costs a few comparisons of the ranges, not the block's mask (8K blocks of 512 at 32K tokens; at 256K, minutes
    otherwise). `key` names the mask's kind (with `q_sequence`, its identity)."""
    return _range_mask_class()(shape, np.asarray(q_sequence, np.int32), np.asarray(see_from), np.asarray(see_to),
                               sees, key)


@functools.cache
def _range_mask_class():
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    class RangeMask(masks._ComputableMask):
        def __init__(self, shape, q_sequence, see_from, see_to, sees, key):
            super().__init__(shape, sees)
            self.q_sequence, self.see_from, self.see_to, self.key = q_sequence, see_from, see_to, key

        def __getitem__(self, index):
            rows, cols = (part.indices(size)[:2] for part, size in zip(index, self.shape, strict=True))
            start, stop = self.see_from[slice(*rows)], self.see_to[slice(*rows)]
            if start.max() <= cols[0] and stop.min() >= cols[1]:
                return _block(cols[1] - cols[0], rows[1] - rows[0], True)
            if not np.any(np.maximum(start, cols[0]) < np.minimum(stop, cols[1])):
                return _block(cols[1] - cols[0], rows[1] - rows[0], False)
            keys = np.arange(*cols)
            return (keys >= start[:, None]) & (keys < stop[:, None])

        def __eq__(self, other):
            return (isinstance(other, RangeMask) and self.shape == other.shape and self.key == other.key
                    and np.array_equal(self.q_sequence, other.q_sequence))

        def __hash__(self):
            return hash((self.shape, self.key, self.q_sequence.tobytes()))

    return RangeMask


@functools.cache
def _block(width: int, height: int, value: bool) -> np.ndarray:
    """A read-only block of one value (contiguous: numpy's any and all stop at its first element)."""
    block = np.full((height, width), value)
    block.flags.writeable = False
    return block


def attend_rows(run, q: Array, k: Array, v: Array, query_segments: Array, key_segments: Array, scale: float) -> Array:
    """`run` (a `kernel`) on each row: q [b, t, h, D], k/v [b, s, kh, D], segment ids [b, t] and [b, s]
    -> [b, t, h, D]."""
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SegmentIds

    one_row = lambda q, k, v, sq, sk: run(q, k, v, SegmentIds(sq, sk))  # noqa: E731  [h, t, D] per row
    out = jax.vmap(one_row)((q * scale).astype(q.dtype).transpose(0, 2, 1, 3), k.transpose(0, 2, 1, 3),
                            v.transpose(0, 2, 1, 3), query_segments, key_segments)
    return out.transpose(0, 2, 1, 3)


def splash_attention(q: Array, k: Array, v: Array, segment_ids: Array, *, block: int = 512, scale: float,
                     window: int | None = None, softcap: float | None = None) -> Array:
    """Causal same-segment attention by TPU splash attention; q [B, T, H, D], k/v [B, T, K, D] -> [B, T, H, D]."""
    t = q.shape[1]
    block = min(block, -(-t // LANES) * LANES)  # tiles are whole multiples of the TPU's 128 lanes
    if block % LANES:
        raise ValueError(f"splash attention tiles must be multiples of {LANES}, got attention_block={block}")
    q, k, v, segment_ids = pad_to_blocks(block, q, k, v, segment_ids.astype(jnp.int32))
    interpret = target_platform() != "tpu"  # the slice compiled for, not this host

    def one_shard(q, k, v, segment_ids):  # [b, T, h, D], [b, T, kh, D], [b, T]
        run = kernel(q.shape[1], q.shape[2], block, window, softcap, interpret)
        return attend_rows(run, q, k, v, segment_ids, segment_ids, scale)

    return per_shard(one_shard, q, k, v, segment_ids)[:, :t]
