"""Qwen2 (2.5) and Qwen3.

Switches: Qwen2 has q/k/v biases, Qwen3 q/k norms (`switches` below); presets qwen2.5-*, qwen3-*.
config.json: `sliding_window` counts only with `use_sliding_window`; without `layer_types` the first
`max_window_layers` layers are full and the rest slide. Qwen3 reads `attention_bias` (q/k/v and o).
Tensors: LLaMA's, with Qwen3's self_attn.{q,k}_norm.
"""

from __future__ import annotations

from typing import Any

from instructjax.model.families.llama import layer_tensors
from instructjax.model.families.record import (
    HF_ACTIVATION,
    DecoderConfig,
    Family,
    layer_types_keys,
    rope_parameters,
    shape_keys,
)


def legacy_layer_types(hf: dict[str, Any], layers: int) -> tuple[str, ...]:
    first = hf.get("max_window_layers", layers)
    return tuple("sliding" if i >= first else "full" for i in range(layers))


def read_qwen3(hf: dict[str, Any], where: str) -> dict[str, Any]:
    bias = bool(hf.get("attention_bias", False))
    return {"qkv_bias": bias, "o_bias": bias}


def window_keys(config: DecoderConfig) -> dict[str, Any]:
    kinds = config.kinds
    return {"sliding_window": config.sliding_window, "use_sliding_window": config.sliding_window is not None,
            "max_window_layers": kinds.index("sliding") if "sliding" in kinds else config.num_layers,
            **layer_types_keys(config)}


def write_qwen2(config: DecoderConfig) -> dict[str, Any]:
    return {**shape_keys(config), "rms_norm_eps": config.norm_eps, "hidden_act": HF_ACTIVATION[config.activation],
            **window_keys(config), "rope_parameters": rope_parameters(config)}


def write_qwen3(config: DecoderConfig) -> dict[str, Any]:
    return {**shape_keys(config), "rms_norm_eps": config.norm_eps, "hidden_act": HF_ACTIVATION[config.activation],
            "attention_bias": config.qkv_bias, **window_keys(config), "rope_parameters": rope_parameters(config)}


QWEN2 = Family(switches=dict(qkv_bias=True),
               name="qwen2", architecture="Qwen2ForCausalLM", model_type="qwen2", write=write_qwen2,
               layer=layer_tensors, window_flag="use_sliding_window", legacy_layer_types=legacy_layer_types)
QWEN3 = Family(switches=dict(qk_norm=True),
               name="qwen3", architecture="Qwen3ForCausalLM", model_type="qwen3", read=read_qwen3, write=write_qwen3,
               layer=layer_tensors, window_flag="use_sliding_window", legacy_layer_types=legacy_layer_types)
