"""The Hugging Face tensor table of a model and the steps between HF's layout and ours. Each family's tensor names,
fused tensors and their cuts are its record's (`model.families`: `top`, `layer`, `splits`).

`hf_weight_table(config)` lists every HF tensor of a model: which of our parameters it feeds (one, or several for a
fused tensor) and by which kind of step (`HOOKS`: HF -> ours applies the forward functions in order, ours -> HF the
inverses in reverse order). A fused HF tensor (Phi-3's qkv_proj and gate_up_proj, GPT-NeoX's per-head interleaved
query_key_value) is cut into HF-layout pieces by `SPLITS` on import and joined again on export. The steps are
transposes, reshapes, splits and joins only, because the model keeps HF's RoPE layout. Scanned layers keep one
stacked parameter per weight; their entries name a `layer` of its leading axis, so the HF files are the same
whichever layout a model runs with. A mixture of experts' experts are one stacked parameter each (gate, up, down)
and one HF tensor per expert; their entries name an `expert` of its experts axis (after the `layers` axis).
`convert.hf` reads and writes the files with these tables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from instructjax.model.config import DecoderConfig
from instructjax.model.families import RECORDS
from instructjax.model.families.record import Part, Split, Tensor

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


# The fused tensors' cuts, (split(x, config) -> pieces, join(pieces, config) -> x) by name, from the records.
SPLITS: dict[str, Split] = {name: split for record in RECORDS.values() for name, split in record.splits.items()}


def layer_weights(config: DecoderConfig, index: int = 0) -> list[Tensor]:
    """(HF name inside a layer, our parts, split[, expert]) of every tensor of decoder layer `index` of `config`'s
    family: in a sparse layer (`config.sparse_layer`) the record's `moe` tensors take the place of its MLP's."""
    record = RECORDS[config.family]
    tensors = record.layer(config)
    if not config.sparse_layer(index):
        return tensors
    return [t for t in tensors if t[1][0][0][0] != "mlp"] + record.moe(config)


# tensors a checkpoint may hold that are not weights (buffers of older transformers versions)
IGNORED = ("rotary_emb.inv_freq", "attention.bias", "attention.masked_bias")


class Entry(NamedTuple):
    """One HF tensor: its state-dict `name`, the `parts` of ours it feeds ((path, kind) each: one, or several
    for a fused tensor cut by `split`), and for scanned (stacked) layers the `layer` index into each
    parameter's leading axis (None: the whole parameter), and for an expert's tensor its `expert` index into the
    experts axis that follows."""

    name: str
    parts: tuple[Part, ...]
    split: str | None = None
    layer: int | None = None
    expert: int | None = None


def hf_weight_table(config: DecoderConfig) -> list[Entry]:
    """Every HF tensor's entry, in HF order. Scanned layers: one stacked parameter, one entry per layer."""
    prefix, embed, positions, final, head = RECORDS[config.family].top
    table = [Entry(f"{embed}.weight", ((("embed_tokens", "embedding"), "copy"),))]
    if config.positions == "learned":
        table.append(Entry(f"{positions}.weight", ((("embed_positions", "embedding"), "copy"),)))
    for i in range(config.num_layers):
        for hf, parts, split, *expert in layer_weights(config, i):
            expert = expert[0] if expert else None
            if config.scan_layers:
                table.append(Entry(f"{prefix}.{i}.{hf}", tuple((("layers", *p), k) for p, k in parts), split, i,
                                   expert))
            else:
                table.append(Entry(f"{prefix}.{i}.{hf}", tuple((("layers", i, *p), k) for p, k in parts), split,
                                   None, expert))
    table += [Entry(name, ((("norm", path), "copy"),)) for name, path in _final_norm(final, config)]
    if not config.tie_embeddings:
        table.append(Entry(f"{head}.weight", ((("lm_head", "kernel"), "linear"),)))
    return table


def _final_norm(final: str, config: DecoderConfig) -> list[tuple[str, str]]:
    return [(f"{final}.weight", "scale")] + ([(f"{final}.bias", "bias")] if config.norm == "layer" else [])


def tied_head_name(config: DecoderConfig) -> str:
    """The name under which a state dict repeats a tied embedding as the output head."""
    return f"{RECORDS[config.family].top[4]}.weight"


def part_value(params: Mapping, path: tuple, layer: int | None, expert: int | None = None) -> np.ndarray:
    """The part of `params` a path names (one layer of a stacked parameter, one expert of its experts), fetched to
    the host."""
    value = get_path(params, path)
    value = value if layer is None else value[layer]
    return np.asarray(jax.device_get(value if expert is None else value[expert]))


def part_shape(abstract: Mapping, path: tuple, layer: int | None, expert: int | None = None) -> tuple[int, ...]:
    """Our shape of the tensor a path names (a stacked parameter without its `layers` axis, an expert without the
    experts axis)."""
    shape = tuple(get_path(abstract, path).shape)
    return shape[(layer is not None) + (expert is not None):]


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
    pieces = [to_hf(np.empty(part_shape(abstract, path, entry.layer, entry.expert), np.int8), kind, config)
              for path, kind in entry.parts]
    return (SPLITS[entry.split][1](pieces, config) if entry.split else pieces[0]).shape


def entry_to_ours(tensor: np.ndarray, entry: Entry, config: DecoderConfig) -> list[np.ndarray]:
    """An HF tensor as our parameters (one per part)."""
    pieces = SPLITS[entry.split][0](tensor, config) if entry.split else [tensor]
    return [to_ours(piece, kind, config) for piece, (_, kind) in zip(pieces, entry.parts, strict=True)]


def entry_to_hf(params: Mapping, entry: Entry, config: DecoderConfig) -> np.ndarray:
    """An entry's HF tensor from our parameters (fused again where HF fuses)."""
    pieces = [to_hf(part_value(params, path, entry.layer, entry.expert), kind, config) for path, kind in entry.parts]
    return SPLITS[entry.split][1](pieces, config) if entry.split else pieces[0]


def get_path(tree: Mapping, path: tuple) -> Any:
    """tree[p0][p1]...; integer keys also match their string form (Orbax restores dict keys as str)."""
    node = tree
    for key in path:
        if key not in node and str(key) in node:
            key = str(key)
        node = node[key]
    return node
