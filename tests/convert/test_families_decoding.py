"""Every family's packed rows equal to the rows alone, greedy generation token-identical to transformers'
`generate` past the window, and for the mixtures of experts (4 experts, top-2) each sparse layer's top-k choices
equal to transformers'."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from helpers.families import (
    moe_only,
    padded_batch,
    positions_of,
)

from instructjax.convert.hf import HFTensors, params_from_tensors
from instructjax.eval.generate import Sampling, generate_ids
from instructjax.model.decoder import with_params


def test_packed_rows_equal_the_rows_alone(family):
    """Two documents packed in one row (positions restarting, segments 1 and 2, padding after) give each
    document's logits alone: no attention, window or position leaks across the boundary."""
    name, hf_model, ours, config, _ = family
    rng = np.random.default_rng(1)
    a, b = rng.integers(3, config.vocab_size, 9), rng.integers(3, config.vocab_size, 13)
    row = np.concatenate([a, b, [0, 0]])[None]
    segments = np.repeat([1, 2, 0], [9, 13, 2])[None]
    positions = np.concatenate([np.arange(9), np.arange(13), [0, 0]])[None]
    call = nnx.jit(lambda model, *args: model(*args))  # one program a shape, not the layers' ops one by one
    packed = np.asarray(call(ours, jnp.asarray(row), jnp.asarray(positions), jnp.asarray(segments)))
    for doc, where in ((a, slice(0, 9)), (b, slice(9, 22))):
        alone = np.asarray(call(ours, jnp.asarray(doc[None]), positions_of(doc[None]),
                                jnp.ones((1, len(doc)), jnp.int32)))
        np.testing.assert_allclose(packed[0, where], alone[0], atol=2e-5 * max(1.0, np.abs(alone).max()))
        with torch.no_grad():
            hf_alone = hf_model(torch.tensor(doc[None])).logits.numpy()
        np.testing.assert_allclose(alone, hf_alone, atol=2e-4 * max(1.0, np.abs(hf_alone).max()))


def test_greedy_generation_matches_transformers_past_the_window(family):
    name, hf_model, ours, config, _ = family
    prompts = [[1, 17, 99, 42], [1, 250, 7]]
    got = generate_ids(ours, prompts, Sampling(max_new_tokens=16), stop_ids=[-1])  # batched, left-padded
    for prompt, ids in zip(prompts, got, strict=True):
        with torch.no_grad():
            hf = hf_model.generate(torch.tensor([prompt]), max_new_tokens=16, do_sample=False, eos_token_id=None,
                                   pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
        assert ids == hf[0, len(prompt):].tolist()


def test_router_choices_match_transformers(family):
    """Each sparse layer's top-k experts of every real token are transformers' (the softmax's top k of its router
    logits), in both layouts of our layers."""
    name, hf_model, _, config, path = moe_only(family)
    loop = config.replace(scan_layers=False)
    ours = with_params(loop, params_from_tensors(HFTensors(str(path)), loop))
    tokens, mask, positions = padded_batch(config)
    with torch.no_grad():
        logits = hf_model(torch.tensor(tokens), attention_mask=torch.tensor(mask), output_router_logits=True)
    expected = [torch.topk(torch.softmax(r.float(), -1), config.experts_per_token).indices.numpy()
                for r in logits.router_logits]
    x = ours._embeddings(jnp.asarray(tokens), positions, None)
    kinds = ours._kinds(positions, jnp.asarray(mask), decoding=False)
    got = []
    for i, layer in enumerate(ours.layers):  # each sparse layer's input: after the attention's residual
        if config.sparse_layer(i):
            attended = x + layer.self_attn(layer.input_layernorm(x), 0, kinds)
            got.append(np.asarray(layer.mlp.choices(layer.post_attention_layernorm(attended))))
        x = layer(x, 0, kinds)[0]
    assert len(got) == len(expected) == len(config.sparse_layers) and (name != "qwen3_moe" or len(got) == 2)
    real = mask.reshape(-1) > 0
    for ours_k, theirs_k in zip(got, expected, strict=True):
        np.testing.assert_array_equal(ours_k[real], theirs_k[real])


