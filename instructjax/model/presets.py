"""Named model presets: the papers' models and test sizes, each a `DecoderConfig`'s values (`preset(name)`); each
family's helper sets what its sizes share, each preset names its sizes by field and carries its family's switches
(`model.config.FAMILIES`)."""

from __future__ import annotations

from typing import Any

from instructjax.core.errors import ConfigError
from instructjax.model.config import FAMILIES, DecoderConfig, checked_overrides
from instructjax.model.families.record import alternating


def _llama1(**sizes: Any) -> dict[str, Any]:
    return dict(norm_eps=1e-6, max_position_embeddings=2048, **sizes)


def _llama2(**sizes: Any) -> dict[str, Any]:
    return dict(norm_eps=1e-5, max_position_embeddings=4096, **sizes)


def _llama3(*, rope_factor: float | None, **sizes: Any) -> dict[str, Any]:
    """LLaMA-3's vocabulary, 8 kv heads and RoPE base; `rope_factor`: 3.1's and 3.2's llama3 scaling (128K)."""
    scaling = None if rope_factor is None else {
        "rope_type": "llama3", "factor": rope_factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192}
    return dict(vocab_size=128256, num_kv_heads=8, norm_eps=1e-5, rope_theta=500000.0, rope_scaling=scaling,
                max_position_embeddings=8192 if rope_factor is None else 131072, bos_id=128000, eos_id=128001,
                **sizes)


def _qwen(**sizes: Any) -> dict[str, Any]:
    """Qwen2.5's and Qwen3's vocabulary (unless given), RoPE base and context."""
    return dict(vocab_size=sizes.pop("vocab_size", 151936), norm_eps=1e-6, rope_theta=1_000_000.0,
                max_position_embeddings=32768, bos_id=151643, eos_id=151643, **sizes)


def _gemma2(*, query_pre_attn_scalar: int, **sizes: Any) -> dict[str, Any]:
    """Gemma-2: 256-wide heads, soft-caps, a 4096-token window on every second layer."""
    return dict(family="gemma2", vocab_size=256000, head_dim=256, query_scale=query_pre_attn_scalar ** -0.5,
                attention_softcap=50.0, final_softcap=30.0, sliding_window=4096,
                layer_types=alternating(sizes["num_layers"], 2), max_position_embeddings=8192, bos_id=2, eos_id=1,
                pad_id=0, **sizes)


def _gemma3(*, rope_factor: float | None, **sizes: Any) -> dict[str, Any]:
    """Gemma-3: 256-wide heads, five sliding layers to a full one (their own RoPE base); `rope_factor`: the
    4B-and-up linear scaling (128K)."""
    return dict(family="gemma3", head_dim=256, query_scale=256 ** -0.5, rope_theta=1_000_000.0,
                local_rope_theta=10_000.0, layer_types=alternating(sizes["num_layers"], 6),
                max_position_embeddings=32768 if rope_factor is None else 131072,
                rope_scaling=None if rope_factor is None else {"rope_type": "linear", "factor": rope_factor},
                bos_id=2, eos_id=1, pad_id=0, **sizes)


