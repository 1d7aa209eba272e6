"""Every family's gradients against torch autograd on transformers' model (mapped back to HF names by the
exporter), and for the mixtures of experts the loss with the router's load-balancing loss at the family's
coefficient and its gradients equal to transformers' (`output_router_logits`), on one device and on a mesh."""

from __future__ import annotations

import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from helpers.families import (
    IN_MEMORY,
    MOE,
    hf_gradients,
    moe_only,
    padded_batch,
    positions_of,
)

from instructjax.convert.hf import hf_state


def test_gradients_match_transformers(family, tmp_path):
    name, hf_model, ours, config, _ = family
    if name in MOE:
        pytest.skip("test_loss_with_router_aux_loss_matches_transformers checks its gradients, router loss included")
    hf_model = copy.deepcopy(hf_model)
    rng = np.random.default_rng(4)
    tokens, targets = rng.integers(3, config.vocab_size, (2, 2, 20))
    weights = rng.random((2, 20)).astype(np.float32)
    hf_model.zero_grad()
    logits = hf_model(torch.tensor(tokens)).logits
    nll = -torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(targets)[..., None])[..., 0]
    (nll * torch.tensor(weights)).sum().backward()
    expected = hf_gradients(hf_model, name, tmp_path)

    def loss(model):
        log_probs = jax.nn.log_softmax(model(jnp.asarray(tokens), positions_of(tokens), jnp.ones((2, 20), jnp.int32))
                                       .astype(jnp.float32))
        return -(jnp.take_along_axis(log_probs, jnp.asarray(targets)[..., None], -1)[..., 0] * weights).sum()

    grads = {IN_MEMORY.get(n, n): g for n, g in
             hf_state(nnx.state(nnx.jit(nnx.grad(loss))(ours), nnx.Param).to_pure_dict(), config).items()}
    assert set(grads) <= set(expected) and len(grads) >= len(expected) - 1  # a tied head is one tensor in ours
    for n, got in grads.items():
        want = expected[n]
        assert np.abs(got - want).max() <= 2e-4 * np.abs(want).max() + 1e-6, n


def test_loss_with_router_aux_loss_matches_transformers(family, tmp_path):
    """transformers' loss with `output_router_logits` (mean cross-entropy + router_aux_loss_coef * its
    load-balancing loss over the unpadded tokens) and its gradients, against the train step's: the mean nll of the
    trained tokens plus `router_terms`' penalty at the family's coefficient; and a packed row of the two examples
    gives the same load-balancing loss as the padded rows."""
    from instructjax.train.step import forward, router_terms

    name, hf_model, ours, config, _ = moe_only(family)
    assert config.router_aux_loss == {"mixtral": 0.001, "qwen3_moe": 0.001, "olmoe": 0.01}[name]
    assert config.router_z_loss == 0.0
    hf_model = copy.deepcopy(hf_model)
    tokens, mask, positions = padded_batch(config)
    labels = np.where(mask > 0, tokens, -100)
    out = hf_model(torch.tensor(tokens), attention_mask=torch.tensor(mask), labels=torch.tensor(labels),
                   output_router_logits=True)
    out.loss.backward()
    expected = hf_gradients(hf_model, name, tmp_path)
    targets = np.concatenate([tokens[:, 1:], tokens[:, :1]], 1)
    weights = np.concatenate([mask[:, 1:], np.zeros_like(mask[:, :1])], 1).astype(np.float32)
    batch = {"tokens": jnp.asarray(tokens), "positions": positions, "segment_ids": jnp.asarray(mask),
             "targets": jnp.asarray(targets)}
    graphdef, params = nnx.split(ours, nnx.Param)

    def loss(p):
        nll, stats = forward(graphdef, p, batch, 0)
        penalty, sums = router_terms(stats, config, batch["segment_ids"])
        return jnp.sum(nll * weights) / weights.sum() + penalty, (sums["moe/aux_loss"], sums["moe/z_loss"])

    (value, (aux, z)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert abs(float(aux) - out.aux_loss.item()) <= 1e-5 and abs(float(value) - out.loss.item()) <= 1e-5
    real = torch.tensor(mask.reshape(-1) > 0)  # the z-loss: ST-MoE's mean squared logsumexp of transformers' logits
    want_z = torch.stack([torch.logsumexp(r.detach().float()[real], -1).pow(2).mean() for r in out.router_logits])
    assert abs(float(z) - float(want_z.mean())) <= 1e-5 * max(1.0, float(want_z.mean()))
    got = hf_state(grads.to_pure_dict(), config)
    assert set(got) == set(expected)
    for n, g in got.items():
        assert np.abs(g - expected[n]).max() <= 1e-5, (n, np.abs(g - expected[n]).max())
    # the same two examples packed in one row, padding after: the same load-balancing loss
    row = np.concatenate([tokens[0, :20], tokens[1, :14], [0, 0]])[None]
    segments = np.repeat([1, 2, 0], [20, 14, 2])[None]
    packed_positions = np.concatenate([np.arange(20), np.arange(14), [0, 0]])[None]
    packed = {"tokens": jnp.asarray(row), "positions": jnp.asarray(packed_positions),
              "segment_ids": jnp.asarray(segments), "targets": jnp.asarray(row)}
    _, stats = forward(graphdef, params, packed, 0)
    packed_sums = router_terms(stats, config, packed["segment_ids"])[1]
    assert abs(float(packed_sums["moe/aux_loss"]) - float(aux)) <= 1e-6
    assert abs(float(packed_sums["moe/z_loss"]) - float(z)) <= 1e-6 * max(1.0, float(z))


@pytest.mark.slow
def test_moe_loss_and_gradients_are_the_same_on_a_mesh(family):
    """The train step's loss with its router penalty, and its gradients, on 8 devices (the batch over data x fsdp,
    the weights over fsdp, the experts' width over tensor) equal one device's: the sort by expert, the grouped
    matmuls and the router's sums over the real tokens see the whole batch, whatever the layout."""
    from instructjax.core import sharding
    from instructjax.train.step import forward, router_terms

    name, _, ours, config, _ = moe_only(family)
    if name != "mixtral":
        pytest.skip("one family's layout is enough: the three share model/moe.py")
    tokens, mask, positions = padded_batch(config, lengths=(20, 14, 9, 20, 3, 17, 11, 20))
    batch = {"tokens": jnp.asarray(tokens), "positions": positions, "segment_ids": jnp.asarray(mask),
             "targets": jnp.asarray(np.roll(tokens, -1, 1))}
    graphdef, params = nnx.split(ours, nnx.Param)

    def loss(p, b):
        nll, stats = forward(graphdef, p, b, 0)
        return jnp.sum(nll * b["segment_ids"]) / jnp.sum(b["segment_ids"]) + router_terms(stats, config,
                                                                                           b["segment_ids"])[0]

    step = jax.jit(jax.value_and_grad(loss))
    want_loss, want_grads = step(params, batch)
    devices = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    with jax.set_mesh(devices):
        placed = jax.device_put(params, sharding.state_shardings(params, devices))
        got_loss, got_grads = step(placed, sharding.shard_batch(batch, devices))
    assert abs(float(got_loss) - float(want_loss)) <= 1e-6
    for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
    experts = nnx.state(ours, nnx.Param)["layers"]["mlp"]["gate_proj"]
    assert placed["layers"]["mlp"]["gate_proj"].sharding.shard_shape(experts.shape) != experts.shape  # not whole
