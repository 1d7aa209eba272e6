"""The longest row a TPU slice trains by `mesh.context` (issue 82 item 5): plan's figure, then the TPU compiler's.

Llama-3.1-8B SFT as configs/long/long_sft_llama3_8b_32k.yaml trains it (bfloat16 compute, `remat: full`, the
all_gather strategy, striped rows), on each slice for `mesh.context` 1, 2, 4 and 8: the devices over fsdp x
context (tensor 1), the fewest rows a step that the slice's hosts and fsdp devices take. For each, the longest
of `LENGTHS` that `plan` says fits a chip, then that step built by XLA:TPU (`plan --compile`: libtpu's topology
descriptions, no TPU needed): its bytes a device beside plan's, and whether the compiler's fit too (90% of HBM,
plan's `USABLE`). Then (unless `--no-rows`) the config itself at 32K, 64K and 128K on v5p-64 and v4-64 with `mesh: auto`
(which splits rows only where no whole row fits: train/meshes.py), plan against the compiler.

    python benchmarks/context_plan.py [--slices v5p-64,v4-64,v5e-32] [--contexts 1,2,4,8] [--no-compile]
        [--no-rows] [--no-write]

Compiling an 8B step on 2 idle CPU cores takes 40 s to 14 minutes (v5p-64 at 384K: the whole run about an hour;
`--slices`/`--contexts` pick a part); `--no-compile` gives plan's table alone in seconds.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402  (quiets libtpu where there is no TPU)

CONFIG = ROOT / "configs" / "long" / "long_sft_llama3_8b_32k.yaml"
BASE = ["model.init_from=null", "data.mixture=alpaca_builtin", "define={}"]  # no checkpoint or data needed
LENGTHS = [2**k * m // 2 for k in range(13, 20) for m in (2, 3)][:-1]  # 8K, 12K, 16K, ... 512K
ROWS = [32768, 65536, 131072]


def split_config(slice_name: str, context: int, length: int):
    """The config on `slice_name` with rows of `length` split `context` ways, the fewest rows a step it takes."""
    from instructjax.core.config import load_config
    from instructjax.train.topology import tpu_topology

    topology = tpu_topology(slice_name)
    fsdp = topology.devices // context
    rows = math.lcm(fsdp, topology.hosts)
    mesh = f"mesh={{data: 1, fsdp: {fsdp}, context: {context}, tensor: 1}}"
    return load_config(CONFIG, [*BASE, mesh, f"data.seq_len={length}", f"data.global_batch={rows}"]), topology


def longest(slice_name: str, context: int):
    """(length, plan) of the longest of LENGTHS whose step plan says fits a chip of `slice_name`; None if none."""
    from instructjax.train.plan import make_plan

    best = None
    for length in LENGTHS:
        plan = make_plan(*split_config(slice_name, context, length))
        if not plan.fits:
            break
        best = (length, plan)
    return best


def compiled(config, topology) -> tuple[str, str, str, str, str]:
    """(plan GiB, compiler GiB, plan / compiler, compiler fits, compile s) for the run's step on `topology`."""
    from instructjax.train.compile import compile_run
    from instructjax.train.topology import GIB

    t0 = time.perf_counter()
    report = compile_run(config, topology)
    shape = max(report.shapes, key=lambda s: s.xla_bytes)
    fits = "refused" if shape.refused else ("yes" if shape.xla_bytes <= report.usable * shape.hbm_bytes else "no")
    return (f"{shape.plan_bytes / GIB:.2f}", f"{shape.xla_bytes / GIB:.2f}", f"{shape.plan_bytes / shape.xla_bytes:.2f}",
            fits, f"{time.perf_counter() - t0:.0f}")


def main() -> None:
    parser = common.parser(__doc__, append="--no-write", summary=None)
    parser.add_argument("--slices", default="v5p-64,v4-64,v5e-32")
    parser.add_argument("--contexts", default="1,2,4,8")
    parser.add_argument("--no-compile", action="store_true", help="plan's figures alone")
    parser.add_argument("--no-rows", action="store_true", help="leave out the config at 32K, 64K and 128K")
    args = parser.parse_args()
    from instructjax.core.config import load_config
    from instructjax.train.plan import plan_with_proposal
    from instructjax.train.topology import GIB, tpu_topology

    load = common.load_average()
    dash = ("-",) * 5
    lines = ["Longest row a chip holds, by `mesh.context` (plan's longest of 8K, 12K, 16K, 24K, ... 384K that fits; "
             "then the compiler's step at that length):", ""]
    table = []
    for slice_name in args.slices.split(","):
        for context in (int(c) for c in args.contexts.split(",")):
            found = longest(slice_name, context)
            if found is None:
                table.append([slice_name, context, "-", "-", "none of them fits", *dash[1:]])
                continue
            length, plan = found
            config, topology = split_config(slice_name, context, length)
            figures = dash if args.no_compile else compiled(config, topology)
            mesh = " x ".join(f"{k} {v}" for k, v in plan.mesh.items() if v > 1)
            table.append([slice_name, context, f"{length:,}", f"{plan.activations['rows']} x {length:,}", mesh,
                          figures[0] if figures[0] != "-" else f"{plan.total_bytes / GIB:.2f}", *figures[1:]])
            print(table[-1], flush=True)
    lines.append(common.table(["slice", "context", "longest row", "a device's rows", "mesh", "plan GiB",
                               "compiler GiB", "plan / compiler", "compiler fits", "compile s"], table))
    if not args.no_rows:
        rows = []
        for slice_name in ("v5p-64", "v4-64"):
            for length in ROWS:
                config = load_config(CONFIG, [*BASE, "mesh=auto", f"data.seq_len={length}"])
                plan = plan_with_proposal(config, tpu_topology(slice_name))
                mesh = " x ".join(f"{k} {v}" for k, v in plan.mesh.items() if v > 1)
                if not plan.fits:
                    rows.append([slice_name, f"{length:,}", mesh, f"{plan.total_bytes / GIB:.2f}", "-", "-",
                                 "plan: does not fit", "-"])
                    continue
                chosen = dataclasses.replace(config, mesh=plan.mesh)
                figures = dash if args.no_compile else compiled(chosen, tpu_topology(slice_name))
                rows.append([slice_name, f"{length:,}", mesh,
                             figures[0] if figures[0] != "-" else f"{plan.total_bytes / GIB:.2f}", *figures[1:]])
                print(rows[-1], flush=True)
        lines += ["", f"{CONFIG.relative_to(ROOT)} (16 rows a step) with `mesh: auto`, plan against the compiler:",
                  "", common.table(["slice", "row", "mesh: auto takes", "plan GiB", "compiler GiB",
                                    "plan / compiler", "compiler fits", "compile s"], rows)]
    body = "\n".join(lines)
    print(body)
    common.finish(args, "The longest row by mesh.context: plan and the TPU compiler (issue 82)", body,
                  load_before=load)


if __name__ == "__main__":
    main()
