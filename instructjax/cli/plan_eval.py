"""`plan`'s evaluation (issue 65 item 4): the memory per device of evaluating a run's model on a topology (its
weights sharded by the training rules in the evaluation's dtype, the KV cache of the engine's slots for a
full-context sequence each, the fill and decode steps' own buffers: eval/placement.py), the slots chosen to fit
(`eval.slots` overrides them), and, with `plan --compile --eval`, the engine's fill and decode steps
(model/decoding.py) built by the TPU compiler for the slice from abstract state alone, beside plan's figures.

The evaluation mesh is the one `eval` takes: the run's `mesh:` where it names one, else the default (data
parallelism where the weights fit a device, else fsdp over every device; `eval_mesh`). It lives at the CLI layer because it reads the training side's
topologies and libtpu devices (train/) and the evaluation's placement (eval/), which do not import each other.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from instructjax.core.config import RunConfig
from instructjax.eval.config import eval_section
from instructjax.train.compile import program_figures, target_devices
from instructjax.train.topology import GIB, Topology

USABLE = 0.9  # as the train plan: headroom for XLA temporaries, fragmentation and the runtime


@dataclass
class EvalPlan:
    """The evaluation of a run's model on a topology; bytes are per device."""

    topology: str
    mesh: dict[str, int]
    dtype: str
    slots: int
    slots_from: str  # "chosen to fit" or "eval.slots"
    length: int  # the cache's rows: a full-context sequence per slot
    fill_rows: int  # the widest full fill call's prompts (pieces of longer ones: engine.fill_budget)
    fill_width: int  # ... and their tokens each
    weights: int
    cache: int
    fill: int  # the fill step's own buffers
    decode: int  # the decode step's own buffers
    hbm: int
    engine: str = "eval"  # whose engine: the evaluation's, or a grpo run's rollouts ("rollout")

    def step_total(self, step: str) -> int:
        return self.weights + self.cache + getattr(self, step)

    @property
    def total(self) -> int:
        return max(self.step_total("fill"), self.step_total("decode"))

    @property
    def fits(self) -> bool:
        return self.total <= USABLE * self.hbm

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "total": self.total, "fits": self.fits}


def evaluated_model(config: RunConfig, topology: Topology):
    """The model as the evaluation runs it on `topology`: bfloat16 on accelerators, float32 on a CPU."""
    from instructjax.eval import placement
    from instructjax.train.resolution import model_shapes

    return placement.eval_config(model_shapes(config), placement.default_dtype("cpu" if topology.platform == "cpu"
                                                                                else topology.platform))


def eval_plan(config: RunConfig, topology: Topology) -> EvalPlan:
    from instructjax.eval import placement
    from instructjax.eval.generate import DEFAULT_SLOTS
    from instructjax.model import batching_memory
    from instructjax.model.batching_shapes import widest_fill

    model = evaluated_model(config, topology)
    hbm, given = int(topology.hbm_gib * GIB), eval_section(config.eval).slots
    if isinstance(config.mesh, dict):  # the run's mesh, as `eval` takes it: an expert axis folded in (auto: default)
        from instructjax.core.sharding import mesh_sizes, without_experts

        sizes = mesh_sizes(without_experts(config.mesh), topology.devices)
    else:
        sizes = placement.default_sizes(model, topology.devices, int(USABLE * hbm), given or DEFAULT_SLOTS,
                                        model.max_position_embeddings)
    length, shards = model.max_position_embeddings, sizes["data"] * sizes["fsdp"]
    slots = given or placement.choose_slots(model, sizes, length=length, memory=USABLE * hbm, most=DEFAULT_SLOTS)
    rows, width = widest_fill(length, slots=slots, shards=shards)
    steps = batching_memory.step_bytes(model, sizes, slots=slots, length=length, fill_rows=rows, width=width)
    return EvalPlan(topology.name, sizes, str(model.dtype), slots, "eval.slots" if given else "chosen to fit", length,
                    rows, width, batching_memory.weight_bytes(model, sizes),
                    batching_memory.cache_bytes_per_device(model, sizes, slots, length), steps["fill"], steps["decode"], hbm)


def _gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def format_eval_plan(plan: EvalPlan) -> str:
    mesh = ",".join(f"{axis}={n}" for axis, n in plan.mesh.items())
    return (f"{plan.engine:<12}mesh {mesh}, {plan.dtype}: weights {_gib(plan.weights)} + KV cache {_gib(plan.cache)} "
            f"({plan.slots} slots x {plan.length} tokens, {plan.slots_from}) + steps {_gib(max(plan.fill, plan.decode))} "
            f"= {_gib(plan.total)} a device of {plan.hbm / GIB:.0f} GiB: "
            + ("fits" if plan.fits else f"DOES NOT FIT (limit {USABLE:.0%} of it)"))


