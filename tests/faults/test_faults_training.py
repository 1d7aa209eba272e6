"""Training faults on real processes and real Orbax checkpoints; every run is compared with one
uninterrupted reference run (same command, same environment) through metrics.jsonl.

- kill -9 while an asynchronous checkpoint is being committed, then kill -9 at a random step of the
  resumed run, then a torn metrics line: the final --resume ends with exactly the reference losses; before the
  first kill, a second trainer on the same run stops before writing anything, and after it the resume takes the
  dead process's lock over;
- torn latest checkpoints (every file of the newest emptied, as in issue 25's report, and a seeded
  (file, way) of the one before): resume warns once, falls back to the newest intact step, and again
  ends with exactly the reference losses (every file damaged every way: tests/faults/test_checkpoint_damage.py);
- no space left while saving (a real 48 MiB tmpfs): one-line error, exit 2, the previous checkpoint intact;
- an injected NaN at a checkpoint step: clean stop naming the step, nothing of the broken state saved;
- Ctrl-C (SIGINT to the process group, to a trainer that inherited SIGINT ignored, as `nohup ... &` from a script
  leaves it) at a seeded random step with no checkpoint due: the step in flight is saved, the exit status is 75,
  and --resume ends with exactly the reference losses (SIGTERM alike: tests/train/test_metrics_resume.py);
- Ctrl-C twice while a save hangs: the process exits at once, saying what is lost, and what it was writing is set
  apart, not a step.

Each run is a subprocess (tests/helpers/fault_worker.py -> the real `instructjax train` CLI) on one CPU device; they
share the session's persistent XLA compilation cache so only the first one compiles.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.damage import damage, draw
from helpers.host_devices import xla_flags
from helpers.signals import signal_set

from instructjax.core import checkpoint as ckpt
from instructjax.core.integrity import MANIFEST

pytestmark = pytest.mark.slow

from helpers import WORKER  # noqa: E402

STEPS = 6
ARGS = [
    "model.preset=tiny", "model.dtype=float32", "data.mixture=acp_ACP_n10000_builtin", "data.seq_len=128",
    "data.global_batch=8", "data.pack_window=64", "optim.lr=3e-3", "optim.epochs=1", "log_every=1",
    f"max_steps={STEPS}", "checkpoint.every=2",
]  # fmt: skip
TIMEOUT = 900


@pytest.fixture(scope="module")
def env():
    """The runs' environment: the session's persistent compilation cache (tests/conftest.py) and one CPU device, not
    the suite's 8 (nothing here is about sharding: the same faults, no program split 8 ways; a run took a third less)."""
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(1)}


