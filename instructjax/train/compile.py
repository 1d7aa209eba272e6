"""`plan --compile`: the run's own train step built by the TPU compiler for a slice that is not here.

libtpu (the `jax[tpu]` extra) describes a slice's devices on any machine (`get_topology_desc`, from the slice's
physical shape in `train.topology`). The step the trainer runs (`train.step.build_step`: the same model, optimizer,
shardings and loss) is lowered on a mesh of those devices from abstract state alone (shapes and shardings: no
parameter, optimizer state or data is made) and compiled by XLA:TPU, Mosaic kernels (splash attention) included,
once per step shape the run compiles. Nothing is written.

What it reports per step shape, per device, from `compiled.memory_analysis()`: arguments, outputs, aliases
(donated state) and temporaries, and their total as MaxText's `train_compile.py` counts it, arguments + outputs -
aliases + temporaries; beside it `plan`'s estimate for the same shape and the chip's HBM. From the compiled
program's text: the Mosaic kernels (`tpu_custom_call`s) and the collectives by kind (count, largest in bytes; a
loop's body is counted once). Anchor: MaxText `train_compile.py`.

A step saved with `--save-executable` is known by its program (`program_digest`: the lowered program's text, whatever
changed the step, its objective, optimizer, schedule, model, mesh or batch, changes it) and the slice it was built for
(`slice_identity`); a run uses it only where its own step, lowered (not compiled), is the same program.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import pickle
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import jax

from instructjax.core import libtpu, storage
from instructjax.core.config import RunConfig
from instructjax.core.errors import ConfigError
from instructjax.model.attention import implementation_for
from instructjax.train import setup as run_setup
from instructjax.train.step import lower_stacked
from instructjax.train.topology import GIB, Topology

FORMAT = 2  # a saved step's file (1: known by a digest of some of the config, before its program's)
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute", "collective-matmul")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
                "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5}
_INSTRUCTION = re.compile(r"=\s*(.*?)\s([a-z][a-z\-]*)\(")  # result shape, op name
_ARRAY = re.compile(r"\b(pred|[su](?:4|8|16|32|64)|bf16|f16|f32|f64|c64|c128)\[([0-9,]*)\]")


@dataclass
class CompiledShape:
    """One step shape as the TPU compiler built it; bytes are per device."""

    rows: int
    length: int
    xla_bytes: int  # arguments + outputs - aliases + temporaries (MaxText's total)
    plan_bytes: int  # plan's estimate for the same shape
    hbm_bytes: int
    arguments: int
    outputs: int
    aliases: int
    temporaries: int
    mosaic_kernels: int
    compile_s: float
    peak_bytes: int = 0  # the compiler's peak of live buffers a device (`memory_analysis().peak_memory_in_bytes`)
    collectives: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> {count, largest}
    refused: str = ""  # the compiler's own words where it refused the step for memory (xla_bytes: its figure)
    beside: int = 0  # held on the device beside the step, none of its arguments (grpo's cached reference)

    @property
    def largest_all_reduce_bytes(self) -> int:
        return self.collectives.get("all-reduce", {}).get("largest", 0)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "largest_all_reduce_bytes": self.largest_all_reduce_bytes}


@dataclass
class CompileReport:
    """`plan --compile` of a config on a slice: its mesh, the attention compiled and each step shape's figures."""

    config: str
    topology: str
    devices: int
    hosts: int
    mesh: dict[str, int]
    attention: str
    shapes: list[CompiledShape]
    usable: float  # the share of HBM a step may take (plan.USABLE)
    shapes_from: str = "run"  # "run": the shapes the trainer compiles (the real pipeline); "estimate": plan's mean step
    packed: int = 0  # proxies stacked in the step (`--packed K`, train/packed.py); 0: the run's own step

    @property
    def fits(self) -> bool:
        return all(s.xla_bytes + s.beside <= self.usable * s.hbm_bytes for s in self.shapes)

    def to_dict(self) -> dict[str, Any]:
        out = {"config": self.config, "topology": self.topology, "devices": self.devices, "hosts": self.hosts,
               "mesh": self.mesh, "attention": self.attention, "fits": self.fits,
               "shapes_from": self.shapes_from, "shapes": [s.to_dict() for s in self.shapes]}
        if self.packed:
            out |= {"packed": self.packed, "proxies_that_fit": self.proxies_that_fit}
        return out

    @property
    def proxies_that_fit(self) -> int:
        """With `packed`: the proxies the usable HBM holds, each taking the largest compiled step's bytes / `packed`."""
        s = max(self.shapes, key=lambda s: s.rows * s.length)
        return int(self.usable * s.hbm_bytes // max(s.xla_bytes / max(self.packed, 1), 1))


def slice_devices(topology: Topology) -> list:
    """The devices of TPU slice `topology`, described by libtpu on this machine (no TPU needed)."""
    if topology.platform != "tpu" or not topology.shape:
        raise ConfigError(f"--compile builds for a TPU slice (--topology v4-64, v5e-8, ...), not {topology.name}")
    if not libtpu.installed():
        raise ConfigError(libtpu.MISSING)
    libtpu.quiet_without_tpu()
    from jax.experimental import topologies

    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topology.libtpu_name,
                                            chip_config_name=topology.chip_config,
                                            chips_per_host_bounds=topology.host_bounds, num_slices=1)
    except Exception as e:  # libtpu refuses the description: one line, with its own words
        raise ConfigError(f"libtpu cannot describe {topology.name} ({topology.libtpu_name}): "
                          f"{' '.join(str(e).split())[:200]}") from None
    devices = list(desc.devices)
    if len(topology.part or devices) != topology.devices:
        raise ConfigError(f"libtpu describes {topology.name} with {len(devices)} devices, plan counts "
                          f"{topology.devices}")
    return [devices[i] for i in topology.part] if topology.part else devices


