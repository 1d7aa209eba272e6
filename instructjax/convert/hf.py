"""Hugging Face checkpoints of every family <-> instructjax parameters, both directions: reading and writing the
files. Which HF tensor is which of our parameters is `convert.hf_names`'s table (as MaxText's `param_mapping.py`
keeps them), built from each family's record in `model.families`; config.json is `convert.hf_config`.

Import reads one tensor at a time (safetensors memory-maps, torch `.bin` loads with `mmap=True`) and
puts each converted tensor straight onto its mesh sharding, so a 7B import holds one full tensor on
the host at a time plus the sharded model. Export fetches one parameter at a time and writes
safetensors shards of at most `max_shard_bytes` with an HF index.

Directories here are local (safetensors maps files): `convert/saved.py` hands in a bucket's HF directory as its
local copy and writes an export bound for a bucket locally first (`core/storage.py`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from instructjax.convert import hf_config
from instructjax.convert.hf_names import (
    IGNORED,
    entry_hf_shape,
    entry_to_hf,
    entry_to_ours,
    get_path,
    hf_weight_table,
    part_shape,
    tied_head_name,
)
from instructjax.core import storage
from instructjax.core.errors import ConfigError
from instructjax.core.sharding import state_shardings
from instructjax.model.config import DecoderConfig
from instructjax.model.decoder import abstract_model
from instructjax.model.families import RECORDS

DTYPES = {"fp32": np.float32, "float32": np.float32, "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": np.float16, "float16": np.float16}


class ConversionError(ConfigError):
    """A checkpoint that cannot be converted: names the file, tensor or config field."""


# ---- parameter trees ---------------------------------------------------------------------------------


def abstract_params(config: DecoderConfig) -> dict:
    """Our parameter tree (nested dict, as `nnx.state(model, nnx.Param).to_pure_dict()`) of ShapeDtypeStructs."""
    return nnx.state(abstract_model(config), nnx.Param).to_pure_dict()


def param_shardings(config: DecoderConfig, mesh) -> dict:
    """NamedSharding per parameter (same tree as `abstract_params`) from the model's logical axes."""
    return state_shardings(nnx.state(abstract_model(config), nnx.Param), mesh).to_pure_dict()


def _set_path(tree: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# ---- reading Hugging Face directories -------------------------------------------------------------------


_INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "ffn_dim", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "head_dim", "sliding_window")


def _generation_eos(hf_dir: str) -> list[int]:
    """The end ids of an HF directory's generation_config.json ([] where it has none, or no such file)."""
    try:
        with open(os.path.join(hf_dir, "generation_config.json")) as f:
            ends = json.load(f).get("eos_token_id")
    except (OSError, ValueError, AttributeError):
        return []
    ends = ends if isinstance(ends, list) else [ends]
    return [e for e in ends if isinstance(e, int) and not isinstance(e, bool)]


