"""`plan --less`: LESS's feature pass (train/less_features.py) on a topology, its memory per device, and with
`--compile` the pass itself built by the compiler for the slice (libtpu's description of it: no TPU needed).

What is planned: the config's model with LESS's LoRA (the settings of the first task whose `selection` is LESS's,
else LESS's defaults: rank 128 on q/k/v/o), a batch of LESS's `batch` examples (rounded up to the devices) of the
config's `data.seq_len` tokens, on the pass's mesh (fsdp over every device: `less_features.feature_mesh`), `b`
examples a device. Per device, for a LoRA of `D` trained values and a projection to `k` dimensions:

    held       the parameters over fsdp and their compute-dtype copy (`memory.state_memory`, as the train step holds
               them), the warm-up step's two Adam moments whole (2 D float32), the projection matrix where it is kept
               (D k float32, at most MATRIX_BYTES) and every example's features (the batch x k float32)
    layers     each layer's saved input (the model's `remat`: `memory.activation_bytes`)
    copies     each example's own copy of what trains, b D (its hidden states made by it: `less.gradients`)
    gradients  each example's gradient, b D float32 (its features made and projected a block at a time beside it:
               `less.features_projected`)
    loss       the logits (s b V in the compute dtype and float32: the head runs at a device's trained tokens, at
               most all b s), the output head and one layer's weight matrices gathered whole (compute dtype)

Checked against XLA:TPU's buffers of the pass for LLaMA-2-7B with LESS's LoRA on a v4-64 and a v5e-16
(benchmarks/RESULTS.md, tests/train/test_less_plan.py).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from instructjax.core import sharding
from instructjax.core.config import RunConfig
from instructjax.train import less
from instructjax.train import less_features as store
from instructjax.train.topology import GIB, Topology


@dataclass
class FeaturePlan:
    """The feature pass on a topology; bytes are per device (`compiled`: the compiler's, where it was built)."""

    topology: str
    devices: int
    rows: int  # examples a batch, over the devices
    length: int
    trained: int  # D: the LoRA's values, an example's gradient
    dim: int
    kept_matrix: bool
    figures: dict[str, int]
    hbm_bytes: int
    compiled: dict[str, Any] = field(default_factory=dict)

    @property
    def needed(self) -> int:
        return sum(self.figures.values())

    @property
    def fits(self) -> bool:
        from instructjax.train.memory import USABLE

        used = self.compiled.get("xla_bytes", self.needed)
        return used <= USABLE * self.hbm_bytes

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "needed_bytes": self.needed, "fits": self.fits}


def less_settings(config: RunConfig):
    """LESS's settings for `config`: the `less:` keys of the first task of its `define:` that selects by LESS, over
    LESS's defaults; the length the config's `data.seq_len`."""
    from instructjax.train.less_select import settings_of

    for task in (config.define.get("tasks") or {}).values():
        selection = (task or {}).get("selection") or {}
        if selection.get("method") == "less":
            return settings_of(selection.get("less"), max_length=config.data.seq_len)
    return settings_of(None, max_length=config.data.seq_len)


def feature_setup(config: RunConfig, topology: Topology):
    """(the model the pass runs: the config's with LESS's LoRA, LESS's settings, the examples a batch)."""
    from instructjax.train.resolution import ESTIMATE, resolve

    settings = less_settings(config)
    model = resolve(dataclasses.replace(config, max_steps=0), sizes=ESTIMATE).model
    model = store.feature_model(model.replace(lora={"rank": settings.lora_rank, "alpha": settings.lora_alpha,
                                                    "targets": list(settings.lora_targets)}))
    rows = -(-settings.batch // topology.devices) * topology.devices
    return model, settings, rows


def trained_values(model) -> int:
    """D: the values the LoRA trains (an example's gradient, flattened)."""
    from flax import nnx

    from instructjax.model.decoder import Decoder
    from instructjax.model.partition import Partition

    state = nnx.state(nnx.eval_shape(lambda: Decoder(model, rngs=nnx.Rngs(0))), nnx.Param)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(Partition.of_state(state).trainable(
        nnx.to_pure_dict(state))))