def program_figures(text: str) -> tuple[int, dict[str, dict[str, int]]]:
    """(Mosaic kernels, collectives by kind {count, largest bytes}) of a compiled program's HLO text. A
    collective's bytes are its result's (an all-reduce: what each device sends and receives; an asynchronous
    start's (operand, result) pair: the larger)."""
    kernels = text.count('custom_call_target="tpu_custom_call"')
    found: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        m = _INSTRUCTION.search(line)
        if m is None:
            continue
        kind = m.group(2).removesuffix("-start")
        if kind == "fusion":  # XLA:TPU's own collective fusions: a reduce-scatter, an all-gather fused with matmuls
            called = re.search(r"calls=%(all-reduce-scatter|async_collective_fusion)", line)
            kind = {"all-reduce-scatter": "reduce-scatter", "async_collective_fusion": "collective-matmul"}.get(
                called.group(1) if called else "", "")
        if kind not in COLLECTIVES:
            continue
        sizes = [_DTYPE_BYTES[d] * math.prod(int(n) for n in dims.split(",") if n)
                 for d, dims in _ARRAY.findall(m.group(1))]
        size = sum(sizes) if kind == "all-reduce" or not m.group(2).endswith("-start") else max(sizes, default=0)
        entry = found.setdefault(kind, {"count": 0, "largest": 0})
        entry["count"] += 1
        entry["largest"] = max(entry["largest"], int(size))
    return kernels, found


def compile_shape(build, rows: int, length: int, packed: tuple[int, RunConfig] | None = None
                  ) -> tuple[Any, float, str]:
    """The compiled step for a batch of `rows` x `length`, the seconds it took to lower and compile, and its
    `program_digest`; `packed` (K, the run's config): K proxies' step stacked (train/packed.py)."""
    start = time.perf_counter()
    lowered = build.lower(rows, length) if packed is None else lower_stacked(build, packed[1], packed[0], rows, length)
    compiled = lowered.compile()
    return compiled, time.perf_counter() - start, program_digest(lowered)


def program_digest(lowered) -> str:
    """What a step is known by: the sha256 of its lowered program's text (StableHLO, no source locations), which
    holds everything that shapes the step: the model, the objective and its constants, NEFTune, the loss reduction,
    the optimizer and its schedule, the shardings and the batch's shape."""
    return hashlib.sha256(lowered.as_text().encode()).hexdigest()


def target_devices(topology: Topology) -> list:
    """The devices a step is built for: a TPU slice's, described by libtpu, or this machine's own."""
    if topology.platform == "tpu" and topology.shape:
        return slice_devices(topology)

    devices = jax.devices()
    if topology.platform == "gpu" and devices[0].platform != "gpu" or len(devices) != topology.devices:
        raise ConfigError(f"--compile builds for a TPU slice (--topology v4-64, v5e-8, ...) or this machine, "
                          f"not {topology.name}")
    return devices


