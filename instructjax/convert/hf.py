"""Hugging Face LLaMA-family checkpoints <-> instructjax parameters, both directions.

Names and layouts live together here, as in MaxText's `param_mapping.py`: `hf_weight_table` names which
HF tensor feeds which of our parameters with which kind, and each kind is a chain of small reversible
steps (`HOOKS`: HF -> ours applies the forward functions in order, ours -> HF the inverses in reverse
order). Conversion is transposes and reshapes only, because the model keeps HF's RoPE layout. Scanned
layers keep one stacked parameter per weight; their entries name a `layer` of its leading axis, so the
HF files are the same whichever layout a model runs with.

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
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from instructjax.core import storage
from instructjax.core.errors import ConfigError
from instructjax.model.config import LlamaConfig
from instructjax.model.llama import abstract_model

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")
SUPPORTED_MODEL_TYPES = ("llama", "mistral")
DTYPES = {"fp32": np.float32, "float32": np.float32, "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": np.float16, "float16": np.float16}


class ConversionError(ConfigError):
    """A checkpoint that cannot be converted: names the file, tensor or config field."""


# ---- the hook table --------------------------------------------------------------------------------
# A step is (hf_to_ours, ours_to_hf), each f(array, config) -> array.

Step = tuple[Callable[[np.ndarray, LlamaConfig], np.ndarray], Callable[[np.ndarray, LlamaConfig], np.ndarray]]

TRANSPOSE: Step = (lambda x, c: x.T, lambda x, c: x.T)  # HF Linear [out, in] <-> our kernel [in, out]


def split_last(heads: str) -> Step:
    """[in, heads*head_dim] <-> [in, heads, head_dim], `heads` naming the config field."""
    return (lambda x, c: x.reshape(x.shape[0], getattr(c, heads), c.head_dim),
            lambda x, c: x.reshape(x.shape[0], -1))


def split_first(heads: str) -> Step:
    """[heads*head_dim, out] <-> [heads, head_dim, out]."""
    return (lambda x, c: x.reshape(getattr(c, heads), c.head_dim, x.shape[-1]),
            lambda x, c: x.reshape(-1, x.shape[-1]))


HOOKS: dict[str, tuple[Step, ...]] = {
    "copy": (),  # embeddings [vocab, embed], RMSNorm scales [embed]
    "linear": (TRANSPOSE,),  # mlp projections, lm_head
    "q": (TRANSPOSE, split_last("num_heads")),
    "kv": (TRANSPOSE, split_last("num_kv_heads")),
    "o": (TRANSPOSE, split_first("num_heads")),
}


LAYER_WEIGHTS: tuple[tuple[tuple[str, ...], str, str], ...] = (  # (our path in a layer, HF name in a layer, kind)
    (("input_layernorm", "scale"), "input_layernorm.weight", "copy"),
    (("post_attention_layernorm", "scale"), "post_attention_layernorm.weight", "copy"),
    (("self_attn", "q_proj", "kernel"), "self_attn.q_proj.weight", "q"),
    (("self_attn", "k_proj", "kernel"), "self_attn.k_proj.weight", "kv"),
    (("self_attn", "v_proj", "kernel"), "self_attn.v_proj.weight", "kv"),
    (("self_attn", "o_proj", "kernel"), "self_attn.o_proj.weight", "o"),
    (("mlp", "gate_proj", "kernel"), "mlp.gate_proj.weight", "linear"),
    (("mlp", "up_proj", "kernel"), "mlp.up_proj.weight", "linear"),
    (("mlp", "down_proj", "kernel"), "mlp.down_proj.weight", "linear"),
)


class Entry(NamedTuple):
    """One HF tensor: our parameter `path`, the HF state-dict `name`, the hook `kind`, and for scanned
    (stacked) layers the `layer` index into the parameter's leading axis (None: the whole parameter)."""

    path: tuple
    name: str
    kind: str
    layer: int | None = None


