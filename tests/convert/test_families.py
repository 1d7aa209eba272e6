"""Every family against transformers' own modeling code: a tiny random model built and saved by transformers
(windows and soft-caps small enough to matter at these lengths), imported from its directory, then
- logits within float32 tolerance (scanned layers and a Python loop of layers),
- whole-model gradients against torch autograd, mapped back to HF names by the exporter,
- packed rows equal to the rows alone,
- greedy generation token-identical to transformers' `generate`, past the window,
- export writes the same tensors, byte for byte, that were imported;
and for the mixtures of experts (4 experts, top-2): each sparse layer's top-k choices, and the loss with the router's
load-balancing loss at the family's coefficient and its gradients, equal transformers' (`output_router_logits`)."""

from __future__ import annotations

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from safetensors.numpy import load_file

from instructjax.convert.hf import HFTensors, hf_state, params_from_tensors, params_to_hf, read_hf_config
from instructjax.eval.generate import Sampling, generate_ids
from instructjax.model.decoder import with_params

SMALL = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
WINDOW = 6  # shorter than the test rows (24 tokens) and the generated continuations
LONGROPE = dict(rope_type="longrope", short_factor=[1.0, 1.1, 1.3, 1.6], long_factor=[1.5, 2.0, 3.0, 4.0])

