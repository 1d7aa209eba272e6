"""A run's LoRA adapters as a PEFT adapter directory (`instructjax export --adapter`): `adapter_model.safetensors`
with PEFT's tensor names (`base_model.model.<HF module>.lora_A.weight` [rank, in], `.lora_B.weight` [out, rank]) and
`adapter_config.json` (peft_type LORA, r, lora_alpha, target_modules, base_model_name_or_path: the HF directory the
base was imported from, `hf_base`), README.md (PEFT's model card: the base, and a QLoRA base's bitsandbytes config as
transformers' `BitsAndBytesConfig` writes it) and the run's tokenizer, which
`peft.AutoPeftModelForCausalLM.from_pretrained(DIR)` loads; `read_adapter` is the way back
(`instructjax import --hf BASE --adapter DIR`: training continues from a PEFT adapter).

The HF module of each adapted kernel comes from the family's tensor table (`convert.hf_names.hf_weight_table`):
our lora_a [*in, rank] and lora_b [rank, *out] flatten to HF's in and out the way the kernel does. A fused HF
module (Phi-3's qkv_proj and gate_up_proj, GPT-NeoX's query_key_value) has one lora_A, its group's first module's
`lora_a`, and one lora_B whose output rows are cut and joined as the fused weight's are (the record's split:
Phi-3's pieces one after another, GPT-NeoX's interleaved per head). A mixture of experts' adapted expert parameters
are PEFT's `target_parameters` (`_expert_adapted`: its `ParamWrapper`s' names and how they lay the experts out)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

from instructjax.convert.hf import abstract_params
from instructjax.convert.hf_names import SPLITS, Entry, hf_weight_table, part_shape, part_value
from instructjax.core.errors import ConfigError
from instructjax.model import lora
from instructjax.model.config import DecoderConfig
from instructjax.model.families import RECORDS

PEFT_PREFIX = "base_model.model."


def adapter_tensors(params: Mapping, config: DecoderConfig) -> dict[str, np.ndarray]:
    """PEFT name -> tensor of every adapter in `params` (our pure dict, host or device arrays)."""
    out = {}
    for module, entry in _adapted(config):
        paths = [path[:-1] for path, _ in entry.parts]
        a = part_value(params, (*paths[0], "lora_a"), entry.layer)
        rank = a.shape[-1]
        pieces = [part_value(params, (*path, "lora_b"), entry.layer).reshape(rank, -1).T for path in paths]
        out[f"{module}.lora_A.weight"] = np.ascontiguousarray(a.reshape(-1, rank).T)
        out[f"{module}.lora_B.weight"] = np.ascontiguousarray(
            SPLITS[entry.split][1](pieces, config) if entry.split else pieces[0])
    for module, paths, layer in _expert_adapted(config):
        a = part_value(params, (*paths[0], "lora_a"), layer)  # [experts, in, rank]
        b = np.concatenate([part_value(params, (*path, "lora_b"), layer) for path in paths], axis=-1)
        out[f"{module}.lora_A.weight"] = np.ascontiguousarray(a.transpose(0, 2, 1).reshape(-1, a.shape[1]))
        out[f"{module}.lora_B.weight"] = np.ascontiguousarray(b.transpose(2, 1, 0).reshape(b.shape[2], -1))
    return out


def _expert_adapted(config: DecoderConfig) -> list[tuple[str, list[tuple], int | None]]:
    """(PEFT module name, our adapters' paths, stacked layer index or None) of every adapted expert parameter of
    each sparse layer. PEFT wraps each targeted parameter of transformers' experts module in a `ParamWrapper`, in
    the module's order (gate_up_proj, then down_proj), each around the one before: the last is `...experts`, the one
    before it `...experts.base_layer`. Its lora_A [experts * rank, in] holds expert j's A in rows j * rank..,
    its lora_B [out, rank * experts] expert j's B in columns j, j + experts, .. (`ParamWrapper.get_delta_weight`)."""
    spec = lora.spec(config)
    if not spec.hf_parameters:
        return []
    prefix = RECORDS[config.family].top[0]
    out = []
    for i in config.sparse_layers:
        layer = ("layers",) if config.scan_layers else ("layers", i)
        for depth, (hf, group) in enumerate(zip(reversed(spec.hf_parameters), reversed(spec.expert_groups),
                                                 strict=True)):
            module = f"{PEFT_PREFIX}{prefix}.{i}.{hf.rpartition('.')[0]}" + ".base_layer" * depth
            paths = [(*layer, "mlp", name + lora.EXPERT_SUFFIX) for name in group]
            out.append((module, paths, i if config.scan_layers else None))
    return out


def _adapted(config: DecoderConfig) -> list[tuple[str, Entry]]:
    """(PEFT module name, its weight's entry in the tensor table) of every adapted HF module of `config` (which has
    a lora): a fused module's parts are our modules of its group, the first holding the A."""
    targets = set(lora.spec(config).targets)
    return [(PEFT_PREFIX + entry.name[: -len(".weight")], entry) for entry in hf_weight_table(config)
            if entry.name.endswith(".weight") and all(path[-1] == "kernel" and path[-2] in targets
                                                       for path, _ in entry.parts)]


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
    # PEFT's `all-linear` saves each module's full name (gpt_neox.layers.0.attention.dense): its last part names it
    # in every layer; a layer whose tensors are missing is one line below
    targets = [targets] if isinstance(targets, str) else sorted({t.rsplit(".", 1)[-1] for t in targets or []})
    # target_parameters match a parameter's full name by its end (PEFT's rule): each of the family's that one names
    expert = saved.get("target_parameters") or []
    known = lora.family_parameters(config)
    targets += [name for name in known if any(name == t or name.endswith("." + t) or t.endswith("." + name)
                                                for t in expert)]
    if unknown := [t for t in expert if not any(name == t or name.endswith("." + t) or t.endswith("." + name)
                                                for name in known)]:
        raise ConfigError(f"{where}: target_parameters {unknown}: the {config.family} model's expert parameters are "
                          f"{', '.join(known) or 'none'}")
    spec = {"rank": saved.get("r"), "alpha": saved.get("lora_alpha"), "dropout": saved.get("lora_dropout", 0.0),
            "targets": targets}
    config = config.replace(lora=spec)
    if problems := lora.problems(config):
        raise ConfigError(f"{where}: {problems[0]}")
    weights = os.path.join(adapter_dir, "adapter_model.safetensors")
    if not os.path.isfile(weights):
        raise ConfigError(f"--adapter {adapter_dir}: no adapter_model.safetensors (PEFT's safe_serialization)")
    tensors = load_file(weights)
    abstract, tree = abstract_params(config), {}
    for module, entry in _adapted(config):
        paths = [path[:-1] for path, _ in entry.parts]
        a, b = (_tensor(tensors, f"{module}.{theirs}.weight", weights, targets) for theirs in ("lora_A", "lora_B"))
        shapes = [part_shape(abstract, (*paths[0], "lora_a"), entry.layer)]
        shapes += [part_shape(abstract, (*path, "lora_b"), entry.layer) for path in paths]
        if a.size != int(np.prod(shapes[0])) or b.size != sum(int(np.prod(s)) for s in shapes[1:]):
            raise ConfigError(f"{weights}: {module}'s lora_A {a.shape} / lora_B {b.shape} do not fit the base "
                              f"(rank {spec['rank']})")
        pieces = SPLITS[entry.split][0](b, config) if entry.split else [b]  # PEFT's [rank, in] / [out, rank]
        values = [((*paths[0], "lora_a"), a.T.reshape(shapes[0]))]
        values += [((*path, "lora_b"), piece.T.reshape(shape)) for path, piece, shape in zip(paths, pieces, shapes[1:],
                                                                                             strict=True)]
        for path, value in values:
            _put(tree, path, entry.layer, value)
    for module, paths, layer in _expert_adapted(config):
        a, b = (_tensor(tensors, f"{module}.{theirs}.weight", weights, targets) for theirs in ("lora_A", "lora_B"))
        shapes = [part_shape(abstract, (*path, "lora_b"), layer) for path in paths]  # [experts, rank, out] each
        experts, rank, n_in = shapes[0][0], shapes[0][1], part_shape(abstract, (*paths[0], "lora_a"), layer)[1]
        if a.shape != (experts * rank, n_in) or b.shape != (sum(s[2] for s in shapes), rank * experts):
            raise ConfigError(f"{weights}: {module}'s lora_A {a.shape} / lora_B {b.shape} do not fit the base's "
                              f"{experts} experts (rank {spec['rank']})")
        cuts = np.cumsum([s[2] for s in shapes])[:-1]
        values = [((*paths[0], "lora_a"), a.reshape(experts, rank, n_in).transpose(0, 2, 1))]
        values += [((*path, "lora_b"), piece.reshape(-1, rank, experts).transpose(2, 1, 0))
                   for path, piece in zip(paths, np.split(b, cuts, axis=0), strict=True)]
        for path, value in values:
            _put(tree, path, layer, value)
    if tensors:
        raise ConfigError(f"{weights}: {len(tensors)} tensors the base has no adapted module for, e.g. "
                          f"{sorted(tensors)[0]}")
    return config, _stack(tree)


def base_mismatch(adapter_dir: str, hf_dir: str) -> str | None:
    """A warning where the adapter's `base_model_name_or_path` is not the base it is imported onto (`hf_dir`): the
    same directory, or a hub name whose last part is the directory's name, is the same; None when it is (or names
    none). Shapes that fit do not make it the model the adapter was trained on."""
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        saved = json.load(f).get("base_model_name_or_path")
    if not saved:
        return None
    if os.path.exists(saved):
        same = os.path.realpath(saved) == os.path.realpath(hf_dir)
    else:  # a hub name (or a path gone since): compared by its last part
        same = saved.rstrip("/").rsplit("/", 1)[-1] == os.path.basename(os.path.normpath(hf_dir))
    if same:
        return None
    return (f"--adapter {adapter_dir} was trained on {saved} (its base_model_name_or_path), not on --hf {hf_dir}: "
            "its shapes fit, but its adapters were made for another model's weights")


def _put(tree: dict, path: tuple, layer: int | None, value: np.ndarray) -> None:
    """`value` at `path` in the nested dicts `tree`; a stacked (scanned) layer's collected per layer, stacked by
    `_stack`."""
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
    if layer is None:
        node[path[-1]] = value
    else:
        node.setdefault(path[-1], {})[layer] = value


def _tensor(tensors: dict, name: str, weights: str, targets: list) -> np.ndarray:
    """One of PEFT's tensors, taken out of `tensors`, in float32."""
    if name not in tensors:
        raise ConfigError(f"{weights}: no tensor {name} (adapter_config.json targets {targets})")
    return np.asarray(tensors.pop(name), np.float32)


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
            "lora_dropout": spec.dropout, "target_modules": list(spec.hf_targets),
            **({"target_parameters": list(spec.hf_parameters)} if spec.hf_parameters else {}), "bias": "none",
            "fan_in_fan_out": False, "modules_to_save": None, "use_rslora": False, "use_dora": False,
            "init_lora_weights": True, "inference_mode": True, "base_model_name_or_path": base}


