"""Continuous batching's memory on a device (model/batching.py), for the mesh it decodes on: its weights, its
slots' KV cache and its fill and decode steps' own buffers, estimates of what XLA:TPU allocates (checked against
`plan --compile --eval` and `--rollout`, benchmarks/RESULTS.md). The evaluation's placement (eval/placement.py) and a
grpo run's plan of its rollouts (train/objectives/grpo.py) read them."""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx

from instructjax.core import sharding
from instructjax.model.config import DecoderConfig
from instructjax.model.decoder import abstract_model
from instructjax.model.decoding import cache_bytes


def weight_bytes(config: DecoderConfig, sizes: Mapping[str, int]) -> int:
    """The parameters' bytes on one device of a mesh of `sizes`, sharded by the rules, in `config.param_dtype`."""
    mesh = jax.sharding.AbstractMesh(tuple(sizes.values()), tuple(sizes))
    total = 0
    alike = len({config.sparse_layer(i) for i in range(config.num_layers)}) == 1  # Qwen3-MoE may mix its layers
    for leaf in jax.tree.leaves(nnx.state(abstract_model(config.replace(scan_layers=alike)), nnx.Param),
                                is_leaf=lambda x: isinstance(x, nnx.Variable)):
        value = leaf.get_value()
        names = leaf.get_metadata().get("out_sharding")
        spec = sharding.logical_to_spec(names, mesh, value.shape, strict=False) if names else ()
        parts = 1
        for axes in spec:
            for axis in (axes,) if isinstance(axes, str) else (axes or ()):
                parts *= sizes[axis]
        total += math.prod(value.shape) // parts * np.dtype(value.dtype).itemsize
    return total


def cache_bytes_per_device(config: DecoderConfig, sizes: Mapping[str, int], slots: int, length: int) -> int:
    """One device's share of a KV cache of `slots` x `length` (slots over data x fsdp, kv heads over tensor)."""
    shards = sizes["data"] * sizes["fsdp"]
    heads = sizes["tensor"] if config.num_kv_heads % sizes["tensor"] == 0 else 1
    return cache_bytes(config, slots // shards if slots % shards == 0 else slots, length) // heads


def layer_weights(config: DecoderConfig) -> int:
    """One decoder layer's weight matrices (elements): q, k, v, o and the MLP's."""
    e, d = config.hidden_size, config.head_dim
    mlp = (3 if config.gated_mlp else 2) * e * config.intermediate_size
    return e * d * (2 * config.num_heads + 2 * config.num_kv_heads) + mlp


def step_bytes(config: DecoderConfig, sizes: Mapping[str, int], *, slots: int, length: int, fill_rows: int,
               width: int) -> dict[str, int]:
    """The fill and decode steps' own buffers on one device (beyond the weights and the cache), an estimate of what
    XLA:TPU allocates (checked against `plan --compile --eval`, benchmarks/RESULTS.md; model/decoding.py says why at
    most two layers' weights lie gathered):
    - both: where the weights split over fsdp, two layers' weights and the output projection gathered whole (over
      tensor) in the compute dtype; with more than one slot a device, every layer's weights once more as they lie on
      the device (the whole layer where they split over fsdp, q, k and v where they do not: the decode step's
      matrix-vector products re-lay them out; LLaMA-2-13B on a v5e-16 at 2 slots a device holds 1.1 GiB more in
      either step than at 1);
    - decode: its slots' logits (float32 and the compute dtype);
    - fill, for `fill_rows` prompts (or pieces of longer ones) of `width` tokens: attention scores over the cache's
      `length` rows in float32 beside the larger of their compute-dtype copy and the gathered weights, its widest
      activations (the MLP's) and hidden states, and a layer's keys and values of the slots it fills read back from
      the cache whole on every device (the slots are known at run time only: where they split over devices, XLA:TPU
      gathers each device's share into a [fill_rows, kv_heads, length, head_dim] array and all-reduces it;
      LLaMA-2-13B on a v5e-16, 16 prompts x 4096: 1.25 GiB a device)."""
    c = np.dtype(config.dtype).itemsize
    shards, tensor, fsdp = sizes["data"] * sizes["fsdp"], sizes["tensor"], sizes["fsdp"]
    heads = config.num_heads // tensor if config.num_heads % tensor == 0 else config.num_heads
    kv_heads = config.num_kv_heads // tensor if config.num_kv_heads % tensor == 0 else config.num_kv_heads
    gathered = (2 * layer_weights(config) + config.hidden_size * config.vocab_size) * c // tensor if fsdp > 1 else 0
    qkv = config.hidden_size * config.head_dim * (config.num_heads + 2 * config.num_kv_heads)
    rows = max(1, slots // shards)
    relaid = config.num_layers * (layer_weights(config) // fsdp if fsdp > 1 else qkv) * c // tensor if rows > 1 else 0
    decode = rows * config.vocab_size * (4 + c) + gathered + relaid
    tokens = max(1, fill_rows // shards) * width
    scores = tokens * heads * length
    acts = tokens * (config.hidden_size * (4 + 3 * c) + 3 * config.intermediate_size * c // tensor)
    read = 2 * fill_rows * kv_heads * length * config.head_dim * c
    return {"fill": scores * 4 + max(scores * c, gathered) + acts + read + relaid, "decode": decode}
