"""A preempted and resumed run logs what an uninterrupted run logs: metrics.jsonl and the TensorBoard
events line by line (timings aside), with SIGTERM at a step inside a log window and at a logged step
(log_every=10: steps 7 and 10, one run stopped at both).

Each run is the real `instructjax train` CLI in its own process (tests/helpers/fault_worker.py); the signal is a
real SIGTERM the process sends itself once the chosen step is done."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import WORKER
from helpers.host_devices import xla_flags
from helpers.metrics import TIMINGS, tensorboard_scalars

pytestmark = pytest.mark.slow

ARGS = [
    "model.preset=tiny", "model.dtype=float32", "data.mixture=acp_ACP_n10000_builtin", "data.seq_len=128",
    "data.global_batch=8", "data.pack_window=64", "optim.lr=3e-3", "optim.epochs=1", "log_every=10",
    "max_steps=13", "checkpoint.every=1000",
]  # fmt: skip


def train(run_dir, env, *extra, faults=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(WORKER), "train", "--config", "/dev/null", *ARGS, f"run_dir={run_dir}", *extra]
    return subprocess.run(cmd, env={**env, **(faults or {})}, capture_output=True, text=True, timeout=900)


def lines(run_dir) -> list[dict]:
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


@pytest.fixture(scope="module")
def env():
    """The runs' environment: the session's persistent compilation cache (tests/conftest.py), so the runs after the
    first read its programs back rather than compile them again; one CPU device, not the suite's 8 (the same logs,
    no program sharded 8 ways)."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(1)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    done = train(run_dir, env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [r["step"] for r in lines(run_dir)] == [10, 13]
    return run_dir


def test_sigterm_then_resume_logs_what_an_uninterrupted_run_logs(tmp_path, env, reference):
    """One run preempted twice: SIGTERM at step 7 (inside a log window), resumed, SIGTERM at step 10 (a logged step:
    TensorBoard keeps it on resume), resumed to the end. It logs what the uninterrupted run logs, and Weights &
    Biases (offline) gets, in one W&B run across the restarts, what metrics.jsonl holds."""
    from helpers import wandb_records

    from instructjax.core.tracking import run_id

    run_dir = tmp_path / "run"
    wandb = ["wandb.project=ij-test", "wandb.mode=offline", f"wandb.dir={tmp_path}", "wandb.tags=[resume]"]
    for at, resume in ((7, []), (10, ["--resume"])):
        stopped = train(run_dir, env, *resume, *wandb, faults={"FAULT_SIGTERM_AFTER_STEP": str(at)})
        assert stopped.returncode == 75 and f"preempted: saved step {at}" in stopped.stderr, stopped.stderr[-3000:]
        assert [r["step"] for r in lines(run_dir)] == [s for s in (10,) if s <= at]  # what was due before the signal
    resumed = train(run_dir, env, "--resume", *wandb)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert lines(run_dir) == lines(reference)  # step 10's window covers steps 1-10 across the restart
    assert tensorboard_scalars(run_dir) == tensorboard_scalars(reference)
    assert ("loss", 10) in tensorboard_scalars(run_dir)
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for record in logged:
        assert 0 < record["tokens_per_sec"] < 1e7 and 0 < record["step_seconds"] < 60
    assert len(wandb_records.run_files(tmp_path, run_id(str(run_dir)))) == 3  # the two preempted runs, the last one
    history = wandb_records.history(tmp_path, run_id(str(run_dir)))
    numbers = [{k: v for k, v in r.items() if k != "step" and not isinstance(v, str)} for r in logged]
    assert history == {r["step"]: pytest.approx(n) for r, n in zip(logged, numbers, strict=True)}
