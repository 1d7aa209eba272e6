"""A mixture of experts' experts split over the mesh's `expert` axis (model/moe.py's `dispatched`, on 8 CPU
devices): the loss with its router penalty and every gradient (LoRA adapters on the experts included) equal one
device's, with the experts split 2 (beside fsdp), 4 (beside a data axis) and 8 ways; no device holds every expert; the bad
meshes are one line."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import REPO
from helpers.families import build_family, padded_batch

from instructjax.cli import main
from instructjax.core import sharding
from instructjax.core.config import RunConfig
from instructjax.core.errors import ConfigError
from instructjax.model import lora
from instructjax.model.decoder import Decoder, with_params
from instructjax.model.engine import SlotEngine
from instructjax.train.meshes import mesh_options
from instructjax.train.step import forward, router_terms

EXPERTS = 8
LENGTHS = (20, 14, 9, 20, 3, 17, 11, 20)  # 8 rows, padded: the router's sums see real tokens alone


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """A tiny OLMoE of 8 experts (built by transformers, imported), its experts LoRA-adapted (PEFT's
    `target_parameters`; A and B random, so every adapter counts); its batch, loss and one device's loss and
    gradients."""
    _, _, ours, base_config, _ = build_family("olmoe", tmp_path_factory.mktemp("olmoe"), num_experts=EXPERTS,
                                              num_hidden_layers=2)
    config = base_config.replace(lora={"rank": 2, "alpha": 4, "targets": ["mlp.experts.gate_up_proj",
                                                                          "mlp.experts.down_proj"]})
    shapes = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0))), nnx.Param))
    rng = np.random.default_rng(1)
    adapters = jax.tree.map(lambda x: rng.normal(0, 0.1, x.shape).astype(np.float32), lora.trainable(shapes))
    model = with_params(config, lora.combine(adapters, nnx.to_pure_dict(nnx.state(ours, nnx.Param))))
    assert model.layers.mlp.gate_proj_lora.lora_a is not None and model.layers.mlp.down_proj_lora.lora_b is not None
    tokens, mask, positions = padded_batch(config, lengths=LENGTHS)
    batch = {"tokens": jnp.asarray(tokens), "positions": positions, "segment_ids": jnp.asarray(mask),
             "targets": jnp.asarray(np.roll(tokens, -1, 1))}
    graphdef, params = nnx.split(model, nnx.Param)

    def loss(p, b):
        nll, stats = forward(graphdef, p, b, 0)
        penalty, sums = router_terms(stats, config, b["segment_ids"])
        return jnp.sum(nll * b["segment_ids"]) / jnp.sum(b["segment_ids"]) + penalty, sums["moe/aux_loss"]

    step = jax.jit(jax.value_and_grad(loss, has_aux=True))
    return config, graphdef, params, batch, step, step(params, batch)


# 4 ways: data2_expert4's split; the experts whole on each device over fsdp alone (expert 1): the test below and
# tests/convert/test_families_gradients.py's mixture of experts on a mesh
@pytest.mark.parametrize("shape", [{"expert": 2, "fsdp": 4}, {"expert": 8},
                                   pytest.param({"data": 2, "expert": 4}, marks=pytest.mark.slow)],
                         ids=["expert2", "expert8", "data2_expert4"])
def test_loss_and_gradients_are_the_same_with_the_experts_split(moe, shape):
    config, graphdef, params, batch, step, ((want, want_aux), want_grads) = moe
    ways = shape["expert"]
    mesh = sharding.make_mesh(shape)
    with jax.set_mesh(mesh):
        placed = jax.device_put(params, sharding.state_shardings(params, mesh))
        (got, got_aux), got_grads = step(placed, sharding.shard_batch(batch, mesh))
    assert abs(float(got) - float(want)) <= 1e-5 and abs(float(got_aux) - float(want_aux)) <= 1e-6
    assert float(want_aux) > 0.9  # the load-balancing loss is in the loss (about 1 for a balanced router)
    flat = jax.tree_util.tree_flatten_with_path(got_grads)[0]
    for (path, got_g), want_g in zip(flat, jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(got_g), np.asarray(want_g), atol=1e-5, rtol=1e-5, err_msg=jax.tree_util.keystr(path))
    mlp = placed["layers"]["mlp"]
    for name in ("gate_proj", "up_proj", "down_proj", "gate_proj_lora/lora_a", "down_proj_lora/lora_b"):
        array = mlp
        for key in name.split("/"):
            array = array[key]
        array = array[...]
        assert array.shape[1] == EXPERTS  # [layers, experts, in, out]
        for shard in array.addressable_shards:  # each device holds its own experts alone (all of them where 1 way)
            assert shard.data.shape[1] == EXPERTS // ways, (name, shard.data.shape)


@pytest.mark.parametrize("shape, rows", [({"expert": 2, "fsdp": 4}, 2), ({"expert": 8}, 2), ({"expert": 4, "fsdp": 2}, 1),
                                         ({"data": 2, "expert": 2, "fsdp": 2}, 8)])
def test_the_block_dispatches_any_batch(moe, shape, rows):
    """The sparse block alone on `rows` rows that do not split over every batch axis (8 rows do: the test above):
    split over the expert axis alone (2 rows on expert 2 x fsdp 4), or not at all (2 rows 8 ways, one row 4 ways:
    each expert device sees every token, the shares summed); and on data x expert x fsdp: one device's outputs and
    router sums."""
    config, graphdef, params, *_ = moe
    block = nnx.merge(graphdef, params).layers.mlp  # stacked: layer 0's weights taken below
    block_graph, block_params = nnx.split(block, nnx.Param)
    x = jnp.asarray(np.random.default_rng(2).normal(0, 1, (rows, 5, config.hidden_size)), jnp.float32)
    real = jnp.ones((rows, 5), bool)

    def run(p, x):
        return nnx.merge(block_graph, jax.tree.map(lambda w: w[0], p))(x, real)

    want, want_stats = jax.jit(run)(block_params, x)
    mesh = sharding.make_mesh(shape)
    with jax.set_mesh(mesh):
        placed = jax.device_put(block_params, sharding.state_shardings(block_params, mesh))
        got, got_stats = jax.jit(run)(placed, x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got_stats.counts), np.asarray(want_stats.counts))


def test_fsdp_gathers_the_experts_to_the_tokens_not_the_tokens_to_the_experts(moe):
    """Without an expert axis, on a batch whose token copies outnumber the experts' matrices' rows (512 tokens x 2
    copies x (64 + 96) against 8 experts x 3 x 64 x 96), fsdp's devices each compute their own tokens: the compiled
    gradient all-gathers the experts' weights whole (FSDP's gather) and no array of the whole batch's token copies
    (XLA's own partitioning of the sort and the grouped matmuls gathers every device's copies to each: on a TPU
    2 GiB an array, issue 67)."""
    import re

    config, graphdef, params, *_ = moe
    block = nnx.merge(graphdef, params).layers.mlp
    block_graph, block_params = nnx.split(block, nnx.Param)
    rows, length = 16, 32
    x = jnp.asarray(np.random.default_rng(3).normal(0, 1, (rows, length, config.hidden_size)), jnp.float32)

    def loss(p, x):
        out, _ = nnx.merge(block_graph, jax.tree.map(lambda w: w[0], p))(x, jnp.ones((rows, length), bool))
        return jnp.sum(out ** 2)

    mesh = sharding.make_mesh({"fsdp": 8})
    with jax.set_mesh(mesh):
        placed = jax.device_put(block_params, sharding.state_shardings(block_params, mesh))
        x = jax.device_put(x, jax.NamedSharding(mesh, jax.P("fsdp")))
        text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(placed, x).compile().as_text()
    gathered = {tuple(int(d) for d in dims.split(",") if d)
                for dims in re.findall(r"= \w+\[([\d,]*)\][^=]*? all-gather\(", text)}
    copies = rows * length * config.experts_per_token
    assert (EXPERTS, config.hidden_size, config.expert_width) in gathered, gathered
    assert not [shape for shape in gathered if shape and shape[0] == copies], gathered


def test_an_expert_axis_that_does_not_split_the_experts_is_one_line():
    run = RunConfig()
    assert sharding.resolve_mesh(RunConfig(mesh={"expert": 4, "fsdp": 2}), 8, experts=8)["expert"] == 4
    with pytest.raises(ConfigError, match=r"^model has 8 experts; mesh.expert=3 does not divide them$"):
        sharding.resolve_mesh(RunConfig(mesh={"expert": 3}), 3, experts=8)
    with pytest.raises(ConfigError, match=r"^mesh.expert=2 splits a mixture of experts' experts; this model is dense"):
        sharding.resolve_mesh(RunConfig(mesh={"expert": 2, "fsdp": 4}), 8, experts=0)
    assert sharding.row_multiple(run, {"data": 1, "fsdp": 2, "expert": 4, "tensor": 1}) == 8  # the batch over it too
    with pytest.raises(ConfigError, match=r"^the evaluation engine decodes with the experts whole .* mesh.expert=2 "):
        SlotEngine(None, mesh=sharding.make_mesh({"expert": 2, "fsdp": 4}))
    # the run's mesh as its evaluation takes it: the expert axis folded into fsdp
    assert sharding.without_experts({"data": 1, "fsdp": 2, "expert": 8, "tensor": 1}) == {"data": 1, "fsdp": 16,
                                                                                         "tensor": 1}
    assert sharding.without_experts({"expert": 4, "fsdp": -1}) == {"fsdp": -1}
    # mesh: auto's options: a dense model's unchanged; a mixture of experts' expert sizes divide its experts
    assert mesh_options(8) == [{"data": 1, "fsdp": 8 // t, "tensor": t} for t in (1, 2, 4, 8)]
    assert [(o["expert"], o["tensor"]) for o in mesh_options(8, 4)] == [(4, 1), (2, 1), (1, 1), (1, 2), (1, 4), (1, 8)]
    with pytest.raises(ConfigError, match=r"^mesh.expert=2 with mesh.tensor=2: the experts' dispatch runs without"):
        sharding.resolve_mesh(RunConfig(mesh={"expert": 2, "fsdp": 2, "tensor": 2}), 8, experts=8)


def test_mesh_auto_splits_a_mixture_of_experts_experts(capsys):
    """`plan` of the OLMoE config (`mesh: auto`) on a v5e-16: the largest expert axis that fits (2 of its 64
    experts' ways by plan's estimate, which counts a sparse layer's copies and XLA:TPU's buffers beside the experts:
    8 and 4 do not fit; benchmarks/RESULTS.md, issue 67), fsdp the rest."""
    assert main(["plan", "--config", str(REPO / "configs" / "moe" / "olmoe_1b_7b_tulu_human_gpt.yaml"),
                 "--topology", "v5e-16"]) == 0
    assert "mesh: auto takes mesh.data=1 mesh.fsdp=8 mesh.expert=2 mesh.tensor=1" in capsys.readouterr().out


@pytest.mark.parametrize("preset, expert, words", [("mixtral-8x7b", 16, "model has 8 experts; mesh.expert=16 does not"),
                                                   ("llama2-7b", 2, "mesh.expert=2 splits a mixture of experts'")])
def test_plan_refuses_a_bad_expert_axis_with_exit_2(preset, expert, words, capsys):
    code = main(["plan", "--config", str(REPO / "configs" / "seed004_tulu" / "tulu_human_gpt_llama2_7b.yaml"),
                 "--topology", "v4-64", f"model.preset={preset}", f"mesh.expert={expert}", "mesh.fsdp=-1",
                 "mesh.data=1"])
    err = capsys.readouterr().err
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
