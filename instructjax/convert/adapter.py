"""A run's LoRA adapters as a PEFT adapter directory (`instructjax export --adapter`): `adapter_model.safetensors`
with PEFT's tensor names (`base_model.model.<HF module>.lora_A.weight` [rank, in], `.lora_B.weight` [out, rank]) and
`adapter_config.json` (peft_type LORA, r, lora_alpha, target_modules, base_model_name_or_path), which
`peft.PeftModel.from_pretrained(base, DIR)` loads onto the exported base; `read_adapter` is the way back
(`instructjax import --hf BASE --adapter DIR`: training continues from a PEFT adapter).

The HF module of each adapted kernel comes from the family's tensor table (`convert.hf_names.hf_weight_table`):
our lora_a [*in, rank] and lora_b [rank, *out] flatten to HF's in and out the way the kernel does."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from instructjax.convert.hf_names import get_path, hf_weight_table, part_shape, part_value
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


def _adapted(config: DecoderConfig) -> list[tuple[str, tuple, int | None]]:
    """(PEFT module name, our kernel's module path, layer) of every adapted kernel of `config` (which has a lora)."""
    targets = set(lora.spec(config).targets)
    out = []
    for entry in hf_weight_table(config):
        if entry.split is not None or len(entry.parts) != 1 or not entry.name.endswith(".weight"):
            continue
        (path, _), = entry.parts
        if path[-1] == "kernel" and path[-2] in targets:
            out.append((PEFT_PREFIX + entry.name[: -len(".weight")], path[:-1], entry.layer))
    return out


# adapter_config.json values we cannot run: (key, the value we need)
UNSUPPORTED = (("bias", "none"), ("use_dora", False), ("use_rslora", False), ("fan_in_fan_out", False),
               ("modules_to_save", None), ("layers_to_transform", None), ("rank_pattern", {}), ("alpha_pattern", {}))


def read_adapter(adapter_dir: str, config: DecoderConfig) -> tuple[DecoderConfig, dict]:
    """A PEFT LoRA adapter directory (local) for the base `config` -> (`config` with its `model.lora`, our adapter
    tree: `lora_a` / `lora_b` of every adapted module as nested dicts of float32 arrays). Anything PEFT saved
    that we cannot run, or a tensor missing, left over or of the wrong shape: one line naming the file."""
    from safetensors.numpy import load_file

    where = os.path.join(adapter_dir, "adapter_config.json")
    if not os.path.isfile(where):
        raise ConfigError(f"--adapter {adapter_dir}: no adapter_config.json (a PEFT adapter directory has one)")
    with open(where) as f:
        saved = json.load(f)
    if saved.get("peft_type") != "LORA":
        raise ConfigError(f"{where}: peft_type {saved.get('peft_type')!r}; only LORA adapters can be imported")
    for key, need in UNSUPPORTED:
        if saved.get(key) not in (need, None, {}):  # PEFT writes unset patterns as {}
            raise ConfigError(f"{where}: {key}={saved[key]!r} is not supported (only {need!r})")
    targets = saved.get("target_modules")
    targets = [targets] if isinstance(targets, str) else sorted(targets or [])
    spec = {"rank": saved.get("r"), "alpha": saved.get("lora_alpha"), "dropout": saved.get("lora_dropout", 0.0),
            "targets": targets}
    config = config.replace(lora=spec)
    if problems := lora.problems(config):
        raise ConfigError(f"{where}: {problems[0]}")
    weights = os.path.join(adapter_dir, "adapter_model.safetensors")
    if not os.path.isfile(weights):
        raise ConfigError(f"--adapter {adapter_dir}: no adapter_model.safetensors (PEFT's safe_serialization)")
    tensors = load_file(weights)
    from instructjax.convert.hf import abstract_params

    abstract, tree = abstract_params(config), {}
    for module, path, layer in _adapted(config):
        parts = {}
        for ours, theirs in (("lora_a", "lora_A"), ("lora_b", "lora_B")):
            name = f"{module}.{theirs}.weight"
            if name not in tensors:
                raise ConfigError(f"{weights}: no tensor {name} (adapter_config.json targets {targets})")
            shape = part_shape(abstract, (*path, ours), layer)
            value = np.asarray(tensors.pop(name), np.float32).T  # PEFT's [rank, in] / [out, rank]
            if value.size != int(np.prod(shape)):
                raise ConfigError(f"{weights}: {name} has shape {value.T.shape}, the base needs "
                                  f"{int(np.prod(shape))} elements (rank {spec['rank']})")
            parts[ours] = value.reshape(shape)
        node = tree
        for key in path[:-1] if layer is None else path:
            node = node.setdefault(key, {})
        if layer is None:
            node[path[-1]] = parts
        else:  # a stacked (scanned) layer: collected per layer, stacked below
            for ours, value in parts.items():
                node.setdefault(ours, {})[layer] = value
    if tensors:
        raise ConfigError(f"{weights}: {len(tensors)} tensors the base has no adapted module for, e.g. "
                          f"{sorted(tensors)[0]}")
    return config, _stack(tree)


def _stack(tree: dict) -> dict:
    """An adapter's per-layer dict {layer: array} (scanned layers) as one stacked array."""
    out = {}
    for key, value in tree.items():
        if key in lora.ADAPTERS and isinstance(value, dict):
            out[key] = np.stack([value[i] for i in sorted(value)])
        elif isinstance(value, dict):
            out[key] = _stack(value)
        else:
            out[key] = value
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