def rollout_plan(config: RunConfig, topology: Topology) -> EvalPlan:
    """A grpo run's rollouts as the engine runs them between two steps: the trained model as it lies (its parameters
    in their own dtype, sharded over the run's mesh: `mesh: auto`, plan's plain FSDP one), the objective's slots
    (`GRPO.slots`), the cache rows of `data.seq_len`'s length bucket; weights are the run's own, not a copy."""
    from instructjax.core import sharding
    from instructjax.model import batching_memory
    from instructjax.model.batching_shapes import bucket, widest_fill
    from instructjax.train.objectives.grpo import GRPO
    from instructjax.train.resolution import model_shapes

    model = model_shapes(config)
    mesh = config.mesh if isinstance(config.mesh, dict) else {"data": 1, "fsdp": -1, "tensor": 1}
    sizes = sharding.mesh_sizes(sharding.without_experts(mesh), topology.devices)
    shards, length = sizes["data"] * sizes["fsdp"], bucket(config.data.seq_len, 64)
    slots = GRPO(config).slots(shards)
    rows, width = widest_fill(length, slots=slots, shards=shards)
    steps = batching_memory.step_bytes(model, sizes, slots=slots, length=length, fill_rows=rows, width=width)
    return EvalPlan(topology.name, sizes, str(model.dtype),
                    slots, "objective.grpo.prompts_per_rollout x samples_per_prompt",
                    length, rows, width, batching_memory.weight_bytes(model, sizes),
                    batching_memory.cache_bytes_per_device(model, sizes, slots, length), steps["fill"], steps["decode"],
                    int(topology.hbm_gib * GIB), "rollout")


@dataclass
class CompiledEvalStep:
    """One of the engine's steps as the TPU compiler built it; bytes per device."""

    step: str  # fill (rows x width) or decode (slots x chunk)
    shape: tuple[int, int]
    xla_bytes: int  # arguments + outputs - aliases + temporaries
    plan_bytes: int
    temporaries: int
    compile_s: float
    collectives: dict[str, dict[str, int]] = field(default_factory=dict)
    aliases: int = 0  # of the outputs, the bytes that are donated arguments updated in place (the cache)


def compile_eval(config: RunConfig, topology: Topology, steps: tuple[str, ...] = ("fill", "decode"), *,
                 rollout: bool = False) -> tuple[EvalPlan, list[CompiledEvalStep]]:
    """The engine's fill step (a full call of full-context prompts) and decode step (every slot, `chunk` tokens),
    those of them in `steps`, lowered on a mesh of `topology`'s devices (libtpu's description of a slice, or this
    machine's) from abstract parameters and cache, compiled, and measured beside `eval_plan`'s figures (`rollout`: a
    grpo run's rollout engine instead, `rollout_plan`'s)."""
    from flax import nnx

    from instructjax.core import sharding
    from instructjax.model import decoding
    from instructjax.model.decoder import abstract_model
    from instructjax.train.resolution import model_shapes

    plan = rollout_plan(config, topology) if rollout else eval_plan(config, topology)
    model = model_shapes(config).replace(scan_layers=False) if rollout else evaluated_model(config, topology)
    mesh = sharding.make_mesh(plan.mesh, target_devices(topology))
    graphdef, state = nnx.split(abstract_model(model))
    shardings = nnx.to_pure_dict(sharding.state_shardings(state, mesh))
    nnx.replace_by_pure_dict(state, jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                                 nnx.to_pure_dict(state), shardings))
    where = NamedSharding(mesh, PartitionSpec())
    layer = jax.ShapeDtypeStruct((plan.slots, model.num_kv_heads, plan.length, model.head_dim), model.dtype,
                                 sharding=decoding.cache_sharding(model, plan.slots, plan.length, mesh))
    cache = decoding.SlotCache((layer,) * model.num_layers, (layer,) * model.num_layers)

    def small(shape, dtype=jnp.int32):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=where)

    def keys(n):
        return jax.ShapeDtypeStruct((n,), jax.eval_shape(lambda: jax.random.key(0)).dtype, sharding=where)

    chunk, width, rows = 8, plan.fill_width, plan.fill_rows
    lowered = {
        "fill": ((rows, width), lambda: decoding.extend.lower(
            graphdef, state, cache, small((rows, width)), small((rows,)), small((rows,)), small((rows,)), keys(rows),
            small((rows,)), small((), jnp.float32), small((), jnp.float32), small((1,)))),
        "decode": ((plan.slots, chunk), lambda: decoding.decode.lower(
            graphdef, state, cache, small((plan.slots,)), small((plan.slots,)), keys(plan.slots), small((plan.slots,)),
            small((), jnp.float32), small((), jnp.float32), chunk=chunk, span=plan.length)),
    }
    compiled_steps = []
    with jax.set_mesh(mesh):
        for name, (shape, lower) in ((name, lowered[name]) for name in steps):
            start = time.perf_counter()
            compiled = lower().compile()
            seconds = time.perf_counter() - start
            stats = compiled.memory_analysis()
            xla = (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
                   + stats.temp_size_in_bytes)
            _, collectives = program_figures(compiled.as_text())
            compiled_steps.append(CompiledEvalStep(name, shape, int(xla), plan.step_total(name),
                                                   int(stats.temp_size_in_bytes), round(seconds, 1), collectives,
                                                   int(stats.alias_size_in_bytes)))
    return plan, compiled_steps


def format_compiled(plan: EvalPlan, steps: list[CompiledEvalStep]) -> str:
    lines = [format_eval_plan(plan)]
    for s in steps:
        lines.append(f"  {s.step} {s.shape[0]} x {s.shape[1]}: compiler {_gib(s.xla_bytes)} a device (temporaries "
                     f"{_gib(s.temporaries)}), plan {_gib(s.plan_bytes)} ({s.plan_bytes / max(s.xla_bytes, 1):.0%} of "
                     f"it), compiled in {s.compile_s:.1f} s")
    return "\n".join(lines)
