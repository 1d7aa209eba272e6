"""Pre-flight plan: will a config fit on a TPU slice or a GPU node, and how long is one epoch?

Memory per device: `train.memory` (the model's real parameter and optimizer state, an estimate of the
activations; on a TPU the terms XLA:TPU's buffers show).

Steps per epoch: with the real pipeline (`real_data=True`, for mixtures whose data is local or
built-in) or estimated from the papers' dataset sizes and mean lengths (Tulu Table 1 and our
estimates in `data.sources.synthetic.LENGTH_STATS`): each example is `rounds x (prompt + completion)`
tokens, truncated to `seq_len`; packed rows fill `PACKING_EFFICIENCY` of `seq_len`
(benchmarks/RESULTS.md); Mosaic-IT divides the examples by the mean count of a draw capped by the budget.

`data.pack: per_step` keeps the unpacked steps (so the epoch's rows and steps are the unpacked ones) and packs
each step's examples into fewer rows, a multiple of `sharding.row_multiple` (or that many rows, longer than
seq_len, where few rows are a step: `step_plan.plan_step_rows`): with the real pipeline, the run's step shapes as
the trainer plans them (`DataPipeline.plan_steps`) and activations for the largest; estimated, the shape the mean
step fills (`step_plan.mean_step_shape`) and activations for it.

A mesh proposal (`plan_with_proposal`): where the config's mesh cannot serve the topology (the batch does not
divide over its data-parallel devices) or keeps less than REAL_SHARE_GOAL of the step's tokens real, `plan`
names the mesh of the slice (`mesh_options`: fsdp x tensor) that fits and keeps the most real, the least tensor
parallelism among near-equals.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from instructjax.core import sharding
from instructjax.core.config import RunConfig
from instructjax.core.errors import ConfigError
from instructjax.model.config import DecoderConfig, param_count, preset
from instructjax.train.memory import (  # noqa: F401  (their old home: users import them from here)
    GIB,
    MLP_ARRAYS,
    TPU_BACKWARD,
    USABLE,
    activation_bytes,
    device_memory,
    needed_bytes,
    onchip_bytes,
    out_of_memory,
    reference_bytes,
    state_memory,
    step_needed,
    tpu_backward,
    usable_bytes,
)
from instructjax.train.meshes import MAX_TENSOR, REAL_SHARE_SLACK, best_mesh, choose_mesh, mesh_options  # noqa: F401
from instructjax.train.topology import (  # noqa: F401  (their old home: users import them from here)
    GPU_HBM,
    TPU_CHIPS,
    Topology,
    available_memory,
    gpu_topology,
    local_topology,
    tpu_topology,
)

PACKING_EFFICIENCY = 0.995  # best-fit-decreasing, window 1000 (benchmarks/RESULTS.md: 99.6-99.8%)


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


def _task_examples(task: str, count: int | None, registry) -> tuple[int, float, str]:
    """(examples, mean tokens per example, source name) of one mixture component (a task of `registry`) from the
    papers' sizes (a preference task's example is a pair: both sides)."""
    from instructjax.data.sources.synthetic import LENGTH_STATS

    spec = registry.task(task)
    stats = LENGTH_STATS.get(spec.source)
    if stats is None:
        raise ConfigError(f"task {task!r}: no paper size for source {spec.source!r}; use --real-data")
    n = stats.instances
    if spec.selection is not None and spec.selection.k is not None:
        n = min(n, spec.selection.k)
    if count is not None:
        n = min(n, count)
    sides = 2 if spec.preference else 1  # a pair: its prompt twice, a completion each
    return n, sides * stats.rounds * (stats.prompt + stats.completion), spec.source


def estimate_epoch(config: RunConfig, multiple: int = 1, registry=None) -> DataEstimate:
    """One epoch from the papers' dataset sizes and mean lengths (Tulu Table 1; see the module doc); `multiple`:
    what a per_step step's rows are a multiple of; `registry`: the run's tasks and mixtures (`data.blends.specs.
    Registry`; None: the default one)."""
    from instructjax.data.batches.step_plan import mean_step_shape
    from instructjax.data.blends import specs
    from instructjax.data.mosaic.augment import sample_count

    registry = registry or specs.default_registry()
    data = config.data
    found = registry.tasks_of(data.mixture)
    if found is None:
        raise registry.unknown(data.mixture, "a registered task or mixture (data.mixture)")
    tasks, mixture = found
    if mixture is not None and not mixture.epoch_mode:
        raise ConfigError(f"mixture {data.mixture!r} is rate mode (endless): plan needs an epoch mixture")
    examples = tokens = 0.0
    per_task = {}
    for task, count in (mixture.counts if mixture is not None else ((tasks[0], None),)):
        n, mean_len, _ = _task_examples(task, count, registry)
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
    objective: str = ""  # a preference loss and what its reference costs, in words (`objective_words`)

    @property
    def total_bytes(self) -> int:
        return needed_bytes(self.memory, self.activations)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes}


def model_shapes(config: RunConfig) -> DecoderConfig:
    """The model a plan counts: the config stored with `model.init_from` where that checkpoint exists (its metadata,
    never its weights: `stored_model`), else the preset with the config's overrides (a paper config planned before
    the import)."""
    if config.model.init_from:
        from instructjax.core import storage

        if storage.path(config.model.init_from).exists():
            from instructjax.model.config import with_overrides

            stored = stored_model(config.model.init_from)
            if stored is None:  # no step's metadata reads: the trainer's own check says why, in one line
                from instructjax.train.setup import resolve_model_config

                return resolve_model_config(config)
            return with_overrides(DecoderConfig.from_dict(stored), config.model.overrides)
    return preset(config.model.preset, **config.model.overrides)


def stored_model(init_from: str) -> dict | None:
    """The model config stored with the newest step of checkpoint `init_from` whose `meta` item reads, or None: that
    JSON item (and, for a checkpoint older than `scan_layers`, the stored tree's names) alone; no array file is
    opened, checked against the manifest or hashed, so a plan of a 70B import reads a few KB."""
    import orbax.checkpoint as ocp

    from instructjax.core import checkpoint
    from instructjax.core.integrity import steps_on_disk

    path = checkpoint.checkpoints_dir(init_from)
    for step in reversed(steps_on_disk(path)):
        try:
            model = ocp.JsonCheckpointHandler().restore(path / str(step) / "meta", ocp.args.JsonRestore())["model_config"]
            if "scan_layers" not in model:
                model = {**model, "scan_layers": checkpoint._stacked_layers(checkpoint._params_tree(path / str(step)))}
        except Exception:  # noqa: BLE001  an unreadable step: an older one, else the trainer's check
            continue
        return model
    return None


def make_plan(config: RunConfig, topology: Topology, *, real_data: bool = False, name: str = "") -> Plan:
    """The plan of `config` on `topology` (see the module docstring)."""
    from instructjax.data.blends.specs import default_registry
    from instructjax.train import setup as run_setup

    registry = default_registry()  # what the config's `imports:` registered; its `define:` joins them
    if config.define:
        registry.define(config.define)
    if config.mesh == "auto":  # figures of the plain FSDP mesh; plan_with_proposal takes the proposed one
        config = dataclasses.replace(config, mesh={"data": 1, "fsdp": -1, "tensor": 1})
    model = model_shapes(config)
    training = config.max_steps != 0
    sizes = (sharding.resolve_mesh(config, topology.devices, topology.hosts) if training
             else sharding.mesh_sizes(config.mesh, topology.devices))
    data = None
    if training:
        run_setup.checked_mixture(config, registry)  # the trainer's checks of the objective against the tasks
        multiple = sharding.row_multiple(config, sizes, topology.hosts)
        data = real_epoch(config, multiple) if real_data else estimate_epoch(config, multiple, registry)
    rows, length = max(data.step_shapes, key=lambda s: s[0] * s[1]) if training else (0, config.data.seq_len)
    memory, acts = device_memory(model, sizes, rows=rows, seq_len=length,  # the largest step shown
                                 micro_batches=config.optim.micro_batches,
                                 clip=bool(config.optim.grad_clip), platform=topology.platform,
                                 loss_chunk=config.optim.loss_chunk, onchip=onchip_bytes(topology))  # fmt: skip
    memory["reference_bytes"] = reference_bytes(model, config, memory)
    if memory["params"] != param_count(model):
        raise AssertionError(f"eval_shape gives {memory['params']} parameters, param_count {param_count(model)}")
    if not training:
        memory["grad_bytes"] = memory["copy_bytes"] = memory["onchip_bytes"] = 0
        acts = {"per_layer": 0, "saved": 0, "recompute": 0, "layers": 0, "logits": 0, "total": 0, "attention": None,
                "rows": 0,
                "seq_len": config.data.seq_len}  # fmt: skip
    plan = Plan(name, topology, sizes, memory, acts, data, config.optim.epochs, False, objective=objective_words(config))
    plan.fits = plan.total_bytes <= USABLE * topology.hbm_gib * GIB
    return plan


def objective_words(config: RunConfig) -> str:
    """A preference loss and its reference's cost in words ("" for SFT)."""
    objective = config.objective
    if not objective.preference:
        return ""
    words = f"{objective.loss}, beta {objective.beta:g}" + (f", gamma {objective.gamma:g}" if objective.loss == "simpo"
                                                            else "")
    if not objective.needs_reference:
        return f"{words}; no reference model"
    if objective.reference == "cached":
        return (f"{words}; reference cached: one forward pass over the epoch's pairs before step 1 (one a row, about a "
                "third of an epoch's step time), no memory while training")
    return f"{words}; reference live: a frozen copy of the starting model (a LoRA: its base), one more forward a step"


REAL_SHARE_GOAL = 0.9  # below it, `plan_with_proposal` looks for a mesh that does better


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
        *([f"  reference     {_gib(m['reference_bytes'])} (the starting model, frozen, run in every step: about a "
           "third more compute a step)"] if m.get("reference_bytes") else []),
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
    if plan.objective:
        lines.append(f"objective   {plan.objective}")
    if plan.proposal:
        lines.append(f"proposal    {plan.proposal}")
    return "\n".join(lines)
