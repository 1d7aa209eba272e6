"""Mistral: LLaMA's layer with grouped kv heads and a sliding window on every layer.

Switches: LLaMA's; preset mistral-7b in model/presets.py.
config.json: `sliding_window` on every layer (no layer types); no bias keys.
Tensors: LLaMA's.
"""

from __future__ import annotations

from typing import Any

from instructjax.model.families.llama import layer_tensors
from instructjax.model.families.record import (
    HF_ACTIVATION,
    DecoderConfig,
    Family,
    rope_parameters,
    shape_keys,
)


def write(config: DecoderConfig) -> dict[str, Any]:
    return {**shape_keys(config), "rms_norm_eps": config.norm_eps, "hidden_act": HF_ACTIVATION[config.activation],
            "sliding_window": config.sliding_window, "rope_parameters": rope_parameters(config)}


MISTRAL = Family(switches={},
                 name="mistral", architecture="MistralForCausalLM", model_type="mistral", write=write,
                 layer=layer_tensors)
