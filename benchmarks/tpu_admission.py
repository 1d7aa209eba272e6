"""The HBM a TPU step needs, by the compiler's own test: the smallest chip XLA:TPU accepts the step on.

`plan --compile` reports MaxText's total (arguments + outputs - aliases + temporaries) and the compiler's peak
(`peak_memory_in_bytes`). Which one the compiler itself holds a step to is found here by asking it: libtpu's
`--xla_tpu_max_hbm_size_mib` gives the chip less HBM, and XLA:TPU either builds the step or refuses it
("RESOURCE_EXHAUSTED: ... exceeds available HBM"). A bisection over that limit finds the smallest HBM the step is
built for, to `--resolution` MiB, printed beside plan, MaxText's total and the peak. Each probe is one
`instructjax plan --compile --json` in a fresh process (the flag is read when libtpu loads); no TPU is needed.

    python benchmarks/tpu_admission.py --config configs/seed003_mosaic/magpie_mosaic_llama3_8b.yaml \\
        --topology v4-32 --set mesh.data=1 --set mesh.fsdp=16 --set mesh.tensor=1
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

MIB = 2**20
GIB = 2**30


def compile_once(config: str, topology: str, overrides: list[str], hbm_mib: int | None) -> dict:
    """The one step shape of `plan --compile --json` (the largest, where several), built with the chip's HBM
    limited to `hbm_mib` (None: the chip's own)."""
    env = dict(os.environ)
    if hbm_mib is not None:
        env["LIBTPU_INIT_ARGS"] = f"{env.get('LIBTPU_INIT_ARGS', '')} --xla_tpu_max_hbm_size_mib={hbm_mib}".strip()
    proc = subprocess.run([sys.executable, "-m", "instructjax.cli", "plan", "--config", config, "--topology",
                           topology, "--compile", "--json", *overrides], capture_output=True, text=True, env=env)
    if not proc.stdout.strip():
        raise SystemExit(f"plan --compile failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    shapes = json.loads(proc.stdout)["shapes"]
    return max(shapes, key=lambda s: s["rows"] * s["length"])


def main() -> None:
    parser = common.parser(__doc__, append="--no-write", summary=None)
    parser.add_argument("--config", required=True)
    parser.add_argument("--topology", required=True, help="a TPU slice, e.g. v4-32")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config override")
    parser.add_argument("--resolution", type=int, default=128, help="MiB: stop when accepted and refused are this close")
    args = parser.parse_args()
    load = common.load_average()

    full = compile_once(args.config, args.topology, args.set, None)
    if full["refused"]:
        raise SystemExit(f"the step does not fit the chip's own HBM: {full['refused']}")
    accepted = full["hbm_bytes"] // MIB  # built with the chip's whole HBM
    refused = int(full["peak_bytes"] * 0.9) // MIB  # checked below: a bisection needs one refusal
    probes = []
    while True:
        shape = compile_once(args.config, args.topology, args.set, refused)
        probes.append((refused, not shape["refused"]))
        print(f"  HBM {refused} MiB: {'built' if not shape['refused'] else 'refused'}", flush=True)
        if shape["refused"]:
            break
        accepted, refused = refused, refused // 2
    while accepted - refused > args.resolution:
        middle = (accepted + refused) // 2
        shape = compile_once(args.config, args.topology, args.set, middle)
        built = not shape["refused"]
        probes.append((middle, built))
        print(f"  HBM {middle} MiB: {'built' if built else 'refused'}", flush=True)
        accepted, refused = (middle, refused) if built else (accepted, middle)

    gib = lambda n: f"{n / GIB:.2f}"  # noqa: E731
    body = common.table(
        ["config", "slice", "step", "plan GiB", "MaxText total GiB", "compiler peak GiB",
         "smallest HBM built GiB", "largest HBM refused GiB", "plan / smallest built", "MaxText total / smallest built"],
        [[Path(args.config).stem, args.topology, f"{full['rows']} x {full['length']}", gib(full["plan_bytes"]),
          gib(full["xla_bytes"]), gib(full["peak_bytes"]), gib(accepted * MIB), gib(refused * MIB),
          f"{full['plan_bytes'] / (accepted * MIB):.2f}", f"{full['xla_bytes'] / (accepted * MIB):.2f}"]])
    body += "\n\nProbes (HBM MiB: built or refused): " + ", ".join(
        f"{mib} {'built' if built else 'refused'}" for mib, built in probes) + "."
    if args.set:
        body += f" Overrides: `{' '.join(args.set)}`."
    print(body)
    common.finish(args, "The HBM XLA:TPU builds a step on (bisecting --xla_tpu_max_hbm_size_mib)", body,
                  load_before=load)


if __name__ == "__main__":
    main()
