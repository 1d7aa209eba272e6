"""The Flax LLaMA against transformers' PyTorch LlamaForCausalLM (same random weights), packing, remat."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from instructjax.convert.hf import hf_state, params_from_tensors
from instructjax.core.errors import ConfigError
from instructjax.model.config import PRESETS, REMAT_POLICIES, LlamaConfig, param_count, preset
from instructjax.model.llama import PROJECTIONS, Llama, abstract_model, rope_inv_freq, with_params

ROPE_SCALED = dict(
    rope_theta=500000.0,
    # a small original context so that high-, medium- and low-frequency bands all occur at head_dim 16
    rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64},
)

CASES = {
    "mha": preset("tiny-mha", dtype="float32"),
    "gqa": preset("tiny", dtype="float32"),
    "llama3-rope": preset("tiny", dtype="float32", **ROPE_SCALED),
    "tied": preset("tiny", dtype="float32", tie_embeddings=True, vocab_size=1000),
}


def random_model(config, seed=0):
    """A Llama with numpy-random weights: no RNG compile, so tests stay fast."""
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(abstract_model(config))
    state = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.05, x.shape), x.dtype), state)
    return nnx.merge(graphdef, state)


def random_hf_model(config: LlamaConfig, seed: int = 0) -> transformers.LlamaForCausalLM:
    """An HF LLaMA with every weight random (norm scales too, so swapped norms would show)."""
    torch.manual_seed(seed)
    hf_config = transformers.LlamaConfig(**{**config.to_hf_dict(), "torch_dtype": "float32"})
    model = transformers.LlamaForCausalLM(hf_config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in name else 0.05 * torch.randn_like(p))
    return model


def ours_from_hf(hf_model, config: LlamaConfig) -> Llama:
    state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    return with_params(config, params_from_tensors(state, config))


MODES = {"scan": {}, "loop": {"scan_layers": False}}
ATTENTION = {impl: {"attention": impl, "attention_block": 128} for impl in ("xla", "blockwise", "splash", "pallas_gpu")}


@pytest.mark.parametrize("case,length,mode", [(case, 24, "scan") for case in CASES] + [("gqa", 24, "loop")]
                         + [("gqa", 300, impl) for impl in ATTENTION])
def test_logits_match_transformers(case, length, mode):
    # length 300 spans three attention blocks of 128, the last one partial; Pallas kernels run interpreted
    config = CASES[case].replace(**{**MODES, **ATTENTION}[mode])
    hf_model = random_hf_model(config)
    model = ours_from_hf(hf_model, config)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=(2, length))
    with torch.no_grad():
        expected = hf_model(torch.tensor(tokens)).logits.numpy()
    positions = np.broadcast_to(np.arange(length), tokens.shape)
    ours = np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions), jnp.ones_like(tokens)))
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1e-4, np.abs(ours - expected).max()


@pytest.mark.parametrize("mode", ["scan", "loop"])
def test_gradients_match_transformers(mode):
    """The whole backward pass (scanned or looped layers under full remat, blockwise attention with its
    custom VJP over several tiles) against torch autograd of the same HF model."""
    config = CASES["gqa"].replace(remat="full", attention="blockwise", attention_block=16, **MODES[mode])
    hf_model = random_hf_model(config, seed=5)
    model = ours_from_hf(hf_model, config)
    rng = np.random.default_rng(4)
    tokens, targets = rng.integers(0, config.vocab_size, (2, 2, 40))
    weights = rng.random((2, 40)).astype(np.float32)
    logits = hf_model(torch.tensor(tokens)).logits
    nll = -torch.log_softmax(logits, -1).gather(-1, torch.tensor(targets)[..., None])[..., 0]
    (nll * torch.tensor(weights)).sum().backward()
    expected = {name: p.grad.numpy() for name, p in hf_model.named_parameters()}

    positions = jnp.broadcast_to(jnp.arange(40), (2, 40))

    def loss(m):
        log_probs = jax.nn.log_softmax(m(jnp.asarray(tokens), positions, jnp.ones((2, 40), jnp.int32)))
        return -(jnp.take_along_axis(log_probs, jnp.asarray(targets)[..., None], -1)[..., 0] * weights).sum()

    grads = hf_state(nnx.state(nnx.jit(nnx.grad(loss))(model), nnx.Param).to_pure_dict(), config)
    assert sorted(grads) == sorted(expected)
    for name, value in expected.items():
        scale = np.abs(value).max()
        assert np.abs(grads[name] - value).max() <= 1e-4 * scale + 1e-7, name


def test_rope_inv_freq_matches_transformers():
    config = CASES["llama3-rope"]
    hf_model = random_hf_model(config)
    expected = hf_model.model.rotary_emb.inv_freq.numpy()
    ours = rope_inv_freq(config)
    assert np.allclose(ours, expected, rtol=1e-6, atol=0)
    plain = rope_inv_freq(preset("tiny", rope_theta=500000.0))
    # all three bands of LLaMA-3 scaling are exercised: unchanged, smoothed, divided by factor
    assert ours[0] == plain[0] and np.isclose(ours[-1], plain[-1] / 8.0) and np.any((ours < plain) & (ours > plain / 8))


@pytest.mark.parametrize("case", ["gqa", "tied"])
def test_export_round_trips_hf_state_dict(case):
    config = CASES[case]
    hf_model = random_hf_model(config, seed=3)
    exported = hf_state(nnx.state(ours_from_hf(hf_model, config), nnx.Param).to_pure_dict(), config)
    state = {k: v.numpy() for k, v in hf_model.state_dict().items() if k != "lm_head.weight" or not config.tie_embeddings}
    assert sorted(exported) == sorted(state)
    for name, value in state.items():
        np.testing.assert_array_equal(exported[name], value, err_msg=name)


def test_load_rejects_mismatched_checkpoint():
    config = CASES["gqa"]
    tensors = {k: v.numpy() for k, v in random_hf_model(config).state_dict().items()}
    with pytest.raises(ConfigError, match="k_proj"):
        params_from_tensors(tensors, config.replace(num_kv_heads=4))
    del tensors["model.norm.weight"]
    with pytest.raises(ConfigError, match="model.norm.weight"):
        params_from_tensors(tensors, config)


@nnx.jit
def forward(model, tokens, positions, segment_ids):
    return model(tokens, positions, segment_ids)


def test_packed_row_gives_each_segment_its_own_logits():
    config = CASES["gqa"]
    model = random_model(config)
    rng = np.random.default_rng(1)
    lengths, width = [5, 7, 3], 19
    pieces = [rng.integers(0, config.vocab_size, n) for n in lengths]
    tokens, positions, segments = np.zeros((4, width), int), np.zeros((4, width), int), np.zeros((4, width), int)
    # row 0: the three pieces packed (then 4 padding tokens); row i: piece i alone at the start of a row
    start = 0
    for i, piece in enumerate(pieces):
        n = len(piece)
        tokens[0, start:start + n], positions[0, start:start + n], segments[0, start:start + n] = piece, range(n), i + 1
        tokens[i + 1, :n], positions[i + 1, :n], segments[i + 1, :n] = piece, range(n), 1
        start += n
    logits = np.asarray(forward(model, jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(segments)))
    start = 0
    for i, n in enumerate(lengths):
        np.testing.assert_allclose(logits[0, start:start + n], logits[i + 1, :n], atol=1e-5, rtol=0)
        start += n
    assert np.all(np.isfinite(logits))
    # and segment masking matters: without it the second piece would see the first
    unmasked = forward(model, jnp.asarray(tokens[:1]), jnp.asarray(positions[:1]), jnp.ones((1, width), jnp.int32))
    assert np.abs(np.asarray(unmasked)[0, 5:12] - logits[2, :7]).max() > 1e-3


def test_bf16_compute_over_fp32_params():
    config = CASES["gqa"]
    hf_model = random_hf_model(config)
    fp32 = ours_from_hf(hf_model, config)
    bf16 = ours_from_hf(hf_model, config.replace(dtype="bfloat16"))
    assert bf16.layers.mlp.up_proj.kernel[...].dtype == jnp.float32
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, config.vocab_size, (2, 16)))
    positions, segments = jnp.broadcast_to(jnp.arange(16), (2, 16)), jnp.ones((2, 16), jnp.int32)
    low = forward(bf16, tokens, positions, segments)
    high = forward(fp32, tokens, positions, segments)
    assert low.dtype == jnp.bfloat16
    err = np.abs(np.asarray(low, np.float32) - np.asarray(high))
    assert err.max() < 0.05 * np.abs(np.asarray(high)).max()


def _grads(config):
    model = random_model(config)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, config.vocab_size, (2, 12)))
    positions = jnp.broadcast_to(jnp.arange(12), (2, 12))
    segments = jnp.asarray(np.repeat([[1, 2]], 6, axis=1))

    @nnx.jit
    def grad_fn(model):
        return nnx.grad(lambda m: jnp.mean(jax.nn.log_softmax(m(tokens, positions, segments))[..., 7]))(model)

    return jax.tree.leaves(grad_fn(model))


@pytest.mark.slow
def test_remat_policies_give_the_same_gradients():
    config = CASES["gqa"].replace(vocab_size=512)
    base = _grads(config)
    for policy in REMAT_POLICIES[1:]:
        for g, ref in zip(_grads(config.replace(remat=policy)), base, strict=True):
            np.testing.assert_allclose(np.asarray(g), np.asarray(ref), atol=1e-6, err_msg=policy)


def test_minimal_with_context_keeps_the_projections_and_the_attention_output():
    """What JAX actually saves for the backward pass under `minimal_with_context` (looped layers, where the
    names survive): every projection's output and the attention output of every layer that the backward
    reads (all but down_proj's: the residual add after it is linear), and no other activation inside a
    layer (norms, RoPE and the SwiGLU product are recomputed)."""
    from jax._src.ad_checkpoint import saved_residuals

    config = CASES["gqa"].replace(vocab_size=512, remat="minimal_with_context", scan_layers=False,
                                  attention="blockwise")
    graphdef, state = nnx.split(random_model(config))
    tokens = jnp.zeros((2, 12), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(12), (2, 12))

    def loss(state):
        return nnx.merge(graphdef, state)(tokens, positions, jnp.ones((2, 12), jnp.int32)).sum()

    named = [re.search(r"named '(\w+)'", d).group(1) for _, d in saved_residuals(loss, state) if "named '" in d]
    read = [name for name in (*PROJECTIONS, "attention") if name != "down_proj"]
    assert sorted(named) == sorted(read * config.num_layers)
    inside = [d for _, d in saved_residuals(loss, state) if "llama.py" in d and "named" not in d
              and ("MLP" in d or "Attention" in d or "apply_rope" in d)]
    assert not inside, inside


KNOWN_SIZES = {"llama2-7b": 6_738_415_616, "llama2-70b": 68_976_648_192, "llama3-8b": 8_030_261_248,
               "mistral-7b": 7_241_732_096}


@pytest.mark.parametrize("name", list(PRESETS))
def test_param_count_matches_transformers(name):
    config = preset(name)
    with torch.device("meta"):
        hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config.to_hf_dict()))
    assert param_count(config) == hf_model.num_parameters()
    if name in KNOWN_SIZES:
        assert param_count(config) == KNOWN_SIZES[name]
    if name.startswith(("tiny", "small")):
        abstract = nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))
        assert sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))) == param_count(config)
    if name == "small-100m":
        assert 90e6 < param_count(config) < 110e6


@pytest.mark.parametrize("name", ["llama1-33b", "llama2-70b", "llama3.1-8b", "tiny"])
def test_hf_config_round_trip(name):
    config = preset(name)
    hf = config.to_hf_dict()
    assert LlamaConfig.from_hf_dict(hf) == config
    # transformers reads the same numbers (incl. the llama3 rope parameters) from our dict
    loaded = transformers.LlamaConfig.from_dict(hf).to_dict()
    assert LlamaConfig.from_hf_dict(loaded, dtype=config.dtype) == config


def test_bad_configs_raise_config_error():
    with pytest.raises(ConfigError, match="num_kv_heads"):
        preset("tiny", num_kv_heads=3)
    with pytest.raises(ConfigError, match="remat"):
        preset("tiny", remat="sometimes")
    with pytest.raises(ConfigError, match="unknown model preset"):
        preset("llama9-1t")
    with pytest.raises(ConfigError, match="rope_scaling"):
        preset("tiny", rope_scaling={"factor": 8.0})