def feature_memory(model, settings, rows: int, d: int, topology: Topology) -> dict[str, int]:
    """The pass's bytes a device, by the module doc's terms (`d`: `trained_values(model)`)."""
    from instructjax.train import memory

    sizes = sharding.mesh_sizes({"data": 1, "fsdp": -1}, topology.devices)
    state = memory.state_memory(model, sizes, clip=False)
    c, stored = np.dtype(model.dtype).itemsize, np.dtype(model.param_dtype).itemsize
    k, s, b = settings.dim, settings.max_length, rows // topology.devices
    h, v = model.hidden_size, model.vocab_size
    acts = memory.activation_bytes(model, b, s, 1, topology.platform)
    return {
        "params": state["param_bytes"],
        "compute_copy": state["float_bytes"] * c // stored if c != stored else 0,
        "moments": 2 * d * 4,
        "matrix": d * k * 4 if store.keeps_matrix(d, less.Projection(k)) else 0,
        "features": rows * k * 4,
        "layers": acts["saved"],
        "copies": b * d * stored,
        "gradients": b * d * 4,
        "logits": (c + 4 if c < 4 else c) * s * b * v,
        "gathered": c * (v * h + store.layer_values(model)),
    }


def plan_features(config: RunConfig, topology: Topology) -> FeaturePlan:
    """`plan --less`: the feature pass's memory per device on `topology`."""
    return _plan(*feature_setup(config, topology), topology)


def _plan(model, settings, rows: int, topology: Topology) -> FeaturePlan:
    d = trained_values(model)
    figures = feature_memory(model, settings, rows, d, topology)
    return FeaturePlan(topology.name, topology.devices, rows, settings.max_length, d, settings.dim,
                       store.keeps_matrix(d, less.Projection(settings.dim)), figures, int(topology.hbm_gib * GIB))


def compile_features(config: RunConfig, topology: Topology) -> FeaturePlan:
    """`plan --less --compile`: `plan_features` and the pass (`less_features.feature_program`, LESS's gradient type)
    built for `topology` from shapes alone, its memory per device as MaxText counts a step's (arguments + outputs -
    aliases + temporaries) and its collectives."""
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from instructjax.train.compile import program_figures, target_devices

    model, settings, rows = feature_setup(config, topology)
    plan = _plan(model, settings, rows, topology)
    mesh = store.feature_mesh(target_devices(topology))
    projection = less.Projection(settings.dim, settings.projection_seed)
    program = store.feature_program(model, settings.gradient_type, projection, mesh, plan.kept_matrix)
    whole, batch = NamedSharding(mesh, PartitionSpec()), sharding.batch_sharding(mesh)

    def shaped(shape, dtype, on):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=on)

    params = nnx_shapes(model, store.param_shardings(model, mesh))
    moment = shaped((plan.trained,), jnp.float32, whole)
    matrix = shaped((plan.trained, settings.dim), jnp.float32, whole) if plan.kept_matrix else None
    examples = {name: shaped((rows, settings.max_length), jnp.float32 if name == "loss_weights" else jnp.int32, batch)
                for name in ("tokens", "targets", "loss_weights", "segment_ids", "positions")}
    examples |= {name: shaped((topology.devices, rows // topology.devices * settings.max_length), jnp.int32, batch)
                 for name in less.HEAD_ROWS}  # every token trained, at most
    start = time.perf_counter()
    compiled = program.lower(params, moment, moment, matrix, examples).compile()
    stats = compiled.memory_analysis()
    _, collectives = program_figures(compiled.as_text())
    plan.compiled = {
        "xla_bytes": int(stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
                         + stats.temp_size_in_bytes),
        "arguments": int(stats.argument_size_in_bytes), "temporaries": int(stats.temp_size_in_bytes),
        "compile_s": round(time.perf_counter() - start, 1), "collectives": collectives,
    }
    return plan


def nnx_shapes(model, shardings) -> Any:
    """The model's parameters as shapes laid out by `shardings` (a pure dict of them)."""
    from flax import nnx

    from instructjax.model.decoder import Decoder

    state = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Decoder(model, rngs=nnx.Rngs(0))), nnx.Param))
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, shardings)


def format_feature_plan(plan: FeaturePlan) -> str:
    gib = lambda n: f"{n / GIB:.2f} GiB"  # noqa: E731
    lines = [f"less features  {plan.topology}: {plan.devices} device(s) over fsdp, {plan.rows} examples a batch of "
             f"{plan.length} tokens, {plan.trained:,} LoRA values an example, projected to {plan.dim}"
             f"{' (matrix kept)' if plan.kept_matrix else ' (a block at a time)'}",
             "  per device   " + ", ".join(f"{name} {gib(n)}" for name, n in plan.figures.items() if n),
             f"  needed       {gib(plan.needed)} of {gib(plan.hbm_bytes)}"]
    if plan.compiled:
        c = plan.compiled
        lines.append(f"  compiled     {gib(c['xla_bytes'])} (arguments {gib(c['arguments'])}, temporaries "
                     f"{gib(c['temporaries'])}); plan / compiler {plan.needed / c['xla_bytes']:.2f}; built in "
                     f"{c['compile_s']} s")
    lines.append(f"  fits         {'yes' if plan.fits else 'no'}")
    return "\n".join(lines)
