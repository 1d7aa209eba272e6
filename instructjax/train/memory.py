"""What a training step holds on a device: `plan`, the trainer's memory check and `plan --compile`'s estimate.

Memory per device comes from the real model and optimizer, never from guesses: the state is the step build's own
(`train.step.abstract_state`: `nnx.eval_shape` of the Decoder, `jax.eval_shape` of AdamW's `tx.init` over what
trains), placed by the step build's own shardings on an `AbstractMesh` of the target topology (no devices needed):
each array's per-device shard is its shape divided by the mesh axes `core.sharding.logical_to_spec` assigns it.
Gradients are float32 and sharded like the parameters (one more copy as the accumulator when `optim.micro_batches >
1`); they and AdamW's state are what trains, the step's own partition (model/partition.py: with `model.lora` the
adapters alone). The step also holds the sharded parameters cast to the compute dtype (XLA hoists the cast out of the
layer loop; seen in the TPU compiler's buffers, `plan --compile`).

Activations are an estimate, per device, for one micro-batch of `r` rows of `s` tokens (`r` = global
batch / micro-batches / (data x fsdp x expert); `s` a row's tokens over the `context` axis, whose attention adds
`model.context.with_split_attention`), tensor size `t`, `c`-byte compute (`model.dtype`: 2 for bf16), per decoder layer:

- remat ``none``: everything the backward pass reads is kept (the residuals JAX saves, as
  `jax.ad_checkpoint.print_saved_residuals` lists them):
  `s r (n (4 + c) h + c (2a + 2k) d / t + M c m / t) + A + W` bytes (each of the layer's `n` norms' input in
  float32 and its output: 2, Gemma's 4, a LayerNorm's centred input too; q, k, v and the attention output; the
  MLP's `M` arrays of m (`MLP_ARRAYS`: SwiGLU's gate, up, the activation's residuals and the product are 6); the
  attention's own residual `A`; the layer's weight matrices cast to the compute dtype,
  `W = c (h d (2a + 2k) + (g + 1) h m) / t` (`g` = 2 for a gated MLP), whole over fsdp: a layer's weights are
  gathered to be used; q/k norms add their inputs and outputs; a parallel residual keeps one sum fewer);
- ``full``: only each layer's input `c s r h`, plus one layer recomputed at a time: the ``none`` term once; on a
  TPU what XLA:TPU's buffers hold for it instead (`tpu_backward`: per token, the arrays as wide as the residual
  stream, then the larger of the MLP's phase and the attention's, q/k/v in rows of 128 lanes; and `3 W`),
  measured with `plan --compile`;
- ``save_attention``: the layer input and attention output `c s r (h + a d / t)`, plus one recomputed layer;
- ``dots_with_no_batch_dims_saveable``: the layer input and the weight matmul outputs
  `c s r (h + (a + 2k) d / t + h + 2m / t + h)`, plus one recomputed layer;
- ``minimal_with_context``: the layer input, o_proj's output, q, k, v, the attention output, gate and up
  `c s r (2h + (2a + 2k) d / t + 2m / t)` (down_proj's output is named but never read), plus one recomputed layer;
- ``dots_saveable``: that plus, for the dense `xla` attention, its einsums: float32 scores `4 (a / t) s^2 r`
  and the output `c s r a d / t` (a fused kernel's einsums stay inside it).

`A` depends on the attention implementation the topology runs (`model.attention`, `auto` resolved for the
platform): the dense `xla` one keeps its softmax probabilities `c (a / t) s^2 r`; the fused ones (splash on
TPU, Pallas flash on GPU, blockwise) keep only a float32 log-sum-exp per query `4 (a / t) s r`, no s^2 term.

The logits of one loss chunk (`optim.loss_chunk` tokens split over the data-parallel devices; all `s r` tokens
with 0) of `V / t` each in the compute dtype and their float32 log-softmax (`c + 4` bytes; 4 in float32) live
before the layers' backward starts: the total counts the larger of them and the recomputed layer. On a TPU, of a head
sliced over the batch devices (`train.loss`), an array of logits that fits in half the chip's on-chip memory
(`ONCHIP_BYTES`: v4's CMEM, v5e's VMEM) is placed there by XLA:TPU, outside HBM (but for a soft-capped head,
Gemma-2's, whose logits are counted whole). The total is checked against XLA's own buffer assignment of the
compiled train step (tests/train/test_plan.py: within 15% on XLA:CPU in float32). XLA fuses and schedules
differently on each platform, so real peaks differ by tens of percent; a config "fits" within `USABLE` of HBM.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any

import jax
import numpy as np
import optax
from jax.sharding import AbstractMesh, PartitionSpec

from instructjax.core import sharding
from instructjax.core.config import RunConfig
from instructjax.core.errors import ConfigError
from instructjax.core.optimizer import adamw
from instructjax.model import context, quantize
from instructjax.model.config import DecoderConfig
from instructjax.train.objectives import objective_for
from instructjax.train.step import AbstractState, abstract_state
from instructjax.train.topology import Topology, local_topology

GIB = 2**30
USABLE = 0.9  # headroom for XLA temporaries, fragmentation and the runtime
# On-chip memory beside HBM into which XLA:TPU's memory-space assignment moves buffers that fit: v4's CMEM (the buffer
# report's memory space 3), v5e/v6e/v5p's VMEM (space 1), a chip's figures from jax's `pallas.mosaic.tpu_info`.
# `memory_analysis()`'s arguments, outputs and temporaries count HBM alone.
ONCHIP_BYTES = {"v4": 128 * 2**20, "v5e": 128 * 2**20, "v6e": 128 * 2**20, "v5p": 64 * 2**20}


def onchip_bytes(topology: Topology) -> int:
    """The on-chip memory of a device of `topology` that XLA:TPU places a step's buffers in, beside HBM."""
    return ONCHIP_BYTES.get(topology.generation, 0) if topology.platform == "tpu" else 0


