"""Mesh construction, the logical-axis rules, and identical loss/grads on 1 and 8 (forced CPU) devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from instructjax.core.errors import ConfigError
from instructjax.core.optimizer import adamw
from instructjax.core.sharding import (
    batch_shardings,
    create_sharded_model,
    logical_to_spec,
    make_mesh,
    shard_batch,
    shard_model,
    state_shardings,
)
from instructjax.model.decoder import Decoder, abstract_model
from instructjax.model.presets import preset
from instructjax.train.loss import loss_sums, reduce_loss


def random_model(config, seed=0):
    """A Decoder with numpy-random weights: no RNG compile, so tests stay fast."""
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(abstract_model(config))
    state = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.05, x.shape), x.dtype), state)
    return nnx.merge(graphdef, state)

CONFIG = preset("tiny", dtype="float32", vocab_size=512, num_layers=1)


def test_make_mesh_shapes_and_errors():
    assert jax.device_count() == 8
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert mesh.axis_names == ("data", "fsdp", "expert", "context", "tensor") and mesh.devices.shape == (2, 2, 1, 1, 2)
    assert make_mesh({"fsdp": -1, "tensor": 2}).devices.shape == (1, 4, 1, 1, 2)
    assert make_mesh({"tensor": 3}, devices=jax.devices()[:3]).devices.shape == (1, 1, 1, 1, 3)
    assert make_mesh({"data": 2, "context": 4}).devices.shape == (2, 1, 1, 4, 1)
    with pytest.raises(ConfigError, match="needs 4 devices, but there are 8"):
        make_mesh({"data": 4})
    with pytest.raises(ConfigError, match="unknown mesh axes"):
        make_mesh({"model": 8})
    with pytest.raises(ConfigError, match="does not divide"):
        make_mesh({"data": -1, "tensor": 3})


def test_logical_rules():
    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert logical_to_spec(("embed", "mlp"), mesh) == P("fsdp", "tensor")
    assert logical_to_spec(("embed", "heads", "head_dim"), mesh) == P("fsdp", "tensor", None)
    # an activation: batch takes (data, fsdp), so embed (also fsdp) stays whole
    assert logical_to_spec(("batch", "length", "embed"), mesh) == P(("data", "fsdp"), None, None)
    with pytest.raises(ConfigError, match=r"dimension 1 \(heads\).*not divisible"):
        logical_to_spec(("embed", "heads"), mesh, (64, 3), what="q_proj")
    assert logical_to_spec(("embed", "heads"), mesh, (64, 3), strict=False) == P("fsdp", None)
    with pytest.raises(ConfigError, match="no rule"):
        logical_to_spec(("embedding",), mesh)


def test_indivisible_parameter_names_the_parameter():
    mesh = make_mesh({"tensor": 3}, devices=jax.devices()[:3])
    abstract = nnx.eval_shape(lambda: Decoder(CONFIG, rngs=nnx.Rngs(0)))
    with pytest.raises(ConfigError, match=r"embed_tokens/embedding: dimension 0 \(vocab\).*not divisible"):
        state_shardings(nnx.state(abstract), mesh)
    abstract = nnx.eval_shape(lambda: Decoder(CONFIG.replace(vocab_size=510), rngs=nnx.Rngs(0)))
    with pytest.raises(ConfigError, match=r"layers/.*\(mlp\).*not divisible"):
        state_shardings(nnx.state(abstract), mesh)


def test_batch_sharding_checks_the_batch_size():
    mesh = make_mesh({"data": 4, "tensor": 2})
    batch = {"tokens": np.zeros((8, 16), np.int32)}
    assert batch_shardings(batch, mesh)["tokens"].spec == P("data", None)
    with pytest.raises(ConfigError, match="tokens.*not divisible"):
        batch_shardings({"tokens": np.zeros((6, 16), np.int32)}, mesh)


def make_batch(rows=8, width=16):
    rng = np.random.default_rng(0)
    segments = np.sort(rng.integers(0, 3, (rows, width)), axis=1)[:, ::-1].copy()  # 2.., 1.., then padding 0
    positions = np.zeros_like(segments)
    for r in range(rows):
        for s in np.unique(segments[r]):
            positions[r, segments[r] == s] = np.arange((segments[r] == s).sum())
    return {
        "tokens": rng.integers(0, CONFIG.vocab_size, (rows, width)).astype(np.int32),
        "targets": rng.integers(0, CONFIG.vocab_size, (rows, width)).astype(np.int32),
        "positions": positions.astype(np.int32),
        "segment_ids": segments.astype(np.int32),
        "loss_weights": (segments > 0) * rng.integers(0, 2, (rows, width)).astype(np.float32),
    }


@nnx.jit
def loss_and_grads(model, batch):
    def loss_fn(m):
        logits = m(batch["tokens"], batch["positions"], batch["segment_ids"])
        return reduce_loss(*loss_sums(logits, batch["targets"], batch["loss_weights"]))

    return nnx.value_and_grad(loss_fn)(model)


@pytest.fixture(scope="module")
def single_device_result():
    model = random_model(CONFIG)
    return loss_and_grads(model, {k: jnp.asarray(v) for k, v in make_batch().items()})


@pytest.mark.parametrize("shape", [pytest.param({"data": 8}, marks=pytest.mark.slow),
                                   pytest.param({"fsdp": 8}, marks=pytest.mark.slow),
                                   {"data": 2, "fsdp": 2, "tensor": 2}],
                         ids=["data8", "fsdp8", "2x2x2"])
def test_sharded_loss_and_grads_equal_single_device(shape, single_device_result):
    mesh = make_mesh(shape)
    model = shard_model(random_model(CONFIG), mesh)
    kernel = model.layers.mlp.gate_proj.kernel[...]  # stacked: [layers, embed, mlp]
    assert kernel.sharding.is_equivalent_to(NamedSharding(mesh, logical_to_spec(("layers", "embed", "mlp"), mesh)), 3)
    if "fsdp" in shape:  # the weight really is split: each device holds a slice of every layer
        assert kernel.addressable_shards[0].data.shape[:2] == (CONFIG.num_layers, CONFIG.hidden_size // shape["fsdp"])
    batch = shard_batch(make_batch(), mesh)
    with jax.set_mesh(mesh):
        loss, grads = loss_and_grads(model, batch)
    ref_loss, ref_grads = single_device_result
    np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
    for (path, g), ref in zip(jax.tree_util.tree_flatten_with_path(grads)[0], jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(ref), atol=1e-5, rtol=1e-4,
                                   err_msg=jax.tree_util.keystr(path))


def test_shard_model_and_optimizer_state_follow_the_rules():
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    model = shard_model(random_model(CONFIG), mesh)
    assert model.lm_head.kernel[...].sharding.spec == P("fsdp", "tensor")
    assert model.embed_tokens.embedding[...].sharding.spec == P("tensor", "fsdp")
    optimizer = nnx.eval_shape(lambda: nnx.Optimizer(abstract_model(CONFIG), adamw(1e-4), wrt=nnx.Param))
    shardings = state_shardings(nnx.state(optimizer), mesh)
    mu = shardings["opt_state"][1][0]["mu"]["layers"]["self_attn"]["o_proj"]["kernel"]
    assert mu.get_value().spec == P(None, "tensor", None, "fsdp")


@pytest.mark.parametrize("rank, fsdp", [(8, 4), (6, 4)], ids=["rank divides fsdp", "rank does not"])
def test_lora_adapters_are_split_over_fsdp_where_the_rank_divides(rank, fsdp):
    """Every adapter (A and B of each projection) is split over fsdp, by its base axis or by its rank, so that no
    device holds a whole one; a rank fsdp does not divide leaves the rank whole (no error), and A's fsdp-split input
    axis still splits it."""
    config = CONFIG.replace(lora={"rank": rank, "targets": "all-linear"}, num_layers=2)
    mesh = make_mesh({"fsdp": fsdp, "tensor": 2})
    shardings = state_shardings(nnx.state(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))), mesh)
    adapters = {jax.tree_util.keystr(path): leaf.get_value().spec
                for path, leaf in jax.tree_util.tree_leaves_with_path(shardings, is_leaf=lambda x: hasattr(x, "get_value"))
                if "lora_" in jax.tree_util.keystr(path)}
    assert len(adapters) == 2 * 7  # A and B of the 7 projections (layers scanned: one stack each)
    for path, spec in adapters.items():
        split = "fsdp" in jax.tree.leaves(tuple(spec))
        by_rank = ("lora_a" in path and spec[-1] == "fsdp") or ("lora_b" in path and spec[1] == "fsdp")
        assert split or rank % fsdp, (path, spec)  # rank 8: every adapter split over fsdp
        assert not by_rank or rank % fsdp == 0, (path, spec)  # rank 6: never the rank
    if rank % fsdp:  # rank 6: A of a projection whose input is the residual stream is split by that input alone
        q_a = next(spec for path, spec in adapters.items() if "q_proj" in path and "lora_a" in path)
        q_b = next(spec for path, spec in adapters.items() if "q_proj" in path and "lora_b" in path)
        assert q_a == P(None, "fsdp", None) and "fsdp" not in jax.tree.leaves(tuple(q_b)), (q_a, q_b)


@pytest.mark.slow
def test_create_sharded_model_initialises_in_place():
    mesh = make_mesh({"fsdp": 4, "tensor": 2})
    model = create_sharded_model(lambda: Decoder(CONFIG, rngs=nnx.Rngs(0)), mesh)
    up = model.layers.mlp.up_proj.kernel[...]
    assert up.sharding.spec == P(None, "fsdp", "tensor") and up.addressable_shards[0].data.shape == (1, 16, 64)
    np.testing.assert_allclose(float(jnp.std(up)), CONFIG.initializer_range, rtol=0.1)
    assert float(jnp.min(model.norm.scale[...])) == 1.0


@pytest.mark.parametrize("shape", [{"data": 2, "fsdp": 2, "tensor": 2}, {"fsdp": 8}, {"tensor": 8},
                                   {"data": 2, "fsdp": 4}, {"fsdp": 4, "tensor": 2}, {"fsdp": 2, "context": 4},
                                   {"data": 2, "context": 2, "tensor": 2}], ids=str)
def test_embedding_lookup_reads_its_own_slice(shape):
    """`model.lookup` under a mesh: the rows of ids (scaled, cast) and the table's gradient (a scatter-add of the
    output's cotangent) equal numpy's, with rows split over a context axis too, the gradient keeps the table's
    sharding, and no collective in the compiled
    program moves the table or its gradient (the largest is under the float32 table's size over its devices: the
    ids, the rows of the tokens, and the data-parallel sum of a table slice's gradient)."""
    from instructjax.model.lookup import lookup
    from instructjax.train.compile import program_figures

    rng = np.random.default_rng(1)
    table = rng.normal(size=(1024, 16)).astype(np.float32)
    ids = rng.integers(0, 1024, (8, 8)).astype(np.int32)  # rows of 8 tokens: split over a context axis
    cotangent = rng.normal(size=(8, 8, 16)).astype(np.float32)
    want_rows = (table[ids] * np.float32(3.0)).astype(jnp.bfloat16).astype(np.float64)
    want_grad = np.zeros(table.shape)
    np.add.at(want_grad, ids, cotangent.astype(jnp.bfloat16).astype(np.float64) * 3.0)  # d(rows)/d(table) = scale

    def objective(t, i):
        rows = lookup(t, i, axes=("vocab", "embed"), scale=3.0, dtype=jnp.bfloat16)
        return jnp.sum(rows.astype(jnp.float32) * cotangent.astype(jnp.bfloat16).astype(jnp.float32)), rows

    mesh = make_mesh(shape)
    args = (jax.device_put(table, NamedSharding(mesh, logical_to_spec(("vocab", "embed"), mesh))),
            jax.device_put(ids, NamedSharding(mesh, logical_to_spec(("batch", "length"), mesh))))
    step = jax.jit(jax.value_and_grad(objective, has_aux=True))
    with jax.set_mesh(mesh):
        (_, rows), grad = step(*args)
        hlo = step.lower(*args).compile().as_text()
    np.testing.assert_array_equal(np.asarray(rows.astype(jnp.float32)), want_rows)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-6, atol=1e-6)
    assert grad.sharding.is_equivalent_to(args[0].sharding, 2)
    _, collectives = program_figures(hlo)
    largest = max(c["largest"] for c in collectives.values())
    slice_bytes = table.nbytes // (mesh.shape["tensor"] * mesh.shape["fsdp"] * mesh.shape["context"])
    assert largest <= slice_bytes + 16, collectives  # + the loss's scalar, where XLA sums it with a slice


@pytest.mark.parametrize("whole", [True, False])
def test_host_arrays_go_onto_the_mesh_in_one_place(whole):
    """`place`: the one way host arrays become global arrays (trainer, rollouts, reference, scoring): each device
    holds its rows of the batch, whether every host holds every row (`whole`) or only its own (one host here: all)."""
    from instructjax.core.sharding import batch_sharding, place

    mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rows = {"tokens": np.arange(24, dtype=np.int32).reshape(8, 3),
            "weights": np.linspace(0, 1, 24, dtype=np.float32).reshape(8, 3)}
    placed = place(rows, batch_sharding(mesh), whole=whole)
    for key, value in rows.items():
        assert placed[key].sharding == batch_sharding(mesh) and placed[key].dtype == value.dtype
        np.testing.assert_array_equal(np.asarray(placed[key]), value)
        for shard in placed[key].addressable_shards:  # 4 row shards of 2 rows, each on the 2 devices over tensor
            assert shard.data.shape == (2, 3)
            np.testing.assert_array_equal(np.asarray(shard.data), value[shard.index])