@dataclass(frozen=True)
class _Target:
    """What a compiled step is built from: the run's config (mesh written in), model, sources, step shapes and the
    length of its schedule."""

    config: RunConfig
    model: Any
    sources: int
    shapes: tuple[tuple[int, int], ...]
    total_steps: int


def _target(config: RunConfig, topology: Topology, *, real_data: bool, name: str) -> _Target:
    """`config` resolved once (`train.resolution`): with `real_data`, `pipeline` sizes and the run resolved as the
    trainer resolves it (`train.setup.resolve_run`: the real pipeline's steps and step shapes, `mesh: auto` chosen
    for the slice by what fits its chips); else plan's `estimate` (its tasks counted, cached or from the papers, the
    mesh plan proposes)."""
    from instructjax.train import memory
    from instructjax.train import plan as planning
    from instructjax.train.resolution import ESTIMATE, PIPELINE, resolve

    resolution = resolve(config, sizes=PIPELINE if real_data else ESTIMATE)
    if real_data:
        bound = resolution.bound

        def fits(sizes, shapes) -> bool:
            needed = memory.step_needed(bound.model, bound.config, sizes, shapes, topology)[0]
            return needed <= memory.usable_bytes(topology)

        run = run_setup.resolve_run(bound, devices=topology.devices, hosts=topology.hosts,
                                    pipeline=run_setup.open_pipeline(bound), fits=fits)  # one process reads all
        return _Target(run.config, run.model, len(run.sources), run.step_shapes, run.total_steps)
    plan = planning.plan_with_proposal(config, topology, name=name, resolution=resolution)
    if plan.data is None:
        raise ConfigError("an evaluation-only config (max_steps: 0) has no train step to compile")
    run = dataclasses.replace(config, mesh=plan.mesh)
    return _Target(run, resolution.model, resolution.sources, plan.data.step_shapes, plan.data.run_steps)


def compile_run(config: RunConfig, topology: Topology, *, name: str = "", real_data: bool = False,
                save_executable: str | None = None, packed: int = 0) -> CompileReport:
    """Build `config`'s train step for `topology` (a TPU slice, or this machine) for every step shape the run
    compiles (`_target`: as the trainer resolves the run with `real_data`, else plan's estimate); `save_executable`:
    write the compiled step of the largest shape there (`save_compiled`; the epoch then counted by the real pipeline,
    as the trainer counts it: the learning-rate schedule is part of the program); `packed` K: the step of K proxies
    of the config stacked (train/packed.py), and how many fit."""
    from instructjax.core import sharding
    from instructjax.train import memory, optim
    from instructjax.train.step import build_step

    devices = target_devices(topology)
    if config.max_steps == 0 or packed and save_executable:
        raise ConfigError("--packed with --save-executable: a saved step is one run's (a pack compiles its own)"
                          if packed else "an evaluation-only config (max_steps: 0) has no train step to compile")
    target = _target(config, topology, real_data=real_data or bool(save_executable), name=name)
    run, model, mesh_sizes = target.config, target.model, target.config.mesh
    tx, _ = optim.make_optimizer(run.optim, target.total_steps)
    mesh = sharding.make_mesh(mesh_sizes, devices)
    build = build_step(model, tx, run, target.sources, mesh, run.seed)
    largest = max(target.shapes, key=lambda s: s[0] * s[1])
    shapes = []
    for rows, length in sorted(set(target.shapes)):
        figures, acts = memory.step_memory(model, run, mesh_sizes, [(rows, length)], topology)
        estimate, beside = memory.needed_bytes(figures, acts), memory.beside_step_bytes(run, figures)
        estimate *= max(packed, 1)  # plan's figure is one proxy's
        hbm = int(topology.hbm_gib * GIB)
        try:
            compiled, seconds, digest = compile_shape(build, rows, length, (packed, run) if packed else None)
        except Exception as e:  # XLA:TPU refuses a program over the chip's memory while compiling it
            if "RESOURCE_EXHAUSTED" not in str(e):
                raise
            words = " ".join(str(e).split())
            needed = re.search(r"\(([\d.]+)G\) exceeds", words)
            temporaries = int(float(needed.group(1)) * GIB) if needed else hbm + 1
            shapes.append(CompiledShape(rows, length, temporaries, estimate, hbm, 0, 0, 0, temporaries, 0, 0.0,
                                        peak_bytes=temporaries, refused=words[words.find("RESOURCE_EXHAUSTED"):][:200],
                                        beside=beside))
            continue
        stats = compiled.memory_analysis()
        kernels, collectives = program_figures(compiled.as_text())
        xla = (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
               + stats.temp_size_in_bytes)
        shapes.append(CompiledShape(rows, length, int(xla), estimate, hbm, stats.argument_size_in_bytes,
                                    stats.output_size_in_bytes, stats.alias_size_in_bytes, stats.temp_size_in_bytes,
                                    kernels, round(seconds, 1), int(getattr(stats, "peak_memory_in_bytes", 0)),
                                    collectives, beside=beside))
        if save_executable and (rows, length) == largest:
            save_compiled(compiled, save_executable, target=slice_identity(devices, topology.hosts, mesh_sizes),
                          rows=rows, length=length, digest=digest)
    real = real_data or bool(save_executable)
    return CompileReport(name, topology.name, topology.devices, topology.hosts, mesh_sizes,
                         implementation_for(model.attention, topology.platform), shapes, memory.USABLE,
                         "run" if real else "estimate", packed)


