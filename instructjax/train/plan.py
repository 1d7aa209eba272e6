"""Pre-flight plan: will a config fit on a TPU slice or a GPU node, and how long is one epoch?

Memory per device: `train.memory` (the model's real parameter and optimizer state, an estimate of the
activations; on a TPU the terms XLA:TPU's buffers show).

Steps per epoch and of the run: `train.plan_data` (each task counted, read from the tokenized cache, or estimated
from the papers, each figure saying which; the run's steps as the trainer runs them: `train.setup.run_steps`).

`data.pack: per_step` keeps the unpacked steps (so the epoch's rows and steps are the unpacked ones) and packs
each step's examples into fewer rows, a multiple of `sharding.row_multiple` (or that many rows, longer than
seq_len, where few rows are a step: `step_plan.plan_step_rows`): with every task counted, the run's step shapes as
the trainer plans them (`DataPipeline.plan_steps`) and activations for the largest; estimated, the shape the mean
step fills (`step_plan.mean_step_shape`) and activations for it.

A mesh proposal (`plan_with_proposal`): where the config's mesh cannot serve the topology (the batch does not
divide over its data-parallel devices) or keeps less than REAL_SHARE_GOAL of the step's tokens real, `plan`
names the mesh of the slice (`mesh_options`: fsdp x tensor; x expert for a mixture of experts) that fits and keeps
the most real, the least tensor parallelism among near-equals.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from instructjax.core import sharding
from instructjax.core.config import RunConfig
from instructjax.core.errors import ConfigError
from instructjax.model import context
from instructjax.model.config import DecoderConfig, param_count
from instructjax.train.memory import (
    GIB,
    USABLE,
    device_memory,
    needed_bytes,
    onchip_bytes,
    reference_bytes,
    rollout_figures,
)
from instructjax.train.meshes import REAL_SHARE_SLACK, best_mesh, mesh_options, option_groups
from instructjax.train.objectives import objective_for
from instructjax.train.plan_data import DataEstimate, epoch_of
from instructjax.train.resolution import ESTIMATE, PIPELINE, Resolution, resolve
from instructjax.train.topology import Topology


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
    experts: str = ""  # a mixture of experts' routing and router losses, in words (`expert_words`)

    @property
    def total_bytes(self) -> int:
        return needed_bytes(self.memory, self.activations)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total_bytes": self.total_bytes}


def make_plan(config: RunConfig, topology: Topology, *, real_data: bool = False, name: str = "",
              resolution: Resolution | None = None) -> Plan:
    """The plan of `config` on `topology` (see the module docstring); `resolution`: `config` resolved
    (`train.resolution.resolve`: its model and its tasks' sizes; None: resolved here, `pipeline` sizes with
    `real_data`); its mesh is `config`'s."""
    resolution = (resolution or resolve(config, sizes=PIPELINE if real_data else ESTIMATE)).counted()
    if config.mesh == "auto":  # figures of the plain FSDP mesh; plan_with_proposal takes the proposed one
        config = dataclasses.replace(config, mesh={"data": 1, "fsdp": -1, "tensor": 1})
    model = resolution.model
    training = config.max_steps != 0
    sizes = sharding.mesh_sizes(config.mesh, topology.devices)
    sharding.check_experts(model.num_experts, sizes)
    if training:
        sizes = sharding.resolve_mesh(config, topology.devices, topology.hosts)
    data = None
    if training:
        data = epoch_of(config, resolution.counts, sharding.row_multiple(config, sizes, topology.hosts))
    rows, length = max(data.step_shapes, key=lambda s: s[0] * s[1]) if training else (0, config.data.seq_len)
    context.check(model, sizes, [s[1] for s in data.step_shapes] if training else [length])
    memory, acts = device_memory(model, sizes, rows=rows, seq_len=length,  # the largest step shown
                                 micro_batches=config.optim.micro_batches,
                                 clip=bool(config.optim.grad_clip), platform=topology.platform,
                                 loss_chunk=config.optim.loss_chunk, onchip=onchip_bytes(topology))  # fmt: skip
    memory["reference_bytes"] = reference_bytes(model, config, memory)
    memory.update(rollout_figures(model, config, sizes, memory))
    if memory["params"] != param_count(model):
        raise AssertionError(f"eval_shape gives {memory['params']} parameters, param_count {param_count(model)}")
    if not training:
        memory["grad_bytes"] = memory["copy_bytes"] = memory["onchip_bytes"] = memory["expert_bytes"] = 0
        acts = {"per_layer": 0, "saved": 0, "recompute": 0, "layers": 0, "logits": 0, "total": 0, "attention": None,
                "rows": 0,
                "seq_len": config.data.seq_len}  # fmt: skip
    plan = Plan(name, topology, sizes, memory, acts, data, config.optim.epochs, False, objective=objective_words(config),
                experts=expert_words(model))
    plan.fits = plan.total_bytes <= USABLE * topology.hbm_gib * GIB
    return plan