def device_memory(model: DecoderConfig, sizes: dict[str, int], *, rows: int, seq_len: int, micro_batches: int,
                  clip: bool, platform: str, loss_chunk: int = 0, onchip: int = 0
                  ) -> tuple[dict[str, int], dict[str, Any]]:
    """(parameters, optimizer state and gradients, activations) per device for a step of `rows` rows of `seq_len`
    (the plan's figures; `activation_bytes`, `state_memory`); `onchip`: the device's memory beside HBM
    (`onchip_bytes`), which takes the loss's logits where they fit."""
    memory = state_memory(model, sizes, clip=clip)
    # float32 gradients of what trains (a LoRA's adapters alone), + the accumulator
    memory["grad_bytes"] = memory["trained_bytes"] * (2 if micro_batches > 1 else 1)
    # the parameters cast to the compute dtype once for the whole step (XLA hoists the cast out of the layer loop:
    # the TPU compiler's buffers hold a bfloat16 copy of every sharded float32 parameter)
    compute, stored = np.dtype(model.dtype).itemsize, np.dtype(model.param_dtype).itemsize
    memory["copy_bytes"] = memory["float_bytes"] * compute // stored if compute != stored else 0  # not quantized
    memory["expert_bytes"] = tpu_expert_buffers(model, sizes) if platform == "tpu" else 0
    shards, parts = sharding.batch_shards(sizes), sizes.get("context", 1)
    per_device = -(-rows // (micro_batches * shards))
    loss_tokens = -(-loss_chunk // shards) if loss_chunk else 0  # a chunk is split over rows
    acts = activation_bytes(model, per_device, seq_len // parts, sizes["tensor"], platform, loss_tokens,
                            head_slices=shards, onchip=onchip, experts=sizes.get("expert", 1))
    acts = context.with_split_attention(acts, model, per_device, seq_len, parts, sizes["tensor"], platform)
    return memory, {**acts, "rows": per_device, "seq_len": seq_len}


def needed_bytes(memory: dict[str, int], acts: dict[str, Any]) -> int:
    """A step's peak bytes a device (`device_memory`'s figures): parameters, AdamW state, the parameters'
    compute-dtype copy and the layers' saved inputs throughout; then the larger of the loss (its logits, and the
    gradient accumulator of earlier micro-batches) and the layers' backward (the gradients and the recomputed
    layer): the loss's logits are freed before the layers' gradients are made. A run that generates its batches
    (grpo) needs the larger of that (its engine's KV cache beside) and the state with a rollout's buffers."""
    accumulator = max(memory["grad_bytes"] - memory["param_bytes"], 0)
    loss = accumulator + acts["logits"]
    backward = memory["grad_bytes"] + acts.get("recompute", 0)
    held = memory["param_bytes"] + memory["opt_bytes"] + memory.get("reference_bytes", 0)
    step = (held + memory.get("copy_bytes", 0) + acts.get("saved", 0) + memory.get("expert_bytes", 0)
            + memory.get("engine_cache_bytes", 0) + max(loss, backward))
    return max(step, held + memory.get("rollout_bytes", 0))  # a rollout (grpo's) runs between two steps


def reference_bytes(model: DecoderConfig, config: RunConfig, memory: dict[str, int]) -> int:
    """A device's bytes for the objective's reference model where it runs live in the step (the objective's plan
    term, train/objectives/: a copy of what trains, the whole model on a full fine-tune, the starting adapters for a
    LoRA on its own frozen base); none cached (its log-probs come with the batch) or without a reference."""
    return objective_for(config).reference_bytes(memory)


def rollout_figures(model: DecoderConfig, config: RunConfig, sizes: dict[str, int], memory: dict[str, int]) -> dict:
    """A device's bytes for generating a batch between steps (`rollout_bytes`: grpo's; 0 else), and of them the
    engine's KV cache, kept through the steps too (`engine_cache_bytes`; with `objective.grpo.async_steps`, beside it
    the copy of the parameters the next rollouts are made from; none with the engine on devices of its own)."""
    objective, seq_len = objective_for(config), config.data.seq_len
    grpo = config.objective.options if config.objective.rollouts else None
    if grpo and grpo.rollout_devices:  # the engine's devices' bytes: GRPO.engine_mesh_bytes
        return {"rollout_bytes": 0, "engine_cache_bytes": 0}
    ahead = memory["param_bytes"] if grpo and grpo.async_steps else 0
    return {"rollout_bytes": objective.rollout_bytes(model, sizes, seq_len, memory),
            "engine_cache_bytes": objective.engine_cache_bytes(model, sizes, seq_len) + ahead}


def usable_bytes(topology: Topology) -> float:
    """What a step may take of a device of `topology` (`USABLE` of its memory)."""
    return USABLE * topology.hbm_gib * GIB


def step_memory(model: DecoderConfig, config: RunConfig, sizes: dict[str, int], shapes, topology: Topology
                ) -> tuple[dict[str, int], dict[str, Any]]:
    """`device_memory`'s figures for the largest of the step `shapes` (rows, length), with the objective's terms
    (`reference_bytes`, `rollout_bytes`)."""
    rows, length = max(shapes, key=lambda shape: shape[0] * shape[1])
    memory, acts = device_memory(model, sizes, rows=rows, seq_len=length, micro_batches=config.optim.micro_batches,
                                 clip=bool(config.optim.grad_clip), platform=topology.platform,
                                 loss_chunk=config.optim.loss_chunk, onchip=onchip_bytes(topology))
    memory["reference_bytes"] = reference_bytes(model, config, memory)
    memory.update(rollout_figures(model, config, sizes, memory))
    return memory, acts


def step_needed(model: DecoderConfig, config: RunConfig, sizes: dict[str, int], shapes, topology: Topology
                ) -> tuple[int, str]:
    """The bytes a device needs for `model` on mesh `sizes` and the largest of the step `shapes` (rows, length) on
    `topology`, and the one line saying so when they do not fit (`out_of_memory`)."""
    memory, acts = step_memory(model, config, sizes, shapes, topology)
    needed = needed_bytes(memory, acts)
    return needed, out_of_memory(needed, memory, acts, topology)


def beside_step_bytes(config: RunConfig, memory: dict[str, int]) -> int:
    """What a device holds while the train step runs that is none of the step's arguments: a grpo run's engine's KV
    cache and its cached reference (its parameters wait for the next rollout; a live one is an argument of the step)."""
    cached = config.objective.rollouts and config.objective.options.reference_kind.in_batch  # each rollout's
    return memory.get("engine_cache_bytes", 0) + (memory["reference_bytes"] if cached else 0)


def out_of_memory(needed: int, memory: dict, acts: dict, topology: Topology) -> str:
    """One line: what a step (or a grpo run's rollout, where it or its KV cache is the larger part) needs a device,
    what a device has, and the keys that change it."""
    held = memory["param_bytes"] + memory["opt_bytes"] + memory.get("reference_bytes", 0)
    cache = memory.get("engine_cache_bytes", 0)  # the rollout engine's, kept through the steps
    if memory.get("rollout_bytes") and (held + memory["rollout_bytes"] >= needed or cache * 2 >= needed):
        return (f"out of memory: a rollout needs about {needed / GIB:.1f} GiB a device (its KV cache {_gib(cache)}, "
                "kept through the steps, the layers sliced for decoding and the engine's steps, "
                f"{_gib(memory['rollout_bytes'])} in all, beside the parameters, AdamW state and reference "
                f"{_gib(held)}), a device here has {topology.hbm_gib:.1f} GiB ({topology.name}); "
                "lower objective.grpo.prompts_per_rollout x objective.grpo.samples_per_prompt (64 slots at most) or "
                "data.seq_len (`instructjax plan --config ...` shows the figures)")
    return (f"out of memory: a step needs about {needed / GIB:.1f} GiB a device (parameters {_gib(memory['param_bytes'])}"
            f", AdamW state {_gib(memory['opt_bytes'])}, gradients {_gib(memory['grad_bytes'])}, their compute-dtype "
            f"copy {_gib(memory.get('copy_bytes', 0))}, activations "
            f"{_gib(acts['total'])} for {acts['rows']} row(s) of {acts['seq_len']}), a device here has "
            f"{topology.hbm_gib:.1f} GiB ({topology.name}); lower data.global_batch or data.seq_len, raise "
            "optim.micro_batches, or set model.remat=full (`instructjax plan --config ...` shows the figures)")


def check_fits(model: DecoderConfig, config: RunConfig, sizes: dict[str, int], shapes) -> str:
    """One ConfigError line (`out_of_memory`) where a step of the largest of `shapes` does not fit a device of this
    machine, before anything compiles; else that line, which XLA's own refusal is said with (`memory_errors`)."""
    here = local_topology()
    needed, line = step_needed(model, config, sizes, shapes, here)
    if needed > usable_bytes(here):
        raise ConfigError(line)
    return line


@contextlib.contextmanager
def memory_errors(out_of_memory_line: str):
    """XLA refusing a buffer (RESOURCE_EXHAUSTED, where the estimate was off) as the same one line."""
    try:
        yield
    except Exception as exc:
        if "RESOURCE_EXHAUSTED" not in str(exc):
            raise
        raise ConfigError(out_of_memory_line + f" [XLA: {' '.join(str(exc).split())[:160]}]") from None


def _shard_bytes(shape: tuple[int, ...], dtype: Any, spec: PartitionSpec, sizes: dict[str, int]) -> int:
    local = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        local.append(math.ceil(dim / math.prod(sizes[a] for a in axes)))
    return math.prod(local) * np.dtype(dtype).itemsize


@functools.lru_cache(maxsize=8)
def _abstract_state(model: DecoderConfig, clip: bool) -> AbstractState:
    """The step build's abstract state (`step.abstract_state`) under AdamW (clipped or not: its state's shape; a
    schedule, as trained), cached per model: `plan` tries many meshes."""
    return abstract_state(model, adamw(optax.constant_schedule(1.0), max_grad_norm=1.0 if clip else None))


def _weights(model: DecoderConfig, path: tuple, array: Any) -> int:
    """The model weights one array of the params tree holds (a quantized kernel's: its codes', two a byte for
    nf4; its absmax none)."""
    name = getattr(path[-1], "key", path[-1])
    if name == quantize.ABSMAX:
        return 0
    return math.prod(array.shape) * (2 if name == quantize.CODES and model.quantize_base == "nf4" else 1)


def state_memory(model: DecoderConfig, sizes: dict[str, int], clip: bool = True) -> dict[str, int]:
    """Per-device bytes of parameters and optimizer state, and their global totals, from eval_shape."""
    state = _abstract_state(model, clip)
    params, opt, trained = state.params, state.opt, state.partition  # what gets gradients and AdamW state
    specs, opt_specs = state.shardings(AbstractMesh(tuple(sizes.values()), tuple(sizes)))  # as the step places them

    def total(tree, spec_tree) -> tuple[int, int]:
        pairs = list(zip(jax.tree.leaves(tree), jax.tree.leaves(spec_tree), strict=True))
        return (sum(_shard_bytes(a.shape, a.dtype, s.spec, sizes) for a, s in pairs),
                sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a, _ in pairs))

    p_local, p_global = total(params, specs)
    o_local, o_global = total(opt, opt_specs)
    t_local, _ = total(trained.trainable(params), trained.trainable(specs))
    f_local, _ = total(quantize.without_quantized(params), quantize.without_quantized(specs))
    n_params = sum(_weights(model, path, a) for path, a in jax.tree_util.tree_flatten_with_path(params)[0])
    return {"params": n_params, "param_bytes": p_local, "param_bytes_global": p_global,
            "opt_bytes": o_local, "opt_bytes_global": o_global, "trained_bytes": t_local, "float_bytes": f_local}


# [tokens, intermediate] arrays one MLP keeps for its backward pass, by (activation, gated): the projections'
# outputs and the activation's own residuals (measured with jax's saved_residuals: e.g. SwiGLU gate, up, the
# sigmoid's two and the product; exact GELU's erfc and exp)
MLP_ARRAYS = {("silu", True): 6, ("gelu_tanh", True): 8, ("gelu", True): 8, ("relu", True): 5,
              ("silu", False): 3, ("gelu_tanh", False): 4, ("gelu", False): 4, ("relu", False): 2}


def activation_bytes(model: DecoderConfig, rows: int, seq_len: int, tensor: int, platform: str = "tpu",
                     loss_tokens: int = 0, head_slices: int = 1, onchip: int = 0, experts: int = 1) -> dict:
    """Per-device activation bytes for `rows` rows of `seq_len` on `platform` (see the module docstring's formula);
    the loss makes the logits of `loss_tokens` tokens at a time (0: all of them), its head sliced over
    `head_slices` devices; `onchip`: the chip's memory beside HBM (`onchip_bytes`); `experts`: the mesh's expert
    axis (a mixture of experts' experts split that many ways)."""
    from instructjax.model import attention

    s, r, t = seq_len, rows, tensor
    c = np.dtype(model.dtype).itemsize  # the compute dtype's bytes: 2 for bfloat16
    h, m, a, k, d, layers = (model.hidden_size, model.intermediate_size, model.num_heads, model.num_kv_heads,
                             model.head_dim, model.num_layers)
    mlp_in = 2 if model.gated_mlp else 1  # gate and up, or up alone
    norms = 4 if model.sandwich_norms else 2
    # [tokens, m] arrays an MLP keeps (its outputs and its activation's residuals, `print_saved_residuals`)
    mlp_arrays = MLP_ARRAYS[model.activation, model.gated_mlp]
    norm_bytes = norms * (4 + c + (4 if model.norm == "layer" else 0)) * h  # LayerNorm also keeps x - mean
    parallel = -c * h if model.residual == "parallel" else 0  # one residual sum fewer
    implementation = attention.implementation_for(model.attention, platform)
    fused = implementation in attention.FUSED
    residual = 4 * (a / t) * s * r if fused else c * (a / t) * s * s * r
    weights = c * (h * d * (2 * a + 2 * k) + (mlp_in + 1) * h * m) / t  # the layer's matrices in the compute dtype
    qk_norms = (4 + c) * (a + k) * d / t if model.qk_norm else 0
    full_layer = (s * r * (norm_bytes + parallel + c * (2 * a + 2 * k) * d / t + mlp_arrays * c * m / t + qk_norms)
                  + residual + weights)
    layer_input = c * s * r * h
    saved = {
        "none": full_layer,
        "full": layer_input,
        "save_attention": c * s * r * (h + a * d / t),
        "dots_with_no_batch_dims_saveable": c * s * r * (3 * h + (a + 2 * k) * d / t + mlp_in * m / t),
        # the layer's input, o_proj, q/k/v, the attention output, gate and up (down_proj's output is not read)
        "minimal_with_context": c * s * r * (2 * h + (2 * a + 2 * k) * d / t + mlp_in * m / t),
    }
    saved["dots_saveable"] = saved["dots_with_no_batch_dims_saveable"] + (
        0 if fused else 4 * (a / t) * s * s * r + c * s * r * a * d / t)
    per_layer = saved[model.remat]
    # the recomputed layer's backward: on a TPU as XLA:TPU's buffers measure it (`tpu_backward`); elsewhere the
    # forward's arrays once (XLA:CPU's buffers, tests/train/test_plan.py)
    # (a quantized base adds no term: each device dequantizes its shard of a layer's codes into the compute dtype,
    # fused with the gather; XLA:TPU's buffers hold no float32 kernel)
    backward = tpu_backward(model, s * r, t, experts) if platform == "tpu" else full_layer
    recompute = 0 if model.remat == "none" else backward
    tokens = s * r if not loss_tokens else min(loss_tokens, s * r)
    logits = (c + 4 if c < 4 else c) * tokens * model.vocab_size / t  # float32 compute: one array
    if platform == "tpu" and head_slices > 1 and model.vocab_size % head_slices == 0 and not model.final_softcap:
        # the sliced head's chunk of logits: a float32 array and its compute-dtype copy, each of `tokens` x V / t a
        # device; XLA:TPU places an array that fits in half the chip's on-chip memory there, not in HBM (the tiny
        # step's f32[2048, 8000] on a v4-8 sat in CMEM, its f32[4096, 8000] at 4x the batch in HBM; Llama-3-8B's
        # f32[256, 128256] on a v4-32 in HBM, its bfloat16 copy in CMEM). A soft-capped head's (Gemma-2's) are
        # counted whole: its tanh keeps the float32 logits and their bfloat16 product in HBM.
        elements = tokens * model.vocab_size / t
        logits = sum(b * elements for b in ((4, c) if c < 4 else (c,)) if b * elements > onchip / 2)
    # the loss's logits are gone before the layers' backward starts: the peak holds one or the other
    return {"per_layer": int(per_layer), "saved": int(per_layer * layers), "recompute": int(recompute),
            "layers": int(per_layer * layers + recompute), "logits": int(logits),
            "total": int(per_layer * layers + max(recompute, logits)), "attention": implementation}


# The recomputed layer's backward on a TPU, in bytes a token for each element of an array of that width (a device's
# share: `/ t` where tensor parallelism splits it), fitted to XLA:TPU's own figures for the steps of 17 shapes
# (Phi-3, Gemma-2, LLaMA-2 and LLaMA-3: tensor 1 and 2, 16 to 32 layers, 2.8K to 45K tokens a device; `plan
# --compile`). The peak holds the arrays as wide as the residual stream (the layer's input and its sum after
# attention, the norms' float32 insides, tensor parallelism's partial sums) and then either the MLP's arrays and their
# gradients or the attention's (q, k and v rotated in float32, splash's heads-first copies and float32 gradients),
# whichever is larger: they are not live together. A TPU lays the last dimension of an array out in rows of 128
# lanes, so a head of 96 (Phi-3) takes 128. `weights`: the layer's matrices in the compute dtype three times
# (gathered for the recomputed forward, again for the backward, and their gradient before the reduce-scatter).
# `mlp` was 21 from those 17; 25 puts Llama-3-8B's steps on a v4-32 (4K, 11K and 23K tokens a chip) within 0.97-1.04
# of MaxText's total, where 21 left the 23K one at 0.93 (benchmarks/RESULTS.md, issue 51); attention-bound models
# (LLaMA-1/2, Phi-3) do not read it.
# A mixture of experts' sparse layer, in the place of the MLP's: for each of the token copies a device's grouped
# matmuls are sized for (k a token, times the expert axis), `moe_hidden` bytes for each of their elements as wide as
# the residual stream (the sorted copies and their gradient) and `moe` for each expert-width element (the experts'
# gate, up and hidden arrays and their gradients), and `moe_gathered` more an element of the residual stream for the
# copies gathered from the expert group's other devices (their float32 gradients); `moe_weights` copies of the
# recomputed layer's experts gathered whole over fsdp (a device's own over the expert axis), in place of the MLP's
# matrices in `weights`. Fitted to XLA:TPU's steps (benchmarks/RESULTS.md, issue 67): 2 and 4 layers of OLMoE's
# dimensions (k = 8 of 32 and 64 experts, width 1024: 4,096 and 8,192 tokens a device over fsdp=8 of a v5e-8, 32,768
# over tensor=8) and Qwen3-30B-A3B's (8 of 64 and 128, width 768: 2,048 to 8,192 over fsdp=16 of a v5e-16), and the
# whole Mixtral 8x7B (v5p-64, v4-128), OLMoE-1B-7B (v5e-8 in bfloat16, v5e-16) and Qwen3-30B-A3B with LoRA (v4-32,
# v5e-16; float32 and bfloat16 bases; expert axes of 1 to 16): 20 steps, all within 0.87-1.11 of the compiler.
TPU_BACKWARD = {"hidden": 33.5, "extra_norm": 0.8, "mlp": 25.0, "q": 68.0, "kv": 10.0, "weights": 3.0, "moe": 14.0,
                "moe_hidden": 5.0, "moe_weights": 1.5, "moe_gathered": 5.0}
# XLA:TPU's buffers beside a mixture of experts' weights, whatever the tokens: bytes for each element of a device's
# share of every sparse layer's experts, where they train or are cast from float32, and where a LoRA's frozen base is
# stored in the compute dtype (`model.param_dtype: bfloat16`; the same steps)
TPU_EXPERT_BUFFERS = {"cast_or_trained": 3.5, "frozen": 2.0}


def tpu_expert_buffers(model: DecoderConfig, sizes: dict[str, int]) -> int:
    """Bytes a device holds on a TPU beside a mixture of experts' weights (`TPU_EXPERT_BUFFERS`; 0 for a dense
    model): its share of every sparse layer's experts, over the axes that shard them."""
    if not model.sparse_layers:
        return 0
    share = sizes["fsdp"] * sizes["tensor"] * sizes.get("expert", 1)  # embed, mlp and expert dimensions
    elements = len(model.sparse_layers) * model.num_experts * 3 * model.hidden_size * model.expert_width
    frozen = model.lora is not None and model.param_dtype == model.dtype  # a LoRA's base, never cast
    return int(TPU_EXPERT_BUFFERS["frozen" if frozen else "cast_or_trained"] * elements / share)


def tpu_backward(model: DecoderConfig, tokens: int, tensor: int, experts: int = 1) -> float:
    """Bytes a device holds for the recomputed layer's backward on a TPU, for `tokens` tokens (`TPU_BACKWARD`);
    `experts`: the mesh's expert axis."""
    k = TPU_BACKWARD
    h, m, d, t = model.hidden_size, model.intermediate_size, model.head_dim, tensor
    lanes = -(-d // 128) * 128
    c = np.dtype(model.dtype).itemsize
    scale = c / 2  # measured in bfloat16: float32 compute doubles every array
    norms = (4 if model.sandwich_norms else 2) - 2
    mlp_in = 2 if model.gated_mlp else 1
    dense = not model.sparse_layers or len(model.sparse_layers) < model.num_layers  # a layer with a dense MLP
    attention = k["q"] * model.num_heads / t * lanes + k["kv"] * model.num_kv_heads / t * lanes
    mlp = k["mlp"] * m / t if dense else 0
    # the recomputed layer's matrices in the compute dtype, `weights` times (a sparse layer's experts `moe_weights`)
    attention_weights = k["weights"] * h * d * (2 * model.num_heads + 2 * model.num_kv_heads)
    mlp_weights = k["weights"] * (mlp_in + 1) * h * m if dense else 0
    if model.sparse_layers:
        # a sparse layer's experts: each device's grouped matmuls are sized for every copy its expert group gathered
        # (k a token, times the expert axis: model/moe.py's `dispatched`), as wide as the residual stream and as the
        # experts; its experts' matrices are gathered whole over fsdp (a device's own experts over the expert axis)
        copies = model.experts_per_token * experts
        gathered = model.experts_per_token * (experts - 1)  # the copies of the expert group's other devices
        mlp = max(mlp, copies * (k["moe_hidden"] * h + k["moe"] * model.expert_width / t)
                  + gathered * k["moe_gathered"] * h)
        mlp_weights = max(mlp_weights, k["moe_weights"] * (model.num_experts // experts) * 3 * h * model.expert_width)
    per_token = (k["hidden"] + k["extra_norm"] * norms) * h + max(mlp, attention)
    return tokens * per_token * scale + c * (attention_weights + mlp_weights) / t


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"
