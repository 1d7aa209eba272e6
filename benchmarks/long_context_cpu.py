"""Long context on CPU, side by side: peak memory and time of one training step, instructjax against
transformers' PyTorch LlamaForCausalLM (SDPA), at several sequence lengths.

Each (implementation, length) runs in its own fresh process: build the model and AdamW state, run one
step (compile + warm-up), then `--steps` timed steps of batch 1; it reports the median step time and
the process's peak RSS (`ru_maxrss`, which includes the imports, compilation and every buffer). The
rows are instructjax with its CPU attention (`auto`: blockwise) and, for the record of what it
replaced, the dense `xla` attention; and transformers with SDPA (its fused CPU flash attention).
Each row is one causal-LM sequence (one segment), fp32, AdamW with clipping, as `train_step_cpu.py`.

    python benchmarks/long_context_cpu.py [--seqs 2048,8192 --layers 4 --hidden 256 --heads 8 --steps 2]

Goal (issue 16): at seq 8192, instructjax's peak memory and step time both at or below transformers'.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

IMPLEMENTATIONS = {  # name -> (framework, attention)
    "instructjax": ("jax", "auto"),
    "instructjax (dense xla attention)": ("jax", "xla"),
    "transformers (SDPA)": ("torch", "sdpa"),
}
GIB = 2**30


def child(args) -> dict:
    """One implementation at one length in this process: median step seconds and peak RSS bytes."""
    framework, attention = IMPLEMENTATIONS[args.child]
    args.attention = attention if framework == "jax" else "auto"
    config = common.model_config(args)
    times = []
    if framework == "jax":
        import jax
        from train_step_cpu import clm_batch

        from instructjax.core import sharding
        from instructjax.model import attention as attention_impls

        step, params, opt_state, mesh, _ = common.train_step(config)
        which = attention_impls.implementation_for(config.attention)
        with jax.set_mesh(mesh):
            batch = jax.device_put(clm_batch(args, config.vocab_size), sharding.batch_sharding(mesh))
            for _ in range(args.steps + 1):  # the first includes compilation
                t0 = time.perf_counter()
                params, opt_state, metrics = step(params, opt_state, batch)
                jax.block_until_ready(metrics["loss"])
                times.append(time.perf_counter() - t0)
    else:
        import torch
        from train_step_cpu import torch_step_fn

        torch.set_num_threads(os.cpu_count() or 1)
        args.torch_attention = attention
        step = torch_step_fn(config, None, args)
        which = attention
        for _ in range(args.steps + 1):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"step_s": statistics.median(times[1:]), "first_s": times[0], "peak": peak, "attention": which}


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__)
    common.add_model_args(parser)
    parser.set_defaults(layers=4, hidden=256, heads=8, batch=1)
    parser.add_argument("--seqs", default="2048,8192")
    parser.add_argument("--steps", type=int, default=2, help="timed steps after the first")
    parser.add_argument("--only", default=",".join(IMPLEMENTATIONS), help="comma-separated implementation names")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        common.child_result(child(args))
        return {}

    load_before = common.load_average()
    results: dict[str, dict[int, dict]] = {}
    names = [n for n in IMPLEMENTATIONS if n in args.only.split(",")]
    for seq in (int(s) for s in args.seqs.split(",")):
        for name in names:
            r = common.run_child([__file__, "--child", name, "--seq", str(seq), "--steps", str(args.steps),
                                  "--layers", str(args.layers), "--hidden", str(args.hidden), "--heads", str(args.heads),
                                  "--vocab", str(args.vocab), "--batch", str(args.batch), "--remat", args.remat,
                                  "--scan-layers" if args.scan_layers else "--no-scan-layers"])  # fmt: skip
            if r is None:
                results.setdefault(name, {})[seq] = {"failed": True}
                continue
            results.setdefault(name, {})[seq] = r
            print(f"{name:34s} seq {seq:6d}: {r['peak'] / GIB:6.2f} GiB peak, {r['step_s']:7.2f} s/step "
                  f"(first {r['first_s']:.1f} s), attention {r['attention']}; load {common.load_average()}")
    seqs = [int(s) for s in args.seqs.split(",")]

    def cell(r):
        return "failed" if "failed" in r else f"{r['peak'] / GIB:.2f} GiB / {r['step_s']:.2f} s"

    rows = [[name] + [cell(results[name][s]) for s in seqs] for name in names]
    ours, ref = results.get("instructjax", {}), results.get("transformers (SDPA)", {})
    verdicts = []
    for s in seqs:
        a, b = ours.get(s, {}), ref.get(s, {})
        if "step_s" in a and "step_s" in b:
            verdicts.append(f"seq {s}: memory {a['peak'] / b['peak']:.2f}x, time {a['step_s'] / b['step_s']:.2f}x "
                            f"of transformers")
    last = seqs[-1]
    met = ("step_s" in ours.get(last, {}) and "step_s" in ref.get(last, {})
           and ours[last]["peak"] <= ref[last]["peak"] and ours[last]["step_s"] <= ref[last]["step_s"])
    body = (
        f"{args.layers} layers x {args.hidden} wide, {args.heads} heads, vocab {args.vocab}, fp32, batch {args.batch}, "
        f"remat {args.remat}, scan_layers {args.scan_layers}; one process per cell; peak RSS / median of "
        f"{args.steps} steps after the first.\n\n"
        + common.table(["implementation"] + [f"seq {s}: peak RSS / step" for s in seqs], rows)
        + "\n\n" + ("; ".join(verdicts) + ".\n\n" if verdicts else "")
        + f"**Goal at seq {last}: instructjax memory and time at or below transformers': "
        + ("met" if met else "missed") + ".**\n"
    )
    print(body)
    summary = {"results": results, "met": met, "load_before": load_before, "load_after": common.load_average()}
    common.finish(args, "Long context, CPU: instructjax vs transformers", body, summary,
                  load_before=load_before)
    return summary


if __name__ == "__main__":
    main()
