"""Each family's Hugging Face tensor names and the steps between their layout and ours.

`hf_weight_table(config)` lists every HF tensor of a model: which of our parameters it feeds (one, or several for a
fused tensor) and by which kind of step (`HOOKS`: HF -> ours applies the forward functions in order, ours -> HF the
inverses in reverse order). A fused HF tensor (Phi-3's qkv_proj and gate_up_proj, GPT-NeoX's per-head interleaved
query_key_value) is cut into HF-layout pieces by `SPLITS` on import and joined again on export. The steps are
transposes, reshapes, splits and joins only, because the model keeps HF's RoPE layout. Scanned layers keep one
stacked parameter per weight; their entries name a `layer` of its leading axis, so the HF files are the same
whichever layout a model runs with. `convert.hf` reads and writes the files with these tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from instructjax.model.config import DecoderConfig

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


def get_path(tree: Mapping, path: tuple) -> Any:
    """tree[p0][p1]...; integer keys also match their string form (Orbax restores dict keys as str)."""
    node = tree
    for key in path:
        if key not in node and str(key) in node:
            key = str(key)
        node = node[key]
    return node
