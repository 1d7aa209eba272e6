"""Plan against the TPU compiler: each paper config's train step built for the slice a lab would use for it.

For every (config, slice) below, `plan`'s memory per device for the run's largest step beside XLA:TPU's own for
the same step (`instructjax plan --compile`: arguments + outputs - aliases + temporaries, MaxText's total), their
ratio, the compiler's own peak (`peak_memory_in_bytes`), the Mosaic kernels compiled, the compile seconds and the largest all-reduce. No TPU is needed (libtpu's
topology descriptions); on 2 idle CPU cores each step takes 20-40 s to compile (many times that when other jobs share the cores).

    python benchmarks/tpu_compile.py                      # the table below, appended to RESULTS.md
    python benchmarks/tpu_compile.py --only 7b --no-write
    python benchmarks/tpu_compile.py --only llama3_8b --layers 8,16,32 --set mesh.fsdp=16 --set mesh.tensor=1

`--layers` builds each config at those depths (the same mesh, given by `--set`, and step shape): how plan's total and
the compiler's grow by layer, and at what depth they part.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (quiets libtpu where there is no TPU)

# (config, slice): the slice a lab would take for it (issue 51's list)
RUNS = [
    ("configs/quickstart.yaml", "v5e-1"),
    ("configs/seed004_tulu/tulu_human_gpt_llama2_7b.yaml", "v4-64"),
    ("configs/seed004_tulu/tulu_human_gpt_llama2_13b.yaml", "v4-128"),
    ("configs/seed004_tulu/tulu_human_gpt_llama1_33b.yaml", "v4-256"),
    ("configs/seed004_tulu/tulu_human_gpt_llama1_65b.yaml", "v4-512"),
    ("configs/seed003_mosaic/magpie_mosaic_llama3_8b.yaml", "v4-32"),
    ("configs/seed003_mosaic/magpie_mosaic_phi3_mini.yaml", "v4-32"),
    ("configs/seed003_mosaic/magpie_mosaic_gemma2_2b.yaml", "v4-32"),
    ("configs/seed003_mosaic/magpie_mosaic_gemma2_2b.yaml", "v5e-8"),
    ("configs/seed000_acp/acp_ACP_llama2_7b.yaml", "v4-32"),
    ("configs/seed000_acp/acp_ACP_llama2_13b.yaml", "v4-32"),
    ("configs/seed002_selection/alpaca_longest_9k_llama2_7b.yaml", "v5e-16"),
]


def main() -> None:
    parser = common.parser(__doc__, append="--no-write", summary=None)
    parser.add_argument("--only", help="run the configs whose path contains one of these (comma-separated)")
    parser.add_argument("--layers", help="build each config at these depths (comma-separated model.num_layers)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run (repeatable), e.g. mesh.fsdp=16")
    args = parser.parse_args()
    depths = [int(d) for d in args.layers.split(",")] if args.layers else [None]

    from instructjax.core.config import load_config
    from instructjax.train.compile import compile_run
    from instructjax.train.topology import tpu_topology

    load = common.load_average()
    rows = ["| config | layers | slice | mesh (data x fsdp x tensor) | step | plan GiB | compiler GiB | plan / compiler | "
            "Mosaic kernels | compile s | largest all-reduce MiB | compiler peak GiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path, slice_name in RUNS:
        if args.only and not any(part in path for part in args.only.split(",")):
            continue
        for depth in depths:
            overrides = [*args.set, *([f"model.num_layers={depth}"] if depth else [])]
            config = load_config(ROOT / path, overrides)
            report = compile_run(config, tpu_topology(slice_name), name=path)
            rows.extend(_rows(path, slice_name, depth or "as shipped", report))
    body = "\n".join(rows)
    print(body)
    common.finish(args, "Plan against the TPU compiler (plan --compile, libtpu on this CPU machine)", body,
                  load_before=load)


def _rows(path: str, slice_name: str, layers, report) -> list[str]:
    from instructjax.train.topology import GIB

    rows = []
    for s in report.shapes:
        mesh = " x ".join(str(v) for v in report.mesh.values())
        compiler = f"> {s.xla_bytes / GIB:.2f} (refused)" if s.refused else f"{s.xla_bytes / GIB:.2f}"
        rows.append(f"| {Path(path).stem} | {layers} | {slice_name} | {mesh} | {s.rows} x {s.length} | "
                    f"{s.plan_bytes / GIB:.2f} | {compiler} | {s.plan_bytes / s.xla_bytes:.2f} | "
                    f"{s.mosaic_kernels} | {s.compile_s:.0f} | {s.largest_all_reduce_bytes / 2**20:,.1f} | "
                    f"{s.peak_bytes / GIB:.2f} |")
        print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    main()