def expert_words(model: DecoderConfig) -> str:
    """A mixture of experts' routing and the coefficients of its router losses ("" for a dense model)."""
    if not model.num_experts:
        return ""
    return (f"{model.num_experts} experts, top {model.experts_per_token} a token, in {len(model.sparse_layers)} of "
            f"{model.num_layers} layers; router losses: load balancing x {model.router_aux_loss:g} "
            f"(model.router_aux_loss), z-loss x {model.router_z_loss:g} (model.router_z_loss)")


def objective_words(config: RunConfig) -> str:
    """The objective and its reference's cost in words ("" for SFT): its own plan term (train/objectives/)."""
    return objective_for(config).words()


REAL_SHARE_GOAL = 0.9  # below it, `plan_with_proposal` looks for a mesh that does better


def propose_mesh(config: RunConfig, topology: Topology, *, real_data: bool = False,
                 resolution: Resolution | None = None) -> Plan | None:
    """The plan on the mesh of `topology` (`option_groups`: whole rows a device, then rows split over a `context`
    axis) that the batch divides over, that fits, and that keeps the most of the step's tokens real (with `pack:
    per_step` a step packs into a multiple of the data-parallel devices: fewer of them, fewer padded rows); among
    meshes within REAL_SHARE_SLACK of the best, the least tensor parallelism. None for an evaluation-only config or
    when no mesh fits."""
    if config.max_steps == 0:
        return None
    resolution = (resolution or resolve(config, sizes=PIPELINE if real_data else ESTIMATE)).counted()
    for group in option_groups(topology.devices, resolution.model.num_experts):
        plans = [plan for plan in _plans(config, topology, resolution, group) if plan.fits]
        if plans:
            chosen = best_mesh([(plan.mesh, plan.data.real_share) for plan in plans])
            return next(plan for plan in plans if plan.mesh is chosen)
    return None


def _plans(config: RunConfig, topology: Topology, resolution: Resolution, meshes: list[dict]) -> list[Plan]:
    """The plans of `config` on each of `meshes` that serve it (the batch divides over the mesh, the model's heads
    over its tensor axis, its rows over its context axis)."""
    plans = []
    for sizes in meshes:
        try:
            plans.append(make_plan(dataclasses.replace(config, mesh=sizes), topology, resolution=resolution))
        except ConfigError:
            continue
    return plans


def plan_with_proposal(config: RunConfig, topology: Topology, *, real_data: bool = False, name: str = "",
                       resolution: Resolution | None = None) -> Plan:
    """`make_plan`, with a proposed mesh (`propose_mesh`) where the config's own cannot serve the batch on this
    topology (the plan is then the proposal's, `proposal` says so) or keeps less than REAL_SHARE_GOAL of the
    step's tokens real and another mesh keeps more; the config's own error when no mesh can. The tasks are counted
    once (`resolution`, made here where not given: `pipeline` sizes with `real_data`) for every mesh tried."""
    resolution = resolution or resolve(config, sizes=PIPELINE if real_data else ESTIMATE)
    if isinstance(config.mesh, dict):  # an expert axis the model cannot take is the config's error, not the topology's
        sharding.check_experts(resolution.model.num_experts, config.mesh)
        if config.mesh.get("context", 1) != 1:  # and so are rows that cannot split over its context axis
            context.check(resolution.model, sharding.mesh_sizes(config.mesh, topology.devices), [config.data.seq_len])
    resolution = resolution.counted()
    if config.mesh == "auto" and config.max_steps != 0:  # the proposal is the run's mesh
        plan = propose_mesh(config, topology, resolution=resolution)
        if plan is None:  # none fits: the figures of the first mesh that serves the batch, which say so
            served = _plans(config, topology, resolution, mesh_options(topology.devices, resolution.model.num_experts))
            plan = served[0] if served else make_plan(config, topology, name=name, resolution=resolution)
            plan.config = name
            return plan
        plan.config, plan.proposal = name, f"mesh: auto takes {_overrides(plan.mesh)}"
        return plan
    try:
        plan = make_plan(config, topology, name=name, resolution=resolution)
    except ConfigError as e:
        proposed = propose_mesh(config, topology, resolution=resolution)
        if proposed is None:
            raise
        proposed.config, proposed.proposed = name, True
        proposed.proposal = (f"the config's mesh cannot serve this topology ({e}); this plan is for "
                             f"{_overrides(proposed.mesh)}, which the batch divides over and which fits")
        return proposed
    if plan.data is None or plan.data.real_share >= REAL_SHARE_GOAL:
        return plan
    proposed = propose_mesh(config, topology, resolution=resolution)
    if proposed is not None and proposed.data.real_share > plan.data.real_share + REAL_SHARE_SLACK:
        plan.proposal = (f"{_overrides(proposed.mesh)}: {proposed.data.real_share:.1%} of the tokens processed real "
                         f"(this mesh: {plan.data.real_share:.1%}), {_gib(proposed.total_bytes)} a device")
    return plan