def slice_identity(devices, hosts: int, mesh: dict[str, int]) -> dict[str, Any]:
    """What a saved step must be run on: the kind and number of devices, the hosts and the mesh."""
    return {"platform": devices[0].platform, "device_kind": devices[0].device_kind, "devices": len(devices),
            "hosts": hosts, "mesh": dict(mesh)}


def save_compiled(compiled, where: str, *, target: dict, rows: int, length: int, digest: str) -> None:
    """The compiled step serialised (jax's `serialize_executable`) with what it was built for: the devices
    (`slice_identity`), the batch shape and its program's digest (`program_digest`)."""
    from jax.experimental.serialize_executable import serialize

    payload, in_tree, out_tree = serialize(compiled)
    storage.write_bytes(where, pickle.dumps({"format": FORMAT, "target": target, "rows": rows, "length": length,
                                             "digest": digest, "payload": payload, "in_tree": in_tree,
                                             "out_tree": out_tree}))


def load_compiled(where: str, *, target: dict, build, shapes) -> tuple[tuple[int, int], Any]:
    """The step saved at `where`, loaded onto this run's devices: ((rows, length), the loaded step); one
    ConfigError line where it was built for other devices, another mesh, a shape the run does not take, or another
    program than this run's step (`build`, lowered for that shape: `program_digest`)."""
    from jax.experimental.serialize_executable import deserialize_and_load

    try:
        saved = pickle.loads(storage.path(where).read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"compiled: {where} does not exist (`instructjax plan --compile --save-executable`)") from None
    except Exception as e:  # noqa: BLE001  not a file we wrote
        raise ConfigError(f"compiled: {where} is not a saved step ({type(e).__name__})") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise ConfigError(f"compiled: {where} is not a saved step of this version")
    built = saved["target"]
    if built != target:
        def words(t):
            return f"{t['devices']} x {t['device_kind']} on {t['hosts']} host(s), mesh " + \
                " x ".join(f"{k}={v}" for k, v in t["mesh"].items())
        raise ConfigError(f"compiled: {where} was built for {words(built)}; this run has {words(target)}: "
                          "compile it for this slice (`instructjax plan --compile --save-executable`) or drop it")
    shape = (saved["rows"], saved["length"])
    if shape not in set(shapes):
        raise ConfigError(f"compiled: {where} is a step of {shape[0]} x {shape[1]}; this run's steps are "
                          + ", ".join(f"{r} x {n}" for r, n in sorted(set(shapes))))
    if saved["digest"] != program_digest(build.lower(*shape)):
        raise ConfigError(f"compiled: {where} was built for another step (its program differs from this run's: the "
                          "model, objective, optimizer, schedule length, mesh or mixture): compile it again with this "
                          "config or drop it")
    return shape, deserialize_and_load(saved["payload"], saved["in_tree"], saved["out_tree"])


