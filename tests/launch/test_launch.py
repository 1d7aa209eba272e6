"""Launch scripts: the exact commands their --dry-run prints."""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import REPO, WORKER
from helpers.host_devices import xla_flags as host_xla_flags
from helpers.signals import signal_set

ROOT = REPO
CONFIG = "configs/seed004_tulu/tulu_human_gpt_llama2_7b.yaml"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "launch" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tpu = _load("tpu_vm")
gpu = _load("gpu")
xla_flags = gpu.xla_flags
BASE = ["--name", "tulu7b", "--zone", "us-central2-b", "--bucket", "gs://bkt", "--config", str(ROOT / CONFIG)]


def printed(capsys) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in capsys.readouterr().out.splitlines() if line.startswith("+ ")]


def test_tpu_up_dry_run(capsys, tmp_path):
    assert tpu.main(["up", *BASE, "--accelerator", "v4-64", "--dry-run"]) == 0
    build, upload, create, setup, scp, train = printed(capsys)
    wheel = tpu.wheel()
    assert build[1:4] == ["-m", "pip", "wheel"] and build[-1] == str(ROOT)  # this checkout's wheel, before any VM
    assert upload == ["gcloud", "storage", "cp", str(Path(build[build.index("-w") + 1]) / wheel),
                      f"gs://bkt/wheels/{wheel}"]
    assert create == ["gcloud", "compute", "tpus", "tpu-vm", "create", "tulu7b", "--zone", "us-central2-b",
                      "--accelerator-type=v4-64", "--version=tpu-ubuntu2204-base"]
    assert setup[:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "tulu7b", "--zone"]
    assert "--worker=all" in setup and setup[-1] == (f"gcloud storage cp gs://bkt/wheels/{wheel} /tmp/{wheel} && "
                                                     f"pip install '/tmp/{wheel}' 'jax[tpu]'")
    built = subprocess.run([*build[:build.index("-w") + 1], str(tmp_path), build[-1]], capture_output=True, text=True)
    assert built.returncode == 0 and [p.name for p in tmp_path.iterdir()] == [wheel], built.stderr[-2000:]
    assert tpu.main(["setup", *BASE, "--package", "git+https://example.org/instructjax.git", "--dry-run"]) == 0
    (setup,) = printed(capsys)  # another package: nothing built
    assert setup[-1] == "pip install git+https://example.org/instructjax.git 'jax[tpu]'"
    assert scp[-3:] == ["--zone", "us-central2-b", "--worker=all"][-3:] or "--worker=all" in scp
    assert "--worker=all" in train
    remote = train[-1]
    assert remote.startswith("nohup bash -c ")
    inner = shlex.split(remote)[3]
    assert inner.startswith("echo $$ > ~/instructjax_loop.pid; ")  # the loop's pid: `stop` signals its trainer
    assert ("INSTRUCTJAX_CACHE_DIR=gs://bkt/tokenized instructjax train --config ~/instructjax_run.yaml --auto-resume "
            "run_dir=gs://bkt/runs/tulu7b distributed=true model.init_from=gs://bkt/checkpoints/base/llama2-7b >> "
            in inner)  # the config's init_from (checkpoints/base/llama2-7b), read from the bucket
    assert inner.endswith("; done") and "DONE" not in inner  # the run writes its own DONE marker


