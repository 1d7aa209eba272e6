"""Hugging Face config.json <-> DecoderConfig: the keys every family shares here, each family's own keys, defaults
and legacy rules in its record (`model.families`).

Reading accepts both forms transformers has written: the legacy keys (`rope_theta`, `rope_scaling`,
`rotary_pct`, `rope_local_base_freq`, `sliding_window_pattern`, Qwen's `use_sliding_window`) and
transformers 5's (`rope_parameters`, per layer type where a family has two, and `layer_types`). Writing
gives the legacy keys plus `layer_types` and `rope_parameters`, which transformers 4.4x and 5 both read.
Keys we do not map are kept in `extra` and written back."""

from __future__ import annotations

from typing import Any

from instructjax.core.errors import ConfigError
from instructjax.model.config import ROPE_TYPES, DecoderConfig
from instructjax.model.families import RECORDS, family_of, supported
from instructjax.model.families.record import HF_ACTIVATION, Family

# Re-exported: the families' HF names and what they read, once kept here.
HF_NAMES: dict[str, tuple[str, str, bool]] = {  # family -> (architecture, model_type, default of tie_word_embeddings)
    name: (r.architecture, r.model_type, r.tied_default) for name, r in RECORDS.items()}
__all__ = ["ACTIVATIONS", "HF_ACTIVATION", "HF_NAMES", "family_of", "from_hf", "supported", "to_hf"]

ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
               "gelu": "gelu", "relu": "relu"}
# keys every family's reading consumes (not kept in `extra`)
_MAPPED = {
    "vocab_size", "hidden_size", "intermediate_size", "ffn_dim", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "rms_norm_eps", "layer_norm_eps", "rope_theta", "rope_scaling",
    "rope_parameters", "rotary_pct", "rotary_emb_base", "partial_rotary_factor", "rope_local_base_freq",
    "max_position_embeddings", "original_max_position_embeddings", "tie_word_embeddings", "bos_token_id",
    "eos_token_id", "pad_token_id", "initializer_range", "init_std", "hidden_act", "hidden_activation",
    "activation_function", "attention_bias", "mlp_bias", "architectures", "model_type", "sliding_window",
    "use_sliding_window", "max_window_layers", "layer_types", "sliding_window_pattern", "_sliding_window_pattern",
    "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping", "use_parallel_residual",
    "do_layer_norm_before", "word_embed_proj_dim", "enable_bias", "layer_norm_elementwise_affine",
    "torch_dtype", "dtype", "transformers_version",
    "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size", "norm_topk_prob",
    "router_aux_loss_coef", "mlp_only_layers", "decoder_sparse_step", "router_jitter_noise", "clip_qkv",
}


def _rope(hf: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the full layers' rope parameters, the sliding layers' or None) from either form."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and ("full_attention" in params or "sliding_attention" in params):
        return dict(params.get("full_attention") or {}), dict(params.get("sliding_attention") or {})
    if isinstance(params, dict):
        return dict(params), None
    scaling = dict(hf.get("rope_scaling") or {})
    scaling.setdefault("rope_theta", hf.get("rope_theta", hf.get("rotary_emb_base", 10000.0)))
    if "rope_local_base_freq" in hf:
        return scaling, {"rope_type": "default", "rope_theta": hf["rope_local_base_freq"]}
    return scaling, None


def _scaling(params: dict[str, Any], hf: dict[str, Any], where: str) -> dict[str, Any] | None:
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return None
    if kind not in ROPE_TYPES:
        raise ConfigError(f"{where}: unsupported rope type {kind!r}; supported: default, {', '.join(ROPE_TYPES)}")
    out = {k: v for k, v in params.items() if k not in ("type", "rope_theta", "partial_rotary_factor")}
    out["rope_type"] = kind
    if kind == "longrope":
        out.setdefault("original_max_position_embeddings", hf.get("original_max_position_embeddings"))
    return out


def _layer_types(hf: dict[str, Any], family: Family, layers: int) -> tuple[tuple[str, ...] | None, int | None]:
    """(layer types, window) of a config: transformers 5's `layer_types`, else the family's legacy rule."""
    window = hf.get("sliding_window")
    if family.window_flag and not hf.get(family.window_flag, False):
        window = None
    if window is None:
        return None, None
    if hf.get("layer_types"):
        types = tuple("sliding" if t == "sliding_attention" else "full" for t in hf["layer_types"])
        return (types if "sliding" in types else None), (window if "sliding" in types else None)
    return family.legacy_layer_types(hf, layers), window


def from_hf(hf: dict[str, Any], where: str = "config.json", **overrides: Any) -> DecoderConfig:
    """The DecoderConfig of an HF config.json dict (KeyError for a missing required field): the keys every family
    shares here, its own through its record (`model.families`)."""
    name = family_of(hf)
    if name is None:
        raise ConfigError(f"{where}: unsupported architecture {hf.get('architectures') or hf.get('model_type')!r} "
                          f"(field 'architectures'); supported: {supported()}")
    family = RECORDS[name]
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    layers = hf["num_hidden_layers"]
    full, local = _rope(hf)
    partial = full.get("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 1.0)))
    layer_types, window = _layer_types(hf, family, layers)
    activation = hf.get("hidden_act") or hf.get("hidden_activation") or hf.get("activation_function") or "silu"
    if activation not in ACTIVATIONS:
        raise ConfigError(f"{where}: unsupported activation {activation!r}; supported: {', '.join(ACTIVATIONS)}")
    switches = {**family.switches, **family.read(hf, where)}
    eos = hf.get("eos_token_id", 2)
    eos = list(eos) if isinstance(eos, list) and eos else [eos]
    switches.update(
        family=name,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf[family.intermediate_key],
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        norm_eps=hf.get("rms_norm_eps", hf.get("layer_norm_eps", family.norm_eps_default)),
        activation=ACTIVATIONS[activation],
        rope_theta=float(full.get("rope_theta", hf.get("rope_theta", 10000.0))),
        rope_scaling=_scaling(full, hf, where) if family.switches.get("positions", "rope") == "rope" else None,
        rotary_dims=None if partial == 1.0 else int(head_dim * partial),
        local_rope_theta=float(local["rope_theta"]) if local and "rope_theta" in local else None,
        sliding_window=window,
        layer_types=layer_types,
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        tie_embeddings=bool(hf.get("tie_word_embeddings", family.tied_default)),
        bos_id=hf.get("bos_token_id", 1),
        eos_id=eos[0],
        extra_eos_ids=tuple(eos[1:]),
        pad_id=hf.get("pad_token_id"),
        initializer_range=hf.get("initializer_range", hf.get("init_std", 0.02)),
        extra={k: v for k, v in hf.items() if k not in _MAPPED and not k.startswith("_")},
    )
    switches.update(overrides)
    return DecoderConfig(**switches)


def to_hf(config: DecoderConfig) -> dict[str, Any]:
    """A config.json dict of `config`'s family that transformers reads back into the same model: the keys every
    family shares, then the family's own (its record's `write`)."""
    family = RECORDS[config.family]
    return {
        **config.extra,
        "architectures": [family.architecture],
        "model_type": family.model_type,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.initializer_range,
        "bos_token_id": config.bos_id,
        "eos_token_id": list(config.eos_ids) if config.extra_eos_ids else config.eos_id,
        "pad_token_id": config.pad_id,
        "torch_dtype": config.dtype,
        **family.write(config),
    }
