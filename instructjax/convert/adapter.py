"""A run's LoRA adapters as a PEFT adapter directory (`instructjax export --adapter`): `adapter_model.safetensors`
with PEFT's tensor names (`base_model.model.<HF module>.lora_A.weight` [rank, in], `.lora_B.weight` [out, rank]) and
`adapter_config.json` (peft_type LORA, r, lora_alpha, target_modules, base_model_name_or_path), which
`peft.PeftModel.from_pretrained(base, DIR)` loads onto the exported base.

The HF module of each adapted kernel comes from the family's tensor table (`convert.hf_names.hf_weight_table`):
our lora_a [*in, rank] and lora_b [rank, *out] flatten to HF's in and out the way the kernel does."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from instructjax.convert.hf_names import get_path, hf_weight_table, part_value
from instructjax.core.errors import ConfigError
from instructjax.model import lora
from instructjax.model.config import DecoderConfig

PEFT_PREFIX = "base_model.model."


def adapter_tensors(params: Mapping, config: DecoderConfig) -> dict[str, np.ndarray]:
    """PEFT name -> tensor of every adapter in `params` (our pure dict, host or device arrays)."""
    out = {}
    for entry in hf_weight_table(config):
        if entry.split is not None or len(entry.parts) != 1 or not entry.name.endswith(".weight"):
            continue
        (path, _), = entry.parts
        if path[-1] != "kernel" or "lora_a" not in get_path(params, path[:-1]):
            continue
        module = PEFT_PREFIX + entry.name[: -len(".weight")]
        a = part_value(params, (*path[:-1], "lora_a"), entry.layer)
        b = part_value(params, (*path[:-1], "lora_b"), entry.layer)
        rank = a.shape[-1]
        out[f"{module}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, rank).T)
        out[f"{module}.lora_B.weight"] = np.ascontiguousarray(b.reshape(rank, -1).T)
    return out


def adapter_config(config: DecoderConfig, base: str | None) -> dict:
    """PEFT's adapter_config.json for `config.lora` on the base `base` (an HF directory or hub name)."""
    spec = lora.spec(config)
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": spec.rank, "lora_alpha": spec.alpha,
            "lora_dropout": spec.dropout, "target_modules": list(spec.hf_targets), "bias": "none",
            "fan_in_fan_out": False, "modules_to_save": None, "use_rslora": False, "use_dora": False,
            "init_lora_weights": True, "inference_mode": True, "base_model_name_or_path": base}


def write_adapter(params: Mapping, config: DecoderConfig, out_dir: str, *, base: str | None,
                  dtype: np.dtype | None = None) -> list[str]:
    """adapter_model.safetensors and adapter_config.json under `out_dir` (local); returns the tensor names."""
    from safetensors.numpy import save_file

    if config.lora is None:
        raise ConfigError("--adapter: this checkpoint was not trained with model.lora; export it without --adapter")
    tensors = adapter_tensors(params, config)
    if dtype is not None:
        tensors = {k: v.astype(dtype) for k, v in tensors.items()}
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump(adapter_config(config, base), f, indent=2)
    return sorted(tensors)
