"""Hugging Face checkpoints of every family <-> instructjax parameters, both directions.

Names and layouts live together here, as in MaxText's `param_mapping.py`: `hf_weight_table` names which
HF tensor feeds which of our parameters with which kind, per family (`layer_weights`), and each kind is a
chain of small reversible steps (`HOOKS`: HF -> ours applies the forward functions in order, ours -> HF
the inverses in reverse order). A fused HF tensor (Phi-3's qkv_proj and gate_up_proj, GPT-NeoX's per-head
interleaved query_key_value) feeds several of our parameters: `SPLITS` cuts it into HF-layout pieces on
import and joins them again on export. Conversion is transposes, reshapes, splits and joins only, because
the model keeps HF's RoPE layout. Scanned layers keep one stacked parameter per weight; their entries name a
`layer` of its leading axis, so the HF files are the same whichever layout a model runs with.

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

from instructjax.convert import hf_config
from instructjax.core import storage
from instructjax.core.errors import ConfigError
from instructjax.model.config import DecoderConfig
from instructjax.model.decoder import abstract_model

DTYPES = {"fp32": np.float32, "float32": np.float32, "bf16": "bfloat16", "bfloat16": "bfloat16",
          "fp16": np.float16, "float16": np.float16}


class ConversionError(ConfigError):
    """A checkpoint that cannot be converted: names the file, tensor or config field."""


# ---- the hook table --------------------------------------------------------------------------------
# A step is (hf_to_ours, ours_to_hf), each f(array, config) -> array.

Step = tuple[Callable[[np.ndarray, DecoderConfig], np.ndarray], Callable[[np.ndarray, DecoderConfig], np.ndarray]]

TRANSPOSE: Step = (lambda x, c: x.T, lambda x, c: x.T)  # HF Linear [out, in] <-> our kernel [in, out]


def split_last(heads: str) -> Step:
    """[..., heads*head_dim] <-> [..., heads, head_dim], `heads` naming the config field."""
    return (lambda x, c: x.reshape(*x.shape[:-1], getattr(c, heads), c.head_dim),
            lambda x, c: x.reshape(*x.shape[:-2], -1))


def split_first(heads: str) -> Step:
    """[heads*head_dim, out] <-> [heads, head_dim, out]."""
    return (lambda x, c: x.reshape(getattr(c, heads), c.head_dim, x.shape[-1]),
            lambda x, c: x.reshape(-1, x.shape[-1]))


HOOKS: dict[str, tuple[Step, ...]] = {
    "copy": (),  # embeddings, norm scales and biases, o/MLP biases
    "linear": (TRANSPOSE,),  # mlp projections, lm_head
    "q": (TRANSPOSE, split_last("num_heads")),
    "kv": (TRANSPOSE, split_last("num_kv_heads")),
    "o": (TRANSPOSE, split_first("num_heads")),
    "q_bias": (split_last("num_heads"),),
    "kv_bias": (split_last("num_kv_heads"),),
}


# A split cuts a fused HF tensor (its first axis: a weight's output rows or a bias) into HF-layout pieces
# and joins them back: (split(x, config) -> pieces, join(pieces, config) -> x).
def _rows(sizes: Callable[[DecoderConfig], list[int]]):
    return (lambda x, c: np.split(x, np.cumsum(sizes(c))[:-1], axis=0),
            lambda pieces, c: np.concatenate(pieces, axis=0))


def _neox_split(x: np.ndarray, c: DecoderConfig) -> list[np.ndarray]:
    """GPT-NeoX's query_key_value: rows ordered per head as [q, k, v] x head_dim."""
    per_head = x.reshape(c.num_heads, 3, c.head_dim, *x.shape[1:])
    return [per_head[:, i].reshape(c.num_heads * c.head_dim, *x.shape[1:]) for i in range(3)]


def _neox_join(pieces: list[np.ndarray], c: DecoderConfig) -> np.ndarray:
    stacked = np.stack([p.reshape(c.num_heads, c.head_dim, *p.shape[1:]) for p in pieces], axis=1)
    return stacked.reshape(3 * c.num_heads * c.head_dim, *pieces[0].shape[1:])


SPLITS: dict[str, tuple[Callable, Callable]] = {
    "qkv": _rows(lambda c: [c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.num_kv_heads * c.head_dim]),
    "gate_up": _rows(lambda c: [c.intermediate_size, c.intermediate_size]),
    "neox_qkv": (_neox_split, _neox_join),
}

Part = tuple[tuple, str]  # (our path inside a layer or the model, kind)


def _norm(ours: str, hf: str, config: DecoderConfig) -> list[tuple[str, tuple[Part, ...], str | None]]:
    out = [(f"{hf}.weight", (((ours, "scale"), "copy"),), None)]
    return out + ([(f"{hf}.bias", (((ours, "bias"), "copy"),), None)] if config.norm == "layer" else [])


