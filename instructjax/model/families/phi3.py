"""Phi-3: LLaMA's layer, its files fusing q/k/v (`qkv_proj`) and gate/up (`gate_up_proj`).

Switches: LLaMA's; preset phi3-mini in model/presets.py.
config.json: `partial_rotary_factor`, `original_max_position_embeddings` (long-RoPE), a window on every layer.
Tensors: LLaMA's names with self_attn.qkv_proj and mlp.gate_up_proj, cut into q, k, v and gate, up on import.
LoRA modules: qkv_proj and gate_up_proj fused (one A for q, k, v; one for gate, up), o_proj, down_proj.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from instructjax.model.families.llama import layer_tensors
from instructjax.model.families.record import (
    HF_ACTIVATION,
    DecoderConfig,
    Family,
    partial_rotary,
    rope_parameters,
    rows,
    shape_keys,
)


def write(config: DecoderConfig) -> dict[str, Any]:
    fraction = partial_rotary(config)
    original = (config.rope_scaling or {}).get(
        "original_max_position_embeddings", config.extra.get("original_max_position_embeddings",
                                                             config.max_position_embeddings))
    return {**shape_keys(config), "rms_norm_eps": config.norm_eps, "hidden_act": HF_ACTIVATION[config.activation],
            "partial_rotary_factor": fraction, "original_max_position_embeddings": original,
            "sliding_window": config.sliding_window,
            "rope_parameters": {**rope_parameters(config), "partial_rotary_factor": fraction}}


PHI3 = Family(switches={},
              name="phi3", architecture="Phi3ForCausalLM", model_type="phi3", write=write,
              layer=partial(layer_tensors, fused=True),
              lora_modules={"qkv_proj": ("q_proj", "k_proj", "v_proj"), "o_proj": ("o_proj",),
                            "gate_up_proj": ("gate_proj", "up_proj"), "down_proj": ("down_proj",)},
              splits={"qkv": rows(lambda c: [c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim,
                                             c.num_kv_heads * c.head_dim]),
                      "gate_up": rows(lambda c: [c.intermediate_size, c.intermediate_size])})
