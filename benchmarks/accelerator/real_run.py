"""The real_run section: the quickstart config through the CLI for 20 steps (checkpoint.every=10); the last
checkpoint removed and the run resumed from step 10; the result exported to Hugging Face weights and read
back by transformers. Its losses must equal the same run on JAX's CPU platform within a bf16 tolerance. The
reduced CPU size runs 4 steps (resumed from step 2)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .children import REPO, error_line, jax_environment
from .kernels import TOLERANCE, rel_err

QUICKSTART = REPO / "configs" / "quickstart.yaml"
LOSS_TOLERANCE = 1e-2  # relative, accelerator vs CPU losses of the real run (bf16-level)
RESUME_TOLERANCE = 1e-3  # relative, resumed vs uninterrupted losses on one device (GPU scatter-adds reorder)


def _cli(args: list[str], *, platform: str | None = None, log: Path) -> None:
    env = jax_environment()
    if platform:
        env["JAX_PLATFORMS"] = platform
    with log.open("a") as f:
        f.write(f"$ instructjax {' '.join(args)}\n")
        f.flush()
        proc = subprocess.run([sys.executable, "-m", "instructjax.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                              env=env, cwd=REPO)
    if proc.returncode:
        raise RuntimeError(f"instructjax {args[0]} exited {proc.returncode}: {error_line(log.read_text())}")


def _losses(run_dir: Path) -> dict[int, float]:
    """step -> loss from metrics.jsonl (a later line for a step wins)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {int(r["step"]): float(r["loss"]) for r in map(json.loads, lines) if "loss" in r}


def real_run(args) -> dict:
    """Quickstart through the CLI: 20 steps, resume from step 10, export, losses against the CPU's."""
    import jax

    out = Path(args.out) / "real_run"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = out / "cli.log"
    platform = jax.default_backend()  # the backend is only chosen here, not initialised on the device
    steps = 4 if args.small else 20  # the CPU check: the same commands, fewer steps
    common_args = ["--config", str(QUICKSTART), f"max_steps={steps}", f"checkpoint.every={steps // 2}", "log_every=1"]
    cpu = None
    if platform != "cpu":  # the reference: the same run on JAX's CPU platform, alongside
        cpu_log = (out / "cpu.log").open("w")
        cpu = subprocess.Popen([sys.executable, "-m", "instructjax.cli", "train", *common_args,
                                f"run_dir={out / 'cpu'}"], stdout=cpu_log, stderr=subprocess.STDOUT,
                               env={**os.environ, "JAX_PLATFORMS": "cpu"}, cwd=REPO)  # fmt: skip
    t0 = time.perf_counter()
    _cli(["train", *common_args, f"run_dir={out / 'run'}"], log=log)
    train_s = time.perf_counter() - t0
    uninterrupted = _losses(out / "run")
    shutil.rmtree(out / "run" / "checkpoints" / str(steps))
    _cli(["train", *common_args, f"run_dir={out / 'run'}", "--resume"], log=log)
    resumed = _losses(out / "run")
    _cli(["export", "--checkpoint", str(out / "run"), "--out", str(out / "hf")], log=log)
    if cpu is not None and cpu.wait():
        raise RuntimeError(f"the CPU reference run exited {cpu.returncode} (see {out / 'cpu.log'})")
    reference = _losses(out / "cpu") if cpu is not None else uninterrupted
    resume_err = max(abs(resumed[s] - uninterrupted[s]) / abs(uninterrupted[s])
                     for s in range(steps // 2 + 1, steps + 1))
    cpu_err = max(abs(uninterrupted[s] - reference[s]) / abs(reference[s]) for s in uninterrupted)
    export = _compare_export(out / "run", out / "hf")
    ok = (sorted(uninterrupted) == list(range(1, steps + 1)) and resume_err <= RESUME_TOLERANCE
          and cpu_err <= LOSS_TOLERANCE and export["ok"])
    return {"platform": platform, "steps": len(uninterrupted), "first_loss": uninterrupted[1],
            "last_loss": uninterrupted[steps], "resumed_last_loss": resumed[steps], "cpu_last_loss": reference[steps],
            "resume_max_rel": resume_err,
            "cpu_max_rel": cpu_err, "cpu_reference": cpu is not None, "train_s": train_s, "export": export,
            "ok": ok}


def _compare_export(run_dir: Path, hf_dir: Path) -> dict:
    """Logits of the exported model in transformers (CPU, float32) against the checkpoint in instructjax."""
    import jax.numpy as jnp
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from instructjax.convert.saved import load_model

    model = load_model(str(run_dir), dtype="float32")
    ids = np.random.default_rng(0).integers(3, model.config.vocab_size, (2, 48)).astype(np.int32)
    ones = np.ones_like(ids)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(np.cumsum(ones, 1) - 1), jnp.asarray(ones)), np.float64)
    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids).long()).logits.double().numpy()
    err = rel_err(ours, theirs)
    agree = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    return {"logits_rel": err, "argmax_agree": agree, "tolerance": TOLERANCE["float32"],
            "ok": err <= TOLERANCE["float32"] and agree >= 0.99}