def _linear(ours: tuple, hf: str, kind: str, bias: bool, bias_kind: str = "copy"):
    out = [(f"{hf}.weight", (((*ours, "kernel"), kind),), None)]
    return out + ([(f"{hf}.bias", (((*ours, "bias"), bias_kind),), None)] if bias else [])


def layer_weights(config: DecoderConfig) -> list[tuple[str, tuple[Part, ...], str | None]]:
    """(HF name inside a layer, our parts, split) of every tensor of one decoder layer of `config`'s family."""
    c, attn = config, "self_attn"
    if c.family == "opt":
        return [*_norm("input_layernorm", "self_attn_layer_norm", c),
                *_linear((attn, "q_proj"), "self_attn.q_proj", "q", c.qkv_bias, "q_bias"),
                *_linear((attn, "k_proj"), "self_attn.k_proj", "kv", c.qkv_bias, "kv_bias"),
                *_linear((attn, "v_proj"), "self_attn.v_proj", "kv", c.qkv_bias, "kv_bias"),
                *_linear((attn, "o_proj"), "self_attn.out_proj", "o", c.o_bias),
                *_norm("post_attention_layernorm", "final_layer_norm", c),
                *_linear(("mlp", "up_proj"), "fc1", "linear", c.mlp_bias),
                *_linear(("mlp", "down_proj"), "fc2", "linear", c.mlp_bias)]
    if c.family == "gpt_neox":
        qkv = (((attn, "q_proj", "kernel"), "q"), ((attn, "k_proj", "kernel"), "kv"), ((attn, "v_proj", "kernel"), "kv"))
        qkv_bias = (((attn, "q_proj", "bias"), "q_bias"), ((attn, "k_proj", "bias"), "kv_bias"),
                    ((attn, "v_proj", "bias"), "kv_bias"))
        return [*_norm("input_layernorm", "input_layernorm", c), *_norm("post_attention_layernorm",
                                                                         "post_attention_layernorm", c),
                ("attention.query_key_value.weight", qkv, "neox_qkv"),
                *([("attention.query_key_value.bias", qkv_bias, "neox_qkv")] if c.qkv_bias else []),
                *_linear((attn, "o_proj"), "attention.dense", "o", c.o_bias),
                *_linear(("mlp", "up_proj"), "mlp.dense_h_to_4h", "linear", c.mlp_bias),
                *_linear(("mlp", "down_proj"), "mlp.dense_4h_to_h", "linear", c.mlp_bias)]
    out = _norm("input_layernorm", "input_layernorm", c)
    if c.family == "phi3":
        out.append(("self_attn.qkv_proj.weight", (((attn, "q_proj", "kernel"), "q"), ((attn, "k_proj", "kernel"), "kv"),
                                                  ((attn, "v_proj", "kernel"), "kv")), "qkv"))
    else:
        for name, kind in (("q_proj", "q"), ("k_proj", "kv"), ("v_proj", "kv")):
            out += _linear((attn, name), f"self_attn.{name}", kind, c.qkv_bias, f"{kind}_bias")
    out += _linear((attn, "o_proj"), "self_attn.o_proj", "o", c.o_bias)
    if c.qk_norm:
        out += [(f"self_attn.{n}.weight", (((attn, n, "scale"), "copy"),), None) for n in ("q_norm", "k_norm")]
    if c.sandwich_norms:  # Gemma: HF's post_attention_layernorm is the attention output's norm
        out += [*_norm("attention_output_norm", "post_attention_layernorm", c),
                *_norm("post_attention_layernorm", "pre_feedforward_layernorm", c),
                *_norm("mlp_output_norm", "post_feedforward_layernorm", c)]
    else:
        out += _norm("post_attention_layernorm", "post_attention_layernorm", c)
    if c.family == "phi3":
        out.append(("mlp.gate_up_proj.weight", ((("mlp", "gate_proj", "kernel"), "linear"),
                                                (("mlp", "up_proj", "kernel"), "linear")), "gate_up"))
        out += _linear(("mlp", "down_proj"), "mlp.down_proj", "linear", c.mlp_bias)
    else:
        names = ("gate_proj", "up_proj", "down_proj") if c.gated_mlp else ("up_proj", "down_proj")
        out += [e for n in names for e in _linear(("mlp", n), f"mlp.{n}", "linear", c.mlp_bias)]
    return out


# family -> (layer prefix, embeddings, learned positions, final norm, output head)
TOP_NAMES = {
    "opt": ("model.decoder.layers", "model.decoder.embed_tokens", "model.decoder.embed_positions",
            "model.decoder.final_layer_norm", "lm_head"),
    "gpt_neox": ("gpt_neox.layers", "gpt_neox.embed_in", None, "gpt_neox.final_layer_norm", "embed_out"),
}
LLAMA_NAMES = ("model.layers", "model.embed_tokens", None, "model.norm", "lm_head")
# tensors a checkpoint may hold that are not weights (buffers of older transformers versions)
IGNORED = ("rotary_emb.inv_freq", "attention.bias", "attention.masked_bias")


