"""Every attention implementation against a float64 numpy reference: packed rows with several segments
and padding, grouped-query heads, a last block that is only partly filled, with and without a sliding window
and a soft-cap on the scores; values and gradients; and nothing leaks across a segment boundary (or out of
the window). Pallas kernels (TPU splash, GPU flash) run in interpret mode."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.model import attention
from instructjax.model.kernels import blockwise, cudnn, gpu_attention

B, T, H, K, D = 2, 150, 4, 2, 16
# row 0: three documents, then padding; row 1: boundaries inside tiles and one document of length 1
SEGMENTS = np.stack([np.repeat([1, 2, 3, 0], [20, 70, 55, 5]), np.repeat([1, 2, 3, 4], [7, 1, 92, 50])]).astype(np.int32)
# (implementation, tile size): tiles of 16/64 give partial last tiles at T=150; splash tiles are multiples of 128
CASES = [("xla", 64), ("blockwise", 16), ("blockwise", 64), ("blockwise", 512), ("splash", 128),
         ("pallas_gpu", 16), ("pallas_gpu", 64)]
# (window, softcap, scale): a window shorter than most documents and not a multiple of any tile, a cap small
# enough to change the result (Gemma-2's is 50 on scores of a few units; ours 2 on scores of a few units)
VARIANTS = {"plain": (None, None, None), "window": (37, None, None), "softcap": (None, 2.0, 0.4),
            "window+softcap": (21, 3.0, None)}
MASKING = [("xla", 64), ("blockwise", 16), ("splash", 128), ("pallas_gpu", 16), ("pallas_gpu", 64)]


def inputs(seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(B, T, H, D)).astype(np.float32)
    k, v = (rng.normal(size=(B, T, K, D)).astype(np.float32) for _ in range(2))
    return q, k, v, rng.normal(size=(B, T, H, D)).astype(np.float32)


def reference(q, k, v, segments, d_out, window=None, softcap=None, scale=None):
    """float64 forward and backward of causal same-segment GQA attention (softmax written out by hand): scores
    scale * q.k, capped as cap * tanh(s / cap), a key visible at distance 0 <= i - j < window."""
    q, k, v, d_out = (x.astype(np.float64) for x in (q, k, v, d_out))
    scale = 1 / np.sqrt(D) if scale is None else scale
    group = H // K
    kr, vr = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)  # query head h uses kv head h // group
    distance = np.arange(T)[:, None] - np.arange(T)[None, :]
    near = (distance >= 0) & (distance < (window or T + 1))
    mask = (segments[:, :, None] == segments[:, None, :]) & near[None]
    raw = np.einsum("bthd,bshd->bhts", q, kr) * scale
    slope = np.ones_like(raw) if softcap is None else 1 - np.tanh(raw / softcap) ** 2
    scores = raw if softcap is None else softcap * np.tanh(raw / softcap)
    scores = np.where(mask[:, None], scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bhts,bshd->bthd", p, vr)
    dp = np.einsum("bthd,bshd->bhts", d_out, vr)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) * slope * scale
    dq = np.einsum("bhts,bshd->bthd", ds, kr)
    dk = np.einsum("bhts,bthd->bshd", ds, q).reshape(B, T, K, group, D).sum(3)
    dv = np.einsum("bhts,bthd->bshd", p, d_out).reshape(B, T, K, group, D).sum(3)
    return out, (dq, dk, dv)


def run(implementation, block, q, k, v, segments, window=None, softcap=None, scale=None):
    mask = attention.mask_input(implementation, jnp.asarray(segments), window)
    return attention.self_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask, implementation, block,
                                    window=window, softcap=softcap, scale=scale)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("implementation,block", CASES)
def test_values_and_gradients_match_float64_reference(implementation, block, variant):
    if variant != "plain" and (implementation, block) in (("blockwise", 512), ("pallas_gpu", 64)):
        pytest.skip("one tile size per kernel for the window and soft-cap variants")
    q, k, v, d_out = inputs()
    options = dict(zip(("window", "softcap", "scale"), VARIANTS[variant], strict=True))
    expected, expected_grads = reference(q, k, v, SEGMENTS, d_out, **options)
    if variant != "plain":  # the variant changes the result: a kernel ignoring it would fail
        assert np.abs(expected - reference(q, k, v, SEGMENTS, d_out)[0]).max() > 1e-2

    @jax.jit
    def value_and_grads(q, k, v):
        out, vjp = jax.vjp(lambda q, k, v: run(implementation, block, q, k, v, SEGMENTS, **options), q, k, v)
        return out, vjp(jnp.asarray(d_out))

    out, grads = value_and_grads(q, k, v)
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5, rtol=0)
    for name, got, want in zip("qkv", grads, expected_grads, strict=True):
        np.testing.assert_allclose(np.asarray(got), want, atol=5e-5, rtol=0, err_msg=f"d{name}")


@pytest.mark.parametrize("window", [None, 21], ids=["causal", "window"])
@pytest.mark.parametrize("implementation,block", [("xla", 64), ("blockwise", 16), ("splash", 128), ("pallas_gpu", 16)])
def test_nothing_leaks_across_segment_boundaries(implementation, block, window):
    """Changing the keys and values of one document changes nothing in its neighbours, in either
    direction, and a loss on one document has exactly zero gradient on the others' keys and values."""
    q, k, v, _ = inputs(1)
    attend = functools.partial(run, implementation, block, window=window, softcap=3.0 if window else None)
    base = np.asarray(jax.jit(lambda q, k, v: attend(q, k, v, SEGMENTS))(q, k, v))
    rng = np.random.default_rng(2)
    for row, doc in ((0, 2), (1, 3)):
        inside = SEGMENTS[row] == doc
        k2, v2 = k.copy(), v.copy()
        k2[row, inside] += rng.normal(size=k2[row, inside].shape).astype(np.float32) * 3
        v2[row, inside] += rng.normal(size=v2[row, inside].shape).astype(np.float32) * 3
        changed = np.asarray(jax.jit(lambda q, k, v: attend(q, k, v, SEGMENTS))(q, k2, v2))
        np.testing.assert_allclose(changed[row, ~inside], base[row, ~inside], atol=1e-6, rtol=0)
        assert np.abs(changed[row, inside] - base[row, inside]).max() > 1e-2  # the change itself is seen
        np.testing.assert_array_equal(changed[1 - row], base[1 - row])

        def doc_loss(k, v, row=row, inside=inside):
            out = attend(q, k, v, SEGMENTS)
            return jnp.sum(out[row] * jnp.asarray(inside, jnp.float32)[:, None, None])

        dk, dv = jax.jit(jax.grad(doc_loss, argnums=(0, 1)))(k, v)
        for grad in (np.asarray(dk), np.asarray(dv)):
            assert np.all(grad[row, ~inside] == 0) and np.all(grad[1 - row] == 0)
            assert np.abs(grad[row, inside]).max() > 0


