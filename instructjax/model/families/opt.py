"""OPT: LayerNorm with biases, a ReLU MLP without a gate, learned positions (their table shifted by 2), biases on
every projection, tied embeddings.

Switches: the record's `switches` below; preset opt-6.7b.
config.json: `ffn_dim` (the MLP width), `activation_function`, `enable_bias`; no RoPE keys. OPT-350m's
`do_layer_norm_before=false` and projected embeddings (`word_embed_proj_dim`) are refused.
Tensors, under HF's `model.decoder.` prefix: embed_tokens, embed_positions, final_layer_norm, layers.N.{
self_attn_layer_norm, self_attn.{q,k,v,out}_proj, final_layer_norm, fc1, fc2}; and lm_head.
"""

from __future__ import annotations

from typing import Any

from instructjax.core.errors import ConfigError
from instructjax.model.families.record import (
    HF_ACTIVATION,
    DecoderConfig,
    Family,
    Tensor,
    linear_tensors,
    norm_tensors,
)


def read(hf: dict[str, Any], where: str) -> dict[str, Any]:
    if not hf.get("do_layer_norm_before", True) or hf.get("word_embed_proj_dim", hf["hidden_size"]) != hf["hidden_size"]:
        raise ConfigError(f"{where}: OPT with do_layer_norm_before=false or word_embed_proj_dim != hidden_size "
                          "(OPT-350m) is not supported")
    return {} if hf.get("enable_bias", True) else {"qkv_bias": False, "o_bias": False, "mlp_bias": False}


def write(config: DecoderConfig) -> dict[str, Any]:
    return {"ffn_dim": config.intermediate_size, "activation_function": HF_ACTIVATION[config.activation],
            "do_layer_norm_before": True, "word_embed_proj_dim": config.hidden_size, "enable_bias": config.qkv_bias,
            "layer_norm_elementwise_affine": True}


def layer_tensors(config: DecoderConfig) -> list[Tensor]:
    c, attn = config, "self_attn"
    return [*norm_tensors("input_layernorm", "self_attn_layer_norm", c),
            *linear_tensors((attn, "q_proj"), "self_attn.q_proj", "q", c.qkv_bias, "q_bias"),
            *linear_tensors((attn, "k_proj"), "self_attn.k_proj", "kv", c.qkv_bias, "kv_bias"),
            *linear_tensors((attn, "v_proj"), "self_attn.v_proj", "kv", c.qkv_bias, "kv_bias"),
            *linear_tensors((attn, "o_proj"), "self_attn.out_proj", "o", c.o_bias),
            *norm_tensors("post_attention_layernorm", "final_layer_norm", c),
            *linear_tensors(("mlp", "up_proj"), "fc1", "linear", c.mlp_bias),
            *linear_tensors(("mlp", "down_proj"), "fc2", "linear", c.mlp_bias)]


OPT = Family(switches=dict(norm="layer", activation="relu", gated_mlp=False, qkv_bias=True, o_bias=True,
                            mlp_bias=True, positions="learned", position_offset=2, tie_embeddings=True),
             name="opt", architecture="OPTForCausalLM", model_type="opt", read=read, write=write,
             layer=layer_tensors, intermediate_key="ffn_dim", norm_eps_default=1e-5, tied_default=True,
             lora_modules={"q_proj": ("q_proj",), "k_proj": ("k_proj",), "v_proj": ("v_proj",), "out_proj": ("o_proj",),
                           "fc1": ("up_proj",), "fc2": ("down_proj",)},
             top=("model.decoder.layers", "model.decoder.embed_tokens", "model.decoder.embed_positions",
                  "model.decoder.final_layer_norm", "lm_head"))