def saved_steps(where: str | None, *, devices, hosts: int, mesh: dict[str, int], build, shapes
                ) -> dict[tuple[int, int], Any]:
    """The steps a run takes from `compiled:` (`plan --compile --save-executable`), by shape ((rows, length) -> the
    loaded step; {} without one), checked against this run's devices, mesh, shapes and program (`load_compiled`), and
    said on the first host."""
    if not where:
        return {}

    (rows, length), step = load_compiled(where, target=slice_identity(devices, hosts, mesh), build=build, shapes=shapes)
    if jax.process_index() == 0:
        print(f"instructjax: the step of {rows} x {length} is {where} (not compiled here)", file=sys.stderr, flush=True)
    return {(rows, length): step}


def compile_steps(build, shapes, saved: dict, params, opt_state, reference: tuple) -> None:
    """Each of a run's step `shapes` compiled now, but those it took from `compiled:` (`saved`): a shape first used
    mid-run costs no step time."""
    for rows, length in shapes:
        if (rows, length) not in saved:
            build.step.lower(params, opt_state, build.batch(rows, length), *reference).compile()


def does_not_fit(report: CompileReport) -> str:
    """One line: the first step shape the compiler says does not fit, its figure and the keys to change."""
    s = next(s for s in report.shapes if s.xla_bytes + s.beside > report.usable * s.hbm_bytes)
    beside = f" and {s.beside / GIB:.2f} GiB beside it (the cached reference)" if s.beside else ""
    return (f"does not fit: the step of {s.rows} row(s) of {s.length} needs {'over ' if s.refused else ''}"
            f"{s.xla_bytes / GIB:.2f} GiB a device by the TPU compiler{beside} ({report.topology}: "
            f"{s.hbm_bytes / GIB:.0f} GiB HBM, {report.usable:.0%} usable); "
            "lower data.global_batch or data.seq_len, raise optim.micro_batches, set model.remat=full, or take a "
            "larger slice")


def format_report(report: CompileReport) -> str:
    """The compiler's figures beside plan's, one line a step shape."""
    lines = [f"compiled    {report.config} for {report.topology} ({report.devices} devices on {report.hosts} "
             f"host(s)), mesh " + " x ".join(f"{k}={v}" for k, v in report.mesh.items())
             + f", {report.attention} attention"
             + ("" if report.shapes_from == "run" else "; step shapes: plan's estimate of the epoch (with --real-data: "
                "the shapes the run compiles, from its data)")]
    for s in report.shapes:
        if s.refused:
            lines.append(f"  step {s.rows} x {s.length}: refused by the compiler ({s.refused}); plan "
                         f"{s.plan_bytes / GIB:.2f} GiB, HBM {s.hbm_bytes / GIB:.0f} GiB")
            continue
        largest = ", ".join(f"{kind} {c['count']}x (largest {c['largest'] / 2**20:,.1f} MiB)"
                            for kind, c in sorted(s.collectives.items()))
        lines += [f"  step {s.rows} x {s.length}: compiler {s.xla_bytes / GIB:.2f} GiB a device (arguments "
                  f"{s.arguments / GIB:.2f}, outputs {s.outputs / GIB:.2f}, aliased {s.aliases / GIB:.2f}, temporaries "
                  f"{s.temporaries / GIB:.2f}; peak {s.peak_bytes / GIB:.2f})"
                  + (f" + {s.beside / GIB:.2f} GiB beside it (the cached reference)" if s.beside else "")
                  + f", plan {s.plan_bytes / GIB:.2f} GiB ({s.plan_bytes / max(s.xla_bytes + s.beside, 1):.0%}"
                  f" of it), HBM {s.hbm_bytes / GIB:.0f} GiB",
                  f"    {s.mosaic_kernels} Mosaic kernel(s), compiled in {s.compile_s:.1f} s; collectives: "
                  f"{largest or 'none'}"]
    if report.packed:
        lines.append(f"packed      {report.packed} proxies stacked in the step (the figures above are theirs together); "
                     f"about {report.proxies_that_fit} fit a device's usable HBM")
    lines.append("fits" if report.fits else "DOES NOT FIT")
    return "\n".join(lines)


def __getattr__(name: str):
    if name == "run_sources":  # its home until a run had one resolution (train/resolution.py)
        raise ImportError("instructjax.train.compile.run_sources moved: use "
                          "instructjax.train.resolution.resolve(config).sources")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
