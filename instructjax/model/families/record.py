"""What a family's record holds (`Family`), and the pieces the records are built from: tensor-name entries of
norms and linear layers, and the config.json keys most families share.

A record's tensor entries are (HF name inside a layer, our parts, split): each part is (our path inside a layer
or the model, kind), the kind naming its layout steps in `convert.hf_names.HOOKS`; a split names one of the
record's `splits`, which cut a fused HF tensor into HF-layout pieces and join them again. An expert's tensor carries
a fourth item, its expert's index into our stacked experts' parameter (`expert_tensors`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DecoderConfig = Any  # a model.config.DecoderConfig (not imported: model.config reads these records)
Part = tuple[tuple, str]  # (our path inside a layer or the model, kind)
Tensor = tuple  # (HF name, our parts: tuple[Part, ...], split: str | None[, expert: int])
Split = tuple[Callable[[np.ndarray, DecoderConfig], list[np.ndarray]],
              Callable[[list[np.ndarray], DecoderConfig], np.ndarray]]

HF_ACTIVATION = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "relu": "relu"}
LLAMA_TOP = ("model.layers", "model.embed_tokens", None, "model.norm", "lm_head")
# our projections, in the order a layer's LoRA dropout keys are folded (model/layers.py `module_key`)
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# the LoRA modules of LLaMA's layout: HF module name -> our modules it is (each its own)
LLAMA_LORA: dict[str, tuple[str, ...]] = {name: (name,) for name in PROJECTIONS}


def _nothing(hf: dict[str, Any], where: str) -> dict[str, Any]:
    return {}


def _every_layer(hf: dict[str, Any], layers: int) -> tuple[str, ...] | None:
    return None


@dataclass(frozen=True)
class Family:
    """One model family: its decoder switches (`switches`, which model/config.py's `FAMILIES` reads under the same
    name), how its HF config.json maps to a DecoderConfig and back, and its HF tensor names.

    config.json -> DecoderConfig (`convert.hf_config.from_hf` reads the keys every family shares):
      `read(hf, where)`: the fields the family reads from its own keys (biases, soft-caps, a parallel residual),
        raising ConfigError for a variant we do not support; `intermediate_key` names the MLP width,
        `norm_eps_default` and `tied_default` are transformers' defaults where a file leaves them out;
        `window_flag` a key that must be true for `sliding_window` to count (Qwen's `use_sliding_window`);
        `legacy_layer_types(hf, num_layers)` the layer types of a config without `layer_types` (None: every layer
        slides when a window is set).
    DecoderConfig -> config.json (`convert.hf_config.to_hf` writes the shared keys first):
      `write(config)`: the family's keys, in the order transformers writes them.
    Tensors (`convert.hf_names.hf_weight_table`):
      `top`: (layer prefix, embeddings, learned positions, final norm, output head);
      `layer(config)`: every tensor of one decoder layer; `splits`: the cuts of its fused tensors; a mixture of
      experts' `moe(config)`: its sparse block's (router and experts), in place of the MLP's in its sparse layers;
      `router_aux_loss` its load-balancing coefficient (a config's `model.router_aux_loss` default).
    Adapters (model/lora.py): `lora_modules`, the HF linear modules a LoRA may target (PEFT's `target_modules`),
      each -> our modules it is, several for a fused one in the order HF fuses them (Phi-3's `qkv_proj`: q, k, v);
      a mixture of experts' `lora_parameters`, its experts' fused 3-D HF parameters a LoRA may target (PEFT's
      `target_parameters`, one A and B per expert), each -> our stacked expert parameters, in HF's fused order.
    """

    name: str
    architecture: str  # HF `architectures`
    model_type: str  # HF `model_type`
    write: Callable[[DecoderConfig], dict[str, Any]]
    layer: Callable[[DecoderConfig], list[Tensor]]
    read: Callable[[dict[str, Any], str], dict[str, Any]] = _nothing
    intermediate_key: str = "intermediate_size"
    norm_eps_default: float = 1e-6
    tied_default: bool = False
    window_flag: str | None = None
    legacy_layer_types: Callable[[dict[str, Any], int], tuple[str, ...] | None] = _every_layer
    top: tuple[str, str, str | None, str, str] = LLAMA_TOP
    splits: dict[str, Split] = field(default_factory=dict)
    # the decoder switches the family sets (DecoderConfig's fields; the rest are LLaMA's defaults)
    switches: dict[str, Any] = field(default_factory=dict)
    lora_modules: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(LLAMA_LORA))
    lora_parameters: dict[str, tuple[str, ...]] = field(default_factory=dict)
    moe: Callable[[DecoderConfig], list[Tensor]] | None = None
    router_aux_loss: float = 0.0  # the load-balancing loss's published coefficient (HF's `router_aux_loss_coef`)


def alternating(num_layers: int, period: int) -> tuple[str, ...]:
    """Layer types with a full-attention layer every `period` layers, the others sliding (Gemma-2: 2, Gemma-3: 6)."""
    return tuple("full" if (i + 1) % period == 0 else "sliding" for i in range(num_layers))


# ---- tensor entries ------------------------------------------------------------------------------------


def norm_tensors(ours: str, hf: str, config: DecoderConfig) -> list[Tensor]:
    """A norm's scale (and its bias, for LayerNorm)."""
    out = [(f"{hf}.weight", (((ours, "scale"), "copy"),), None)]
    return out + ([(f"{hf}.bias", (((ours, "bias"), "copy"),), None)] if config.norm == "layer" else [])


def linear_tensors(ours: tuple, hf: str, kind: str, bias: bool, bias_kind: str = "copy") -> list[Tensor]:
    """A projection's weight (and its bias)."""
    out = [(f"{hf}.weight", (((*ours, "kernel"), kind),), None)]
    return out + ([(f"{hf}.bias", (((*ours, "bias"), bias_kind),), None)] if bias else [])


def expert_tensors(config: DecoderConfig, router: str, experts: str, names: tuple[str, str, str]) -> list[Tensor]:
    """A sparse block's tensors: the router `{router}.weight` [E, embed], and each expert j's gate, up and down
    projections `{experts}.{j}.{name}.weight` (`names` in that order), one expert of our stacked parameters each."""
    out: list[Tensor] = [(f"{router}.weight", ((("mlp", "router", "kernel"), "linear"),), None)]
    for j in range(config.num_experts):
        out += [(f"{experts}.{j}.{theirs}.weight", ((("mlp", ours), "linear"),), None, j)
                for ours, theirs in zip(("gate_proj", "up_proj", "down_proj"), names, strict=True)]
    return out


def rows(sizes: Callable[[DecoderConfig], list[int]]) -> Split:
    """A fused tensor whose first axis (a weight's output rows, or a bias) is its pieces one after another."""
    return (lambda x, c: np.split(x, np.cumsum(sizes(c))[:-1], axis=0),
            lambda pieces, c: np.concatenate(pieces, axis=0))


# ---- config.json keys ----------------------------------------------------------------------------------


def shape_keys(config: DecoderConfig) -> dict[str, Any]:
    """The MLP width, the kv heads, the head size and the legacy RoPE keys (every family but OPT)."""
    return {"intermediate_size": config.intermediate_size, "num_key_value_heads": config.num_kv_heads,
            "head_dim": config.head_dim, "rope_theta": config.rope_theta,
            "rope_scaling": {"type": config.rope_scaling["rope_type"], **config.rope_scaling}
            if config.rope_scaling else None}


def rope_parameters(config: DecoderConfig) -> dict[str, Any]:
    """transformers 5's `rope_parameters` of the full-attention layers."""
    return {"rope_type": "default", "rope_theta": config.rope_theta, **(config.rope_scaling or {})}


def partial_rotary(config: DecoderConfig) -> float:
    """The fraction of each head RoPE rotates."""
    return config.rotary_size / config.head_dim


def layer_types_keys(config: DecoderConfig) -> dict[str, Any]:
    """transformers 5's `layer_types` where a window is set (Gemma, Qwen)."""
    if config.sliding_window is None:
        return {}
    return {"layer_types": [f"{kind}_attention" for kind in config.kinds]}
