"""Hugging Face config.json <-> DecoderConfig, per family.

Reading accepts both forms transformers has written: the legacy keys (`rope_theta`, `rope_scaling`,
`rotary_pct`, `rope_local_base_freq`, `sliding_window_pattern`, Qwen's `use_sliding_window`) and
transformers 5's (`rope_parameters`, per layer type where a family has two, and `layer_types`). Writing
gives the legacy keys plus `layer_types` and `rope_parameters`, which transformers 4.4x and 5 both read.
Keys we do not map are kept in `extra` and written back."""

from __future__ import annotations

from typing import Any

from instructjax.core.errors import ConfigError
from instructjax.model.config import FAMILIES, ROPE_TYPES, DecoderConfig, alternating

# family -> (HF architecture, model_type, transformers' default of tie_word_embeddings)
HF_NAMES: dict[str, tuple[str, str, bool]] = {
    "llama": ("LlamaForCausalLM", "llama", False),
    "mistral": ("MistralForCausalLM", "mistral", False),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", False),
    "qwen3": ("Qwen3ForCausalLM", "qwen3", False),
    "phi3": ("Phi3ForCausalLM", "phi3", False),
    "gemma2": ("Gemma2ForCausalLM", "gemma2", True),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text", True),
    "opt": ("OPTForCausalLM", "opt", True),
    "gpt_neox": ("GPTNeoXForCausalLM", "gpt_neox", False),
}
ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
               "gelu": "gelu", "relu": "relu"}
HF_ACTIVATION = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu", "relu": "relu"}
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
}


def family_of(hf: dict[str, Any]) -> str | None:
    """The family an HF config.json describes (by `architectures`, else `model_type`), or None."""
    for arch in hf.get("architectures") or []:
        for family, (name, _, _) in HF_NAMES.items():
            if arch == name:
                return family
    return next((family for family, (_, kind, _) in HF_NAMES.items() if hf.get("model_type") == kind), None)


def supported() -> str:
    return ", ".join(name for name, _, _ in HF_NAMES.values())


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


def _layer_types(hf: dict[str, Any], family: str, layers: int) -> tuple[tuple[str, ...] | None, int | None]:
    """(layer types, window) of a config: transformers 5's `layer_types`, else each family's legacy rule."""
    window = hf.get("sliding_window")
    if family in ("qwen2", "qwen3") and not hf.get("use_sliding_window", False):
        window = None
    if window is None:
        return None, None
    if hf.get("layer_types"):
        types = tuple("sliding" if t == "sliding_attention" else "full" for t in hf["layer_types"])
        return (types if "sliding" in types else None), (window if "sliding" in types else None)
    if family == "gemma2":
        return alternating(layers, 2), window
    if family == "gemma3":
        return alternating(layers, hf.get("sliding_window_pattern", hf.get("_sliding_window_pattern", 6))), window
    if family in ("qwen2", "qwen3"):
        first = hf.get("max_window_layers", layers)
        return tuple("sliding" if i >= first else "full" for i in range(layers)), window
    return None, window  # Mistral, Phi-3: every layer


def from_hf(hf: dict[str, Any], where: str = "config.json", **overrides: Any) -> DecoderConfig:
    """The DecoderConfig of an HF config.json dict (KeyError for a missing required field)."""
    family = family_of(hf)
    if family is None:
        raise ConfigError(f"{where}: unsupported architecture {hf.get('architectures') or hf.get('model_type')!r} "
                          f"(field 'architectures'); supported: {supported()}")
    heads = hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or hf["hidden_size"] // heads
    layers = hf["num_hidden_layers"]
    full, local = _rope(hf)
    partial = full.get("partial_rotary_factor", hf.get("partial_rotary_factor", hf.get("rotary_pct", 1.0)))
    layer_types, window = _layer_types(hf, family, layers)
    activation = hf.get("hidden_act") or hf.get("hidden_activation") or hf.get("activation_function") or "silu"
    if activation not in ACTIVATIONS:
        raise ConfigError(f"{where}: unsupported activation {activation!r}; supported: {', '.join(ACTIVATIONS)}")
    if family == "opt" and (not hf.get("do_layer_norm_before", True)
                            or hf.get("word_embed_proj_dim", hf["hidden_size"]) != hf["hidden_size"]):
        raise ConfigError(f"{where}: OPT with do_layer_norm_before=false or word_embed_proj_dim != hidden_size "
                          "(OPT-350m) is not supported")
    eos = hf.get("eos_token_id", 2)
    eos = list(eos) if isinstance(eos, list) and eos else [eos]
    switches = dict(FAMILIES[family])
    if family in ("llama", "qwen3"):
        switches.update(qkv_bias=bool(hf.get("attention_bias", False)), o_bias=bool(hf.get("attention_bias", False)))
    if family == "llama":
        switches["mlp_bias"] = bool(hf.get("mlp_bias", False))
    if family in ("gemma2", "gemma3") and hf.get("attention_bias"):
        switches.update(qkv_bias=True, o_bias=True)
    if family == "gpt_neox":
        switches["residual"] = "parallel" if hf.get("use_parallel_residual", True) else "sequential"
        switches.update(qkv_bias=bool(hf.get("attention_bias", True)), o_bias=bool(hf.get("attention_bias", True)))
    if family == "opt" and not hf.get("enable_bias", True):
        switches.update(qkv_bias=False, o_bias=False, mlp_bias=False)
    switches.update(
        family=family,
        vocab_size=hf["vocab_size"],
        hidden_size=hf["hidden_size"],
        intermediate_size=hf["ffn_dim"] if family == "opt" else hf["intermediate_size"],
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        norm_eps=hf.get("rms_norm_eps", hf.get("layer_norm_eps", 1e-5 if family in ("opt", "gpt_neox") else 1e-6)),
        activation=ACTIVATIONS[activation],
        rope_theta=float(full.get("rope_theta", hf.get("rope_theta", 10000.0))),
        rope_scaling=_scaling(full, hf, where) if family not in ("opt",) else None,
        rotary_dims=None if partial == 1.0 else int(head_dim * partial),
        local_rope_theta=float(local["rope_theta"]) if local and "rope_theta" in local else None,
        sliding_window=window,
        layer_types=layer_types,
        max_position_embeddings=hf.get("max_position_embeddings", 2048),
        tie_embeddings=bool(hf.get("tie_word_embeddings", HF_NAMES[family][2])),
        bos_id=hf.get("bos_token_id", 1),
        eos_id=eos[0],
        extra_eos_ids=tuple(eos[1:]),
        pad_id=hf.get("pad_token_id"),
        initializer_range=hf.get("initializer_range", hf.get("init_std", 0.02)),
        extra={k: v for k, v in hf.items() if k not in _MAPPED and not k.startswith("_")},
    )
    if family in ("gemma2", "gemma3"):
        switches["query_scale"] = float(hf.get("query_pre_attn_scalar", 256)) ** -0.5
        switches["attention_softcap"] = hf.get("attn_logit_softcapping")
        switches["final_softcap"] = hf.get("final_logit_softcapping")
    switches.update(overrides)
    return DecoderConfig(**switches)