def test_blockwise_skips_tiles_that_cannot_meet():
    """The tile plan: above the diagonal never, a tile pair whose segment ranges do not overlap never, and a
    tile pair farther apart than the window never (against brute force over every query-key pair)."""
    segments = jnp.asarray(np.repeat([1, 2, 3, 4], 32)[None].astype(np.int32))  # four documents, one per tile
    visible = np.asarray(blockwise._visible_tiles(segments, 32, None))
    np.testing.assert_array_equal(visible, np.eye(4, dtype=bool))
    segments = jnp.asarray(np.repeat([1, 2], [40, 88])[None].astype(np.int32))  # a document across tiles 0-1
    visible = np.asarray(blockwise._visible_tiles(segments, 32, None))
    assert visible[1, 0] and visible[3, 1] and not visible[2, 0] and not visible[0, 1]
    first, last = blockwise._tile_ranges(segments, 32, None)  # the loops' bounds: key tiles per query tile and back
    assert list(np.asarray(first)) == [0, 0, 1, 1] and list(np.asarray(last)) == [2, 4, 4, 4]
    one = jnp.ones((1, 128), jnp.int32)
    for window in (1, 2, 31, 32, 33, 64, 65, 100):
        pairs = np.subtract.outer(np.arange(128), np.arange(128))
        brute = ((pairs >= 0) & (pairs < window)).reshape(4, 32, 4, 32).any((1, 3))
        np.testing.assert_array_equal(np.asarray(blockwise._visible_tiles(one, 32, window)), brute, str(window))