def read_hf_config(hf_dir: str) -> DecoderConfig:
    """The DecoderConfig of an HF model directory (config.json; its end ids with generation_config.json's), or a
    one-line ConversionError."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise ConversionError(f"{hf_dir}: no config.json, not a Hugging Face model directory")
    try:
        with open(path) as f:
            hf = json.load(f)
    except (ValueError, OSError) as e:  # truncated / not JSON / not UTF-8
        raise ConversionError(f"{path}: not a valid JSON file ({e})") from None
    if not isinstance(hf, dict):
        raise ConversionError(f"{path}: expected a JSON object, got a {type(hf).__name__}")
    for key in _INT_FIELDS:
        if key in hf and hf[key] is not None and (not isinstance(hf[key], int) or isinstance(hf[key], bool)):
            raise ConversionError(f"{path}: field {key!r} must be an integer, got {hf[key]!r}")
    ends = _generation_eos(hf_dir)  # generation_config.json's end ids too (Phi-3: <|endoftext|>, <|end|>, ...)
    if ends:
        first = hf.get("eos_token_id", ends[0])
        first = first if isinstance(first, list) and first else [first] if first is not None else []
        hf = {**hf, "eos_token_id": list(dict.fromkeys([*first, *ends]))}
    try:
        return hf_config.from_hf(hf, path, dtype="float32", param_dtype="float32")
    except KeyError as e:
        raise ConversionError(f"{path}: missing field {e.args[0]!r}") from None
    except ConfigError as e:
        message = str(e)
        raise ConversionError(message if message.startswith(path) else f"{path}: {message}") from None


class HFTensors(Mapping):
    """Lazy name -> numpy tensor view of an HF checkpoint (safetensors or torch .bin, sharded or not)."""

    def __init__(self, hf_dir: str):
        self.hf_dir = hf_dir
        self._files: dict[str, str] = {}  # tensor name -> file
        self._open: dict[str, Any] = {}
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            index = os.path.join(hf_dir, index_name)
            if os.path.isfile(index):
                with open(index) as f:
                    self._files = dict(json.load(f)["weight_map"])
                break
        else:
            for single in ("model.safetensors", "pytorch_model.bin"):
                if os.path.isfile(os.path.join(hf_dir, single)):
                    self._files = {name: single for name in self._names_in(single)}
                    break
        if not self._files:
            raise ConversionError(f"{hf_dir}: no model.safetensors, pytorch_model.bin or index file found")

    def _handle(self, file: str):
        if file not in self._open:
            path = os.path.join(self.hf_dir, file)
            if not os.path.isfile(path):
                raise ConversionError(f"{self.hf_dir}: the index names {file}, which does not exist")
            try:
                if file.endswith(".safetensors"):
                    from safetensors import safe_open

                    self._open[file] = safe_open(path, framework="numpy")
                else:
                    import torch

                    self._open[file] = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
            except Exception as e:  # noqa: BLE001 - truncated or garbage weights: one line, not a traceback
                raise ConversionError(f"{path}: cannot read the weights ({type(e).__name__}: {e})") from None
        return self._open[file]

    def _names_in(self, file: str) -> list[str]:
        handle = self._handle(file)
        return list(handle.keys())

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._files:
            raise KeyError(name)
        handle = self._handle(self._files[name])
        if hasattr(handle, "get_tensor"):
            return handle.get_tensor(name)
        tensor = handle[name]
        if str(tensor.dtype) == "torch.bfloat16":
            return tensor.view(dtype=__import__("torch").int16).numpy().view("bfloat16")
        return tensor.numpy()

    def __iter__(self) -> Iterator[str]:
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)


def params_from_tensors(tensors: Mapping[str, Any], config: DecoderConfig, *, where: str = "HF checkpoint",
                        shardings: Any = None, param_dtype: str = "float32") -> dict:
    """Our parameter tree from HF tensors (name -> array: an HF state dict, or `HFTensors` reading one
    file at a time), each converted tensor placed on its sharding as it is read; a stacked (scanned)
    parameter is stacked on the devices once its last layer is read."""
    abstract = abstract_params(config)
    params: dict = {}
    layers: dict[tuple, list] = {}  # stacked parameter -> its layers read so far
    experts: dict[tuple, list] = {}  # (experts' parameter, layer) -> its experts read so far (host arrays)
    table = hf_weight_table(config)
    for entry in table:
        first = "/".join(map(str, entry.parts[0][0]))
        if entry.name not in tensors:
            raise ConversionError(f"{where}: missing tensor {entry.name!r} (for parameter {first})")
        tensor = tensors[entry.name]
        want_hf = entry_hf_shape(abstract, entry, config)
        if tuple(tensor.shape) != want_hf:
            raise ConversionError(f"{where}: tensor {entry.name!r} has shape {tuple(tensor.shape)}, expected "
                                  f"{want_hf} from config.json")
        for (path, _), value in zip(entry.parts, entry_to_ours(np.asarray(tensor), entry, config), strict=True):
            value = np.asarray(value).astype(param_dtype)
            if entry.expert is not None:  # one expert of a stacked experts' parameter: stacked once all are read
                group = experts.setdefault((path, entry.layer), [])
                group.append(value)
                if len(group) < config.num_experts:
                    continue
                value = np.stack(experts.pop((path, entry.layer)))
            sharding = get_path(shardings, path) if shardings is not None else None
            if entry.layer is None:
                _set_path(params, path, jax.device_put(value, sharding))
            else:
                layers.setdefault(path, []).append(jax.device_put(value, _without_layers_axis(sharding)))
                if len(layers[path]) == config.num_layers:
                    _set_path(params, path, _stack(layers.pop(path), sharding))
        del tensor
    known = {entry.name for entry in table}
    if config.tie_embeddings:
        known.add(tied_head_name(config))  # a state dict repeats the tied embedding under this name
    extra = [n for n in tensors if n not in known and not n.endswith(IGNORED)]
    if extra:
        raise ConversionError(f"{where}: unexpected tensor {extra[0]!r} ({len(extra)} unmapped); not a "
                              f"{RECORDS[config.family].architecture} layout?")
    return params


def _without_layers_axis(sharding):
    if sharding is None:
        return None
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*tuple(sharding.spec)[1:]))


def _stack(layers: list, sharding) -> Any:
    """One stacked parameter from its per-layer arrays, laid out by `sharding` (numpy without one)."""
    if sharding is None:
        return np.stack([np.asarray(x) for x in layers])

    return jax.jit(lambda *xs: jnp.stack(xs), out_shardings=sharding)(*layers)


def hf_state(params: Mapping, config: DecoderConfig) -> dict[str, np.ndarray]:
    """Our parameters as an HF state dict of the family's model (numpy, the parameters' dtype)."""
    return {entry.name: entry_to_hf(params, entry, config) for entry in hf_weight_table(config)}


def hf_to_params(hf_dir: str, config: DecoderConfig | None = None, *, mesh=None,
                 param_dtype: str = "float32") -> tuple[dict, DecoderConfig]:
    """Our parameter tree from an HF directory, each tensor placed on its mesh sharding as it is read."""
    config = config or read_hf_config(hf_dir)
    shardings = param_shardings(config, mesh) if mesh is not None else None
    params = params_from_tensors(HFTensors(hf_dir), config, where=hf_dir, shardings=shardings,
                                 param_dtype=param_dtype)
    return params, config.replace(param_dtype=param_dtype)


# ---- writing Hugging Face directories -------------------------------------------------------------------


def np_dtype(dtype: str | None, default) -> Any:
    if dtype is None:
        return np.dtype(default)
    if dtype not in DTYPES:
        raise ConversionError(f"unsupported export dtype {dtype!r}; one of {', '.join(DTYPES)}")
    return np.dtype(DTYPES[dtype])


def hf_dtype_name(dtype: np.dtype) -> str:
    return {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}[np.dtype(dtype).name]


def params_to_hf(params: Mapping, config: DecoderConfig, out_dir: str, *, dtype: str | None = None,
                 max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """Write `params` as HF safetensors (sharded with an index above `max_shard_bytes`); returns file names."""
    from safetensors.numpy import save_file

    target = np_dtype(dtype, config.param_dtype)
    table = hf_weight_table(config)
    sizes = []
    for entry in table:
        size = 0
        for path, _ in entry.parts:
            try:
                size += int(np.prod(part_shape(params, path, entry.layer, entry.expert))) * target.itemsize
            except KeyError:
                raise ConversionError(f"checkpoint lacks parameter {'/'.join(map(str, path))} "
                                      f"(HF {entry.name!r})") from None
        sizes.append(size)
    shards: list[list[int]] = [[]]
    used = 0
    for i, size in enumerate(sizes):
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(i)
        used += size
    os.makedirs(out_dir, exist_ok=True)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))])
    weight_map = {}
    for file, members in zip(names, shards, strict=True):
        tensors = {}
        for i in members:
            entry = table[i]
            tensors[entry.name] = np.ascontiguousarray(entry_to_hf(params, entry, config).astype(target))
            weight_map[entry.name] = file
        save_file(tensors, os.path.join(out_dir, file), metadata={"format": "pt"})
        storage.usual_mode(os.path.join(out_dir, file))  # safetensors writes 0600
        del tensors
    if len(shards) > 1:
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}, f, indent=2)
    return names


def write_hf_config(config: DecoderConfig, out_dir: str, *, dtype: np.dtype, bos_id: int | None,
                    eos_ids: list[int], pad_id: int | None) -> None:
    """config.json and generation_config.json with the tokenizer's special ids."""
    hf = hf_config.to_hf(config)
    hf.update(bos_token_id=bos_id, eos_token_id=eos_ids[0] if len(eos_ids) == 1 else eos_ids, pad_token_id=pad_id,
              torch_dtype=hf_dtype_name(dtype), dtype=hf_dtype_name(dtype))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    generation = {"bos_token_id": bos_id, "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids,
                  "pad_token_id": pad_id, "do_sample": False}
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({k: v for k, v in generation.items() if v is not None}, f, indent=2)
