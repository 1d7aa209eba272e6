"""LLaMA (1, 2, 3.x): the base layout the other RoPE families reuse (`layer_tensors`).

Switches: none (LLaMA's are DecoderConfig's defaults); presets llama1-*, llama2-*, llama3*-* in model/presets.py.
config.json: `attention_bias` sets the q/k/v and o biases, `mlp_bias` the MLP's.
Tensors, under HF's `model.` prefix: layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm,
mlp.{gate,up,down}_proj}, embed_tokens, norm; and lm_head.
"""

from __future__ import annotations

from typing import Any

from instructjax.model.families.record import (
    HF_ACTIVATION,
    DecoderConfig,
    Family,
    Tensor,
    linear_tensors,
    norm_tensors,
    rope_parameters,
    shape_keys,
)


def layer_tensors(config: DecoderConfig, *, fused: bool = False) -> list[Tensor]:
    """One LLaMA-style layer's tensors, with Qwen3's q/k norms and Gemma's four norms where the switches set them;
    `fused`: q/k/v in one `qkv_proj` and gate/up in one `gate_up_proj` (Phi-3)."""
    c, attn = config, "self_attn"
    out = norm_tensors("input_layernorm", "input_layernorm", c)
    if fused:
        out.append(("self_attn.qkv_proj.weight", (((attn, "q_proj", "kernel"), "q"), ((attn, "k_proj", "kernel"), "kv"),
                                                  ((attn, "v_proj", "kernel"), "kv")), "qkv"))
    else:
        for name, kind in (("q_proj", "q"), ("k_proj", "kv"), ("v_proj", "kv")):
            out += linear_tensors((attn, name), f"self_attn.{name}", kind, c.qkv_bias, f"{kind}_bias")
    out += linear_tensors((attn, "o_proj"), "self_attn.o_proj", "o", c.o_bias)
    if c.qk_norm:  # OLMoE's span every head: [heads * head_dim] in HF's files, [heads, head_dim] here
        kinds = ("q_bias", "kv_bias") if c.qk_norm_whole else ("copy", "copy")
        out += [(f"self_attn.{n}.weight", (((attn, n, "scale"), kind),), None)
                for n, kind in zip(("q_norm", "k_norm"), kinds, strict=True)]
    if c.sandwich_norms:  # Gemma: HF's post_attention_layernorm is the attention output's norm
        out += [*norm_tensors("attention_output_norm", "post_attention_layernorm", c),
                *norm_tensors("post_attention_layernorm", "pre_feedforward_layernorm", c),
                *norm_tensors("mlp_output_norm", "post_feedforward_layernorm", c)]
    else:
        out += norm_tensors("post_attention_layernorm", "post_attention_layernorm", c)
    if fused:
        out.append(("mlp.gate_up_proj.weight", ((("mlp", "gate_proj", "kernel"), "linear"),
                                                (("mlp", "up_proj", "kernel"), "linear")), "gate_up"))
        out += linear_tensors(("mlp", "down_proj"), "mlp.down_proj", "linear", c.mlp_bias)
    else:
        names = ("gate_proj", "up_proj", "down_proj") if c.gated_mlp else ("up_proj", "down_proj")
        out += [e for n in names for e in linear_tensors(("mlp", n), f"mlp.{n}", "linear", c.mlp_bias)]
    return out


def read(hf: dict[str, Any], where: str) -> dict[str, Any]:
    bias = bool(hf.get("attention_bias", False))
    return {"qkv_bias": bias, "o_bias": bias, "mlp_bias": bool(hf.get("mlp_bias", False))}


def write(config: DecoderConfig) -> dict[str, Any]:
    return {**shape_keys(config), "rms_norm_eps": config.norm_eps, "hidden_act": HF_ACTIVATION[config.activation],
            "attention_bias": config.qkv_bias, "mlp_bias": config.mlp_bias, "sliding_window": config.sliding_window,
            "rope_parameters": rope_parameters(config)}


LLAMA = Family(switches={},
               name="llama", architecture="LlamaForCausalLM", model_type="llama", read=read, write=write,
               layer=layer_tensors)