FAMILIES = {
    "llama": (transformers.LlamaConfig, dict(num_key_value_heads=2, rope_scaling=dict(
        rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16),
        rope_theta=500000.0)),
    "mistral": (transformers.MistralConfig, dict(num_key_value_heads=2, sliding_window=WINDOW, head_dim=16)),
    "qwen2": (transformers.Qwen2Config, dict(num_key_value_heads=2, use_sliding_window=True, sliding_window=WINDOW,
                                             max_window_layers=1, tie_word_embeddings=True)),
    "qwen3": (transformers.Qwen3Config, dict(num_key_value_heads=2, head_dim=24)),
    "phi3": (transformers.Phi3Config, dict(num_key_value_heads=2, sliding_window=WINDOW, partial_rotary_factor=0.5,
                                           rope_scaling=LONGROPE, original_max_position_embeddings=16)),
    "gemma2": (transformers.Gemma2Config, dict(num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
                                               sliding_window=WINDOW, attn_logit_softcapping=2.0,
                                               final_logit_softcapping=3.0)),
    "gemma3": (transformers.Gemma3TextConfig, dict(num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16,
                                                   sliding_window=WINDOW, sliding_window_pattern=2,
                                                   rope_local_base_freq=100.0, rope_theta=10000.0,
                                                   rope_scaling=dict(rope_type="linear", factor=2.0))),
    "opt": (transformers.OPTConfig, dict(ffn_dim=96, word_embed_proj_dim=64, do_layer_norm_before=True)),
    "gpt_neox": (transformers.GPTNeoXConfig, dict(rotary_pct=0.5, use_parallel_residual=True, bos_token_id=1)),
    "mixtral": (transformers.MixtralConfig, dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                                                 sliding_window=WINDOW)),
    "qwen3_moe": (transformers.Qwen3MoeConfig, dict(num_key_value_heads=2, head_dim=24, num_experts=4,
                                                    num_experts_per_tok=2, moe_intermediate_size=48,
                                                    mlp_only_layers=[1], norm_topk_prob=True)),
    "olmoe": (transformers.OlmoeConfig, dict(num_key_value_heads=2, num_experts=4, num_experts_per_tok=2)),
}
MOE = ("mixtral", "qwen3_moe", "olmoe")
CAUSAL_LM = {"gemma3": transformers.Gemma3ForCausalLM}
IN_MEMORY = {"embed_out.weight": "lm_head.weight"}  # transformers 5 renames GPT-NeoX's head when it loads the file


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every weight random, norms around 1 (or 0 for Gemma's 1 + w) and biases non-zero, so a swapped
    tensor shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):  # a router: choices far from ties
                p.copy_(0.5 * torch.randn_like(p))
            elif "norm" in name and name.endswith("weight"):
                base = 0.0 if isinstance(model, (transformers.Gemma2ForCausalLM, transformers.Gemma3ForCausalLM)) \
                    else 1.0
                p.copy_(base + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(name, HF model, our model (scanned), our config, HF directory) of one family."""
    name = request.param
    config_class, extra = FAMILIES[name]
    hf_config = config_class(**{**SMALL, **extra})
    hf_config._attn_implementation = "eager"
    model_class = CAUSAL_LM.get(name) or transformers.AutoModelForCausalLM.from_config(hf_config).__class__
    hf_model = model_class(hf_config).eval()
    randomise(hf_model, seed=len(name))
    path = tmp_path_factory.mktemp(name)
    hf_model.save_pretrained(path, safe_serialization=True)
    config = read_hf_config(str(path)).replace(attention="xla")
    assert config.family == name
    ours = with_params(config, params_from_tensors(HFTensors(str(path)), config))
    return name, hf_model, ours, config, path


def positions_of(tokens: np.ndarray) -> jnp.ndarray:
    return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


def test_config_reads_the_family(family):
    name, hf_model, _, config, _ = family
    switches = {"gemma2": ("attention_softcap", 2.0), "gemma3": ("qk_norm", True), "qwen3": ("qk_norm", True),
                "opt": ("positions", "learned"), "gpt_neox": ("rotary_dims", 8), "phi3": ("rotary_dims", 8),
                "mistral": ("sliding_window", WINDOW), "qwen2": ("layer_types", ("full", "sliding", "sliding"))}
    if name in switches:
        key, value = switches[name]
        assert getattr(config, key) == value
    assert sum(p.numel() for p in hf_model.parameters()) == sum(
        x.size for x in jax.tree.leaves(nnx.state(family[2], nnx.Param)))


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "loop"])
def test_logits_match_transformers(family, scan):
    name, hf_model, ours, config, path = family
    if not scan:
        loop = config.replace(scan_layers=False)
        ours = with_params(loop, params_from_tensors(HFTensors(str(path)), loop))
    tokens = np.random.default_rng(0).integers(3, config.vocab_size, size=(2, 24))
    with torch.no_grad():
        expected = hf_model(torch.tensor(tokens)).logits.numpy()
    got = np.asarray(ours(jnp.asarray(tokens), positions_of(tokens), jnp.ones_like(tokens)))
    assert np.abs(got - expected).max() <= 2e-4 * max(1.0, np.abs(expected).max()), np.abs(got - expected).max()


def hf_gradients(hf_model, name: str, directory) -> dict[str, np.ndarray]:
    """Each parameter's gradient under its file name; a mixture of experts' fused in-memory experts saved by
    transformers itself as the per-expert tensors of its files (its gradients put in place of its weights)."""
    if name not in MOE:
        return {n: p.grad.numpy() for n, p in hf_model.named_parameters() if p.grad is not None}
    with torch.no_grad():
        for p in hf_model.parameters():
            p.copy_(p.grad)
    hf_model.save_pretrained(directory / "grads")
    return load_file(str(directory / "grads" / "model.safetensors"))


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


def test_packed_rows_equal_the_rows_alone(family):
    """Two documents packed in one row (positions restarting, segments 1 and 2, padding after) give each
    document's logits alone: no attention, window or position leaks across the boundary."""
    name, hf_model, ours, config, _ = family
    rng = np.random.default_rng(1)
    a, b = rng.integers(3, config.vocab_size, 9), rng.integers(3, config.vocab_size, 13)
    row = np.concatenate([a, b, [0, 0]])[None]
    segments = np.repeat([1, 2, 0], [9, 13, 2])[None]
    positions = np.concatenate([np.arange(9), np.arange(13), [0, 0]])[None]
    packed = np.asarray(ours(jnp.asarray(row), jnp.asarray(positions), jnp.asarray(segments)))
    for doc, where in ((a, slice(0, 9)), (b, slice(9, 22))):
        alone = np.asarray(ours(jnp.asarray(doc[None]), positions_of(doc[None]), jnp.ones((1, len(doc)), jnp.int32)))
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


def test_export_writes_the_imported_tensors_byte_for_byte(family, tmp_path):
    name, _, ours, config, path = family
    params = nnx.state(ours, nnx.Param).to_pure_dict()
    params_to_hf(params, config, str(tmp_path), dtype="float32")
    original, exported = load_file(str(path / "model.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    assert sorted(exported) == sorted(n for n in original if n in exported)
    missing = set(original) - set(exported)
    assert missing <= {"lm_head.weight"} and (not missing or config.tie_embeddings)
    for n, tensor in exported.items():
        assert tensor.dtype == original[n].dtype and tensor.tobytes() == original[n].tobytes(), n


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    from helpers import pretrained_models as pm  # tests/helpers/pretrained_models.py

    return pm.bpe_tokenizer(str(tmp_path_factory.mktemp("bpe")), vocab_size=250)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma2", "phi3", "gpt_neox", "qwen3_moe"])
def test_import_train_export_score_through_the_cli(name, bpe_dir, tmp_path):
    """`instructjax import` of the family's HF directory (with its own tokenizer), a training step from it,
    `export`, and transformers reading the export: its logits equal the trained checkpoint's, and `score`
    gives transformers' log-probabilities."""
    import shutil

    import yaml
    from helpers import pretrained_models as pm

    from instructjax import cli
    from instructjax.convert.saved import load_model
    from instructjax.eval.score import score_ids

    config_class, extra = FAMILIES[name]
    hf_config = config_class(**{**SMALL, **extra, "vocab_size": 272, "eos_token_id": 0, "bos_token_id": None,
                                "pad_token_id": None})
    hf_config._attn_implementation = "eager"
    hf_model = (CAUSAL_LM.get(name) or transformers.AutoModelForCausalLM).from_config(hf_config).eval()
    randomise(hf_model, seed=3)
    hf_model.save_pretrained(tmp_path / "hf")
    shutil.copytree(bpe_dir, tmp_path / "hf", dirs_exist_ok=True)  # the model's own tokenizer beside it
    assert cli.main(["import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in pm.ALPACA_ROWS))
    run = {"run_dir": str(tmp_path / "run"), "max_steps": 2, "log_every": 1, "seed": 0,
           "model": {"init_from": str(tmp_path / "ckpt"), "dtype": "float32", "attention": "xla"},
           "data": {"mixture": "rows", "seq_len": 128, "global_batch": 8, "pack": False},
           "optim": {"lr": 1e-3, "loss_chunk": 64},
           "define": {"tasks": {"rows": {"source": "alpaca", "data_files": [str(rows)], "template": "tulu"}},
                      "mixtures": {"rows": {"mode": "epoch", "counts": {"rows": None}}}}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    assert cli.main(["train", "--config", str(tmp_path / "run.yaml")]) == 0
    if name in MOE:  # the router's losses and each sparse layer's expert shares, logged
        from instructjax.train.metrics import read_metrics

        last = read_metrics(str(tmp_path / "run"))[-1]
        assert last["moe/aux_loss"] > 0 and last["moe/z_loss"] > 0
        for layer in (0, 1):  # the two sparse layers of three (mlp_only_layers=[1])
            assert 0 <= last[f"moe/layer_{layer}/min_share"] <= 0.25 <= last[f"moe/layer_{layer}/max_share"] <= 1
    assert cli.main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "export")]) == 0
    ours = load_model(str(tmp_path / "run"), dtype="float32")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
    assert type(theirs) is type(hf_model)
    ids = np.random.default_rng(5).integers(3, 250, (1, 30))
    with torch.no_grad():
        expected = theirs(torch.tensor(ids)).logits.numpy()
    got = np.asarray(ours(jnp.asarray(ids), positions_of(ids), jnp.ones_like(jnp.asarray(ids))))
    assert np.abs(got - expected).max() <= 2e-4 * max(1.0, np.abs(expected).max())
    assert np.abs(expected - hf_model(torch.tensor(ids)).logits.detach().numpy()).max() > 1e-4  # it trained
    (scored,) = score_ids(ours, [ids[0].tolist()])
    log_probs = torch.log_softmax(torch.tensor(expected[0]), -1)[np.arange(29), ids[0, 1:]].numpy()
    np.testing.assert_allclose(scored.logprobs, log_probs, atol=1e-4)


def padded_batch(config, lengths=(20, 14)):
    """Two rows of `lengths` tokens, right-padded: tokens, the real-token mask and each row's positions."""
    rng = np.random.default_rng(6)
    tokens = rng.integers(3, config.vocab_size, (len(lengths), max(lengths)))
    mask = (np.arange(max(lengths))[None] < np.asarray(lengths)[:, None]).astype(np.int64)
    return tokens * mask, mask, positions_of(tokens)


def moe_only(family):
    if family[0] not in MOE:
        pytest.skip("a mixture of experts' router")
    return family


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
