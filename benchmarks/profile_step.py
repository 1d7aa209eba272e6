"""Where the trainer's step spends its time: a jax.profiler trace of one step, summed per XLA op.

Traces one step of the trainer's jitted step (after a warm-up step), reads the trace's XPlane file
(TensorFlow's xplane_pb2 parses it; no TensorBoard needed), and sums the executed ops' durations on
the device's threads (XLA:CPU's worker threads, or the GPU's streams): per op kind (the name without
its numeric suffix: `ynn_fusion` = matmuls, `*_fusion` = fused elementwise loops, ...) and for the top
single ops, each with its output shape from the compiled HLO. Also the process's minor page faults and
system time during the step. Thread time can exceed wall time where ops run side by side.

    python benchmarks/profile_step.py [--layers 8 --hidden 512 --seq 512 --batch 4 --top 15]
"""

from __future__ import annotations

import collections
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

HOST_THREADS = "tf_XLAEigen"  # XLA:CPU worker threads; on GPU the device planes are read instead


def op_durations(trace_dir: str) -> dict[str, float]:
    """Seconds per executed op name, summed over the trace's device threads (executor wrappers left out)."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(next(Path(trace_dir).rglob("*.xplane.pb")).read_bytes())
    seconds: dict[str, float] = collections.defaultdict(float)
    for plane in space.planes:
        on_device = plane.name.startswith("/device:")
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if not (on_device or line.name.startswith(HOST_THREADS)):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                if not name.startswith("ThunkExecutor"):
                    seconds[name] += event.duration_ps * 1e-12
    return dict(seconds)


def hlo_shapes(hlo_text: str) -> dict[str, str]:
    """Output shape of each named instruction of a compiled HLO module."""
    return {m[1]: m[2] for m in re.finditer(r"^\s+(?:ROOT )?%(\S+) = (\S+) ", hlo_text, re.M)}


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__)
    common.add_model_args(parser)
    parser.add_argument("--top", type=int, default=15, help="how many single ops to list")
    args = parser.parse_args(argv)

    load_before = common.load_average()
    import jax

    from instructjax.core import sharding

    config = common.model_config(args)
    step, params, opt_state, mesh, which = common.train_step(config)
    with jax.set_mesh(mesh), tempfile.TemporaryDirectory() as trace_dir:
        batch = jax.device_put(common.synthetic_batch(args.batch, args.seq, config.vocab_size),
                               sharding.batch_sharding(mesh))  # fmt: skip
        shapes = hlo_shapes(step.lower(params, opt_state, batch).compile().as_text())
        params, opt_state, metrics = step(params, opt_state, batch)  # compile + warm-up
        jax.block_until_ready(metrics)
        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        jax.profiler.start_trace(trace_dir)
        t0 = time.perf_counter()
        params, opt_state, metrics = step(params, opt_state, batch)
        jax.block_until_ready(metrics)
        wall = time.perf_counter() - t0
        jax.profiler.stop_trace()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        seconds = op_durations(trace_dir)

    total = sum(seconds.values())
    by_kind: dict[str, float] = collections.defaultdict(float)
    for name, s in seconds.items():
        by_kind[re.sub(r"\.\d+$", "", name)] += s
    kind_rows = [[kind, f"{s * 1e3:,.0f}", f"{s / total:.0%}"] for kind, s in sorted(by_kind.items(), key=lambda kv: -kv[1])]
    top = sorted(seconds.items(), key=lambda kv: -kv[1])[: args.top]
    op_rows = [[name, shapes.get(name, ""), f"{s * 1e3:,.1f}"] for name, s in top]
    body = (
        f"{args.layers} layers x {args.hidden} wide, vocab {args.vocab}, batch {args.batch} x seq {args.seq}, "
        f"{config.dtype}, remat {args.remat}; step = `{which}` on {jax.devices()[0].platform}. One traced step: "
        f"wall {wall:.3f} s, op time summed over threads {total:.3f} s, minor page faults "
        f"{usage.ru_minflt - usage_before.ru_minflt:,}, system time {usage.ru_stime - usage_before.ru_stime:.2f} s.\n\n"
        + common.table(["op kind", "ms (all threads)", "share"], kind_rows[:12])
        + "\n\n"
        + common.table(["top op", "output", "ms"], op_rows)
        + "\n"
    )
    print(body)
    summary = {"wall_s": wall, "op_seconds": total, "by_kind": dict(by_kind)}
    common.finish(args, "Profile of one trainer step: time per XLA op", body, summary,
                  load_before=load_before)
    return summary


if __name__ == "__main__":
    main()