def test_tpu_queued_and_watch(capsys):
    assert tpu.main(["queued", *BASE, "--accelerator", "v5litepod-16", "--spot", "--dry-run"]) == 0
    out = capsys.readouterr().out
    cmds = [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ")][2:]  # after the wheel's two
    assert cmds[0] == ["gcloud", "storage", "cp", str(ROOT / CONFIG), "gs://bkt/configs/tulu7b.yaml"]
    assert cmds[1][:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "tulu7b-qr"]
    assert "--node-id=tulu7b" in cmds[1] and "--runtime-version=v2-alpha-tpuv5-lite" in cmds[1] and cmds[1][-1] == "--spot"
    script = Path(next(a for a in cmds[1] if a.startswith("--metadata-from-file=")).split("=", 2)[2]).read_text()
    assert "gcloud storage cp gs://bkt/configs/tulu7b.yaml ~/instructjax_run.yaml" in script
    assert "instructjax train --config ~/instructjax_run.yaml --auto-resume run_dir=gs://bkt/runs/tulu7b" in script
    assert f"pip install '/tmp/{tpu.wheel()}' 'jax[tpu]'" in script
    assert tpu.main(["watch", *BASE, "--dry-run"]) == 0
    done, describe, delete, create = printed(capsys)
    assert done == ["gcloud", "storage", "ls", "gs://bkt/runs/tulu7b/DONE"]
    assert describe[-1] == "--format=value(state.state)"
    assert delete[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "tulu7b-qr"] and "--force" in delete
    assert create[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]


def test_tpu_stop_delete_logs_and_errors(capsys, tmp_path):
    for action in ("logs", "stop", "delete"):
        tpu.main([action, *BASE, "--dry-run"])
    logs, stop, delete = printed(capsys)
    assert "--worker=0" in logs and logs[-1] == "tail -n 100 -f ~/instructjax_train.log"
    assert "--worker=all" in stop and stop[-1] == tpu.stop_script(1800) and "kill -TERM" in stop[-1]
    assert "-INT" not in stop[-1]  # SIGTERM: what a trainer started in the background cannot have ignored
    assert delete == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "tulu7b", "--zone", "us-central2-b", "--quiet"]
    with pytest.raises(SystemExit):
        tpu.main(["train", "--name", "x", "--zone", "z", "--bucket", "/local", "--config", CONFIG, "--dry-run"])
    with pytest.raises(SystemExit):
        tpu.main(["up", "--name", "x", "--zone", "z", "--dry-run"])

    capsys.readouterr()
    (tmp_path / "typo.yaml").write_text("model: {init_from: checkpoints/base/mine}\nmax_stepz: 3\n")
    for config, words in (("no/such.yaml", "config file no/such.yaml does not exist; a shipped config is found by name"),
                          (str(tmp_path / "typo.yaml"), "max_stepz: unknown key; did you mean max_steps?")):
        with pytest.raises(SystemExit) as exited:  # checked as the trainer reads it, before any command
            tpu.main(["up", "--name", "x", "--zone", "z", "--bucket", "gs://b", "--config", config, "--dry-run"])
        out, err = capsys.readouterr()
        assert exited.value.code == 2 and not out and len(err.splitlines()) == 1 and words in err, err


@pytest.mark.slow
def test_every_shipped_config_goes_up_in_a_dry_run(capsys):
    """`up --dry-run` on every config under configs/ (a preset and init_from, an SFT run's directory as init_from,
    no init_from): the workers read the config's model.init_from at the same path in the bucket, and a config without
    one trains from scratch. 10 s: each config is read as the trainer reads it."""
    shipped = sorted((ROOT / "configs").rglob("*.yaml"))
    assert len(shipped) > 100
    for config in shipped:
        argv = ["up", "--name", "x", "--zone", "z", "--bucket", "gs://bkt", "--config", str(config), "--dry-run"]
        assert tpu.main(argv) == 0, config
        inner = shlex.split(printed(capsys)[-1][-1])[3]
        given = (yaml.safe_load(config.read_text()).get("model") or {}).get("init_from")
        assert (f" model.init_from=gs://bkt/{given} " in inner) if given else "init_from" not in inner, (config, inner)


def own_model_config() -> str:
    """The own-model config of docs/launch_tpu.md: its YAML block that starts `# mine.yaml`."""
    found = re.search(r"```yaml\n(# mine\.yaml\n.*?)```", (ROOT / "docs" / "launch_tpu.md").read_text(), re.S)
    assert found, "docs/launch_tpu.md has no `# mine.yaml` block"
    return found.group(1).replace("gs://MY_BUCKET", "gs://bkt")


