"""Rows split over the mesh's `context` axis (model/context.py), on 8 CPU devices: attention by each strategy, with
each reorder, equals the dense reference (model/attention.py's `xla`, rows whole) in value and in every gradient on
packed rows of three segments and padding, with and without a sliding window and a soft-cap; a broken segment mask
is caught; TPU splash attention (interpret mode) over split rows likewise; a tiny LLaMA, a Gemma-2-like model
(windows, soft-caps; with splash too) and a mixture of experts train to the same loss and gradients as on one device;
what cannot split is one line."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from instructjax.cli import main
from instructjax.core import sharding
from instructjax.core.errors import ConfigError
from instructjax.model import attention, context
from instructjax.model.decoder import Decoder
from instructjax.model.presets import preset
from instructjax.train.step import forward, neftune_noise

B, T, H, K, D = 2, 32, 8, 4, 8
SEGMENTS = np.asarray([[1] * 10 + [2] * 12 + [3] * 7 + [0] * 3, [1] * 5 + [2] * 20 + [3] * 7], np.int32)
CASES = [({"context": 2}, "dual_chunk_swap"), ({"context": 8}, "dual_chunk_swap"), ({"data": 2, "context": 4},
                                                                                  "dual_chunk_swap"),
         ({"context": 4}, "striped")]


def _inputs():
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(rng.normal(size=(B, T, n, D)), jnp.float32) for n in (H, K, K))
    return q, k, v, jnp.asarray(rng.normal(size=(B, T, H, D)), jnp.float32)


def _loss(attend):
    """The sum of two attentions' outputs against a fixed cotangent: full causal, and a window of 8 with a
    soft-cap of 5 (Gemma-2's kinds of layer)."""
    def loss(q, k, v, cotangent, segments):
        plain = attend(q, k, v, segments, None, None)
        local = attend(q, k, v, segments, 8, 5.0)
        return jnp.sum(plain * cotangent) + jnp.sum(local * cotangent)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def _reference(q, k, v, segments, window, softcap):
    mask = attention.mask_input("xla", segments, window)
    return attention.self_attention(q, k, v, mask, "xla", window=window, softcap=softcap)


def _split(strategy, order):
    back = np.argsort(order)

    def attend(q, k, v, segments, window, softcap):
        deal = lambda x: jnp.take(x, order, axis=1)  # noqa: E731
        out = context.attention(deal(q), deal(k), deal(v), deal(segments), jnp.asarray(order), strategy,
                                window=window, softcap=softcap)
        return jnp.take(out, back, axis=1)

    return attend


@pytest.fixture(scope="module")
def want():
    q, k, v, cotangent = _inputs()
    return _loss(_reference)(q, k, v, cotangent, jnp.asarray(SEGMENTS))


@pytest.mark.parametrize("strategy", ["all_gather", "ring", "ulysses"])
@pytest.mark.parametrize("shape, reorder", CASES, ids=lambda c: "_".join(f"{k}{v}" for k, v in c.items())
                         if isinstance(c, dict) else c)
def test_attention_over_split_rows_is_the_dense_reference(want, strategy, shape, reorder):
    if strategy == "ulysses" and K % shape["context"]:
        pytest.skip("ulysses deals whole kv heads: 4 over 8 devices is one line (below)")
    q, k, v, cotangent = _inputs()
    order = context.order_of(T, shape["context"], reorder)
    mesh = sharding.make_mesh(shape, jax.devices()[: np.prod(list(shape.values()))])
    with jax.set_mesh(mesh):
        value, grads = _loss(_split(strategy, order))(q, k, v, cotangent, jnp.asarray(SEGMENTS))
        broken, _ = _loss(_split(strategy, order))(q, k, v, cotangent, jnp.ones_like(SEGMENTS))
    (want_value, want_grads) = want
    assert abs(float(value) - float(want_value)) <= 1e-4 * max(1.0, abs(float(want_value)))
    for got, ref, name in zip(grads, want_grads, "qkv", strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-5, err_msg=name)
    assert abs(float(broken) - float(want_value)) > 1e-2  # one segment mask ignored: the test sees it


@pytest.mark.parametrize("strategy, shape", [("ring", {"context": 4}), ("ulysses", {"context": 2}),
                                             ("all_gather", {"context": 4})])
def test_queries_met_a_few_rows_at_a_time_give_the_same(want, monkeypatch, strategy, shape):
    """Long rows meet their keys `QUERY_ROWS` queries at a time (4 here: 2 and 8 tiles of them), rows split as they
    are (`context_reorder: none`)."""
    monkeypatch.setattr(context, "QUERY_ROWS", 4)
    test_attention_over_split_rows_is_the_dense_reference(want, strategy, shape, "none")


SPLASH = [("all_gather", {"context": 4}, "striped"), ("ulysses", {"context": 2}, "dual_chunk_swap"),
          ("ring", {"context": 4}, "dual_chunk_swap")]


@pytest.mark.parametrize("strategy, shape, reorder", SPLASH, ids=lambda x: x if isinstance(x, str) else
                         "_".join(f"{k}{v}" for k, v in x.items()))
def test_splash_over_split_rows_is_the_dense_reference(strategy, shape, reorder):
    """TPU splash attention (interpret mode) meeting a split row's keys, gathered, by heads or a block a turn around
    the ring: rows of 512 tokens in three segments and padding, 128 a device at context 4, in value and every
    gradient the dense reference's on whole rows; a kernel whose mask ignores the reorder (queries compared by their
    place in the split, not in the row) is caught."""
    length = 512
    rng = np.random.default_rng(0)
    q, k, v, cotangent = (jnp.asarray(rng.normal(size=(B, length, n, D)), jnp.float32) for n in (4, 2, 2, 4))
    segments = jnp.asarray(np.stack([np.repeat([1, 2, 3, 0], [150, 200, 140, 22]), np.repeat([1, 2, 3], [60, 300, 152])]),
                           jnp.int32)
    want_value, want_grads = _loss(_reference)(q, k, v, cotangent, segments)
    order, mesh = context.order_of(length, shape["context"], reorder), sharding.make_mesh(shape, jax.devices()[: np.prod(list(shape.values()))])

    def split(told):
        def attend(q, k, v, segments, window, softcap):
            deal = lambda x: jnp.take(x, order, axis=1)  # noqa: E731
            out = context.attention(deal(q), deal(k), deal(v), deal(segments), None, strategy, reorder=told,
                                    kernel="splash", block=128, window=window, softcap=softcap)
            return jnp.take(out, np.argsort(order), axis=1)

        return attend

    with jax.set_mesh(mesh):
        value, grads = _loss(split(reorder))(q, k, v, cotangent, segments)
        unordered, _ = _loss(split("none"))(q, k, v, cotangent, segments)
    assert abs(float(value) - float(want_value)) <= 1e-5 * abs(float(want_value))
    for got, ref, name in zip(grads, want_grads, "qkv", strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, rtol=1e-5, err_msg=name)
    assert abs(float(unordered) - float(want_value)) > 1e-2


def test_the_reorders_balance_causal_work():
    """Each device's causal pairs (query, key at or before it) on a row of 64 tokens over 4 devices: the split as it
    is gives the last device 6.6 times the first's (904 pairs to 136); dual-chunk swap gives all the same; striped
    within 10%."""
    def work(order):
        return [int(np.sum(part[:, None] + 1)) for part in np.split(order, 4)]

    plain, dual, striped = (work(context.order_of(64, 4, r)) for r in ("none", "dual_chunk_swap", "striped"))
    assert (min(plain), max(plain)) == (136, 904) and len(set(dual)) == 1 and max(striped) / min(striped) < 1.1
    assert sorted(context.order_of(64, 4, "dual_chunk_swap")) == list(range(64))


MODELS = {
    "llama_lora": dict(lora={"rank": 4, "alpha": 8, "dropout": 0.3}),
    "gemma2": dict(sliding_window=8, layer_types=("sliding", "full"), attention_softcap=20.0, final_softcap=15.0),
    "moe": dict(num_experts=4, experts_per_token=2),
}
RUNS = [("llama_lora", {"context": 4}, "ring", "auto"), ("gemma2", {"context": 2}, "ulysses", "auto"),
        ("moe", {"data": 2, "context": 4}, "all_gather", "auto"), ("gemma2", {"data": 2, "context": 2}, "ring", "splash")]


@pytest.mark.parametrize("family, shape, strategy, kernel", RUNS, ids=lambda x: x if isinstance(x, str) else
                         "_".join(f"{k}{v}" for k, v in x.items()))
def test_a_model_on_split_rows_trains_as_on_one_device(family, shape, strategy, kernel):
    """The train step's forward (rows dealt out striped, each token's loss put back; NEFTune's noise, LoRA's
    dropout, the loss in chunks of 16 tokens) and the gradient of every parameter equal the whole rows' on one
    device; with model.attention: splash, rows of 256 tokens (whole splash tiles a device)."""
    config = preset("tiny", dtype="float32", scan_layers=False, context_strategy=strategy, attention=kernel,
                    **MODELS[family])
    graphdef, params = nnx.split(Decoder(config, rngs=nnx.Rngs(0)), nnx.Param)
    rng = np.random.default_rng(1)
    segments = SEGMENTS if kernel == "auto" else np.repeat(SEGMENTS, 8, axis=1)
    tokens = rng.integers(3, config.vocab_size, segments.shape) * (segments > 0)
    positions = np.stack([np.concatenate([np.arange(np.sum(r == s)) for s in np.unique(r)]) for r in segments])
    batch = {"tokens": jnp.asarray(tokens, jnp.int32), "positions": jnp.asarray(positions, jnp.int32),
             "segment_ids": jnp.asarray(segments), "targets": jnp.asarray(np.roll(tokens, -1, 1), jnp.int32)}

    def loss(p, b):
        nll, _ = forward(graphdef, p, b, 16, neftune_noise(5.0, jax.random.key(3)),
                         jax.random.key(4) if config.lora else None)
        return jnp.sum(nll * (b["segment_ids"] > 0)) / jnp.sum(b["segment_ids"] > 0)

    step = jax.jit(jax.value_and_grad(loss))
    want, want_grads = step(params, batch)
    mesh = sharding.make_mesh(shape, jax.devices()[: np.prod(list(shape.values()))])
    with jax.set_mesh(mesh):
        got, grads = step(jax.device_put(params, sharding.state_shardings(params, mesh)),
                          sharding.shard_batch(batch, mesh))
    assert abs(float(got) - float(want)) <= 1e-5
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    for (path, g), w in zip(flat, jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5, rtol=1e-4,
                                   err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("overrides, words", [
    (["data.seq_len=516", "mesh.context=4", "model.context_reorder=dual_chunk_swap"],
     "a row of 516 tokens (data.seq_len) does not split over mesh.context=4 into 2 x context chunks"),
    (["mesh.context=4", "model.context_strategy=ulysses"], "the model's 4 heads and 2 kv heads"),
    (["mesh.context=16"], "does not divide 8 devices"),
    (["mesh.context=4", "model.attention=pallas_gpu"], "model.attention: pallas_gpu does not run over rows split by"),
    (["mesh.context=8", "model.attention=splash"], "in whole splash tiles of 128 a device (model.attention: splash): "
     "make it a multiple of 1024"),
])
def test_rows_that_cannot_split_are_one_line(capsys, overrides, words):
    argv = ["plan", "--config", "/dev/null", "model.preset=tiny", "data.mixture=alpaca_builtin", "data.seq_len=512",
            "data.global_batch=8",
            "mesh.data=-1", *overrides, "--topology", "v5e-8"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err


def test_mesh_auto_splits_rows_only_where_no_whole_row_fits_and_then_the_least():
    """`mesh: auto` for Llama-3.1-8B rows of 98,304 tokens, 8 a step, on a v4-64 (32 GiB chips): every mesh that
    keeps a row whole on a device is planned not to fit, and so is every one with context 2; plan takes a context-4
    mesh, which fits. Brute force over the explicit meshes, each planned on its own."""
    import dataclasses

    from instructjax.core.config import load_config
    from instructjax.train.meshes import mesh_options
    from instructjax.train.plan import make_plan, plan_with_proposal
    from instructjax.train.resolution import ESTIMATE, resolve
    from instructjax.train.topology import tpu_topology

    config = load_config(None, ["model.preset=llama3.1-8b", "model.remat=full", "data.mixture=alpaca_builtin",
                                "data.seq_len=98304", "data.global_batch=8", "mesh=auto"])
    topology, resolution = tpu_topology("v4-64"), resolve(config, sizes=ESTIMATE).counted()
    chosen = plan_with_proposal(config, topology, resolution=resolution)
    assert chosen.fits and chosen.mesh.get("context") == 4, chosen.mesh

    def fits(sizes) -> bool | None:  # None: the mesh cannot serve the run
        try:
            return make_plan(dataclasses.replace(config, mesh=sizes), topology, resolution=resolution).fits
        except ConfigError:
            return None

    for parts in (1, 2):
        served = [fits(sizes) for sizes in mesh_options(32, 0, parts)]
        assert any(f is not None for f in served) and not any(served), (parts, served)


def test_choose_mesh_tries_context_splits_least_first():
    """The trainer's choice (train/meshes.py `choose_mesh`) over the same groups: with whole rows fitting nowhere,
    the least context that fits and whose rows split; where nothing fits, the best unsplit mesh."""
    from instructjax.core.config import load_config
    from instructjax.train.meshes import choose_mesh

    config = load_config(None, ["model.preset=tiny", "data.seq_len=512", "data.global_batch=8"])

    def splits(sizes):
        if sizes["context"] == 2:
            raise ConfigError("rows do not split in 2")

    fits = lambda sizes: sizes.get("context", 1) >= 2 and sizes["tensor"] <= 2  # noqa: E731
    assert choose_mesh(config, 8, 1, lambda s: 1.0, fits, splits=splits) == \
        {"data": 1, "fsdp": 2, "context": 4, "tensor": 1}
    assert choose_mesh(config, 8, 1, lambda s: 1.0, fits) == {"data": 1, "fsdp": 8, "tensor": 1}  # no splits: none
    assert choose_mesh(config, 8, 1, lambda s: 1.0, lambda s: False, splits=splits) == \
        {"data": 1, "fsdp": 8, "tensor": 1}
