"""The decoder beyond what tests/convert/test_families*.py check per family: every attention implementation inside the
model (LLaMA, and Gemma-2's alternating windows and soft-caps under a scan of layers), LLaMA-3 RoPE, every
preset's parameter count and config.json against transformers, bad configs, packing, bf16, remat policies."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from instructjax.convert import hf_config
from instructjax.convert.hf import hf_state, params_from_tensors
from instructjax.core.errors import ConfigError
from instructjax.model import rope
from instructjax.model.config import REMAT_POLICIES, DecoderConfig, param_count
from instructjax.model.decoder import PROJECTIONS, Decoder, abstract_model, with_params
from instructjax.model.presets import PRESETS, preset

ROPE_SCALED = dict(
    rope_theta=500000.0,
    # a small original context so that high-, medium- and low-frequency bands all occur at head_dim 16
    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64},
)

CASES = {
    "mha": preset("tiny-mha", dtype="float32"),
    "gqa": preset("tiny", dtype="float32"),
    "llama3-rope": preset("tiny", dtype="float32", **ROPE_SCALED),
    "tied": preset("tiny", dtype="float32", tie_embeddings=True, vocab_size=1000),
}


def random_model(config, seed=0):
    """A Decoder with numpy-random weights: no RNG compile, so tests stay fast."""
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(abstract_model(config))
    state = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, 0.05, x.shape), x.dtype), state)
    return nnx.merge(graphdef, state)


def random_hf_model(config: DecoderConfig, seed: int = 0):
    """The HF model of `config`'s family with every weight random (norm scales too, so swapped norms would show)."""
    torch.manual_seed(seed)
    hf = transformers.AutoConfig.for_model(**{**hf_config.to_hf(config), "torch_dtype": "float32"})
    hf._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(hf).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 0.0 if config.norm == "rms_plus_one" else 1.0
            p.copy_(base + 0.1 * torch.randn_like(p) if "norm" in name else 0.05 * torch.randn_like(p))
    return model


def ours_from_hf(hf_model, config: DecoderConfig) -> Decoder:
    state = {k: v.detach().numpy() for k, v in hf_model.state_dict().items()}
    return with_params(config, params_from_tensors(state, config))


MODES = {"scan": {}, "loop": {"scan_layers": False}}
ATTENTION = {impl: {"attention": impl, "attention_block": 128} for impl in ("xla", "blockwise", "splash", "pallas_gpu")}
# Gemma-2 in small: alternating sliding (window 40) and full layers, capped scores and logits, its own scale
GEMMA = DecoderConfig(family="gemma2", vocab_size=512, hidden_size=64, intermediate_size=96, num_layers=3, num_heads=4,
                      num_kv_heads=2, head_dim=16, norm="rms_plus_one", activation="gelu_tanh", sandwich_norms=True,
                      embed_scale=True, tie_embeddings=True, query_scale=24 ** -0.5, attention_softcap=2.0,
                      final_softcap=3.0, sliding_window=40, layer_types=("sliding", "full", "sliding"),
                      max_position_embeddings=512, dtype="float32")
CASES["gemma2"] = GEMMA


@pytest.mark.parametrize("case,length,mode", [(case, 24, "scan") for case in CASES] + [("gqa", 24, "loop")]
                         + [("gqa", 300, impl) for impl in ATTENTION] + [("gemma2", 300, impl) for impl in ATTENTION])
def test_logits_match_transformers(case, length, mode):
    # length 300 spans three attention blocks of 128, the last one partial; Pallas kernels run interpreted;
    # Gemma-2's sliding and full layers alternate under the scan: each kernel with and without its window
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
    (ours,) = rope.inv_freqs(config)
    assert np.allclose(ours, expected, rtol=1e-6, atol=0)
    (plain,) = rope.inv_freqs(preset("tiny", rope_theta=500000.0))
    # all three bands of LLaMA-3 scaling are exercised: unchanged, smoothed, divided by factor
    assert ours[0] == plain[0] and np.isclose(ours[-1], plain[-1] / 8.0) and np.any((ours < plain) & (ours > plain / 8))


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