def bitsandbytes_config(config: DecoderConfig) -> dict | None:
    """transformers' `BitsAndBytesConfig(...).to_dict()` of the base a QLoRA run computed with (`load_in_4bit`, nf4,
    blocks of 64, float32 absmax, dequantized to the run's compute dtype); None unquantized, or for int8 (ours has
    no bitsandbytes twin: its `load_in_8bit` is LLM.int8)."""
    if config.quantize_base != "nf4":
        return None
    return {"quant_method": "bitsandbytes", "_load_in_8bit": False, "_load_in_4bit": True, "llm_int8_threshold": 6.0,
            "llm_int8_skip_modules": None, "llm_int8_enable_fp32_cpu_offload": False,
            "llm_int8_has_fp16_weight": False, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": False,
            "bnb_4bit_compute_dtype": config.dtype, "bnb_4bit_quant_storage": "uint8", "load_in_4bit": True,
            "load_in_8bit": False}


def model_card(config: DecoderConfig, base: str | None, source: str) -> str:
    """The adapter's README.md as PEFT writes one (`PeftModel.create_or_update_model_card`): the base model, and the
    bitsandbytes quantization config the base was trained under, a `- key: value` line each."""
    lines = ["---", *([f"base_model: {base}"] if base else []), "library_name: peft", "---", "",
             f"A LoRA adapter (rank {lora.spec(config).rank}) written by `instructjax export --adapter` from {source}.",
             ""]
    quantization = bitsandbytes_config(config)
    if quantization is not None:
        lines += ["## Training procedure", "", "The following `bitsandbytes` quantization config was used during "
                  "training:", *[f"- {k}: {v}" for k, v in quantization.items()], ""]
    elif config.quantize_base != "none":
        lines += ["## Training procedure", "", f"The base was stored as {config.quantize_base} in blocks of 64 inputs "
                  "(instructjax's), which bitsandbytes has no type for: load the adapter on the float base.", ""]
    return "\n".join(lines)


