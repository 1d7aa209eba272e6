"""`chunked_token_nll` against the full-logits cross-entropy: values, gradients, the softcap order, sharding,
and the memory it saves (XLA's compiled buffer sizes)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding

from instructjax.core.sharding import logical_to_spec, make_mesh
from instructjax.train.compile import program_figures
from instructjax.train.loss import chunked_token_nll


def problem(b, t, e, v, seed=0, scale=1.0):
    """hidden [b, t, e], head [e, v], targets [b, t], per-token loss weights [b, t] (numpy, float32)."""
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(b, t, e)).astype(np.float32)
    head = (rng.normal(size=(e, v)) * scale / np.sqrt(e)).astype(np.float32)
    targets = rng.integers(0, v, (b, t)).astype(np.int32)
    weights = rng.uniform(0.0, 2.0, (b, t)).astype(np.float32)
    return hidden, head, targets, weights


def numpy_reference(hidden, head, targets, weights, softcap=None):
    """float64: per-token nll [b, t] and the gradients of sum(weights * nll) w.r.t. hidden [b, t, e] and
    head [e, v], written out by hand (softmax - one-hot, through the cap's tanh)."""
    h, w = np.asarray(hidden, np.float64), np.asarray(head, np.float64)
    z = h @ w
    logits = softcap * np.tanh(z / softcap) if softcap else z
    top = logits.max(-1, keepdims=True)
    logz = np.log(np.exp(logits - top).sum(-1, keepdims=True)) + top
    nll = logz[..., 0] - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
    dlogits = np.exp(logits - logz)
    np.put_along_axis(dlogits, targets[..., None], np.take_along_axis(dlogits, targets[..., None], -1) - 1, -1)
    dlogits *= weights[..., None]
    if softcap:
        dlogits *= 1 - np.tanh(z / softcap) ** 2
    return nll, dlogits @ w.T, np.einsum("bte,btv->ev", h, dlogits)


def loss_and_grads(fn, hidden, head, targets, weights):
    """(nll [b, t], d/dhidden, d/dhead) of sum(weights * fn(hidden, head, targets)), jitted."""

    def objective(h, w):
        nll = fn(h, w, targets)
        return jnp.sum(nll * weights), nll

    (_, nll), (dh, dw) = jax.jit(jax.value_and_grad(objective, argnums=(0, 1), has_aux=True))(hidden, head)
    return nll, dh, dw


def close(actual, expected, rtol):
    """Elementwise within rtol, entries far below the array's largest judged against rtol * its max."""
    expected = np.asarray(expected, np.float64)
    np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol,
                               atol=rtol * np.abs(expected).max())  # fmt: skip


@pytest.mark.parametrize("transposed", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("softcap", [None, 5.0], ids=["nocap", "softcap"])
@pytest.mark.parametrize("chunk", [8, 7, 5, 1000], ids=["divides", "pads", "pads-most", "one-chunk"])
def test_matches_full_logits_float32(chunk, softcap, transposed):
    hidden, head, targets, weights = problem(2, 12, 16, 96, scale=3.0)  # B*T = 24 tokens
    nll, dh, dw = numpy_reference(hidden, head, targets, weights, softcap)
    table = np.ascontiguousarray(head.T) if transposed else head

    def fn(h, w, y):
        return chunked_token_nll(h, w, y, chunk=chunk, softcap=softcap, transposed=transposed, dtype=jnp.float32)

    got_nll, got_dh, got_dw = loss_and_grads(fn, hidden, table, targets, weights)
    assert got_nll.shape == (2, 12) and got_nll.dtype == jnp.float32
    assert got_dh.shape == hidden.shape and got_dw.shape == table.shape
    close(got_nll, nll, 1e-5)
    close(got_dh, dh, 1e-5)
    close(got_dw.T if transposed else got_dw, dw, 1e-5)


def test_softcap_order_bfloat16():
    """The documented order: the product in bfloat16, cast to float32, capped and log-softmaxed in float32.
    With small-integer inputs the product is exact before its bfloat16 rounding, so the chunked loss equals
    the full computation done in that order (float32 rounding aside) and not the one that caps in bfloat16."""
    rng = np.random.default_rng(3)
    hidden = rng.integers(-3, 4, (2, 20, 16)).astype(np.float32)
    head = (rng.integers(-3, 4, (16, 200)) * 0.375).astype(np.float32)
    targets = rng.integers(0, 200, (2, 20)).astype(np.int32)
    weights = rng.uniform(0.0, 2.0, (2, 20)).astype(np.float32)
    cap = 8.0

    def full(h, w, y, cap_in_bf16=False):
        z = h.astype(jnp.bfloat16) @ w.astype(jnp.bfloat16)
        logits = (cap * jnp.tanh(z / cap)).astype(jnp.float32) if cap_in_bf16 else cap * jnp.tanh(
            z.astype(jnp.float32) / cap)
        return jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[..., None], -1)[..., 0]

    def chunked(h, w, y):
        return chunked_token_nll(h, w, y, chunk=16, softcap=cap)  # dtype: bfloat16 by default

    got = loss_and_grads(chunked, hidden, head, targets, weights)
    want = loss_and_grads(full, hidden, head, targets, weights)
    close(got[0], want[0], 1e-5)
    for g, r in zip(got[1:], want[1:], strict=True):  # gradients pass bfloat16 matmuls: compared at its precision
        assert g.dtype == jnp.float32
        close(g, r, 2e-2)
    other = jax.jit(lambda h, w, y: full(h, w, y, cap_in_bf16=True))(hidden, head, targets)
    assert np.abs(np.asarray(other) - np.asarray(want[0])).max() > 1e-3  # the orders differ measurably


