"""The Pallas GPU flash-attention kernel (instructjax.model.kernels.flash_gpu) in interpret mode against a
float64 numpy reference: packed rows with several segments, a one-token segment and padding, boundaries
inside tiles; sliding windows, logit soft-cap, other scales; values and gradients; float32 and bfloat16;
nothing leaks across segments; the tiles each pass visits; and the kernels lower to Triton for CUDA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.model.kernels import flash_gpu

B, T, H = 2, 192, 2
# row 0: three documents, then padding; row 1: a one-token document, boundaries inside tiles, padding
SEGMENTS = np.stack([np.repeat([1, 2, 3, 0], [20, 70, 80, 22]),
                     np.repeat([1, 2, 3, 4, 0], [7, 1, 92, 60, 32])]).astype(np.int32)


def inputs(d: int = 32, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return tuple(rng.normal(size=(B, T, H, d)).astype(np.float32) for _ in range(4))  # q, k, v, d_out


def reference(q, k, v, d_out, scale, window=None, softcap=None):
    """float64 out and (dq, dk, dv) of windowed, soft-capped causal same-segment attention, by hand."""
    q, k, v, d_out = (np.asarray(x, np.float64) for x in (q, k, v, d_out))
    pos = np.arange(T)
    behind = pos[:, None] - pos[None, :]
    mask = (SEGMENTS[:, :, None] == SEGMENTS[:, None, :]) & (behind >= 0)
    if window is not None:
        mask &= behind < window
    scores = np.einsum("bthd,bshd->bhts", q, k) * scale
    if softcap is not None:
        capped = np.tanh(scores / softcap)
        scores = softcap * capped
    scores = np.where(mask[:, None], scores, -np.inf)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("bhts,bshd->bthd", p, v)
    dp = np.einsum("bthd,bshd->bhts", d_out, v)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))
    if softcap is not None:
        ds *= 1.0 - capped**2
    ds *= scale
    grads = (np.einsum("bhts,bshd->bthd", ds, k), np.einsum("bhts,bthd->bshd", ds, q),
             np.einsum("bhts,bthd->bshd", p, d_out))
    return out, grads


def attend(q, k, v, **options):
    return flash_gpu.flash_attention(q, k, v, jnp.asarray(SEGMENTS), interpret=True, **options)


def value_and_grads(q, k, v, d_out, **options):
    @jax.jit
    def run(q, k, v, d_out):
        out, vjp = jax.vjp(lambda q, k, v: attend(q, k, v, **options), q, k, v)
        return out, vjp(d_out)

    return run(q, k, v, d_out)


# (window, softcap, scale or None for 1/sqrt(D), (block_q, block_k, backward_block), head dim)
CASES = {
    "causal": (None, None, None, (64, 64, 32), 32),
    "window_24": (24, None, None, (64, 64, 16), 32),  # smaller than a segment, not a multiple of a tile
    "window_100_head_24": (100, None, None, (32, 64, 32), 24),  # spans tiles; head dim padded to 32 in tiles
    "softcap_2": (None, 2.0, None, (64, 16, 64), 32),
    "window_40_softcap_5_scale": (40, 5.0, 0.3, (64, 64, 16), 32),
}


@pytest.mark.parametrize("case", list(CASES))
def test_float32_matches_float64_reference(case):
    window, softcap, scale, (block_q, block_k, backward_block), d = CASES[case]
    scale = scale or 1.0 / np.sqrt(d)
    q, k, v, d_out = inputs(d)
    expected, expected_grads = reference(q, k, v, d_out, scale, window, softcap)
    out, grads = value_and_grads(q, k, v, d_out, scale=scale, window=window, softcap=softcap, block_q=block_q,
                                 block_k=block_k, backward_block=backward_block)
    assert out.dtype == jnp.float32 and np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(np.asarray(out), expected, atol=2e-5, rtol=0)
    for name, got, want in zip("qkv", grads, expected_grads, strict=True):
        np.testing.assert_allclose(np.asarray(got), want, atol=5e-5, rtol=0, err_msg=f"d{name}")
    if softcap is not None:  # the cap is small enough to matter
        uncapped, _ = reference(q, k, v, d_out, scale, window, None)
        assert np.abs(uncapped - expected).max() > 1e-2


def test_bfloat16_window_and_softcap():
    q, k, v, d_out = (jnp.asarray(x, jnp.bfloat16) for x in inputs(32, seed=3))
    scale, window, softcap = 1.0 / np.sqrt(32), 24, 5.0
    expected, expected_grads = reference(*(np.asarray(x.astype(jnp.float32)) for x in (q, k, v, d_out)),
                                         scale, window, softcap)
    out, grads = value_and_grads(q, k, v, d_out, scale=scale, window=window, softcap=softcap,
                                 backward_block=16)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    names = ["out", "dq", "dk", "dv"]
    for name, got, want in zip(names, [out, *grads], [expected, *expected_grads], strict=True):
        got = np.asarray(got.astype(jnp.float32), np.float64)
        assert np.linalg.norm(got - want) / np.linalg.norm(want) < 2e-2, name


def test_nothing_leaks_across_segments():
    """New keys and values for one document leave every other output bit-identical, and a loss on one
    document has exactly zero gradient on every other position's q, k, v."""
    options = dict(scale=0.25, window=100, softcap=5.0, backward_block=16)
    q, k, v, _ = inputs(16, seed=1)
    run = jax.jit(lambda q, k, v: attend(q, k, v, **options))
    base = np.asarray(run(q, k, v))
    rng = np.random.default_rng(2)
    for row, doc in ((0, 2), (1, 3), (1, 2)):
        inside = SEGMENTS[row] == doc
        k2, v2 = k.copy(), v.copy()
        k2[row, inside] += 3 * rng.normal(size=k2[row, inside].shape).astype(np.float32)
        v2[row, inside] += 3 * rng.normal(size=v2[row, inside].shape).astype(np.float32)
        changed = np.asarray(run(q, k2, v2))
        outside = np.ones((B, T), bool)
        outside[row] = ~inside
        np.testing.assert_array_equal(changed[outside], base[outside])
        assert not np.array_equal(changed[row, inside], base[row, inside])

    row, doc = 0, 2
    inside = SEGMENTS[row] == doc
    weights = np.zeros((B, T, H, 16), np.float32)
    weights[row, inside] = np.random.default_rng(4).normal(size=weights[row, inside].shape)
    grads = jax.jit(jax.grad(lambda q, k, v: (run(q, k, v) * weights).sum(), argnums=(0, 1, 2)))(q, k, v)
    outside = np.ones((B, T), bool)
    outside[row, inside] = False
    for name, grad in zip("qkv", grads, strict=True):
        grad = np.asarray(grad)
        assert (grad[outside] == 0).all(), f"d{name} leaks"
        assert np.abs(grad[row, inside]).max() > 0, f"d{name} is all zero"


