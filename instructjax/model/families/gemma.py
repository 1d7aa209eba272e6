"""Gemma-2 and Gemma-3.

Switches (the records' `switches` below): norms x * (1 + w), a tanh-GELU gated MLP, four norms a layer (sandwich),
embeddings times sqrt(hidden_size), tied embeddings; Gemma-3 adds q/k norms. Presets gemma2-*, gemma3-*.
config.json: `hidden_activation`; `query_pre_attn_scalar` (the scores' scale), `attn_logit_softcapping` and
`final_logit_softcapping`; `attention_bias` only when true. Without `layer_types`, every second layer (Gemma-2) or
every `sliding_window_pattern`-th (Gemma-3, 6) is full and the others slide. Gemma-3's sliding layers have their
own RoPE base (`rope_local_base_freq`, or `rope_parameters.sliding_attention`), its model_type is gemma3_text.
Tensors: LLaMA's, HF's post_attention_layernorm being the attention output's norm, then
pre_feedforward_layernorm and post_feedforward_layernorm (`llama.layer_tensors` with sandwich norms).
"""

from __future__ import annotations

from typing import Any

from instructjax.model.families.llama import layer_tensors
from instructjax.model.families.record import (
    HF_ACTIVATION,
    DecoderConfig,
    Family,
    alternating,
    layer_types_keys,
    rope_parameters,
    shape_keys,
)


def read(hf: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {"qkv_bias": True, "o_bias": True} if hf.get("attention_bias") else {}
    return {**out, "query_scale": float(hf.get("query_pre_attn_scalar", 256)) ** -0.5,
            "attention_softcap": hf.get("attn_logit_softcapping"), "final_softcap": hf.get("final_logit_softcapping")}


def _keys(config: DecoderConfig) -> dict[str, Any]:
    """Every Gemma key but the RoPE parameters."""
    scalar = round(config.query_scale ** -2, 6) if config.query_scale else config.head_dim
    return {**shape_keys(config), "rms_norm_eps": config.norm_eps,
            "hidden_activation": HF_ACTIVATION[config.activation], "attention_bias": config.qkv_bias,
            "sliding_window": config.sliding_window, **layer_types_keys(config),
            "query_pre_attn_scalar": int(scalar) if float(scalar).is_integer() else scalar,
            "attn_logit_softcapping": config.attention_softcap, "final_logit_softcapping": config.final_softcap}


def write_gemma2(config: DecoderConfig) -> dict[str, Any]:
    return {**_keys(config), "rope_parameters": rope_parameters(config)}


def write_gemma3(config: DecoderConfig) -> dict[str, Any]:
    local = config.local_rope_theta or config.rope_theta
    return {**_keys(config), "rope_local_base_freq": local,
            "rope_parameters": {"full_attention": rope_parameters(config),
                                "sliding_attention": {"rope_type": "default", "rope_theta": local}}}


GEMMA2 = Family(switches=dict(norm="rms_plus_one", activation="gelu_tanh", sandwich_norms=True, embed_scale=True,
                               tie_embeddings=True),
                name="gemma2", architecture="Gemma2ForCausalLM", model_type="gemma2", read=read, write=write_gemma2,
                layer=layer_tensors, tied_default=True, legacy_layer_types=lambda hf, layers: alternating(layers, 2))
GEMMA3 = Family(switches=dict(norm="rms_plus_one", activation="gelu_tanh", sandwich_norms=True, embed_scale=True,
                               qk_norm=True, tie_embeddings=True),
                name="gemma3", architecture="Gemma3ForCausalLM", model_type="gemma3_text", read=read,
                write=write_gemma3, layer=layer_tensors, tied_default=True,
                legacy_layer_types=lambda hf, layers: alternating(
                    layers, hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6))))