# published sizes (the model cards' parameter counts) of the presets we are sure of
KNOWN_SIZES = {"llama2-7b": 6_738_415_616, "llama2-70b": 68_976_648_192, "llama3-8b": 8_030_261_248,
               "mistral-7b": 7_241_732_096, "llama3.2-1b": 1_235_814_400, "llama3.2-3b": 3_212_749_824,
               "qwen2.5-0.5b": 494_032_768, "qwen2.5-7b": 7_615_616_512, "phi3-mini": 3_821_079_552,
               "gemma2-2b": 2_614_341_888, "opt-6.7b": 6_658_473_984, "pythia-6.9b": 6_857_302_016}


def hf_meta_model(config: DecoderConfig):
    """transformers' model of the config.json we write for `config`, on the meta device (no memory)."""
    hf = transformers.AutoConfig.for_model(**hf_config.to_hf(config))
    with torch.device("meta"):
        return transformers.AutoModelForCausalLM.from_config(hf)


@pytest.mark.parametrize("name", list(PRESETS))
def test_param_count_matches_transformers(name):
    config = preset(name)
    assert param_count(config) == hf_meta_model(config).num_parameters()
    if name in KNOWN_SIZES:
        assert param_count(config) == KNOWN_SIZES[name]
    if name.startswith(("tiny", "small")):
        abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
        assert sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))) == param_count(config)
    if name == "small-100m":
        assert 90e6 < param_count(config) < 110e6


@pytest.mark.parametrize("name", list(PRESETS))
def test_hf_config_round_trip(name):
    """Our config.json read back gives the same config, and so does transformers' own reading of it (its
    config class's dict, in transformers 5's form: rope_parameters, layer_types)."""
    config = preset(name)
    hf = hf_config.to_hf(config)
    assert hf_config.from_hf(hf, dtype=config.dtype) == config
    loaded = transformers.AutoConfig.for_model(**hf).to_dict()
    assert hf_config.from_hf(loaded, dtype=config.dtype) == config


def test_bad_configs_raise_config_error():
    with pytest.raises(ConfigError, match="num_kv_heads"):
        preset("tiny", num_kv_heads=3)
    with pytest.raises(ConfigError, match="remat"):
        preset("tiny", remat="sometimes")
    with pytest.raises(ConfigError, match="unknown model preset"):
        preset("llama9-1t")
    with pytest.raises(ConfigError, match="rope_scaling"):
        preset("tiny", rope_scaling={"rope_type": "llama3", "factor": 8.0})
    with pytest.raises(ConfigError, match="layer_types"):
        preset("tiny", layer_types=["full", "sliding"])  # sliding layers without a window
    with pytest.raises(ConfigError, match="norm="):
        preset("tiny", norm="batch")


@pytest.mark.parametrize("sizes, after", [((5, 0, 3, 2), 0), ((0, 0, 10, 0), 0), ((1, 1, 1, 7), 0),
                                          ((2, 0, 3, 0), 9)])
def test_grouped_matmul_on_cpu_against_numpy(sizes, after):
    """model/moe.py's grouped matmul (on a CPU: blocks of rows, each group padded to whole blocks) gives each group's
    rows times its own matrix, and that product's gradients, as float64 numpy does; empty and whole groups included,
    and `after` rows after the groups (an expert device's copies of other devices' experts), which read 0."""
    from instructjax.model.moe import grouped_matmul

    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((sum(sizes) + after, 6)), rng.standard_normal((len(sizes), 6, 5))
    group = np.repeat(np.arange(len(sizes) + 1), sizes + (after,))
    wz = np.concatenate([w, np.zeros((1, 6, 5))])  # the rows after the groups: times 0
    want = np.einsum("mi,mio->mo", x, wz[group])
    f = lambda x, w: grouped_matmul(x, w, jnp.asarray(sizes, jnp.int32))  # noqa: E731
    got = jax.jit(f)(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)
    dx, dw = jax.grad(lambda x, w: jnp.sum(f(x, w) ** 2) / 2, argnums=(0, 1))(jnp.asarray(x, jnp.float32),
                                                                             jnp.asarray(w, jnp.float32))
    np.testing.assert_allclose(np.asarray(dx), np.einsum("mo,mio->mi", want, wz[group]), atol=1e-4)
    want_dw = np.zeros_like(wz)
    np.add.at(want_dw, group, np.einsum("mi,mo->mio", x, want))
    np.testing.assert_allclose(np.asarray(dw), want_dw[:-1], atol=1e-4)