def start(run_dir, env, *extra, resume=False, faults=None, detached=False) -> subprocess.Popen:
    """`instructjax train` in a process of its own; `detached`: in a process group of its own (its pool workers with
    it) and with SIGINT ignored, as a non-interactive shell starts `nohup ... &`."""
    cmd = [sys.executable, str(WORKER), "train", "--config", "/dev/null", *ARGS, f"run_dir={run_dir}", *extra]
    if resume:
        cmd.append("--resume")
    if detached:  # `trap "" INT` ignores SIGINT, and exec keeps it ignored
        cmd = ["bash", "-c", 'trap "" INT; exec "$@"', "bash", *cmd]
    return subprocess.Popen(cmd, env={**env, **(faults or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, process_group=0 if detached else None)  # fmt: skip


def finish(proc) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, err


def wait_for(proc, condition, what: str) -> None:
    """Until `condition()` holds (fails if `proc` exits or times out first)."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"process exited ({proc.returncode}) before {what}: {proc.communicate()[1][-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill_when(proc, condition, what: str) -> str:
    """kill -9 `proc` as soon as `condition()` holds (fails if it exits or times out first); its stderr."""
    wait_for(proc, condition, what)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    return err


def metric_lines(run_dir) -> list[str]:
    path = Path(run_dir) / "metrics.jsonl"
    return path.read_text().splitlines() if path.exists() else []


def losses(run_dir) -> dict[int, float]:
    out = {}
    for line in metric_lines(run_dir):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        assert record["step"] not in out, f"step {record['step']} logged twice"
        out[record["step"]] = record["loss"]
    return out


def logged_anew(run_dir, before: list[str], step: int) -> bool:
    """Whether this run has logged `step` (from step 1 on, a line a step): its line is not one of the lines an
    earlier run left (`before`: the same loss, another step_seconds), which stay until a resume drops them."""
    lines = metric_lines(run_dir)
    return len(lines) >= step and lines[step - 1] not in before


def last_logged(run_dir) -> int:
    return max(losses(run_dir), default=0)


def complete_steps(run_dir) -> list[int]:
    """The steps a resume may start from: committed by Orbax and sealed by their manifest."""
    d = Path(run_dir) / "checkpoints"
    if not d.exists():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / MANIFEST).is_file())


def torn_dirs(run_dir) -> list[str]:
    d = Path(run_dir) / "checkpoints"
    return sorted(p.name for p in d.iterdir() if "tmp" in p.name) if d.exists() else []


def one_line_error(err: str, clean: bool = True) -> str:
    """The one `instructjax: error:` line; `clean=False` tolerates Orbax's background-thread logging."""
    lines = [line for line in err.splitlines() if line.startswith("instructjax: error:")]
    assert len(lines) == 1 and (not clean or "Traceback" not in err), err[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env):
    """The uninterrupted run: checkpoints 2, 4, 6 and the losses of steps 1..6."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    rc, _, err = finish(start(run_dir, env, "checkpoint.keep=3"))
    assert rc == 0, err[-3000:]
    assert complete_steps(run_dir) == [2, 4, 6] and sorted(losses(run_dir)) == list(range(1, STEPS + 1))
    return run_dir


def assert_params_equal(run_dir, reference, step):
    mine, ref = ckpt.load_params(run_dir, step)[0], ckpt.load_params(reference, step)[0]
    import jax

    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref), strict=True):
        np.testing.assert_array_equal(a, b)


def test_kill_9_mid_async_save_then_at_a_random_step_loses_nothing(tmp_path, env, reference):
    """Also: a second `train --resume --accept-changes` on the run while the first (held in checkpoint 4's commit)
    lives: one line naming the other process, exit 2, and nothing written (no changes.jsonl, config.yaml still the
    first's); once the first is killed (-9), the resume takes its lock over with a warning."""
    import socket

    import yaml

    run_dir, marker = tmp_path / "run", tmp_path / "saving"
    # 1. kill -9 while checkpoint 4 is committed asynchronously (its items written, not yet renamed); before the
    #    kill, while it holds the run's lock, a second trainer is refused
    first = start(run_dir, env, faults={"FAULT_HOLD_SAVE_STEP": "4", "FAULT_MARKER": str(marker)})
    try:
        wait_for(first, marker.exists, "checkpoint 4's commit")
        rc, _, err = finish(start(run_dir, env, "optim.lr=1e-5", "--accept-changes", resume=True))
        line = one_line_error(err)
        assert rc == 2 and "is being trained by another process" in line, err[-2000:]
        assert f"host {socket.gethostname()}, pid {first.pid}" in line
        assert not (run_dir / "changes.jsonl").exists()
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["lr"] == 3e-3
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate()
    assert first.returncode == -signal.SIGKILL  # alive, mid-save, until the kill
    assert complete_steps(run_dir) == [2]
    assert any(name.startswith("4.") for name in torn_dirs(run_dir))  # the torn save is on disk
    before = metric_lines(run_dir)

    # 2. --resume (from 2, ignoring the torn 4), kill -9 at a random moment after a random logged step
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    # steps take >= 0.5 s, and a step's line is written once the next step has taken its 0.5 s: the kill lands
    # before step 6 starts
    kill_after, delay = rng.randint(3, 4), rng.uniform(0.0, 0.45)
    proc = start(run_dir, env, resume=True, faults={"FAULT_STEP_SECONDS": "0.5"})
    err = kill_when(proc, lambda: logged_anew(run_dir, before, kill_after) and (time.sleep(delay) or True),
                    f"step {kill_after}")
    took_over = f"taking over the lock of a process that is gone (host {socket.gethostname()}, pid {first.pid}"
    assert took_over in err, err[-3000:]
    resumed = metric_lines(run_dir)
    assert resumed[:2] == before[:2], f"seed {seed}: run 2 did not start from checkpoint 2"
    last = max(complete_steps(run_dir))
    assert last in (2, 4), f"seed {seed}"

    # 3. a metrics line torn by the kill, then --resume to the end
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": 1')
    rc, _, err = finish(start(run_dir, env, resume=True))
    assert rc == 0, f"seed {seed}: {err[-3000:]}"
    assert metric_lines(run_dir)[:last] == resumed[:last], f"seed {seed}: run 3 did not start from {last}"
    assert losses(run_dir) == losses(reference), f"seed {seed} (killed after step {kill_after} + {delay:.2f}s)"
    assert complete_steps(run_dir)[-1] == STEPS
    assert_params_equal(run_dir, reference, STEPS)
    assert not (run_dir / "LOCK").exists()


def test_torn_latest_checkpoints_fall_back_to_the_newest_intact_one(tmp_path, env, reference):
    """Every file of step 6 emptied (what a full disk or a killed copy leaves) and a seeded (file, way) of
    step 4: one warning line names both, both are set aside (kept), and the run resumes from step 2."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    shutil.rmtree(run_dir / "tensorboard")
    for f in (run_dir / "checkpoints" / "6").rglob("*"):
        if f.is_file():
            f.write_bytes(b"")
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    name, way = rng.choice(draw(run_dir / "checkpoints" / "4", rng))
    damage(run_dir / "checkpoints" / "4" / name, way, rng)
    case = f"seed {seed}: step 4's {name} {way}"
    rc, _, err = finish(start(run_dir, env, resume=True))
    assert rc == 0, f"{case}: {err[-3000:]}"
    warnings = [line for line in err.splitlines() if line.startswith("instructjax: warning:")]
    assert len(warnings) == 1 and "checkpoint steps 6, 4 in" in warnings[0], f"{case}: {err[-3000:]}"
    assert "falling back to step 2 (kept as 6.unreadable, 4.unreadable)" in warnings[0], f"{case}: {warnings}"
    assert metric_lines(run_dir)[:2] == metric_lines(reference)[:2]  # resumed from step 2, not from scratch
    assert losses(run_dir) == losses(reference), case
    assert complete_steps(run_dir) == [2, 4, 6]
    assert all((run_dir / "checkpoints" / f"{s}.unreadable").is_dir() for s in (4, 6))  # kept, not deleted
    assert_params_equal(run_dir, reference, 6)


@pytest.fixture
def small_disk(tmp_path):
    """A real 48 MiB tmpfs: one checkpoint of the tiny model (~30 MB) fits, a second does not."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_no_space_left_while_saving_stops_cleanly_and_keeps_the_previous_checkpoint(small_disk, env, reference):
    run_dir = small_disk / "run"
    # keep=1: the old checkpoint is the only one, so it must survive the failed save of the next
    rc, _, err = finish(start(run_dir, env, "checkpoint.keep=1"))
    assert rc == 2, err[-3000:]
    line = one_line_error(err, clean=False)  # orbax's async writer threads also log the ENOSPC they hit
    assert "no space left on device while saving checkpoint step 4" in line, line
    assert "last complete checkpoint is step 2" in line, line
    assert complete_steps(run_dir) == [2]
    assert_params_equal(run_dir, reference, 2)  # intact, bit for bit
    logged = losses(run_dir)
    assert logged and all(logged[s] == losses(reference)[s] for s in logged)


def test_injected_nan_stops_naming_the_step_and_saves_nothing_broken(tmp_path, env, reference):
    run_dir = tmp_path / "run"
    rc, _, err = finish(start(run_dir, env, faults={"FAULT_NAN_AT_STEP": "4"}))  # 4 is a checkpoint step
    assert rc == 2, err[-3000:]
    line = one_line_error(err)
    assert "non-finite loss (nan) at step 4" in line and "last good checkpoint is step 2" in line, line
    assert complete_steps(run_dir) == [2] and not torn_dirs(run_dir)
    assert_params_equal(run_dir, reference, 2)
    ref = losses(reference)
    assert losses(run_dir) == {s: ref[s] for s in (1, 2, 3)}


def test_ctrl_c_saves_the_step_in_flight_and_resume_loses_nothing(tmp_path, env, reference):
    run_dir = tmp_path / "run"
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 10**6))
    # a step's metrics are logged one step late, so once step `after` is logged step after+1 may be done and
    # after+2 in flight: signal early enough that the step saved is never the run's last
    after = random.Random(seed).randint(1, STEPS - 3)
    proc = start(run_dir, env, "checkpoint.every=1000", faults={"FAULT_STEP_SECONDS": "0.5"}, detached=True)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[0] in (b"", b"bash"):
        assert time.monotonic() < deadline
        time.sleep(0.01)  # until bash has exec'd the trainer (seconds before the CLI takes its signals)
    assert "SIGINT" in signal_set(proc.pid, "SigIgn")  # the trainer inherited SIGINT ignored (read as it starts)
    deadline = time.monotonic() + TIMEOUT
    while last_logged(run_dir) < after:
        assert proc.poll() is None, f"seed {seed}: exited before step {after}: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in its terminal: the whole process group
    rc, out, err = finish(proc)
    saved = complete_steps(run_dir)
    assert rc == 75, f"seed {seed}: {err[-3000:]}"
    assert "trained to step" not in out and "Traceback" not in err and "KeyboardInterrupt" not in err
    assert len(saved) == 1 and after <= saved[0] < STEPS, f"seed {seed}: {saved}"  # the step in flight, not the end
    assert f"preempted: saved step {saved[0]} in {run_dir}" in err and not torn_dirs(run_dir)
    rc, _, err = finish(start(run_dir, env, "checkpoint.every=1000", resume=True))
    assert rc == 0, err[-3000:]
    assert losses(run_dir) == losses(reference), f"seed {seed} (Ctrl-C after step {after})"
    assert_params_equal(run_dir, reference, STEPS)


def test_a_second_ctrl_c_exits_at_once_and_leaves_no_half_written_step(tmp_path, env, reference):
    """The first Ctrl-C asks for a save; while a checkpoint commit hangs (held before Orbax's rename, as on a
    stalled disk) a second one exits at once with 128 + SIGINT, saying that what was not saved is lost. What was
    being written is not a step: it is set apart by name (the kill -9 test resumes past such a write to the reference
    losses)."""
    run_dir, marker = tmp_path / "run", tmp_path / "saving"
    proc = start(run_dir, env, faults={"FAULT_HOLD_SAVE_STEP": "4", "FAULT_MARKER": str(marker),
                                       "FAULT_STEP_SECONDS": "0.5"}, detached=True)  # fmt: skip
    deadline = time.monotonic() + TIMEOUT
    while not marker.exists():
        assert proc.poll() is None, f"exited before checkpoint 4's commit: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(1.0)  # the step in flight ends; its save waits behind the held commit of step 4
    assert proc.poll() is None, "the first Ctrl-C alone must not end the run before its save"
    os.killpg(proc.pid, signal.SIGINT)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    assert time.monotonic() - sent < 30  # at once, not after the held save (an hour)
    assert "SIGINT: stopping once the work in flight is saved" in err
    assert "SIGINT again: exiting at once; what was not saved yet is lost" in err and "Traceback" not in err
    assert complete_steps(run_dir) == [2]  # step 4 is not a checkpoint; nothing after it was saved
    assert any(name.startswith("4.") for name in torn_dirs(run_dir))  # the interrupted write, set apart by name
