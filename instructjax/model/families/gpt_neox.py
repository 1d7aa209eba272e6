"""GPT-NeoX (Pythia): LayerNorm with biases, an exact-GELU MLP without a gate, a parallel residual, RoPE over the
first `rotary_pct` of each head, biases on every projection.

Switches: the record's `switches` below; preset pythia-6.9b.
config.json: `use_parallel_residual` (default true), `attention_bias` (default true), `rotary_pct`,
`rotary_emb_base`, `layer_norm_eps`.
Tensors: gpt_neox.{embed_in, final_layer_norm}, gpt_neox.layers.N.{input_layernorm, post_attention_layernorm,
attention.query_key_value (q, k, v interleaved per head), attention.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h},
embed_out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from instructjax.model.families.record import (
    HF_ACTIVATION,
    DecoderConfig,
    Family,
    Tensor,
    linear_tensors,
    norm_tensors,
    partial_rotary,
    rope_parameters,
    shape_keys,
)


def read(hf: dict[str, Any], where: str) -> dict[str, Any]:
    bias = bool(hf.get("attention_bias", True))
    return {"residual": "parallel" if hf.get("use_parallel_residual", True) else "sequential", "qkv_bias": bias,
            "o_bias": bias}


def write(config: DecoderConfig) -> dict[str, Any]:
    fraction = partial_rotary(config)
    return {**shape_keys(config), "hidden_act": HF_ACTIVATION[config.activation], "layer_norm_eps": config.norm_eps,
            "rotary_pct": fraction, "rotary_emb_base": config.rope_theta,
            "use_parallel_residual": config.residual == "parallel", "attention_bias": config.qkv_bias,
            "rope_parameters": {**rope_parameters(config), "partial_rotary_factor": fraction}}


def layer_tensors(config: DecoderConfig) -> list[Tensor]:
    c, attn = config, "self_attn"
    qkv = (((attn, "q_proj", "kernel"), "q"), ((attn, "k_proj", "kernel"), "kv"), ((attn, "v_proj", "kernel"), "kv"))
    qkv_bias = (((attn, "q_proj", "bias"), "q_bias"), ((attn, "k_proj", "bias"), "kv_bias"),
                ((attn, "v_proj", "bias"), "kv_bias"))
    return [*norm_tensors("input_layernorm", "input_layernorm", c),
            *norm_tensors("post_attention_layernorm", "post_attention_layernorm", c),
            ("attention.query_key_value.weight", qkv, "neox_qkv"),
            *([("attention.query_key_value.bias", qkv_bias, "neox_qkv")] if c.qkv_bias else []),
            *linear_tensors((attn, "o_proj"), "attention.dense", "o", c.o_bias),
            *linear_tensors(("mlp", "up_proj"), "mlp.dense_h_to_4h", "linear", c.mlp_bias),
            *linear_tensors(("mlp", "down_proj"), "mlp.dense_4h_to_h", "linear", c.mlp_bias)]


def split_qkv(x: np.ndarray, c: DecoderConfig) -> list[np.ndarray]:
    """query_key_value's rows, ordered per head as [q, k, v] x head_dim -> q, k, v."""
    per_head = x.reshape(c.num_heads, 3, c.head_dim, *x.shape[1:])
    return [per_head[:, i].reshape(c.num_heads * c.head_dim, *x.shape[1:]) for i in range(3)]


def join_qkv(pieces: list[np.ndarray], c: DecoderConfig) -> np.ndarray:
    stacked = np.stack([p.reshape(c.num_heads, c.head_dim, *p.shape[1:]) for p in pieces], axis=1)
    return stacked.reshape(3 * c.num_heads * c.head_dim, *pieces[0].shape[1:])


GPT_NEOX = Family(switches=dict(norm="layer", activation="gelu", gated_mlp=False, residual="parallel",
                                 qkv_bias=True, o_bias=True, mlp_bias=True),
                  name="gpt_neox", architecture="GPTNeoXForCausalLM", model_type="gpt_neox", read=read, write=write,
                  layer=layer_tensors, norm_eps_default=1e-5,
                  lora_modules={"query_key_value": ("q_proj", "k_proj", "v_proj"), "dense": ("o_proj",),
                                "dense_h_to_4h": ("up_proj",), "dense_4h_to_h": ("down_proj",)},
                  top=("gpt_neox.layers", "gpt_neox.embed_in", None, "gpt_neox.final_layer_norm", "embed_out"),
                  splits={"neox_qkv": (split_qkv, join_qkv)})