def hf_weight_table(config: LlamaConfig) -> list[Entry]:
    """Every parameter's entry, in HF order. Scanned layers: one stacked parameter, one entry per layer."""
    table = [Entry(("embed_tokens", "embedding"), "model.embed_tokens.weight", "copy")]
    for i in range(config.num_layers):
        for ours, hf, kind in LAYER_WEIGHTS:
            if config.scan_layers:
                table.append(Entry(("layers", *ours), f"model.layers.{i}.{hf}", kind, i))
            else:
                table.append(Entry(("layers", i, *ours), f"model.layers.{i}.{hf}", kind))
    table.append(Entry(("norm", "scale"), "model.norm.weight", "copy"))
    if not config.tie_embeddings:
        table.append(Entry(("lm_head", "kernel"), "lm_head.weight", "linear"))
    return table


def entry_value(params: Mapping, entry: Entry) -> np.ndarray:
    """The part of `params` an entry names, fetched to the host."""
    value = get_path(params, entry.path)
    return np.asarray(jax.device_get(value if entry.layer is None else value[entry.layer]))


def entry_shape(abstract: Mapping, entry: Entry) -> tuple[int, ...]:
    """Our shape of the tensor an entry names (a stacked parameter without its `layers` axis)."""
    shape = tuple(get_path(abstract, entry.path).shape)
    return shape if entry.layer is None else shape[1:]


def to_ours(tensor: np.ndarray, kind: str, config: LlamaConfig) -> np.ndarray:
    """One HF tensor in our layout."""
    for forward, _ in HOOKS[kind]:
        tensor = forward(tensor, config)
    return tensor


def to_hf(array: np.ndarray, kind: str, config: LlamaConfig) -> np.ndarray:
    """One of our parameters in HF layout."""
    for _, inverse in reversed(HOOKS[kind]):
        array = inverse(array, config)
    return array


def hf_shape(our_shape: tuple[int, ...], kind: str, config: LlamaConfig) -> tuple[int, ...]:
    """The HF shape of a parameter of `our_shape` (without touching data)."""
    return to_hf(np.empty(our_shape, np.int8), kind, config).shape


# ---- parameter trees ---------------------------------------------------------------------------------


def abstract_params(config: LlamaConfig) -> dict:
    """Our parameter tree (nested dict, as `nnx.state(model, nnx.Param).to_pure_dict()`) of ShapeDtypeStructs."""
    from flax import nnx

    return nnx.state(abstract_model(config), nnx.Param).to_pure_dict()


def param_shardings(config: LlamaConfig, mesh) -> dict:
    """NamedSharding per parameter (same tree as `abstract_params`) from the model's logical axes."""
    from flax import nnx

    from instructjax.core.sharding import state_shardings

    return state_shardings(nnx.state(abstract_model(config), nnx.Param), mesh).to_pure_dict()


def get_path(tree: Mapping, path: tuple) -> Any:
    """tree[p0][p1]...; integer keys also match their string form (Orbax restores dict keys as str)."""
    node = tree
    for key in path:
        if key not in node and str(key) in node:
            key = str(key)
        node = node[key]
    return node


def _set_path(tree: dict, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# ---- reading Hugging Face directories -------------------------------------------------------------------


_INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "max_position_embeddings", "head_dim")