def _overrides(mesh: dict[str, int]) -> str:
    return " ".join(f"mesh.{k}={v}" for k, v in mesh.items())


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def activation_words(a: dict) -> str:
    """The activations' parts, which add up to their total: the layers' saved inputs (remat `none`: everything the
    layers keep) and the larger of the recomputed layer's backward and the loss's logits, which are never live
    together (the smaller named beside them)."""
    saved = f"the layers' saved {'inputs' if a['recompute'] else 'arrays'} {_gib(a['saved'])}"
    recompute, logits = _gib(a["recompute"]), _gib(a["logits"])
    if a["logits"] > a["recompute"]:
        after = f", then the recomputed layer ({recompute}) once they are freed" if a["recompute"] else ""
        return f"{saved} + the loss's logits {logits}{after}"
    before = f", the loss's logits ({logits}) freed before it" if a["logits"] else ""
    return f"{saved} + the recomputed layer {recompute}{before}"


def _apart(plan: Plan) -> str:
    """Where the total is less than the sum of the lines above it: the loss's logits and the gradients (a step's two
    phases) are not live together."""
    m, a = plan.memory, plan.activations
    lines = (m["param_bytes"] + m["opt_bytes"] + m["grad_bytes"] + m.get("copy_bytes", 0) + a["total"]
             + m.get("reference_bytes", 0) + m.get("expert_bytes", 0) + m.get("rollout_bytes", 0))
    if _gib(lines) == _gib(plan.total_bytes):
        return ""
    return (f" ({_gib(lines - plan.total_bytes)} less than the lines above: the loss's logits are freed before the "
            "gradients are made" + (", and a rollout runs between steps" if m.get("rollout_bytes") else "") + ")")


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
        f"  activations   {_gib(a['total'])} ({activation_words(a)}; {a['attention']} attention; {a['rows']} row(s) of "
        f"{a['seq_len']} a device; estimate)",
        *([f"  experts       {_gib(m['expert_bytes'])} (XLA:TPU's buffers beside the experts' weights, measured)"]
          if m.get("expert_bytes") else []),
        *([f"  reference     {_gib(m['reference_bytes'])} (the starting model, frozen, run in every step: about a "
           "third more compute a step)"] if m.get("reference_bytes") else []),
        *([f"  rollout       {_gib(m['rollout_bytes'])} (between steps, beside the parameters, AdamW state and "
           f"reference: its KV cache, {_gib(m.get('engine_cache_bytes', 0))}, kept through the steps too (the "
           "engine is made once a run), the layers sliced for decoding, the engine's fill or decode step)"]
          if m.get("rollout_bytes") else []),
        f"  total         {_gib(plan.total_bytes)} of {t.hbm_gib:.3g} GiB -> "
        + ("fits" if plan.fits else f"DOES NOT FIT (limit {USABLE:.0%} of it)") + _apart(plan),
    ]
    if plan.data is None:
        lines.append("data        none: evaluation-only config (max_steps: 0)")
    else:
        d = plan.data
        lines += [f"epoch       {d.epoch}",
                  f"run         {d.run}",
                  f"a step      {d.step}; {d.real_share:.1%} of the tokens processed are real",
                  *(f"{'data' if i == 0 else '':<12}{task.words()}" for i, task in enumerate(d.tasks))]
    if plan.experts:
        lines.append(f"experts     {plan.experts}")
    if plan.objective:
        lines.append(f"objective   {plan.objective}")
    if plan.proposal:
        lines.append(f"proposal    {plan.proposal}")
    return "\n".join(lines)


def __getattr__(name: str):
    if name in ("model_shapes", "stored_model"):  # their home until a run had one resolution (train/resolution.py)
        raise ImportError(f"instructjax.train.plan.{name} moved: import it from instructjax.train.resolution")
    if name == "data_counts":
        raise ImportError("instructjax.train.plan.data_counts moved: use instructjax.train.resolution.resolve(config)"
                          ".counted().counts")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