class Entry(NamedTuple):
    """One HF tensor: its state-dict `name`, the `parts` of ours it feeds ((path, kind) each: one, or several
    for a fused tensor cut by `split`), and for scanned (stacked) layers the `layer` index into each
    parameter's leading axis (None: the whole parameter)."""

    name: str
    parts: tuple[Part, ...]
    split: str | None = None
    layer: int | None = None


def hf_weight_table(config: DecoderConfig) -> list[Entry]:
    """Every HF tensor's entry, in HF order. Scanned layers: one stacked parameter, one entry per layer."""
    prefix, embed, positions, final, head = TOP_NAMES.get(config.family, LLAMA_NAMES)
    table = [Entry(f"{embed}.weight", ((("embed_tokens", "embedding"), "copy"),))]
    if config.positions == "learned":
        table.append(Entry(f"{positions}.weight", ((("embed_positions", "embedding"), "copy"),)))
    for i in range(config.num_layers):
        for hf, parts, split in layer_weights(config):
            if config.scan_layers:
                table.append(Entry(f"{prefix}.{i}.{hf}", tuple((("layers", *p), k) for p, k in parts), split, i))
            else:
                table.append(Entry(f"{prefix}.{i}.{hf}", tuple((("layers", i, *p), k) for p, k in parts), split))
    table += [Entry(name, ((("norm", path), "copy"),)) for name, path in _final_norm(final, config)]
    if not config.tie_embeddings:
        table.append(Entry(f"{head}.weight", ((("lm_head", "kernel"), "linear"),)))
    return table


def _final_norm(final: str, config: DecoderConfig) -> list[tuple[str, str]]:
    return [(f"{final}.weight", "scale")] + ([(f"{final}.bias", "bias")] if config.norm == "layer" else [])


def tied_head_name(config: DecoderConfig) -> str:
    """The name under which a state dict repeats a tied embedding as the output head."""
    return f"{TOP_NAMES.get(config.family, LLAMA_NAMES)[4]}.weight"


def part_value(params: Mapping, path: tuple, layer: int | None) -> np.ndarray:
    """The part of `params` a path names (one layer of a stacked parameter), fetched to the host."""
    value = get_path(params, path)
    return np.asarray(jax.device_get(value if layer is None else value[layer]))


def part_shape(abstract: Mapping, path: tuple, layer: int | None) -> tuple[int, ...]:
    """Our shape of the tensor a path names (a stacked parameter without its `layers` axis)."""
    shape = tuple(get_path(abstract, path).shape)
    return shape if layer is None else shape[1:]


def to_ours(tensor: np.ndarray, kind: str, config: DecoderConfig) -> np.ndarray:
    """One HF tensor (or fused piece) in our layout."""
    for forward, _ in HOOKS[kind]:
        tensor = forward(tensor, config)
    return tensor


def to_hf(array: np.ndarray, kind: str, config: DecoderConfig) -> np.ndarray:
    """One of our parameters in HF layout."""
    for _, inverse in reversed(HOOKS[kind]):
        array = inverse(array, config)
    return array


def entry_hf_shape(abstract: Mapping, entry: Entry, config: DecoderConfig) -> tuple[int, ...]:
    """The HF shape of an entry's tensor (without touching data)."""
    pieces = [to_hf(np.empty(part_shape(abstract, path, entry.layer), np.int8), kind, config)
              for path, kind in entry.parts]
    return (SPLITS[entry.split][1](pieces, config) if entry.split else pieces[0]).shape


def entry_to_ours(tensor: np.ndarray, entry: Entry, config: DecoderConfig) -> list[np.ndarray]:
    """An HF tensor as our parameters (one per part)."""
    pieces = SPLITS[entry.split][0](tensor, config) if entry.split else [tensor]
    return [to_ours(piece, kind, config) for piece, (_, kind) in zip(pieces, entry.parts, strict=True)]


def entry_to_hf(params: Mapping, entry: Entry, config: DecoderConfig) -> np.ndarray:
    """An entry's HF tensor from our parameters (fused again where HF fuses)."""
    pieces = [to_hf(part_value(params, path, entry.layer), kind, config) for path, kind in entry.parts]
    return SPLITS[entry.split][1](pieces, config) if entry.split else pieces[0]


# ---- parameter trees ---------------------------------------------------------------------------------


def abstract_params(config: DecoderConfig) -> dict:
    """Our parameter tree (nested dict, as `nnx.state(model, nnx.Param).to_pure_dict()`) of ShapeDtypeStructs."""
    from flax import nnx

    return nnx.state(abstract_model(config), nnx.Param).to_pure_dict()


def param_shardings(config: DecoderConfig, mesh) -> dict:
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


_INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "ffn_dim", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "head_dim", "sliding_window")


def read_hf_config(hf_dir: str) -> DecoderConfig:
    """The DecoderConfig of an HF model directory (config.json), or a one-line ConversionError."""
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
                              f"{hf_config.HF_NAMES[config.family][0]} layout?")
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
                size += int(np.prod(part_shape(params, path, entry.layer))) * target.itemsize
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