def hf_base(directory: str, step: int) -> str | None:
    """The Hugging Face model a LoRA checkpoint's adapters sit on (what PEFT's `base_model_name_or_path` names):
    the HF directory its base was imported from, followed through the bases of LoRA runs layered on one another;
    None for a LoRA trained from scratch. A base no HF directory holds (a full fine-tune's weights, or init_from's
    adapters merged into it: `objective.dpo.reference_model: base`) is one line."""
    from instructjax.core.checkpoint import read_base, read_meta
    from instructjax.core.storage import path

    where, at = directory, step
    while True:
        _, run_config, at = read_meta(where, at)
        run_config = run_config or {}
        if run_config.get("source"):  # `instructjax import`: the HF directory itself
            return run_config["source"]
        base = read_base(where, at)
        init_from = (run_config.get("model") or {}).get("init_from")
        if base is None:
            if init_from and (path(init_from) / "config.json").is_file():
                return init_from
            if where == directory and not init_from:
                return None
            raise ConfigError(f"--adapter: the adapters of {directory} sit on {where} step {at}, a fine-tuned model "
                              "no Hugging Face directory holds: export it without --adapter (the merged model)")
        if base.get("merged"):
            raise ConfigError(f"--adapter: the adapters of {directory} sit on {base['checkpoint']} step {base['step']} "
                              "with its LoRA adapters merged (objective.<loss>.reference_model: base), which no Hugging Face "
                              "directory holds: export it without --adapter (the merged model)")
        where, at = base["checkpoint"], base["step"]


def write_adapter(adapters: Mapping, config: DecoderConfig, out_dir: str, *, base: str | None, source: str = "",
                  dtype: np.dtype | None = None) -> list[str]:
    """adapter_model.safetensors, adapter_config.json and README.md (PEFT's model card) under `out_dir` (local)
    from a params-shaped tree holding the adapters; returns the tensor names."""
    from safetensors.numpy import save_file

    if config.lora is None:
        raise ConfigError("--adapter: this checkpoint was not trained with model.lora; export it without --adapter")
    tensors = adapter_tensors(adapters, config)
    if dtype is not None:
        tensors = {k: v.astype(dtype) for k, v in tensors.items()}
    os.makedirs(out_dir, exist_ok=True)
    save_file(tensors, os.path.join(out_dir, "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump(adapter_config(config, base), f, indent=2)
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(model_card(config, base, source))
    return sorted(tensors)
