"""The tiny random models of every family, built and saved by transformers, and imported (tests/convert/
test_families*.py compare them against transformers' own modeling code)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from instructjax.convert.hf import HFTensors, params_from_tensors, read_hf_config
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


def build_family(name: str, path, **overrides) -> tuple:
    """(name, HF model, our model (scanned), our config, HF directory) of one family (its HF config's fields
    `overrides` changed), saved by transformers under path and imported from there."""
    config_class, extra = FAMILIES[name]
    hf_config = config_class(**{**SMALL, **extra, **overrides})
    hf_config._attn_implementation = "eager"
    model_class = CAUSAL_LM.get(name) or transformers.AutoModelForCausalLM.from_config(hf_config).__class__
    hf_model = model_class(hf_config).eval()
    randomise(hf_model, seed=len(name))
    hf_model.save_pretrained(path, safe_serialization=True)
    config = read_hf_config(str(path)).replace(attention="xla")
    assert config.family == name
    ours = with_params(config, params_from_tensors(HFTensors(str(path)), config))
    return name, hf_model, ours, config, path


def positions_of(tokens: np.ndarray) -> jnp.ndarray:
    return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


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


