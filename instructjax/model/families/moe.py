"""Mixtral, Qwen3-MoE and OLMoE: mixtures of experts (model/moe.py) on LLaMA's, Qwen3's and OLMo's layers.

Switches: every sparse block routes softmax-then-top-k; Mixtral renormalises the top k (`router_norm_topk`), Qwen3-MoE
and OLMoE where `norm_topk_prob` says; Qwen3-MoE has Qwen3's per-head q/k norms, OLMoE q/k norms over all heads
(`qk_norm_whole`). `router_aux_loss` defaults to each family's `router_aux_loss_coef` (0.001, 0.001, 0.01), the
z-loss to 0 (none of the three HF codes has one).
config.json: the experts (`num_local_experts` / `num_experts`, `num_experts_per_tok`, Qwen3-MoE's
`moe_intermediate_size`, `mlp_only_layers`, `decoder_sparse_step`); a router we do not run (another scoring or top-k
method, shared experts, Mixtral's training jitter, OLMoE's `clip_qkv`) is refused in one line naming the key.
Tensors: the layer's attention and norms, then the sparse block: Mixtral's `block_sparse_moe.gate` and
`block_sparse_moe.experts.N.{w1,w3,w2}`, the others' `mlp.gate` and `mlp.experts.N.{gate,up,down}_proj` (the
per-expert files transformers writes); Qwen3-MoE's dense layers keep LLaMA's MLP.
LoRA: the attention (`lora_modules`) and the experts as PEFT's `target_parameters` of transformers' fused 3-D weights
(`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`: one A and B an expert), the same in the three families. Not
Qwen3-MoE's dense MLPs (`mlp_only_layers`): PEFT 0.21 reads `gate_proj` / `up_proj` / `down_proj` targets on these
models as the experts (its transformers v4 -> v5 conversion of MoE adapters), so an adapter of them would not load.
"""

from __future__ import annotations

from typing import Any

from instructjax.core.errors import ConfigError
from instructjax.model.families.llama import layer_tensors
from instructjax.model.families.qwen import read_qwen3
from instructjax.model.families.record import (
    HF_ACTIVATION,
    DecoderConfig,
    Family,
    expert_tensors,
    layer_types_keys,
    rope_parameters,
    shape_keys,
)

ATTENTION_LORA = {name: (name,) for name in ("q_proj", "k_proj", "v_proj", "o_proj")}
# the experts' fused parameters in transformers' modules (PEFT's `target_parameters`) -> our stacked expert parameters
EXPERT_LORA = {"mlp.experts.gate_up_proj": ("gate_proj", "up_proj"), "mlp.experts.down_proj": ("down_proj",)}
# each experts key's other spelling (transformers' `attribute_map`: Qwen3-MoE saves num_local_experts)
ALIAS = {"num_experts": "num_local_experts", "num_local_experts": "num_experts"}
# config.json keys of routers we do not run, each with the value that means "not used"
OTHER_ROUTERS = {"scoring_func": "softmax", "topk_method": "greedy", "n_shared_experts": None,
                 "shared_expert_intermediate_size": None, "routed_scaling_factor": None, "n_group": None,
                 "router_jitter_noise": 0.0, "clip_qkv": None}


def read_experts(hf: dict[str, Any], where: str, experts_key: str, renormalise: bool | None) -> dict[str, Any]:
    """The sparse block's fields (`renormalise` None: `norm_topk_prob`), refusing a router we do not know."""
    for key, unused in OTHER_ROUTERS.items():
        value = hf.get(key)
        if value is not None and value != unused and (unused is not None or value):
            raise ConfigError(f"{where}: {key}={hf[key]!r} names a router we do not run; supported: softmax over the "
                              f"experts, then top-k (Mixtral, Qwen3-MoE, OLMoE)")
    out = {"num_experts": hf[experts_key] if experts_key in hf else hf[ALIAS[experts_key]], "experts_per_token": hf["num_experts_per_tok"],
           "router_norm_topk": bool(hf.get("norm_topk_prob", False)) if renormalise is None else renormalise}
    if "router_aux_loss_coef" in hf:
        out["router_aux_loss"] = float(hf["router_aux_loss_coef"])
    return out


def expert_keys(config: DecoderConfig, experts_key: str) -> dict[str, Any]:
    return {experts_key: config.num_experts, "num_experts_per_tok": config.experts_per_token,
            "router_aux_loss_coef": config.router_aux_loss}


# ---- Mixtral ------------------------------------------------------------------------------------------------


