"""Pre-flight plan: will a config fit on a TPU slice or a GPU node, and how long is one epoch?

Memory per device comes from the real model and optimizer, never from guesses: the parameter tree is
`nnx.eval_shape` of the Decoder the trainer builds, the optimizer state is `jax.eval_shape` of
`tx.init` on it, and each array's per-device shard is its shape divided by the mesh axes that
`train.sharding.logical_to_spec` assigns it on an `AbstractMesh` of the target topology (no devices
needed). Gradients are float32 and sharded like the parameters (one more copy as the accumulator
when `optim.micro_batches > 1`). The step also holds the sharded parameters cast to the compute dtype (XLA hoists
the cast out of the layer loop; seen in the TPU compiler's buffers, `plan --compile`).

Activations are an estimate, per device, for one micro-batch of `r` rows of `s` tokens (`r` = global
batch / micro-batches / (data x fsdp)), tensor size `t`, `c`-byte compute (`model.dtype`: 2 for bf16), per
decoder layer:

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
before the layers' backward starts: the total counts the larger of them and the recomputed layer. On a TPU a head
sliced over the batch devices (`train.loss`) makes no logits array: XLA:TPU fuses them with their log-sum-exp (but
for a soft-capped head, Gemma-2's, whose tanh keeps them). The
total is checked against XLA's own buffer assignment of the compiled train step (tests/test_plan.py: within
15% on XLA:CPU in float32). XLA fuses and schedules differently on each platform, so real peaks differ by
tens of percent; a config "fits" when the total is within `USABLE` of the chip's HBM.

Steps per epoch: with the real pipeline (`real_data=True`, for mixtures whose data is local or
built-in) or estimated from the papers' dataset sizes and mean lengths (Tulu Table 1 and our
estimates in `data.synthetic.LENGTH_STATS`): each example is `rounds x (prompt + completion)`
tokens, truncated to `seq_len`; packed rows fill `PACKING_EFFICIENCY` of `seq_len`
(benchmarks/RESULTS.md); Mosaic-IT divides the examples by the mean count of a draw capped by the budget.

`data.pack: per_step` keeps the unpacked steps (so the epoch's rows and steps are the unpacked ones) and packs
each step's examples into fewer rows, a multiple of `sharding.row_multiple` (or that many rows, longer than
seq_len, where few rows are a step: `pipeline.plan_step_rows`): with the real pipeline, the run's step shapes as
the trainer plans them (`DataPipeline.plan_steps`) and activations for the largest; estimated, the shape the mean
step fills (`pipeline.mean_step_shape`) and activations for it.

A mesh proposal (`plan_with_proposal`): where the config's mesh cannot serve the topology (the batch does not
divide over its data-parallel devices) or keeps less than REAL_SHARE_GOAL of the step's tokens real, `plan`
names the mesh of the slice (`mesh_options`: fsdp x tensor) that fits and keeps the most real, the least tensor
parallelism among near-equals.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
import optax
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec

from instructjax.core import sharding
from instructjax.core.config import RunConfig
from instructjax.core.errors import ConfigError
from instructjax.model.config import DecoderConfig, param_count, preset
from instructjax.train.optim import adamw
from instructjax.train.topology import (  # noqa: F401  (their old home: users import them from here)
    GPU_HBM,
    TPU_CHIPS,
    Topology,
    available_memory,
    gpu_topology,
    local_topology,
    tpu_topology,
)

GIB = 2**30
USABLE = 0.9  # headroom for XLA temporaries, fragmentation and the runtime
PACKING_EFFICIENCY = 0.995  # best-fit-decreasing, window 1000 (benchmarks/RESULTS.md: 99.6-99.8%)


def device_memory(model: DecoderConfig, sizes: dict[str, int], *, rows: int, seq_len: int, micro_batches: int,
                  clip: bool, platform: str, loss_chunk: int = 0) -> tuple[dict[str, int], dict[str, Any]]:
    """(parameters, optimizer state and gradients, activations) per device for a step of `rows` rows of `seq_len`
    (the plan's figures; `activation_bytes`, `state_memory`)."""
    memory = state_memory(model, sizes, clip=clip)
    memory["grad_bytes"] = memory["param_bytes"] * (2 if micro_batches > 1 else 1)  # + the accumulator
    # the parameters cast to the compute dtype once for the whole step (XLA hoists the cast out of the layer loop:
    # the TPU compiler's buffers hold a bfloat16 copy of every sharded float32 parameter)
    compute, stored = np.dtype(model.dtype).itemsize, np.dtype(model.param_dtype).itemsize
    memory["copy_bytes"] = memory["param_bytes"] * compute // stored if compute != stored else 0
    per_device = -(-rows // (micro_batches * sizes["data"] * sizes["fsdp"]))
    loss_tokens = -(-loss_chunk // (sizes["data"] * sizes["fsdp"])) if loss_chunk else 0  # a chunk is split over rows
    acts = activation_bytes(model, per_device, seq_len, sizes["tensor"], platform, loss_tokens,
                            head_slices=sizes["data"] * sizes["fsdp"])
    acts.update(rows=per_device, seq_len=seq_len)
    return memory, acts


def needed_bytes(memory: dict[str, int], acts: dict[str, Any]) -> int:
    """A step's peak bytes a device (`device_memory`'s figures): parameters, AdamW state, the parameters'
    compute-dtype copy and the layers' saved inputs throughout; then the larger of the loss (its logits, and the
    gradient accumulator of earlier micro-batches) and the layers' backward (the gradients and the recomputed
    layer): the loss's logits are freed before the layers' gradients are made."""
    accumulator = max(memory["grad_bytes"] - memory["param_bytes"], 0)
    loss = accumulator + acts["logits"]
    backward = memory["grad_bytes"] + acts.get("recompute", 0)
    return (memory["param_bytes"] + memory["opt_bytes"] + memory.get("copy_bytes", 0) + acts.get("saved", 0)
            + max(loss, backward))


def usable_bytes(topology: Topology) -> float:
    """What a step may take of a device of `topology` (`USABLE` of its memory)."""
    return USABLE * topology.hbm_gib * GIB


def step_needed(model: DecoderConfig, config: RunConfig, sizes: dict[str, int], shapes, topology: Topology
                ) -> tuple[int, str]:
    """The bytes a device needs for `model` on mesh `sizes` and the largest of the step `shapes` (rows, length) on
    `topology`, and the one line saying so when they do not fit (`out_of_memory`)."""
    rows, length = max(shapes, key=lambda shape: shape[0] * shape[1])
    memory, acts = device_memory(model, sizes, rows=rows, seq_len=length, micro_batches=config.optim.micro_batches,
                                 clip=bool(config.optim.grad_clip), platform=topology.platform,
                                 loss_chunk=config.optim.loss_chunk)
    needed = needed_bytes(memory, acts)
    return needed, out_of_memory(needed, memory, acts, topology)


def out_of_memory(needed: int, memory: dict, acts: dict, topology: Topology) -> str:
    """One line: what a step needs a device, what a device has, and the keys that change it."""
    return (f"out of memory: a step needs about {needed / GIB:.1f} GiB a device (parameters {_gib(memory['param_bytes'])}"
            f", AdamW state {_gib(memory['opt_bytes'])}, gradients {_gib(memory['grad_bytes'])}, their compute-dtype "
            f"copy {_gib(memory.get('copy_bytes', 0))}, activations "
            f"{_gib(acts['total'])} for {acts['rows']} row(s) of {acts['seq_len']}), a device here has "
            f"{topology.hbm_gib:.1f} GiB ({topology.name}); lower data.global_batch or data.seq_len, raise "
            "optim.micro_batches, or set model.remat=full (`instructjax plan --config ...` shows the figures)")


class _Spec:
    """A PartitionSpec kept as one pytree leaf."""

    def __init__(self, spec: PartitionSpec):
        self.spec = spec


def _shard_bytes(shape: tuple[int, ...], dtype: Any, spec: PartitionSpec, sizes: dict[str, int]) -> int:
    local = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
        local.append(math.ceil(dim / math.prod(sizes[a] for a in axes)))
    return math.prod(local) * np.dtype(dtype).itemsize


@functools.lru_cache(maxsize=8)
def _abstract_state(model: DecoderConfig, clip: bool) -> tuple[Any, Any, Any]:
    """(params, their logical axis names, optimizer state), all abstract: nnx/jax.eval_shape, cached per model."""
    from instructjax.model.decoder import Decoder

    state = nnx.state(nnx.eval_shape(lambda: Decoder(model, rngs=nnx.Rngs(0))), nnx.Param)
    names = nnx.to_pure_dict(jax.tree.map(lambda v: _Spec(v.get_metadata().get("out_sharding")), state,
                                          is_leaf=lambda x: isinstance(x, nnx.Variable)))
    params = nnx.to_pure_dict(state)
    tx = adamw(optax.constant_schedule(1.0), max_grad_norm=1.0 if clip else None)  # a schedule, as trained
    return params, names, jax.eval_shape(tx.init, params), tx


def state_memory(model: DecoderConfig, sizes: dict[str, int], clip: bool = True) -> dict[str, int]:
    """Per-device bytes of parameters and optimizer state, and their global totals, from eval_shape."""
    params, names, opt, tx = _abstract_state(model, clip)
    mesh = AbstractMesh(tuple(sizes.values()), tuple(sizes))
    is_spec = lambda x: isinstance(x, _Spec)  # noqa: E731
    specs = jax.tree_util.tree_map_with_path(
        lambda path, a, n: _Spec(sharding.logical_to_spec(n.spec, mesh, a.shape, what=sharding._path_str(path))
                                 if n.spec else PartitionSpec()), params, names, is_leaf=is_spec)
    opt_specs = optax.tree_utils.tree_map_params(tx, lambda _, s: s, opt, specs,
                                                 transform_non_params=lambda _: _Spec(PartitionSpec()))
    leaves = lambda tree: jax.tree.leaves(tree, is_leaf=is_spec)  # noqa: E731

    def total(tree, spec_tree) -> tuple[int, int]:
        pairs = list(zip(leaves(tree), leaves(spec_tree), strict=True))
        return (sum(_shard_bytes(a.shape, a.dtype, s.spec, sizes) for a, s in pairs),
                sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a, _ in pairs))

    p_local, p_global = total(params, specs)
    o_local, o_global = total(opt, opt_specs)
    n_params = sum(math.prod(a.shape) for a in leaves(params))
    return {"params": n_params, "param_bytes": p_local, "param_bytes_global": p_global,
            "opt_bytes": o_local, "opt_bytes_global": o_global}


# [tokens, intermediate] arrays one MLP keeps for its backward pass, by (activation, gated): the projections'
# outputs and the activation's own residuals (measured with jax's saved_residuals: e.g. SwiGLU gate, up, the
# sigmoid's two and the product; exact GELU's erfc and exp)
MLP_ARRAYS = {("silu", True): 6, ("gelu_tanh", True): 8, ("gelu", True): 8, ("relu", True): 5,
              ("silu", False): 3, ("gelu_tanh", False): 4, ("gelu", False): 4, ("relu", False): 2}


def activation_bytes(model: DecoderConfig, rows: int, seq_len: int, tensor: int, platform: str = "tpu",
                     loss_tokens: int = 0, head_slices: int = 1) -> dict:
    """Per-device activation bytes for `rows` rows of `seq_len` on `platform` (see the module docstring's formula);
    the loss makes the logits of `loss_tokens` tokens at a time (0: all of them), its head sliced over
    `head_slices` devices."""
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
    implementation = attention.resolve(model.attention, platform)
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
    # forward's arrays once (XLA:CPU's buffers, tests/test_plan.py)
    backward = tpu_backward(model, s * r, t) if platform == "tpu" else full_layer
    recompute = 0 if model.remat == "none" else backward
    tokens = s * r if not loss_tokens else min(loss_tokens, s * r)
    logits = (c + 4 if c < 4 else c) * tokens * model.vocab_size / t  # float32 compute: one array
    if platform == "tpu" and head_slices > 1 and model.vocab_size % head_slices == 0 and not model.final_softcap:
        logits = 0  # the sliced head's logits, log-sum-exp and target pick are one fusion on XLA:TPU: never an array
        # (a soft-cap's tanh keeps them: Gemma-2's [4096, 32000] float32 logits and their bfloat16 product are buffers)
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
TPU_BACKWARD = {"hidden": 33.5, "extra_norm": 0.8, "mlp": 21.0, "q": 68.0, "kv": 10.0, "weights": 3.0}


def tpu_backward(model: DecoderConfig, tokens: int, tensor: int) -> float:
    """Bytes a device holds for the recomputed layer's backward on a TPU, for `tokens` tokens (`TPU_BACKWARD`)."""
    k = TPU_BACKWARD
    h, m, d, t = model.hidden_size, model.intermediate_size, model.head_dim, tensor
    lanes = -(-d // 128) * 128
    scale = np.dtype(model.dtype).itemsize / 2  # measured in bfloat16: float32 compute doubles every array
    norms = (4 if model.sandwich_norms else 2) - 2
    mlp_in = 2 if model.gated_mlp else 1
    weights = np.dtype(model.dtype).itemsize * (h * d * (2 * model.num_heads + 2 * model.num_kv_heads)
                                                + (mlp_in + 1) * h * m) / t
    attention = k["q"] * model.num_heads / t * lanes + k["kv"] * model.num_kv_heads / t * lanes
    per_token = (k["hidden"] + k["extra_norm"] * norms) * h + max(k["mlp"] * m / t, attention)
    return tokens * per_token * scale + k["weights"] * weights


@dataclass
class DataEstimate:
    """One epoch's size: examples, rows, tokens and steps, and where the numbers came from."""

    examples: int
    rows: int
    tokens: int
    steps: int
    source: str
    per_task: dict[str, int] = field(default_factory=dict)
    step_shapes: tuple[tuple[int, int], ...] = ()  # (rows, row length) of a step (per_step: each shape, or the
    # mean step's estimated)
    real_share: float = 0.0  # real tokens / all tokens of the rows the steps process
    step: str = ""  # how a step's rows are laid out, in words
    epoch: str = ""  # the epoch in words: examples, rows, steps, as the layout has them


def _task_examples(task: str, count: int | None) -> tuple[int, float, str]:
    """(examples, mean tokens per example, source name) of one mixture component from the papers' sizes."""
    from instructjax.data.blends.specs import task as task_spec
    from instructjax.data.sources.synthetic import LENGTH_STATS

    spec = task_spec(task)
    stats = LENGTH_STATS.get(spec.source)
    if stats is None:
        raise ConfigError(f"task {task!r}: no paper size for source {spec.source!r}; use --real-data")
    n = stats.instances
    if spec.selection is not None and spec.selection.k is not None:
        n = min(n, spec.selection.k)
    if count is not None:
        n = min(n, count)
    return n, stats.rounds * (stats.prompt + stats.completion), spec.source


def estimate_epoch(config: RunConfig, multiple: int = 1) -> DataEstimate:
    """One epoch from the papers' dataset sizes and mean lengths (Tulu Table 1; see the module doc); `multiple`:
    what a per_step step's rows are a multiple of."""
    from instructjax.data.batches.pipeline import mean_step_shape
    from instructjax.data.blends import specs
    from instructjax.data.mosaic.augment import sample_count

    data = config.data
    found = specs.tasks_of(data.mixture)
    if found is None:
        raise specs.unknown(data.mixture, "a registered task or mixture (data.mixture)")
    tasks, mixture = found
    if mixture is not None and not mixture.epoch_mode:
        raise ConfigError(f"mixture {data.mixture!r} is rate mode (endless): plan needs an epoch mixture")
    examples = tokens = 0.0
    per_task = {}
    for task, count in (mixture.counts if mixture is not None else ((tasks[0], None),)):
        n, mean_len, _ = _task_examples(task, count)
        per_task[task] = n
        length = min(mean_len, data.seq_len)
        if data.mosaic is not None:
            cap = max(1, int(data.mosaic_budget // mean_len))
            rng = np.random.default_rng(0)
            k = np.mean([min(sample_count(rng, data.mosaic), cap) for _ in range(4000)])
            n_out, length = n / k, min(k * mean_len, data.seq_len)
        else:
            n_out = n
        examples += n_out
        tokens += n_out * length
    rows = math.ceil(examples) if data.pack is not True else math.ceil(tokens / (data.seq_len * PACKING_EFFICIENCY))
    shape = (data.global_batch, data.seq_len)
    if data.pack == "per_step":  # the shape the mean step's examples fill, packed
        shape = mean_step_shape(data.global_batch * tokens / examples, data.global_batch, data.seq_len, multiple,
                                PACKING_EFFICIENCY)
    step = (f"{data.global_batch} examples packed into about {_shape_words((shape,))} (the mean step; "
            "--real-data plans every step)") if data.pack == "per_step" else _step_words(data)
    steps = math.ceil(rows / data.global_batch)
    return DataEstimate(math.ceil(examples), rows, int(tokens), steps,
                        "papers' dataset sizes x mean lengths (Tulu Table 1, data.synthetic.LENGTH_STATS)", per_task,
                        (shape,), tokens / (rows / data.global_batch * shape[0] * shape[1]), step,
                        _epoch_words(data, math.ceil(examples), rows, steps, int(tokens)))


def _epoch_words(data, examples: int, rows: int, steps: int, tokens: int) -> str:
    """One epoch in the words of its layout (`data.pack`)."""
    if data.pack == "per_step":  # the unpacked run's steps, each step's examples packed apart
        return f"{examples:,} examples, {steps:,} steps of {data.global_batch} examples, {tokens:,} tokens"
    if data.pack:
        return (f"{examples:,} examples packed into {rows:,} rows of {data.seq_len}, {steps:,} steps of "
                f"{data.global_batch} rows, {tokens:,} tokens")
    return f"{examples:,} examples, one a row, {steps:,} steps of {data.global_batch} rows, {tokens:,} tokens"


def _shape_words(shapes: tuple[tuple[int, int], ...]) -> str:
    """Step shapes (rows, row length) in words: "40, 48 or 64 rows of 2,048 tokens", "32 rows of 2,304 or 2,560 tokens"."""
    def either(values) -> str:
        values = [f"{v:,}" for v in sorted(set(values))]
        return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"

    return f"{either(rows for rows, _ in shapes)} rows of {either(length for _, length in shapes)} tokens"


def _step_words(data, shapes: tuple[tuple[int, int], ...] = ()) -> str:
    """How a step's rows are laid out under `data.pack`, in words."""
    if data.pack == "per_step":
        return (f"{data.global_batch} examples packed into {_shape_words(shapes)} "
                f"({len(shapes)} step shape(s), each compiled once)")
    return f"{data.global_batch} rows" + (" of packed examples" if data.pack else ", one example each")


def real_epoch(config: RunConfig, multiple: int = 1) -> DataEstimate:
    """One epoch counted by the real pipeline with the run's tokenizer (reads and encodes the data: local or
    built-in only); per_step: the run's step shapes, rows a multiple of `multiple`, as the trainer plans them."""
    from instructjax.train import setup as run_setup

    pipeline = run_setup.open_pipeline(run_setup.bind_run(config))  # the trainer's binding and pipeline
    plan = pipeline.plan_epoch(0)
    shapes, real_share = ((config.data.global_batch, config.data.seq_len),), plan.efficiency
    if config.data.pack == "per_step":
        steps = pipeline.plan_steps(config.max_steps or config.optim.epochs * plan.steps, multiple)
        shapes, real_share = steps.shapes, steps.efficiency
    return DataEstimate(plan.examples, plan.rows, plan.tokens, plan.steps, "the real pipeline (data read and packed)",
                        step_shapes=shapes, real_share=real_share, step=_step_words(config.data, shapes),
                        epoch=_epoch_words(config.data, plan.examples, plan.rows, plan.steps, plan.tokens))


@dataclass
class Plan:
    """Everything `instructjax plan` prints."""

    config: str
    topology: Topology
    mesh: dict[str, int]
    memory: dict[str, int]
    activations: dict[str, Any]  # bytes, and which attention implementation they assume
    data: DataEstimate | None
    epochs: int
    fits: bool
    proposal: str = ""  # a mesh of this topology that serves the batch better (`propose_mesh`), in words
    proposed: bool = False  # this plan is of that mesh: the config's own cannot serve this topology

    @property
    def total_bytes(self) -> int:
        return needed_bytes(self.memory, self.activations)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes}


def model_shapes(config: RunConfig) -> DecoderConfig:
    """The model a plan counts: the config stored with `model.init_from` where that checkpoint exists (its metadata,
    never its weights), else the preset with the config's overrides (a paper config planned before the import)."""
    if config.model.init_from:
        from instructjax.core import storage

        if storage.path(config.model.init_from).exists():
            from instructjax.train.setup import resolve_model_config

            return resolve_model_config(config)
    return preset(config.model.preset, **config.model.overrides)


def make_plan(config: RunConfig, topology: Topology, *, real_data: bool = False, name: str = "") -> Plan:
    """The plan of `config` on `topology` (see the module docstring)."""
    if config.define:
        from instructjax.data.blends.specs import define

        define(config.define)
    if config.mesh == "auto":  # figures of the plain FSDP mesh; plan_with_proposal takes the proposed one
        config = dataclasses.replace(config, mesh={"data": 1, "fsdp": -1, "tensor": 1})
    model = model_shapes(config)
    training = config.max_steps != 0
    sizes = (sharding.resolve_mesh(config, topology.devices, topology.hosts) if training
             else sharding.mesh_sizes(config.mesh, topology.devices))
    data = None
    if training:
        multiple = sharding.row_multiple(config, sizes, topology.hosts)
        data = real_epoch(config, multiple) if real_data else estimate_epoch(config, multiple)
    rows, length = max(data.step_shapes, key=lambda s: s[0] * s[1]) if training else (0, config.data.seq_len)
    memory, acts = device_memory(model, sizes, rows=rows, seq_len=length,  # the largest step shown
                                 micro_batches=config.optim.micro_batches,
                                 clip=bool(config.optim.grad_clip), platform=topology.platform,
                                 loss_chunk=config.optim.loss_chunk)  # fmt: skip
    if memory["params"] != param_count(model):
        raise AssertionError(f"eval_shape gives {memory['params']} parameters, param_count {param_count(model)}")
    if not training:
        memory["grad_bytes"] = memory["copy_bytes"] = 0
        acts = {"per_layer": 0, "saved": 0, "recompute": 0, "layers": 0, "logits": 0, "total": 0, "attention": None,
                "rows": 0,
                "seq_len": config.data.seq_len}  # fmt: skip
    plan = Plan(name, topology, sizes, memory, acts, data, config.optim.epochs, False)
    plan.fits = plan.total_bytes <= USABLE * topology.hbm_gib * GIB
    return plan


MAX_TENSOR = 8  # tensor parallelism stays within a host's chips (or a GPU node)
REAL_SHARE_SLACK = 0.02  # a mesh within this of the best real-token share is as good: the least tensor wins
REAL_SHARE_GOAL = 0.9  # below it, `plan_with_proposal` looks for a mesh that does better


def mesh_options(devices: int) -> list[dict[str, int]]:
    """The meshes a proposal chooses from: no data axis, the devices split between fsdp and tensor (1 to
    MAX_TENSOR), least tensor parallelism first."""
    return [{"data": 1, "fsdp": devices // t, "tensor": t} for t in (1, 2, 4, 8)
            if t <= MAX_TENSOR and devices % t == 0]


def best_mesh(candidates: list[tuple[dict[str, int], float]]) -> dict[str, int] | None:
    """Of (mesh, real-token share) pairs in `mesh_options` order (least tensor parallelism first), the first whose
    share is within REAL_SHARE_SLACK of the best; None for none."""
    if not candidates:
        return None
    best = max(share for _, share in candidates)
    return next(sizes for sizes, share in candidates if share >= best - REAL_SHARE_SLACK)


def propose_mesh(config: RunConfig, topology: Topology, *, real_data: bool = False) -> Plan | None:
    """The plan on the mesh of `topology` (`mesh_options`) that the batch divides over, that fits, and that keeps
    the most of the step's tokens real (with `pack: per_step` a step packs into a multiple of the data-parallel
    devices: fewer of them, fewer padded rows); among meshes within REAL_SHARE_SLACK of the best, the least tensor
    parallelism. None for an evaluation-only config or when no mesh fits."""
    if config.max_steps == 0:
        return None
    plans = []
    for sizes in mesh_options(topology.devices):
        try:
            plan = make_plan(dataclasses.replace(config, mesh=sizes), topology, real_data=real_data)
        except ConfigError:  # the batch does not divide over it, or the model's heads not over its tensor axis
            continue
        if plan.fits:
            plans.append(plan)
    chosen = best_mesh([(plan.mesh, plan.data.real_share) for plan in plans])
    return next((plan for plan in plans if plan.mesh is chosen), None)


def choose_mesh(config: RunConfig, devices: int, hosts: int, real_share, fits) -> dict[str, int]:
    """`mesh: auto` for a run on `devices` devices and `hosts` hosts: of `mesh_options` that the batch divides over,
    those the model's weights divide over and that `fits(sizes)`, the one `best_mesh` takes by `real_share(sizes)` (the trainer's own step plan); where
    none fits, the best of the others (the trainer's memory check then names the figures)."""
    usable, fitting = [], []
    for sizes in mesh_options(devices):
        try:
            sharding.resolve_mesh(dataclasses.replace(config, mesh=sizes), devices, hosts)
            fit = fits(sizes)  # raises where the model's heads do not divide over the tensor axis
        except ConfigError:
            continue
        usable.append(sizes)
        if fit:
            fitting.append(sizes)
    if not usable:
        raise ConfigError(f"mesh: auto: no mesh of {devices} devices on {hosts} host(s) serves data.global_batch="
                          f"{config.data.global_batch} (optim.micro_batches={config.optim.micro_batches}) and the "
                          "model's heads; change the batch or set mesh: explicitly")
    fitting = fitting or usable
    return best_mesh([(sizes, real_share(sizes)) for sizes in fitting])


def plan_with_proposal(config: RunConfig, topology: Topology, *, real_data: bool = False, name: str = "") -> Plan:
    """`make_plan`, with a proposed mesh (`propose_mesh`) where the config's own cannot serve the batch on this
    topology (the plan is then the proposal's, `proposal` says so) or keeps less than REAL_SHARE_GOAL of the
    step's tokens real and another mesh keeps more; the config's own error when no mesh can."""
    if config.mesh == "auto" and config.max_steps != 0:  # the proposal is the run's mesh
        plan = propose_mesh(config, topology, real_data=real_data)
        if plan is None:  # none fits: the plain FSDP mesh's figures, which say so
            return make_plan(config, topology, real_data=real_data, name=name)
        plan.config, plan.proposal = name, f"mesh: auto takes {_overrides(plan.mesh)}"
        return plan
    try:
        plan = make_plan(config, topology, real_data=real_data, name=name)
    except ConfigError as e:
        proposed = propose_mesh(config, topology, real_data=real_data)
        if proposed is None:
            raise
        proposed.config, proposed.proposed = name, True
        proposed.proposal = (f"the config's mesh cannot serve this topology ({e}); this plan is for "
                             f"{_overrides(proposed.mesh)}, which the batch divides over and which fits")
        return proposed
    if plan.data is None or plan.data.real_share >= REAL_SHARE_GOAL:
        return plan
    proposed = propose_mesh(config, topology, real_data=real_data)
    if proposed is not None and proposed.data.real_share > plan.data.real_share + REAL_SHARE_SLACK:
        plan.proposal = (f"{_overrides(proposed.mesh)}: {proposed.data.real_share:.1%} of the tokens processed real "
                         f"(this mesh: {plan.data.real_share:.1%}), {_gib(proposed.total_bytes)} a device")
    return plan


def _overrides(mesh: dict[str, int]) -> str:
    return " ".join(f"mesh.{k}={v}" for k, v in mesh.items())


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def format_plan(plan: Plan) -> str:
    """The plan as the few lines a person reads before spending money."""
    m, a, t = plan.memory, plan.activations, plan.topology
    lines = [
        f"config      {plan.config}",
        f"topology    {t.name}: {t.devices} device(s) on {t.hosts} host(s), {t.hbm_gib:.3g} GiB "
        + ("of the machine's available memory" if t.platform == "cpu" else "HBM") + " each",
        "mesh        " + " x ".join(f"{k}={v}" for k, v in plan.mesh.items()) + (" (proposed)" if plan.proposed else ""),
        f"parameters  {m['params']:,} ({m['param_bytes_global'] / 1e9:.2f} GB global)",
        "per device:",
        f"  params        {_gib(m['param_bytes'])}",
        f"  optimizer     {_gib(m['opt_bytes'])} (global {m['opt_bytes_global'] / 1e9:.2f} GB)",
        f"  gradients     {_gib(m['grad_bytes'])}",
        f"  compute copy  {_gib(m['copy_bytes'])} (the parameters in the compute dtype, for the step)",
        f"  activations   {_gib(a['total'])} (layers {_gib(a['layers'])}, logits {_gib(a['logits'])}; "
        f"{a['attention']} attention; {a['rows']} row(s) of {a['seq_len']} a device; estimate)",
        f"  total         {_gib(plan.total_bytes)} of {t.hbm_gib:.3g} GiB -> "
        + ("fits" if plan.fits else f"DOES NOT FIT (limit {USABLE:.0%} of it)"),
    ]
    if plan.data is None:
        lines.append("data        none: evaluation-only config (max_steps: 0)")
    else:
        d = plan.data
        lines += [f"epoch       {d.epoch}",
                  f"run         {plan.epochs} epoch(s): {plan.epochs * d.steps:,} steps, {plan.epochs * d.tokens:,} tokens",
                  f"a step      {d.step}; {d.real_share:.1%} of the tokens processed are real",
                  f"source      {d.source}"]
    if plan.proposal:
        lines.append(f"proposal    {plan.proposal}")
    return "\n".join(lines)
