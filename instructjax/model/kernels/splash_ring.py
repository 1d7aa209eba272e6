"""Ring attention by TPU splash attention, for rows split over the mesh's `context` axis (model/context.py, strategy
`ring`): each device's block of keys passed around the ring, one turn a block.

- Forward: each turn's block met by splash's forward with its log-sum-exp; the turns' outputs merged by their
  log-sum-exps (online softmax over blocks).
- Backward (flash attention's): each turn's block again by splash's own backward kernels, given the row's output
  and log-sum-exp (so exp(score - lse) are the row's probabilities); dq kept, dk and dv travelling with their block
  until it is home.
- Masks: the keys a query meets at turn t are those of device (d - t) mod N; the turn's kernel is one mask over every
  device's queries (split over them as splash's `q_seq_shards`), each query's `q_sequence` carrying its place in the
  row and the block it meets, the mask computing each key's place from its index (`ring_turn_mask`).

Splash offers neither a backward given another log-sum-exp nor a grid left unshrunk, so this calls two private
functions of jax's splash (`_splash_attention_bwd`, `_process_mask`; their signatures as of jax 0.10.2): the tests
run both in interpret mode (tests/model/test_context.py, test_splash_masks.py), so a jax that changes them fails
there first.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
AXIS = "context"


def ring_turn_mask(order: np.ndarray, parts: int, turn: int, reorder: str, window: int | None):
    """The splash mask of ring turn `turn` for rows dealt out by `order` (model/context.py `order_of(length, parts,
    reorder)`): each query's `q_sequence` is its place in the row shifted left by `bits`, or'ed with the block it
    meets, (d - turn) mod parts; the kernel computes a key's place from its block and index by the reorder's closed
    form, so the mask is never held (splash.py `range_mask`)."""
    from instructjax.model.kernels.splash import range_mask

    length, share = len(order), len(order) // parts
    half, bits = share // 2, max(1, (parts - 1).bit_length())
    meets = (np.arange(length) // share - turn) % parts  # the block each query meets
    places = np.asarray(order, np.int64)

    def sees(q, kv):  # numpy or jnp (in the kernel) alike
        place, block = q >> bits, q & ((1 << bits) - 1)
        if reorder == "striped":
            key = block + parts * kv
        elif reorder == "dual_chunk_swap":  # block's chunk, then chunk 2 parts - 1 - block
            key = block * half + kv + (kv >= half).astype(np.int32) * ((2 * parts - 2 - 2 * block) * half)
        else:
            key = block * share + kv
        seen = key <= place
        return seen if window is None else seen & (place - key < window)

    # each query's keys in its turn's block, [from, to): a device's places rise with their index, whatever the reorder
    chunks, see_from, see_to = places.reshape(parts, share), [], []
    for mine in range(parts):
        keys = chunks[(mine - turn) % parts]
        see_to.append(np.searchsorted(keys, chunks[mine], side="right"))
        see_from.append(np.zeros(share, np.int64) if window is None else
                        np.searchsorted(keys, chunks[mine] - window, side="right"))
    q_sequence = ((places << bits) | meets).astype(np.int32)
    return range_mask((length, share), q_sequence, np.concatenate(see_from), np.concatenate(see_to), sees,
                      ("ring", parts, reorder, window))


def ring_kernels(order: np.ndarray, parts: int, reorder: str, heads: int, block: int, window: int | None,
                 softcap: float | None, interpret: bool) -> tuple:
    """One splash kernel a turn (`parts` of them), each over every device's queries (pass them into `shard_map`
    with `kernel.manual_sharding_spec`), returning its log-sum-exp beside its output."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash

    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                              block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    runs = []
    for turn in range(parts):
        forward, keys, sees = _mask_information(np.asarray(order, np.int32).tobytes(), parts, reorder, turn, heads,
                                                block, window)
        forward, keys = (jax.tree_util.tree_map(jnp.asarray, x) for x in (forward, keys))
        runs.append(splash.SplashAttentionKernel(
            forward, forward, keys, block_sizes=sizes, is_mqa=False, save_residuals=True,
            mask_value=splash.DEFAULT_MASK_VALUE, attn_logits_soft_cap=softcap, residual_checkpoint_name=None,
            mask_function=sees, interpret=interpret))
    return tuple(runs)


