"""Run every benchmark of issue 8 (each in its own process) and append a summary table to RESULTS.md.

Each benchmark run with a headline also rewrites its row of the current table at the top of RESULTS.md
(results_table.py: figure, reference, ratio, date, machine); the dated log below it is left as it was.

    python benchmarks/run_all.py [--only train_step_cpu,utilization_cpu,...] [--quick] [--no-append]

Each script also appends its own section. `--quick` runs tiny sizes (a smoke test of the scripts,
not figures to quote). The GPU benchmark skips itself without a GPU. mosaic_cost.py (the Mosaic-IT
cost table) is slow and not part of the default set; name it in --only to include it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402
import results_table  # noqa: E402

HERE = Path(__file__).parent
TINY = ["--layers", "2", "--hidden", "64", "--heads", "4", "--vocab", "1000", "--seq", "64", "--batch", "2"]
# name -> (extra args, quick args, headline(summary) -> (figure, goal, met or None))
BENCHMARKS = {
    "pipeline_throughput": ([], [], lambda s: (f"{s['end_to_end_tokens_per_s']:,.0f} tokens/s end to end "
                                               f"({s['pack_tokens_per_s']:,.0f} pack only), {s['efficiency']:.2%}",
                                               ">= 100,000 tokens/s", s["end_to_end_tokens_per_s"] >= 1e5)),
    "packing": ([], ["--examples", "2000", "--seqio-examples", "200"], None),
    "train_step_cpu": ([], TINY + ["--rounds", "2"], lambda s: (
        f"{s['jax_tokens_per_s']:,.0f} vs {s['torch_tokens_per_s']:,.0f} tokens/s = {s['ratio']:.2f}x",
        ">= 1.2x", s["ratio"] >= 1.2)),
    "utilization_cpu": ([], TINY + ["--rounds", "2", "--dot", "512"], lambda s: (
        f"{s['utilization']:.0%} ({s['achieved_gflops']:.1f} of {s['peak_gflops']:.1f} GFLOP/s)", ">= 50%",
        s["utilization"] >= 0.5)),
    "memory": ([], ["--sizes", "2x64,2x128", "--seq", "64"], lambda s: (
        "; ".join(f"{k}: {v['params'] / 1e6:.0f}M params, {v['peak_mib']:,.0f} MiB, {v['bytes_per_param']:.0f} B/param"
                  for k, v in s.items() if isinstance(v, dict)), "-", None)),
    "gpu_mfu": ([], [], lambda s: ("skipped (no GPU)", ">= 45% MFU, >= 1.3x transformers", None) if "skipped" in s
                else (f"{s['mfu']:.1%} MFU, {s['tokens_per_s']:,.0f} tokens/s = {s['ratio']:.2f}x transformers on "
                      f"{s['device']}", ">= 45% MFU, >= 1.3x transformers", s["mfu"] >= 0.45 and s["ratio"] >= 1.3)),
    "long_context_cpu": ([], ["--seqs", "128,256", "--layers", "2", "--hidden", "64", "--heads", "4", "--vocab",
                              "1000", "--steps", "1"], lambda s: (
        "; ".join(f"{name} seq {seq}: {r['peak'] / 2**30:.2f} GiB, {r['step_s']:.2f} s" for name, by_seq in
                  s["results"].items() for seq, r in by_seq.items() if "step_s" in r and "dense" not in name),
        "at 8192: memory and time <= transformers", s["met"])),
    "compile_depth": ([], ["--depths", "1,4", "--hidden", "64", "--vocab", "1000", "--seq", "64"], lambda s: (
        f"scanned: {s['ratios']['scan']:.2f}x, looped: {s['ratios']['loop']:.2f}x (deepest / shallowest)",
        "scanned 32 layers <= 1.3x of 8", s["met"])),
    "mosaic_cost": ([], ["--rows", "200", "--passes", "1"], None),
    "profile_step": ([], TINY, lambda s: (
        f"step {s['wall_s']:.2f} s, {s['op_seconds']:.2f} s of op time: " + ", ".join(
            f"{kind} {t / s['op_seconds']:.0%}" for kind, t in sorted(s["by_kind"].items(), key=lambda kv: -kv[1])[:3]),
        "-", None)),
}  # fmt: skip
DEFAULT = [name for name in BENCHMARKS if name != "mosaic_cost"]
# name -> summary -> (reference, ratio) for the current table; a benchmark not here: its goal, no ratio
REFERENCE = {
    "train_step_cpu": lambda s: (f"transformers {s['torch_tokens_per_s']:,.0f} tokens/s", f"{s['ratio']:.2f}x"),
    "utilization_cpu": lambda s: (f"matmul peak {s['peak_gflops']:.1f} GFLOP/s", f"{s['utilization']:.0%}"),
    "gpu_mfu": lambda s: ("-", "-") if "skipped" in s else (
        f"transformers {s['torch_tokens_per_s']:,.0f} tokens/s" if "torch_tokens_per_s" in s else "-",
        f"{s['ratio']:.2f}x" if "ratio" in s else "-"),
    "pipeline_throughput": lambda s: ("goal 100,000 tokens/s", f"{s['end_to_end_tokens_per_s'] / 1e5:.1f}x"),
    "compile_depth": lambda s: ("the shallowest depth", f"{s['ratios']['scan']:.2f}x"),
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, summary=None, append_help="do not append to RESULTS.md or touch its table")
    parser.add_argument("--only", default=",".join(DEFAULT), help=f"comma-separated, of {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the scripts run")
    args = parser.parse_args(argv)

    load_before = common.load_average()
    record = args.append and not args.quick
    rows, failed = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only.split(","):
            extra, quick, headline = BENCHMARKS[name]
            cmd = [sys.executable, str(HERE / f"{name}.py"), *extra, *(quick if args.quick else [])]
            if not record:
                cmd.append("--no-append")
            summary_path = Path(tmp) / f"{name}.json"
            if headline is not None:
                cmd += ["--json", str(summary_path)]
            print(f"==== {name}: {' '.join(cmd[1:])}  (load {common.load_average()})", flush=True)
            t0 = time.perf_counter()
            rc = subprocess.run(cmd).returncode
            seconds = time.perf_counter() - t0
            if rc:
                failed.append(name)
                rows.append([name, f"failed (exit {rc})", "", "", f"{seconds:.0f}"])
                continue
            if headline is None:
                rows.append([name, "see its section", "", "", f"{seconds:.0f}"])
                continue
            summary = json.loads(summary_path.read_text())
            figure, goal, met = headline(summary)
            verdict = "-" if met is None else ("met" if met else "**missed**")
            load = summary.get("load_before", "")
            rows.append([name, figure, goal, verdict, f"{seconds:.0f}", load])
            if record:
                reference, ratio = REFERENCE.get(name, lambda s, goal=goal: (f"goal {goal}", "-"))(summary)
                results_table.update([name, figure, reference, ratio, time.strftime("%Y-%m-%d"),
                                      common.machine()])
    body = common.table(["benchmark", "figure", "goal", "", "wall s", "load at start"], [r + [""] * (6 - len(r)) for r in rows])
    print(body)
    if record:
        common.append_results("Summary (benchmarks/run_all.py)", body, load_before=load_before)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