@pytest.mark.parametrize("block_q,block_k", [(16, 16), (64, 64), (64, 32), (32, 64)])
def test_visited_tiles_are_exactly_those_meeting_the_band(block_q, block_k):
    """For every window, the loop bounds of both passes cover every tile holding a causal, in-window
    (query, key) pair and no other tile."""
    pos = np.arange(T)
    behind = pos[:, None] - pos[None, :]
    query_tiles, key_tiles = np.arange(T // block_q, dtype=np.int32), np.arange(T // block_k, dtype=np.int32)
    for window in (None, *range(1, T + 1)):
        band = (behind >= 0) & ((behind < window) if window else True)
        meets = band.reshape(T // block_q, block_q, T // block_k, block_k).any(axis=(1, 3))
        lo, hi = np.broadcast_arrays(*flash_gpu._key_tiles(query_tiles, block_q, block_k, window))
        visited = (key_tiles[None, :] >= lo[:, None]) & (key_tiles[None, :] < hi[:, None])
        np.testing.assert_array_equal(visited, meets, f"key tiles, {window=}")
        bounds = flash_gpu._query_tiles(key_tiles, block_q, block_k, T // block_q, window)
        lo, hi = np.broadcast_arrays(*bounds)
        visited = (query_tiles[:, None] >= lo[None, :]) & (query_tiles[:, None] < hi[None, :])
        np.testing.assert_array_equal(visited, meets, f"query tiles, {window=}")


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_forward_and_backward_lower_to_triton_for_cuda(dtype):
    """Every primitive of both kernels has a Pallas Triton lowering (no GPU needed to lower; compiling the
    Triton IR to PTX is left to a GPU)."""
    q = jax.ShapeDtypeStruct((1, 128, 2, 96), dtype)
    segments = jax.ShapeDtypeStruct((1, 128), jnp.int32)

    def step(q, k, v, segment_ids):
        out, vjp = jax.vjp(lambda q, k, v: flash_gpu.flash_attention(
            q, k, v, segment_ids, scale=0.1, window=40, softcap=30.0, block_q=64, block_k=64,
            backward_block=32), q, k, v)
        return out, vjp(out)

    text = jax.jit(step).trace(q, q, q, segments).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 2  # the forward kernel and the backward kernel


def test_rejects_tiles_and_lengths_it_cannot_run():
    q = jnp.zeros((1, 96, 1, 16))
    segments = jnp.ones((1, 96), jnp.int32)
    with pytest.raises(ValueError, match="multiple of block_q"):
        flash_gpu.flash_attention(q, q, q, segments, scale=1.0, interpret=True)
    with pytest.raises(ValueError, match="power of two"):
        flash_gpu.flash_attention(q, q, q, segments, scale=1.0, block_q=24, interpret=True)
    with pytest.raises(ValueError, match="window"):
        flash_gpu.flash_attention(q, q, q, segments, scale=1.0, window=0, block_q=32, block_k=32,
                                  interpret=True)