@functools.lru_cache(maxsize=64)
def _mask_information(order: bytes, parts: int, reorder: str, turn: int, heads: int, block: int,
                      window: int | None):
    """Splash's mask information for a turn, for the forward and dq kernels and for the dk/dv kernel, and the mask's
    function for the kernel: its grid not shrunk (splash's `make_splash_mha` shrinks it, which fails where a device's
    queries see none of the turn's keys)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask_info as info

    one = ring_turn_mask(np.frombuffer(order, np.int32), parts, turn, reorder, window)
    mask = masks.MultiHeadMask([one] * heads)
    forward, sees = info._process_mask(mask, (block, block), False, head_shards=1, q_seq_shards=parts,
                                       shrink_grid=False)
    keys, _ = info._process_mask(mask, (block, block), True, head_shards=1, q_seq_shards=parts, shrink_grid=False)
    return forward, keys, sees


def attend_ring(runs: tuple, q: Array, k: Array, v: Array, segments: Array, scale: float) -> Array:
    """One device's queries q [b, t, h, D] against the row's keys, its own k, v [b, t, kh, D] and `segments` [b, t]
    passed around the ring (inside a `shard_map` over `context`) -> [b, t, h, D]."""
    heads = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731  [b, t, h, D] <-> [b, h, t, D]
    out = _ring(runs, heads((q * scale).astype(q.dtype)), heads(k), heads(v), segments)
    return heads(out)


def _pass_on(values: tuple) -> tuple:
    """Each device's values to the next on the ring."""
    parts = jax.lax.axis_size(AXIS)
    return tuple(jax.lax.ppermute(x, AXIS, [(i, (i + 1) % parts) for i in range(parts)]) for x in values)


def _turn(run, q, k, v, seg_q, seg_k):
    """Splash's forward over rows (q [b, h, t, D], k and v [b, kh, t, D]: splash groups the heads itself): (output
    [b, h, t, D], log-sum-exp [b, h, t])."""
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import SegmentIds

    def one_row(q, k, v, sq, sk):
        out, (lse,) = run(q, k, v, SegmentIds(sq, sk))
        return out, lse

    return jax.vmap(one_row)(q, k, v, seg_q, seg_k)


def _turn_grads(run, q, k, v, seg_q, seg_k, out, lse, dout):
    """Splash's backward kernels over rows for one turn's block, given the row's output and log-sum-exp:
    (dq [b, h, t, D], dk and dv [b, kh, t, D]) in float32."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash

    o = run.kwargs

    def one_row(q, k, v, sq, sk, out, lse, dout):
        residuals = (q, k, v, splash.SegmentIds(sq, sk), None, out, lse, run.dq_mask_info, run.dkv_mask_info)
        grads = splash._splash_attention_bwd(False, o["mask_value"], o["is_mqa"], o["block_sizes"], None,
                                             o["mask_function"], o["attn_logits_soft_cap"], o["interpret"],
                                             residuals, dout)
        return grads[3:6]

    dq, dk, dv = jax.vmap(one_row)(q, k, v, seg_q, seg_k, out, lse, dout)
    return tuple(x.astype(jnp.float32) for x in (dq, dk, dv))


@jax.custom_vjp
def _ring(runs, q, k, v, segments):
    return _ring_forward(runs, q, k, v, segments)[0]


def _ring_forward(runs, q, k, v, segments):
    out = lse = None
    block = (k, v, segments)
    for turn, run in enumerate(runs):
        part, part_lse = _turn(run, q, *block[:2], segments, block[2])
        if out is None:  # turn 0: the device's own keys, every query sees at least itself
            out, lse = part.astype(jnp.float32), part_lse
        else:
            new = jnp.logaddexp(lse, part_lse)
            weight = jnp.exp(part_lse - new)[..., None]  # 0 where the block hides every key from the query
            out = out * jnp.exp(lse - new)[..., None] + jnp.where(weight > 0, part.astype(jnp.float32) * weight, 0.0)
            lse = new
        if turn < len(runs) - 1:
            block = _pass_on(block)
    out = out.astype(q.dtype)
    return out, (runs, q, k, v, segments, out, lse)


def _ring_backward(residuals, dout):
    runs, q, k, v, segments, out, lse = residuals
    dq = jnp.zeros(q.shape, jnp.float32)
    travelling = (k, v, segments, jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    for turn, run in enumerate(runs):
        key, value, seg_k, dk, dv = travelling
        dq_t, dk_t, dv_t = _turn_grads(run, q, key, value, segments, seg_k, out, lse, dout)
        dq, dk, dv = dq + dq_t, dk + dk_t, dv + dv_t
        if turn < len(runs) - 1:
            travelling = _pass_on((key, value, seg_k, dk, dv))
    dk, dv = _pass_on((dk, dv))  # each block's gradients home
    return None, dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype), None


_ring.defvjp(_ring_forward, _ring_backward)