_SIZES: dict[str, dict[str, Any]] = {  # each preset's own values; PRESETS adds its family's switches
    "llama1-7b": _llama1(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32),
    "llama1-13b": _llama1(hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40, num_kv_heads=40),
    "llama1-33b": _llama1(hidden_size=6656, intermediate_size=17920, num_layers=60, num_heads=52, num_kv_heads=52),
    "llama1-65b": _llama1(hidden_size=8192, intermediate_size=22016, num_layers=80, num_heads=64, num_kv_heads=64),
    "llama2-7b": _llama2(hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32, num_kv_heads=32),
    "llama2-13b": _llama2(hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40, num_kv_heads=40),
    "llama2-70b": _llama2(hidden_size=8192, intermediate_size=28672, num_layers=80, num_heads=64, num_kv_heads=8),
    "llama3-8b": _llama3(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, rope_factor=None),
    "llama3.1-8b": _llama3(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, rope_factor=8.0),
    "llama3.2-1b": _llama3(hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32, rope_factor=32.0,
                           tie_embeddings=True),
    "llama3.2-3b": _llama3(hidden_size=3072, intermediate_size=8192, num_layers=28, num_heads=24, rope_factor=32.0,
                           tie_embeddings=True),
    # Mistral-7B v0.1: LLaMA with grouped kv heads and a 4096-token sliding window on every layer
    "mistral-7b": dict(family="mistral", hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                       num_kv_heads=8, norm_eps=1e-5, max_position_embeddings=32768, sliding_window=4096),
    "qwen2.5-0.5b": _qwen(family="qwen2", hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
                          num_kv_heads=2, tie_embeddings=True),
    "qwen2.5-1.5b": _qwen(family="qwen2", hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
                          num_kv_heads=2, tie_embeddings=True),
    "qwen2.5-3b": _qwen(family="qwen2", hidden_size=2048, intermediate_size=11008, num_layers=36, num_heads=16,
                        num_kv_heads=2, tie_embeddings=True),
    "qwen2.5-7b": _qwen(family="qwen2", hidden_size=3584, intermediate_size=18944, num_layers=28, num_heads=28,
                        num_kv_heads=4, tie_embeddings=False, vocab_size=152064),
    "qwen3-0.6b": _qwen(family="qwen3", hidden_size=1024, intermediate_size=3072, num_layers=28, num_heads=16,
                        num_kv_heads=8, tie_embeddings=True, head_dim=128),
    "qwen3-1.7b": _qwen(family="qwen3", hidden_size=2048, intermediate_size=6144, num_layers=28, num_heads=16,
                        num_kv_heads=8, tie_embeddings=True, head_dim=128),
    "qwen3-4b": _qwen(family="qwen3", hidden_size=2560, intermediate_size=9728, num_layers=36, num_heads=32,
                      num_kv_heads=8, tie_embeddings=True, head_dim=128),
    "qwen3-8b": _qwen(family="qwen3", hidden_size=4096, intermediate_size=12288, num_layers=36, num_heads=32,
                      num_kv_heads=8, tie_embeddings=False, head_dim=128),
    # Phi-3-mini-4k: LLaMA's layer with fused files and a 2047-token window
    "phi3-mini": dict(family="phi3", vocab_size=32064, hidden_size=3072, intermediate_size=8192, num_layers=32,
                      num_heads=32, num_kv_heads=32, norm_eps=1e-5, max_position_embeddings=4096,
                      sliding_window=2047, eos_id=32000, pad_id=32000),
    "gemma2-2b": _gemma2(hidden_size=2304, intermediate_size=9216, num_layers=26, num_heads=8, num_kv_heads=4,
                         query_pre_attn_scalar=256),
    "gemma2-9b": _gemma2(hidden_size=3584, intermediate_size=14336, num_layers=42, num_heads=16, num_kv_heads=8,
                         query_pre_attn_scalar=256),
    "gemma3-1b": _gemma3(hidden_size=1152, intermediate_size=6912, num_layers=26, num_heads=4, num_kv_heads=1,
                         sliding_window=512, vocab_size=262144, rope_factor=None),
    "gemma3-4b": _gemma3(hidden_size=2560, intermediate_size=10240, num_layers=34, num_heads=8, num_kv_heads=4,
                         sliding_window=1024, vocab_size=262208, rope_factor=8.0),
    "opt-6.7b": dict(family="opt", vocab_size=50272, hidden_size=4096, intermediate_size=16384, num_layers=32,
                     num_heads=32, num_kv_heads=32, norm_eps=1e-5, max_position_embeddings=2048, bos_id=2, eos_id=2,
                     pad_id=1),
    "pythia-6.9b": dict(family="gpt_neox", vocab_size=50432, hidden_size=4096, intermediate_size=16384, num_layers=32,
                        num_heads=32, num_kv_heads=32, rotary_dims=32, norm_eps=1e-5, max_position_embeddings=2048,
                        bos_id=0, eos_id=0),
    # mixtures of experts (model/moe.py): their published config.json's sizes and routing
    "mixtral-8x7b": dict(family="mixtral", hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                         num_kv_heads=8, norm_eps=1e-5, rope_theta=1_000_000.0, max_position_embeddings=32768,
                         num_experts=8, experts_per_token=2),
    "qwen3-30b-a3b": _qwen(family="qwen3_moe", hidden_size=2048, intermediate_size=6144, num_layers=48, num_heads=32,
                           num_kv_heads=4, head_dim=128, tie_embeddings=False, num_experts=128, experts_per_token=8,
                           expert_size=768, router_norm_topk=True),
    "olmoe-1b-7b": dict(family="olmoe", vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_layers=16,
                        num_heads=16, num_kv_heads=16, norm_eps=1e-5, max_position_embeddings=4096, num_experts=64,
                        experts_per_token=8, bos_id=None, eos_id=50279, pad_id=1),
    # Test and smoke sizes (LLaMA vocabulary so the shipped SentencePiece tokenizer fits).
    "tiny": dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                 max_position_embeddings=512),
    "tiny-mha": dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=4,
                     max_position_embeddings=512),
    "small-100m": dict(hidden_size=768, intermediate_size=2048, num_layers=8, num_heads=12, num_kv_heads=4,
                       max_position_embeddings=2048),
}
# each preset carries its family's switches (its own values first)
PRESETS: dict[str, dict[str, Any]] = {
    name: {**values, **{k: v for k, v in FAMILIES[values.get("family", "llama")].items() if k not in values}}
    for name, values in _SIZES.items()
}


def preset(name: str, **overrides: Any) -> DecoderConfig:
    """The named preset (see `PRESETS`), with optional field overrides (checked as a config's `model:`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return DecoderConfig(**{**PRESETS[name], **checked_overrides(overrides)})  # head_dim follows the overrides