@pytest.mark.parametrize("vocab,transposed", [(64, False), (64, True), (62, False)])
def test_under_a_mesh_with_the_batch_sharded(vocab, transposed):
    """Under `jax.set_mesh` on 8 CPU devices (data 2 x fsdp 2 x tensor 2), hidden sharded on batch and the
    head by its logical axes ((embed, vocab), or the tied table's (vocab, embed)): the same values and gradients
    as numpy's. A vocabulary that divides over the 4 batch devices is sliced among them: no collective in the
    compiled program carries the whole head or its whole gradient (the largest all-reduce is under the head's
    float32 size / fsdp). One that does not (62) enters whole, its gradient summed once, after the chunk loop."""
    assert jax.device_count() == 8
    hidden, head, targets, weights = problem(4, 10, 16, vocab, scale=3.0)
    nll, dh, dw = numpy_reference(hidden, head, targets, weights, softcap=5.0)
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    if transposed:
        head, dw = head.T.copy(), dw.T

    def place(x, names):
        return jax.device_put(x, NamedSharding(mesh, logical_to_spec(names, mesh, x.shape)))

    def objective(h, w, y, wt):
        nll = chunked_token_nll(h, w, y, chunk=12, softcap=5.0, dtype=jnp.float32, transposed=transposed)
        return jnp.sum(nll * wt), nll  # chunk 12: 3 tokens a device, the last chunk padded

    args = (place(hidden, ("batch", "length", "embed")),
            place(head, ("vocab", "embed") if transposed else ("embed", "vocab")),
            place(targets, ("batch", "length")), place(weights, ("batch", "length")))  # fmt: skip
    step = jax.jit(jax.value_and_grad(objective, argnums=(0, 1), has_aux=True))
    with jax.set_mesh(mesh):
        (_, got_nll), (got_dh, got_dw) = step(*args)
        hlo = step.lower(*args).compile().as_text()
    close(got_nll, nll, 1e-5)
    close(got_dh, dh, 1e-5)
    close(got_dw, dw, 1e-5)
    assert got_dh.sharding.spec == args[0].sharding.spec
    head_bytes = head.size * 4
    _, collectives = program_figures(hlo)
    if vocab % 4 == 0:
        assert collectives["all-reduce"]["largest"] < head_bytes / 2, collectives  # fsdp = 2
        gathered = max(c["largest"] for kind, c in collectives.items() if kind != "all-reduce")
        assert gathered < head_bytes / 2, collectives  # no device gathers the head whole
        return
    assert collectives["all-reduce"]["largest"] >= head_bytes / 2  # the whole head's gradient, summed once
    bodies = set(re.findall(r"\bwhile\(.*?body=(%[\w.\-]+)", hlo))
    assert len(bodies) >= 2  # the forward and the backward chunk loops
    computation, in_loop = None, []
    for line in hlo.splitlines():
        if line and not line.startswith(" "):
            computation = line.split(" ")[0] if not line.startswith("ENTRY") else "ENTRY"
        elif computation in bodies and re.search(r"f32\[(16,31|31,16)\].* all-reduce\(", line):
            in_loop.append(line.strip())
    assert not in_loop, in_loop  # the head's [16, 62 / tensor] gradient is not all-reduced per chunk


def test_compiled_temp_memory_is_a_fraction_of_full_logits():
    """XLA's own buffer assignment for value-and-grad, B=2, T=1024, E=64, V=65536 (float32): the full
    logits are 512 MiB; the chunked loss holds a few [chunk, V] buffers at most."""
    b, t, e, v, chunk = 2, 1024, 64, 65536, 256
    shapes = (jax.ShapeDtypeStruct((b, t, e), jnp.float32), jax.ShapeDtypeStruct((e, v), jnp.float32),
              jax.ShapeDtypeStruct((b, t), jnp.int32))  # fmt: skip

    def full(h, w, y):
        logits = jnp.einsum("bte,ev->btv", h, w)
        return jnp.sum(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[..., None], -1)[..., 0])

    def chunked(h, w, y):
        return jnp.sum(chunked_token_nll(h, w, y, chunk=chunk, dtype=jnp.float32))

    def temp_bytes(fn):
        compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(*shapes).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    full_bytes, chunked_bytes = temp_bytes(full), temp_bytes(chunked)
    logits_bytes, chunk_bytes = b * t * v * 4, chunk * v * 4
    assert full_bytes >= logits_bytes  # the reference really holds the logits
    assert chunked_bytes < full_bytes / 4
    assert chunked_bytes <= 3 * chunk_bytes, (chunked_bytes, chunk_bytes)