def test_the_docs_own_model_goes_up_with_init_from_here_or_in_a_bucket(capsys, tmp_path, monkeypatch):
    """docs/launch_tpu.md's own model (no preset; model.init_from an imported checkpoint) with --dry-run: not here,
    the workers read it from the bucket; imported here, `up` copies it there before the VM is created; a gs://
    init_from is read where it is. `status` and `stop` take the config too."""
    monkeypatch.chdir(tmp_path)
    config = own_model_config()
    assert "preset" not in config and "init_from: checkpoints/base/smollm2" in config
    Path("mine.yaml").write_text(config)
    argv = ["--name", "mine", "--zone", "z", "--bucket", "gs://bkt", "--config", "mine.yaml", "--dry-run"]

    def up() -> tuple[list[list[str]], str]:
        assert tpu.main(["up", *argv]) == 0
        cmds = printed(capsys)
        return cmds, shlex.split(cmds[-1][-1])[3]

    cmds, inner = up()
    assert " model.init_from=gs://bkt/checkpoints/base/smollm2 " in inner  # where `import --out gs://...` put it
    assert not any(c[:3] == ["gcloud", "storage", "rsync"] for c in cmds)
    Path("checkpoints/base/smollm2/checkpoints/0").mkdir(parents=True)  # `instructjax import --out` wrote it here
    cmds, inner = up()
    copy = ["gcloud", "storage", "rsync", "--recursive", "checkpoints/base/smollm2", "gs://bkt/checkpoints/base/smollm2"]
    create = next(i for i, c in enumerate(cmds) if c[3:5] == ["tpu-vm", "create"])
    assert cmds.index(copy) < create and " model.init_from=gs://bkt/checkpoints/base/smollm2 " in inner
    Path("mine.yaml").write_text(config.replace("checkpoints/base/smollm2", "gs://models/smollm2"))
    cmds, inner = up()
    assert " model.init_from=gs://models/smollm2 " in inner and not any(c[2] == "rsync" for c in cmds)
    for action in ("status", "stop"):
        assert tpu.main([action, *argv]) == 0
    *_, status, stop = printed(capsys)
    assert status[-1] == tpu.status_script() and stop[-1] == tpu.stop_script(1800)


def test_gpu_single_and_slurm(capsys, monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert gpu.main(["single", "--config", "c.yaml", "--gpus-per-node", "4", "--dry-run", "optim.micro_batches=2"]) == 0
    (cmd,) = printed(capsys)
    flags = " ".join(xla_flags.gpu_flags(4))
    assert cmd == ["env", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.95", f"XLA_FLAGS={flags}", "CUDA_VISIBLE_DEVICES=0,1,2,3",
                   "instructjax", "train", "--config", "c.yaml", "--auto-resume", "optim.micro_batches=2"]
    assert gpu.main(["slurm", "--config", "c.yaml", "--nodes", "4", "--partition", "gpu", "--run-dir", "/shared/r",
                     "--dry-run"]) == 0
    out = capsys.readouterr().out
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8", "#SBATCH --requeue",
                 "#SBATCH --partition=gpu", "export JAX_COORDINATOR_ADDRESS=$HEAD:12355",
                 "export JAX_NUM_PROCESSES=$SLURM_NTASKS",
                 "srun --kill-on-bad-exit=1 bash -c 'JAX_PROCESS_ID=$SLURM_PROCID exec instructjax train --config "
                 "c.yaml --auto-resume run_dir=/shared/r distributed=true' && rc=0 || rc=$?",
                 'if [ "$rc" -eq 75 ]; then scontrol requeue "$SLURM_JOB_ID"; fi', "+ sbatch instructjax.sbatch",
                 f'export XLA_FLAGS="{" ".join(xla_flags.gpu_flags(32))} ${{XLA_FLAGS:-}}"'):
        assert line in out.splitlines()
    with pytest.raises(SystemExit):
        gpu.main(["single", "--config", "c.yaml", "--nodes", "2"])


def test_gpu_flags_reach_the_process_and_xla_takes_them(capsys, monkeypatch):
    """The launcher's environment starts a JAX process whose XLA parses every flag of the GPU set (an unknown
    flag aborts XLA at start-up); a flag the user set keeps the user's value, in the launcher's merge and in
    the sbatch script's order (XLA takes the last of a repeated flag)."""
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_latency_hiding_scheduler=false --xla_force_host_platform_device_count=3")
    assert gpu.main(["single", "--config", "c.yaml", "--gpus-per-node", "2", "--dry-run"]) == 0
    (cmd,) = printed(capsys)
    env = dict(a.split("=", 1) for a in cmd[1:4])  # env A=1 XLA_FLAGS=... CUDA_VISIBLE_DEVICES=... instructjax
    flags = env["XLA_FLAGS"].split()
    assert "--xla_gpu_enable_latency_hiding_scheduler=false" in flags
    assert "--xla_gpu_enable_latency_hiding_scheduler=true" not in flags
    assert set(xla_flags.gpu_flags(2)) - set(flags) == {"--xla_gpu_enable_latency_hiding_scheduler=true"}
    code = "import os, jax; print(jax.device_count(), os.environ['XLA_FLAGS'].count('--xla_gpu'))"
    repeated = "--xla_force_host_platform_device_count=2 --xla_force_host_platform_device_count=5"
    for xla, devices in ((env["XLA_FLAGS"], 3), (" ".join(xla_flags.gpu_flags(8)) + " " + repeated, 5)):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla})
        assert proc.returncode == 0, proc.stderr[-500:]
        assert proc.stdout.split()[0] == str(devices)


