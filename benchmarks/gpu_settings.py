"""The GPU training step under several settings, side by side in one run, beside transformers' step.

    python benchmarks/gpu_settings.py [--record] [--json F] [--timeout 300] [--torch-batches 4] \
        'base: --remat dots_with_no_batch_dims_saveable --xla-flags none' \
        'minimal: --remat minimal_with_context' ...

Each setting is `label: gpu_mfu.py arguments` and runs benchmarks/gpu_mfu.py's instructjax step in a process
of its own (its XLA flags are set before JAX starts), one after the other, each with its time limit; a
setting that fails or runs out of time is a row saying so. transformers' step (gpu_mfu's torch child: SDPA,
bf16 autocast, fused AdamW) runs once per shape and batch named by `--torch`. Rows are printed as they finish
(`ROW {json}`), the table at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402
import gpu_mfu  # noqa: E402

SCRIPT = Path(__file__).with_name("gpu_mfu.py")


def run_one(argv: list[str], framework: str, timeout: int) -> dict:
    """gpu_mfu's child for `framework` under `argv`: its result, or {'error': one line}."""
    args = gpu_mfu.parse_args(argv)
    env = gpu_mfu.child_environment(args) if framework == "jax" else dict(os.environ)
    try:
        proc = subprocess.run([sys.executable, str(SCRIPT), *argv, "--child", framework], capture_output=True,
                              text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"stopped at its time limit of {timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        tail = [line for line in proc.stderr.splitlines() if line.strip()]
        errors = [line for line in tail if "Error" in line or "error:" in line]
        return {"error": ((errors or tail or [f"exit {proc.returncode}"])[-1])[:300]}
    return json.loads(lines[-1][len("RESULT "):])


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, append="--record", append_help="append the table to benchmarks/RESULTS.md")
    parser.add_argument("settings", nargs="+", help="'label: gpu_mfu.py arguments'")
    parser.add_argument("--torch", action="append", default=[],
                        help="gpu_mfu.py arguments of a transformers reference (e.g. '--batch 4'); repeatable")
    parser.add_argument("--timeout", type=int, default=300, help="seconds per setting")
    args = parser.parse_args(argv)
    load_before = common.load_average()
    rows, refs = [], {}
    for spec in args.torch:
        parsed = gpu_mfu.parse_args(spec.split())
        key = (parsed.shape, parsed.batch, parsed.seq)
        refs[key] = run_one(spec.split(), "torch", args.timeout)
        print("ROW " + json.dumps({"torch": spec, **refs[key]}), flush=True)
    for spec in args.settings:
        label, _, rest = spec.partition(":")
        setting = gpu_mfu.parse_args(rest.split())
        result = run_one(rest.split(), "jax", args.timeout)
        config = gpu_mfu.model_config(setting)
        tokens = setting.batch * setting.seq
        flops = common.model_flops_per_token(config, setting.seq) * tokens
        row = {"label": label.strip(), "args": rest.strip(), "setting": gpu_mfu.setting_words(setting), **result}
        if "step_s" in result:
            row.update(tokens_per_s=tokens / result["step_s"], mfu=flops / result["step_s"] / (setting.peak_tflops * 1e12))
            ref = refs.get((setting.shape, setting.batch, setting.seq), {})
            if "step_s" in ref:
                row["vs_torch"] = ref["step_s"] / result["step_s"]
        rows.append(row)
        print("ROW " + json.dumps(row), flush=True)
    table = [[r["label"], r["args"], f"{r['step_s']:.4f}" if "step_s" in r else "-",
              f"{r['tokens_per_s']:,.0f}" if "step_s" in r else "-", f"{r['mfu']:.1%}" if "step_s" in r else "-",
              f"{r['vs_torch']:.2f}x" if "vs_torch" in r else "-", r.get("error", r.get("attention", ""))]
             for r in rows]
    torch_rows = [[f"transformers {shape} batch {batch}", f"{r['step_s']:.4f}" if "step_s" in r else r.get("error"),
                   r.get("version", "")] for (shape, batch, _), r in refs.items()]
    device = next((r["device"] for r in rows if "device" in r), "?")
    body = (f"{device}; gpu_mfu.py's step per setting (median of its steps), one process each.\n\n"
            + common.table(["setting", "gpu_mfu.py arguments", "s/step", "tokens/s", "MFU", "vs transformers",
                            "attention / error"], table)
            + ("\n\n" + common.table(["reference", "s/step", "torch"], torch_rows) if torch_rows else "") + "\n")
    print(body)
    common.finish(args, "GPU step under each setting", body, {"rows": rows, "torch": {str(k): v for k, v in refs.items()}},
                  load_before=load_before)
    return 0


if __name__ == "__main__":
    sys.exit(main())