def read_mixtral(hf: dict[str, Any], where: str) -> dict[str, Any]:
    return read_experts(hf, where, "num_local_experts", renormalise=True)


def write_mixtral(config: DecoderConfig) -> dict[str, Any]:
    return {**shape_keys(config), "rms_norm_eps": config.norm_eps, "hidden_act": HF_ACTIVATION[config.activation],
            "sliding_window": config.sliding_window, "rope_parameters": rope_parameters(config),
            **expert_keys(config, "num_local_experts"), "router_jitter_noise": 0.0}


def mixtral_experts(config: DecoderConfig) -> list:
    return expert_tensors(config, "block_sparse_moe.gate", "block_sparse_moe.experts", ("w1", "w3", "w2"))


# ---- Qwen3-MoE ----------------------------------------------------------------------------------------------


def read_qwen3_moe(hf: dict[str, Any], where: str) -> dict[str, Any]:
    out = {**read_qwen3(hf, where), **read_experts(hf, where, "num_experts", renormalise=None),
           "expert_size": hf["moe_intermediate_size"], "dense_layers": tuple(hf.get("mlp_only_layers") or ()),
           "sparse_step": hf.get("decoder_sparse_step", 1)}
    layers = hf["num_hidden_layers"]
    sparse = {i not in out["dense_layers"] and (i + 1) % out["sparse_step"] == 0 for i in range(layers)}
    if len(sparse) > 1:  # dense and sparse layers mixed: they cannot share one stacked layer
        out["scan_layers"] = False
    return out


def write_qwen3_moe(config: DecoderConfig) -> dict[str, Any]:
    return {**shape_keys(config), "rms_norm_eps": config.norm_eps, "hidden_act": HF_ACTIVATION[config.activation],
            "attention_bias": config.qkv_bias, "sliding_window": config.sliding_window,
            "use_sliding_window": config.sliding_window is not None, **layer_types_keys(config),
            "rope_parameters": rope_parameters(config), **expert_keys(config, "num_experts"),
            "moe_intermediate_size": config.expert_width, "norm_topk_prob": config.router_norm_topk,
            "mlp_only_layers": list(config.dense_layers), "decoder_sparse_step": config.sparse_step}


def qwen3_moe_experts(config: DecoderConfig) -> list:
    return expert_tensors(config, "mlp.gate", "mlp.experts", ("gate_proj", "up_proj", "down_proj"))


# ---- OLMoE --------------------------------------------------------------------------------------------------


def read_olmoe(hf: dict[str, Any], where: str) -> dict[str, Any]:
    bias = bool(hf.get("attention_bias", False))
    return {"qkv_bias": bias, "o_bias": bias, **read_experts(hf, where, "num_experts", renormalise=None)}


def write_olmoe(config: DecoderConfig) -> dict[str, Any]:
    return {**shape_keys(config), "rms_norm_eps": config.norm_eps, "hidden_act": HF_ACTIVATION[config.activation],
            "attention_bias": config.qkv_bias, "rope_parameters": rope_parameters(config), "clip_qkv": None,
            **expert_keys(config, "num_experts"), "norm_topk_prob": config.router_norm_topk}


MIXTRAL = Family(switches=dict(router_norm_topk=True), router_aux_loss=0.001,
                 name="mixtral", architecture="MixtralForCausalLM", model_type="mixtral", read=read_mixtral,
                 write=write_mixtral, layer=layer_tensors, moe=mixtral_experts, norm_eps_default=1e-5,
                 lora_modules=dict(ATTENTION_LORA), lora_parameters=dict(EXPERT_LORA))
QWEN3_MOE = Family(switches=dict(qk_norm=True), router_aux_loss=0.001,
                   name="qwen3_moe", architecture="Qwen3MoeForCausalLM", model_type="qwen3_moe", read=read_qwen3_moe,
                   write=write_qwen3_moe, layer=layer_tensors, moe=qwen3_moe_experts, window_flag="use_sliding_window",
                   lora_modules=dict(ATTENTION_LORA), lora_parameters=dict(EXPERT_LORA))
OLMOE = Family(switches=dict(qk_norm=True, qk_norm_whole=True), router_aux_loss=0.01,
               name="olmoe", architecture="OlmoeForCausalLM", model_type="olmoe", read=read_olmoe, write=write_olmoe,
               layer=layer_tensors, moe=qwen3_moe_experts, norm_eps_default=1e-5,
               lora_modules=dict(ATTENTION_LORA), lora_parameters=dict(EXPERT_LORA))
