"""Compile time of the training step by depth: scanned layers against the Python loop over layers.

Each (depth, layout) runs in a fresh process (no compilation cache): build the trainer's step for a model
of that depth, then time tracing + lowering + XLA compilation of the jitted step
(`step.lower(params, opt_state, batch).compile()`), which is what the first step of a run waits for.

    python benchmarks/compile_depth.py [--depths 8,32 --hidden 256 --remat full --seq 512]

Goal (issue 16): with the default (scanned) layers, 32 layers compile in at most 1.3x the time of 8.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

GOAL = 1.3


def child(args) -> dict:
    import jax

    from instructjax.core import sharding

    config = common.model_config(args)
    step, params, opt_state, mesh, _ = common.train_step(config)
    with jax.set_mesh(mesh):
        batch = jax.device_put(common.synthetic_batch(args.batch, args.seq, config.vocab_size),
                               sharding.batch_sharding(mesh))
        t0 = time.perf_counter()
        lowered = step.lower(params, opt_state, batch)
        t1 = time.perf_counter()
        lowered.compile()
        t2 = time.perf_counter()
    return {"trace_s": t1 - t0, "compile_s": t2 - t1, "total_s": t2 - t0}


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__)
    common.add_model_args(parser)
    parser.set_defaults(hidden=256, heads=4, remat="full", seq=512, batch=1)
    parser.add_argument("--depths", default="8,32")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        common.child_result(child(args))
        return {}

    load_before = common.load_average()
    depths = [int(d) for d in args.depths.split(",")]
    results: dict[str, dict[int, dict]] = {}
    for layout in ("scan", "loop"):
        for depth in depths:
            r = common.run_child([__file__, "--child", "--layers", str(depth), "--hidden", str(args.hidden),
                                  "--heads", str(args.heads), "--vocab", str(args.vocab), "--seq", str(args.seq),
                                  "--batch", str(args.batch), "--remat", args.remat, "--attention", args.attention,
                                  "--scan-layers" if layout == "scan" else "--no-scan-layers"])  # fmt: skip
            if r is None:
                raise SystemExit(f"{layout} at depth {depth} failed")
            results.setdefault(layout, {})[depth] = r
            print(f"{layout:4s} {depth:3d} layers: trace+lower {r['trace_s']:.2f} s, compile {r['compile_s']:.2f} s, "
                  f"total {r['total_s']:.2f} s; load {common.load_average()}")
    lo, hi = depths[0], depths[-1]
    ratios = {layout: results[layout][hi]["total_s"] / results[layout][lo]["total_s"] for layout in results}
    rows = [[layout] + [f"{results[layout][d]['total_s']:.2f} s ({results[layout][d]['trace_s']:.2f} + "
                        f"{results[layout][d]['compile_s']:.2f})" for d in depths] + [f"{ratios[layout]:.2f}x"]
            for layout in results]
    met = ratios["scan"] <= GOAL
    body = (
        f"hidden {args.hidden}, {args.heads} heads, vocab {args.vocab}, remat {args.remat}, attention {args.attention}, "
        f"batch {args.batch} x seq {args.seq}; trace+lower + XLA compile of the jitted trainer step, one fresh "
        "process per cell.\n\n"
        + common.table(["layers"] + [f"{d} layers: total (trace + compile)" for d in depths] + [f"{hi} / {lo}"], rows)
        + f"\n\n**Goal: scanned {hi} layers compile in at most {GOAL}x the time of {lo}: "
        + f"{'met' if met else 'missed'} ({ratios['scan']:.2f}x).**\n"
    )
    print(body)
    summary = {"results": results, "ratios": ratios, "met": met, "load_before": load_before}
    common.finish(args, "Compile time by depth: scanned vs looped layers", body, summary,
                  load_before=load_before)
    return summary


if __name__ == "__main__":
    main()