@pytest.mark.parametrize("platform,expected", [("tpu", "splash"), ("gpu", "pallas_gpu"), ("cpu", "blockwise")])
def test_auto_picks_by_platform(platform, expected):
    assert attention.implementation_for("auto", platform) == expected
    assert attention.implementation_for("xla", platform) == "xla"


@pytest.mark.parametrize("implementation,block", [("splash", 128), ("pallas_gpu", 64), ("blockwise", 64)])
@pytest.mark.parametrize("mesh_shape", [{"data": 2, "tensor": 2}, {"tensor": 4}], ids=["data2-tensor2", "tensor4"])
def test_sharded_over_batch_and_heads(implementation, block, mesh_shape):
    """On a mesh, the kernels run per shard of batch and heads; with tensor=4 the 2 kv heads do not split
    like the 4 query heads and are repeated per query head first. Same values and gradients as float64."""
    from instructjax.core.sharding import make_mesh

    mesh = make_mesh(mesh_shape, jax.devices()[: 4])
    q, k, v, d_out = inputs(3)
    expected, expected_grads = reference(q, k, v, SEGMENTS, d_out)

    @jax.jit
    def value_and_grads(q, k, v):
        out, vjp = jax.vjp(lambda q, k, v: run(implementation, block, q, k, v, SEGMENTS), q, k, v)
        return out, vjp(jnp.asarray(d_out))

    with jax.set_mesh(mesh):
        out, grads = value_and_grads(q, k, v)
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5, rtol=0)
    for name, got, want in zip("qkv", grads, expected_grads, strict=True):
        np.testing.assert_allclose(np.asarray(got), want, atol=5e-5, rtol=0, err_msg=f"d{name}")


@pytest.mark.parametrize("length", [1, 15, 48, 100, 150, 600, 1000, 2048])
@pytest.mark.parametrize("dtype,head_dim", [("bfloat16", 64), ("bfloat16", 128), ("float32", 64), ("float32", 128)])
def test_pallas_gpu_tiles_fit_triton(length, dtype, head_dim):
    """Triton wants power-of-two tiles of at least 16 (a 48-token row got a 48-wide tile before, which broke scoring on an H100),
    never longer than the padded row, and backward tiles no longer than forward ones."""
    forward, backward = gpu_attention.tiles(128, length, head_dim * jnp.dtype(dtype).itemsize)
    for tile in (forward, backward):
        assert tile >= 16 and tile & (tile - 1) == 0
    assert backward <= forward and forward < 2 * max(length, 16)


def test_cudnn_segment_runs_describe_every_row():
    """cuDNN's packed description of a row (offsets and lengths of its runs of equal ids) against a scan of
    the row in Python; rows with padding, a one-token document and a single run."""
    rows = np.concatenate([SEGMENTS, np.ones((1, T), np.int32)])
    offsets, lengths = (np.asarray(x) for x in cudnn.segment_runs(jnp.asarray(rows), 8))
    for row, off, length in zip(rows, offsets, lengths, strict=True):
        starts = [i for i in range(T) if i == 0 or row[i] != row[i - 1]]
        ends = starts[1:] + [T]
        assert off.tolist() == starts + [-1] * (9 - len(starts))
        assert length.tolist() == [e - s for s, e in zip(starts, ends, strict=True)] + [-1] * (8 - len(starts))


def test_cudnn_off_its_platform_is_one_clear_error():
    q, k, v, _ = inputs()
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        attention.self_attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(SEGMENTS), "cudnn")
    too_many = jnp.asarray(np.arange(T)[None].repeat(B, 0) // 2)  # 75 runs in a row
    with pytest.raises(ValueError, match="75 segments"):
        attention.self_attention(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), too_many, "cudnn")
