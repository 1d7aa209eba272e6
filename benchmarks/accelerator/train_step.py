"""The train_step section: benchmarks/gpu_mfu.py per model shape (TinyLlama-1.1B, seq 2048, bf16; then the
LLaMA-3.2-3B shape), each in its own process: MFU and tokens/s beside transformers' PyTorch on the device."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from .children import error_line

GPU_MFU = Path(__file__).resolve().parents[1] / "gpu_mfu.py"
STEP_SHAPES = (["--shape", "tinyllama", "--batch", "4"], ["--shape", "llama3.2-3b", "--batch", "2"])  # full size
SMALL_MODEL = ["--layers", "2", "--hidden", "64", "--intermediate", "128", "--heads", "4", "--kv-heads", "2",
               "--vocab", "1000"]  # the reduced CPU size (decode.py's too)


def train_step(args, small: bool, limit: int) -> dict:
    """gpu_mfu.py per shape (TinyLlama, then LLaMA-3.2-3B at full size): the first shape's figures, and every
    shape's under `shapes`. The shapes share the section's time limit."""
    shapes = [SMALL_MODEL + ["--seq", "64", "--batch", "2", "--steps", "1", "--allow-cpu", "--remat", "none"]] if small \
        else [list(shape) for shape in STEP_SHAPES]
    results, deadline = [], time.perf_counter() + limit
    for i, shape in enumerate(shapes):
        summary = Path(args.out) / f"train_step_{i}.json"
        argv = [str(GPU_MFU), "--no-append", "--json", str(summary), *shape,
                *args.train_step_args]
        left = deadline - time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=max(left, 1))
        except subprocess.TimeoutExpired:
            results.append({"error": f"{' '.join(shape[:2])}: stopped at the section's time limit"})
            continue
        if proc.returncode or not summary.exists():
            results.append({"error": error_line(proc.stdout + proc.stderr) or f"gpu_mfu exited {proc.returncode}"})
            continue
        results.append(json.loads(summary.read_text()))
    if "mfu" not in results[0]:
        raise RuntimeError(results[0]["error"])
    return {**results[0], "shapes": results, "ok": all("mfu" in r for r in results)}

