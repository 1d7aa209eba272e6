"""Splash's mask information for our masks (model/kernels/splash.py `range_mask`, kernels/splash_ring.py): built from
each query's range of keys, it is splash's own (its CausalMask and LocalMask with the queries' places in the row) for
whole and split rows; each ring turn's mask, as the kernel computes it and as its ranges say, is the brute-force one
(key at or before the query in the row, within the window)."""

from __future__ import annotations

import numpy as np
import pytest

from instructjax.model import context
from instructjax.model.kernels import splash, splash_ring

masks = pytest.importorskip("jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_mask")
info = pytest.importorskip("jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_mask_info")
LENGTH, BLOCK = 1024, 128


def _information(mask, shards):
    return [info._process_mask(masks.MultiHeadMask([mask] * 2), (BLOCK, BLOCK), dkv, head_shards=1,
                               q_seq_shards=shards)[0] for dkv in (False, True)]


@pytest.mark.parametrize("window", [None, 100])
@pytest.mark.parametrize("parts, reorder", [(1, "none"), (4, "striped"), (2, "dual_chunk_swap")])
def test_the_row_mask_is_splash_own(parts, reorder, window):
    order = context.order_of(LENGTH, parts, reorder)
    shape = (LENGTH, LENGTH)
    theirs = masks.CausalMask(shape) if window is None else masks.LocalMask(shape, (window - 1, 0), offset=0)
    theirs.q_sequence = order.astype(np.int32)
    ours = splash.kernel(LENGTH, 2, BLOCK, window, None, True, query_order=order, query_shards=parts)
    for mine, want in zip((ours.fwd_mask_info, ours.dkv_mask_info), _information(theirs, parts), strict=True):
        for name in ("data_next", "block_mask", "q_sequence"):
            np.testing.assert_array_equal(np.asarray(getattr(mine, name)), getattr(want, name), err_msg=name)


@pytest.mark.parametrize("window", [None, 100])
@pytest.mark.parametrize("parts, reorder", [(4, "striped"), (4, "dual_chunk_swap"), (2, "none")])
def test_each_ring_turn_is_the_brute_force_mask(parts, reorder, window):
    order, share = context.order_of(LENGTH, parts, reorder), LENGTH // parts
    for turn in range(parts):
        mask = splash_ring.ring_turn_mask(order, parts, turn, reorder, window)
        query, key = np.arange(LENGTH)[:, None], np.arange(share)[None, :]
        place, key_place = order[query], order[((query // share - turn) % parts) * share + key]
        want = (key_place <= place) & ((place - key_place < window) if window else True)
        computed = mask.mask_function(mask.q_sequence[:, None], key)  # as the kernel computes it
        blocks = np.block([[mask[i:i + BLOCK, j:j + BLOCK] for j in range(0, share, BLOCK)]
                           for i in range(0, LENGTH, BLOCK)])  # as splash's mask information reads it
        np.testing.assert_array_equal(computed, want)
        np.testing.assert_array_equal(blocks, want)
