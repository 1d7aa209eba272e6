"""One command that proves an accelerator: compiled attention kernels, training MFU, decoding, a real run.

    python benchmarks/accelerator_check.py [--out DIR] [--only kernels,train_step,decode,real_run] [--record]

Runs on whatever JAX sees (GPU or TPU) in under ten minutes and writes DIR/accelerator_check.md and
DIR/accelerator_check.json. Four sections, each in its own process (JAX and torch both want the device):

- kernels: every `model.attention` implementation the platform runs, compiled (not interpreted), on packed
  GQA rows whose documents and last tile end mid-tile: values and dq/dk/dv against float64 numpy and the
  dense XLA implementation, in float32 and bfloat16, as relative L2 errors next to their tolerance; the
  leak test (another document's keys and values change nothing, and get exactly zero gradient).
- train_step: benchmarks/gpu_mfu.py (TinyLlama-1.1B shape, seq 2048, bf16; then the LLaMA-3.2-3B shape): MFU and
  tokens/s beside transformers' PyTorch on the same device.
- decode: greedy `generate` tokens/s at batch 1 and 32 on the same model shape, beside transformers'
  `generate` (both forced to the same number of new tokens).
- real_run: the quickstart config through the CLI for 20 steps (checkpoint.every=10); the last checkpoint
  removed and the run resumed from step 10; the result exported to Hugging Face weights and read back by
  transformers. Its losses must equal the same run on JAX's CPU platform within a bf16 tolerance.

It needs only jax, flax, optax, orbax-checkpoint, transformers and torch beside this package (`pip install
--no-deps -e .`, plus the small `mistral-common` for the built-in tokenizer); a section that cannot run says
why in one line. On a machine without an accelerator it runs a reduced size on the CPU (Pallas kernels in
interpret mode, tiny shapes), which is how CI keeps it from rotting. On a GPU every JAX child gets the GPU XLA
flags of instructjax.core.xla_flags (what launch/gpu.py gives a training run).

This file is the command: its flags, the sections in turn, the report written. The sections and the rest are
in benchmarks/accelerator/ (kernels.py, train_step.py, decode.py, real_run.py; children.py, report.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402
from accelerator import decode, kernels, real_run, train_step  # noqa: E402
from accelerator.children import REPO, child, one_line, probe  # noqa: E402
from accelerator.report import report  # noqa: E402

SECTIONS = ("kernels", "train_step", "decode", "real_run")
TIMEOUT_S = {"kernels": 300, "train_step": 420, "decode": 300, "real_run": 240}
SMALL_TIMEOUT_FACTOR = 3  # the reduced CPU size runs beside other work (CI's parallel tests): limits catch hangs


def run_section(name: str, args, small: bool) -> dict:
    """A section in a child process (or several), with its time limit; failures become one line."""
    t0 = time.perf_counter()
    limit = TIMEOUT_S[name] * (SMALL_TIMEOUT_FACTOR if small else 1)
    try:
        if name == "train_step":
            result = train_step.train_step(args, small, limit)
        elif name == "decode":
            jax_side = child(["--child", "decode_jax", *decode.decode_args(small), "--decode-chunks",
                              args.decode_chunks], limit,
                             args.out / "decode_jax.log")
            torch_side = child(["--child", "decode_torch", *decode.decode_args(small)], limit,
                               args.out / "decode_torch.log")
            result = {"jax": jax_side, "torch": torch_side, "ok": "results" in jax_side}
        else:
            result = child(["--child", name, "--out", str(args.out), *(["--small"] if small else [])],
                           limit, args.out / f"{name}.log")
    except Exception as exc:  # noqa: BLE001  a broken section is reported, the others still run
        result = {"error": one_line(exc), "ok": False}
    result["seconds"] = time.perf_counter() - t0
    print(f"accelerator_check: {name}: {'ok' if result.get('ok') else 'FAILED ' + result.get('error', '')} "
          f"({result['seconds']:.0f} s)", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="where the summary goes (default runs/accelerator_check-TIME)")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    parser.add_argument("--size", choices=("auto", "full", "small"), default="auto",
                        help="auto: full on an accelerator, small on the CPU")
    common.add_results_flags(parser, append="--record", summary=None,
                             append_help="append the summary to benchmarks/RESULTS.md")
    parser.add_argument("--train-step-args", default="", help="extra gpu_mfu.py arguments, e.g. '--batch 8'")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--small", action="store_true", help=argparse.SUPPRESS)
    for flag, default in (("--layers", 22), ("--hidden", 2048), ("--intermediate", 5632), ("--heads", 32),
                          ("--kv-heads", 4), ("--vocab", 32000), ("--prompt", 128), ("--new-tokens", 128),
                          ("--repeats", 3)):
        parser.add_argument(flag, type=int, default=default, help=argparse.SUPPRESS)
    parser.add_argument("--batches", default="1,32", help=argparse.SUPPRESS)
    parser.add_argument("--decode-chunks", default="8",
                        help="decode steps per device call to time besides generate_ids' 8, e.g. 8,32,64")
    args = parser.parse_args(argv)
    if args.child:
        return run_child(args)

    found = probe()
    os.environ["CHECK_PLATFORM"] = found["platform"]  # the children's XLA flags follow it (jax_environment)
    small = args.size == "small" or (args.size == "auto" and found["platform"] == "cpu")
    args.out = Path(args.out or REPO / "runs" / f"accelerator_check-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    args.torch = found["torch"] is not None
    args.train_step_args = args.train_step_args.split()
    load_before = common.load_average()
    print(f"accelerator_check: {found['device']} ({found['platform']}), {'reduced' if small else 'full'} size -> "
          f"{args.out}", flush=True)
    results = {}
    for name in args.only.split(","):
        if name not in SECTIONS:
            raise SystemExit(f"accelerator_check: unknown section {name!r}; known: {', '.join(SECTIONS)}")
        if name in ("train_step", "decode", "real_run") and not args.torch:
            results[name] = {"skipped": "torch is not installed", "ok": False, "seconds": 0.0,
                             "error": "skipped: torch is not installed"}
            continue
        results[name] = run_section(name, args, small)
    body = report(found, results, small)
    (args.out / "accelerator_check.md").write_text(body + "\n")
    (args.out / "accelerator_check.json").write_text(json.dumps({"found": found, "small": small, **results},
                                                                indent=1, default=str))
    print(body)
    common.finish(args, f"Accelerator check: {found['device']}", body, load_before=load_before)
    return 0 if all(r.get("ok") for r in results.values()) else 1


def run_child(args) -> int:
    """This command's `--child` mode: one section (or decoding side) in this process, its result printed."""
    args.batches = [int(b) for b in args.batches.split(",")]
    args.chunks = [int(c) for c in args.decode_chunks.split(",")]
    if args.child == "kernels":
        result = kernels.kernels_section(args.small)
    elif args.child == "decode_jax":
        result = decode.decode_jax(args)
        result.update(new_tokens=args.new_tokens, prompt=args.prompt,
                      model=f"{args.layers} x {args.hidden}, {args.heads}/{args.kv_heads} heads, vocab {args.vocab}")
    elif args.child == "decode_torch":
        result = decode.decode_torch(args)
    else:
        result = real_run.real_run(args)
    common.child_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