def to_hf(config: DecoderConfig) -> dict[str, Any]:
    """A config.json dict of `config`'s family that transformers reads back into the same model."""
    architecture, model_type, _ = HF_NAMES[config.family]
    rope_params: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_theta,
                                   **(config.rope_scaling or {})}
    partial = config.rotary_size / config.head_dim
    hf: dict[str, Any] = {
        **config.extra,
        "architectures": [architecture],
        "model_type": model_type,
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
    }
    if config.family == "opt":
        hf.update(ffn_dim=config.intermediate_size, activation_function=HF_ACTIVATION[config.activation],
                  do_layer_norm_before=True, word_embed_proj_dim=config.hidden_size, enable_bias=config.qkv_bias,
                  layer_norm_elementwise_affine=True)
        return hf
    hf.update(intermediate_size=config.intermediate_size, num_key_value_heads=config.num_kv_heads,
              head_dim=config.head_dim, rope_theta=config.rope_theta,
              rope_scaling={"type": config.rope_scaling["rope_type"], **config.rope_scaling}
              if config.rope_scaling else None)
    if config.family == "gpt_neox":
        hf.update(hidden_act=HF_ACTIVATION[config.activation], layer_norm_eps=config.norm_eps, rotary_pct=partial,
                  rotary_emb_base=config.rope_theta, use_parallel_residual=config.residual == "parallel",
                  attention_bias=config.qkv_bias, rope_parameters={**rope_params, "partial_rotary_factor": partial})
        return hf
    hf["rms_norm_eps"] = config.norm_eps
    hf["hidden_activation" if config.family in ("gemma2", "gemma3") else "hidden_act"] = HF_ACTIVATION[config.activation]
    if config.family in ("llama", "qwen3", "gemma2", "gemma3"):
        hf["attention_bias"] = config.qkv_bias
    if config.family == "llama":
        hf["mlp_bias"] = config.mlp_bias
    if config.family == "phi3":
        hf["partial_rotary_factor"] = partial
        hf["original_max_position_embeddings"] = (config.rope_scaling or {}).get(
            "original_max_position_embeddings", config.extra.get("original_max_position_embeddings",
                                                                 config.max_position_embeddings))
        rope_params["partial_rotary_factor"] = partial
    hf["sliding_window"] = config.sliding_window
    if config.family in ("qwen2", "qwen3"):
        hf["use_sliding_window"] = config.sliding_window is not None
        hf["max_window_layers"] = config.kinds.index("sliding") if "sliding" in config.kinds else config.num_layers
    if config.sliding_window is not None and config.family in ("gemma2", "gemma3", "qwen2", "qwen3"):
        hf["layer_types"] = [f"{kind}_attention" for kind in config.kinds]
    if config.family in ("gemma2", "gemma3"):
        scalar = round(config.query_scale ** -2, 6) if config.query_scale else config.head_dim
        hf.update(query_pre_attn_scalar=int(scalar) if float(scalar).is_integer() else scalar,
                  attn_logit_softcapping=config.attention_softcap, final_logit_softcapping=config.final_softcap)
    if config.family == "gemma3":
        local = config.local_rope_theta or config.rope_theta
        hf["rope_local_base_freq"] = local
        hf["rope_parameters"] = {"full_attention": rope_params,
                                 "sliding_attention": {"rope_type": "default", "rope_theta": local}}
    else:
        hf["rope_parameters"] = rope_params
    return hf