CHILD = """import pathlib, signal, sys, time
seen = []
signal.signal(signal.SIGINT, lambda *_: seen.append(1))
pathlib.Path(sys.argv[1]).write_text("ready")
while not seen:
    time.sleep(0.01)
time.sleep(1.0)  # a second copy of the Ctrl-C, if one came, arrives meanwhile
pathlib.Path(sys.argv[1]).write_text(str(len(seen)))
sys.exit(75)
"""


def test_gpu_launcher_passes_a_ctrl_c_on_once_and_does_not_resume(tmp_path):
    """A terminal's Ctrl-C reaches the launcher's whole process group: `single` passes it on to the trainer once (not
    twice: a second one would end the trainer at once, losing its save), and does not resume the run it stopped."""
    marker, child = tmp_path / "seen", tmp_path / "child.py"
    child.write_text(CHILD)
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'launch')!r}); import gpu; "
            f"sys.exit(gpu.run_resuming([sys.executable, {str(child)!r}, {str(marker)!r}]))")
    proc = subprocess.Popen([sys.executable, "-c", code], process_group=0)
    deadline = time.monotonic() + 120
    while not (marker.exists() and marker.read_text() == "ready"):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the launcher's terminal
    assert proc.wait(timeout=60) == 75
    assert marker.read_text() == "1"


def _exits(tmp_path, codes: list[int]) -> list[str]:
    """A command that exits with `codes[i]` on its i-th run (counted in a file)."""
    counter = tmp_path / "runs"
    script = ("import pathlib, sys; p = pathlib.Path(sys.argv[1]); n = int(p.read_text()) if p.exists() else 0; "
              f"p.write_text(str(n + 1)); sys.exit({codes}[n])")
    return [sys.executable, "-c", script, str(counter)]


def test_preempted_runs_are_resumed_by_the_launchers(tmp_path):
    """The exit status `instructjax train` gives after saving on SIGTERM is the one both launchers resume on:
    `single` runs the command again until it exits otherwise; the TPU worker loop does the same in bash."""
    from instructjax.core.stopping import EXIT_PREEMPTED

    assert gpu.EXIT_PREEMPTED == tpu.EXIT_PREEMPTED == EXIT_PREEMPTED
    assert gpu.run_resuming(_exits(tmp_path, [EXIT_PREEMPTED, EXIT_PREEMPTED, 0])) == 0
    assert (tmp_path / "runs").read_text() == "3"
    (tmp_path / "runs").unlink()
    assert gpu.run_resuming(_exits(tmp_path, [EXIT_PREEMPTED, 2, 0])) == 2  # an error is not retried
    (tmp_path / "runs").unlink()
    args = tpu.parse_args(["train", *BASE])
    loop = re.sub(r"instructjax train [^>]*", shlex.join(_exits(tmp_path, [75, 75, 0])) + " ", tpu.train_command(args))
    loop = loop.replace("~/instructjax_train.log", str(tmp_path / "log"))
    assert subprocess.run(["bash", "-c", loop], env={**os.environ, "HOME": str(tmp_path)}).returncode == 0
    assert (tmp_path / "runs").read_text() == "3"


TINY_RUN = {"model": {"preset": "tiny", "dtype": "float32"}, "mesh": {"data": 4, "fsdp": 2},
            "data": {"mixture": "acp_ACP_n10000_builtin", "seq_len": 128, "global_batch": 8, "pack_window": 64,
                     "prefetch": 0},
            "optim": {"lr": 3e-3}, "max_steps": 300, "log_every": 1, "checkpoint": {"every": 1000}}