def read_hf_config(hf_dir: str) -> LlamaConfig:
    """The LlamaConfig of an HF model directory (config.json), or a one-line ConversionError."""
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
    archs = hf.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs) and hf.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise ConversionError(
            f"{path}: unsupported architecture {archs or hf.get('model_type')!r} (field 'architectures'); "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    try:
        return LlamaConfig.from_hf_dict(hf, dtype="float32", param_dtype="float32")
    except KeyError as e:
        raise ConversionError(f"{path}: missing field {e.args[0]!r}") from None
    except ConfigError as e:
        raise ConversionError(f"{path}: {e}") from None


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


def params_from_tensors(tensors: Mapping[str, Any], config: LlamaConfig, *, where: str = "HF checkpoint",
                        shardings: Any = None, param_dtype: str = "float32") -> dict:
    """Our parameter tree from HF tensors (name -> array: an HF state dict, or `HFTensors` reading one
    file at a time), each converted tensor placed on its sharding as it is read; a stacked (scanned)
    parameter is stacked on the devices once its last layer is read."""
    abstract = abstract_params(config)
    params: dict = {}
    layers: dict[tuple, list] = {}  # stacked parameter -> its layers read so far
    for entry in hf_weight_table(config):
        path, name, kind = entry.path, entry.name, entry.kind
        if name not in tensors:
            raise ConversionError(f"{where}: missing tensor {name!r} (for parameter {'/'.join(map(str, path))})")
        tensor = tensors[name]
        want_hf = hf_shape(entry_shape(abstract, entry), kind, config)
        if tuple(tensor.shape) != want_hf:
            raise ConversionError(f"{where}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {want_hf} "
                                  "from config.json")
        value = np.asarray(to_ours(np.asarray(tensor), kind, config)).astype(param_dtype)
        sharding = get_path(shardings, path) if shardings is not None else None
        if entry.layer is None:
            _set_path(params, path, jax.device_put(value, sharding))
        else:
            layers.setdefault(path, []).append(jax.device_put(value, _without_layers_axis(sharding)))
            if len(layers[path]) == config.num_layers:
                _set_path(params, path, _stack(layers.pop(path), sharding))
        del tensor, value
    known = {entry.name for entry in hf_weight_table(config)}
    if config.tie_embeddings:
        known.add("lm_head.weight")  # a state dict repeats the tied embedding under this name
    extra = [n for n in tensors if n not in known and "rotary_emb.inv_freq" not in n]
    if extra:
        raise ConversionError(f"{where}: unexpected tensor {extra[0]!r} ({len(extra)} unmapped); not a LLaMA layout?")
    return params


def _without_layers_axis(sharding):
    if sharding is None:
        return None
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*tuple(sharding.spec)[1:]))


def _stack(layers: list, sharding) -> Any:
    """One stacked parameter from its per-layer arrays, laid out by `sharding` (numpy without one)."""
    if sharding is None:
        return np.stack([np.asarray(x) for x in layers])
    import jax.numpy as jnp

    return jax.jit(lambda *xs: jnp.stack(xs), out_shardings=sharding)(*layers)


def hf_state(params: Mapping, config: LlamaConfig) -> dict[str, np.ndarray]:
    """Our parameters as an HF LlamaForCausalLM state dict (numpy, the parameters' dtype)."""
    return {entry.name: to_hf(entry_value(params, entry), entry.kind, config) for entry in hf_weight_table(config)}


def hf_to_params(hf_dir: str, config: LlamaConfig | None = None, *, mesh=None,
                 param_dtype: str = "float32") -> tuple[dict, LlamaConfig]:
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


def params_to_hf(params: Mapping, config: LlamaConfig, out_dir: str, *, dtype: str | None = None,
                 max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """Write `params` as HF safetensors (sharded with an index above `max_shard_bytes`); returns file names."""
    from safetensors.numpy import save_file

    target = np_dtype(dtype, config.param_dtype)
    table = hf_weight_table(config)
    sizes = []
    for entry in table:
        try:
            leaf = get_path(params, entry.path)
        except KeyError:
            raise ConversionError(f"checkpoint lacks parameter {'/'.join(map(str, entry.path))} "
                                  f"(HF {entry.name!r})") from None
        shape = leaf.shape if entry.layer is None else leaf.shape[1:]
        sizes.append(int(np.prod(shape)) * target.itemsize)
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
            tensors[entry.name] = np.ascontiguousarray(to_hf(entry_value(params, entry), entry.kind, config)
                                                       .astype(target))
            weight_map[entry.name] = file
        save_file(tensors, os.path.join(out_dir, file), metadata={"format": "pt"})
        storage.usual_mode(os.path.join(out_dir, file))  # safetensors writes 0600
        del tensors
    if len(shards) > 1:
        with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}, f, indent=2)
    return names


def write_hf_config(config: LlamaConfig, out_dir: str, *, dtype: np.dtype, bos_id: int | None,
                    eos_ids: list[int], pad_id: int | None) -> None:
    """config.json and generation_config.json with the tokenizer's special ids."""
    hf = config.to_hf_dict()
    hf.update(bos_token_id=bos_id, eos_token_id=eos_ids[0] if len(eos_ids) == 1 else eos_ids, pad_token_id=pad_id,
              torch_dtype=hf_dtype_name(dtype), dtype=hf_dtype_name(dtype))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    generation = {"bos_token_id": bos_id, "eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids,
                  "pad_token_id": pad_id, "do_sample": False}
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({k: v for k, v in generation.items() if v is not None}, f, indent=2)