@pytest.mark.slow
def test_the_launchers_own_start_command_stops_on_its_stop_with_the_step_saved(tmp_path, bucket, capfd, monkeypatch):
    """launch/tpu_vm.py's own `train` and `stop` commands, run on this machine: gcloud's transport stood in for by
    tests/helpers/fake_gcloud.py (2 workers, each a home folder; JAX's runtime over 127.0.0.1), `instructjax` the real
    CLI on a tiny config (tests/helpers/fault_worker.py: each step at least 0.3 s, so the trainers wait for `stop` rather
    than train flat out on the test's cores), the run in a bucket on the GCS-API server. `train` starts the loop as on a worker (`nohup
    bash -c ... &` from a non-interactive shell: SIGINT ignored); mid-run `stop` sends SIGTERM and returns once both
    trainers have exited, naming the step they saved, sealed; the loops do not resume."""
    bin_dir, homes = tmp_path / "bin", [tmp_path / f"worker{i}" for i in range(2)]
    for folder in (bin_dir, *homes):
        folder.mkdir()
    for name, target in (("gcloud", f"{sys.executable} {REPO / 'tests/helpers/fake_gcloud.py'}"),
                         ("instructjax", f"env PYTHONPATH={REPO} FAULT_STEP_SECONDS=0.3 {sys.executable} {WORKER}")):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {target} "$@"\n')
        (bin_dir / name).chmod(0o755)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_TPU_HOMES": os.pathsep.join(map(str, homes)),
                       "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PLATFORMS": "cpu",
                       "XLA_FLAGS": host_xla_flags(4),
                       "INSTRUCTJAX_PROGRESS_SECONDS": "0.2"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_RUN))
    argv = ["--name", "local", "--zone", "z", "--bucket", bucket, "--config", str(tmp_path / "tiny.yaml")]
    run, log = f"{bucket}/runs/local", homes[0] / "instructjax_train.log"
    try:
        assert tpu.main(["train", *argv]) == 0
        deadline = time.monotonic() + 900
        while max(map(int, re.findall(r"train: (\d+)/300", log.read_text() if log.exists() else "")), default=0) < 3:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        loop = int((homes[0] / "instructjax_loop.pid").read_text())
        assert "SIGINT" in signal_set(loop, "SigIgn")  # as `nohup ... &` from a script leaves it: inherited by the trainer
        assert {"SIGINT", "SIGTERM"} <= signal_set(trainer_pid(homes[0]), "SigCgt")  # which takes both back
        capfd.readouterr()
        assert tpu.main(["stop", *argv]) == 0
        out = capfd.readouterr().out.splitlines()
        assert sum(line.endswith(": the training loop has ended") for line in out) == 2, out
        found = re.fullmatch(rf"stopped: every worker's trainer has exited; {run}: step (\d+) saved and sealed; "
                             r"last logged step (\d+)", out[-1])  # fmt: skip
        assert found and found.group(1) == found.group(2), out
        step = int(found.group(1))
        from instructjax.core import integrity, storage

        checkpoints = storage.path(run) / "checkpoints"
        assert 3 <= step < 300 and integrity.steps_on_disk(checkpoints) == [step]  # the step in flight, none due
        assert integrity.has_manifest(checkpoints / str(step)) and not (storage.path(run) / "DONE").exists()
        text = log.read_text()
        assert f"instructjax: preempted: saved step {step} in {run}" in text and "preempted: resuming" not in text
        assert tpu.main(["status", *argv]) == 0
        out = capfd.readouterr().out.splitlines()
        assert sum(line.endswith(": stopped by stop") for line in out) == 2 and out[-1].startswith(f"{run}: step {step} ")
    finally:
        for home in homes:  # whatever is left of a failed run
            pid = home / "instructjax_loop.pid"
            if pid.exists():
                subprocess.run(["pkill", "-KILL", "-P", pid.read_text().strip()])
                subprocess.run(["kill", "-KILL", pid.read_text().strip()], stderr=subprocess.DEVNULL)


def trainer_pid(home: Path) -> int:
    """The trainer the training loop of the worker at `home` runs."""
    loop = (home / "instructjax_loop.pid").read_text().strip()
    return int(subprocess.run(["pgrep", "-P", loop], capture_output=True, text=True).stdout.split()[0])

