#!/usr/bin/env python
"""Run an instructjax config on a Cloud TPU VM slice: create, set up, train on every worker, follow, stop, delete.

    python launch/tpu_vm.py --name tulu7b --zone us-central2-b --accelerator v4-64 \\
        --bucket gs://my-bucket --config configs/seed004_tulu/tulu_human_gpt_llama2_7b.yaml  up --dry-run

Actions: `create` (on-demand/spot VM), `queued` (queued resource whose startup script installs the
package and runs the training loop on every worker at boot), `setup` (install on --worker=all),
`train` (copy the config, start `instructjax train --auto-resume` on every worker), `up` (create, setup,
train), `logs` (stream worker 0's log), `status` (what every worker runs, and what the run in the bucket holds:
DONE, the newest sealed step, the last logged step), `stop` (SIGTERM to the trainer on every worker, which saves
the step in flight; waits until every worker's trainer has exited, then names the sealed step), `delete`,
`watch` (keep a queued resource alive: a preempted slice is deleted and re-queued, and its startup script resumes
from the latest checkpoint in the bucket, until the run writes its DONE marker). `--dry-run` prints the exact
commands.

`--config` is a file, or a shipped config by name (`quickstart`, `seed004_tulu/tulu_human_gpt_llama2_7b`).
Checkpoints go to `BUCKET/runs/NAME`. The config's `model.init_from` is read by the workers from the bucket: a
gs:// path as it is; a local path P at `BUCKET/P` (an absolute one at `BUCKET/checkpoints/base/<its last folder>`),
copied there first (`gcloud storage rsync`) when it exists here, else taken to be there already (`instructjax import
--out gs://BUCKET/checkpoints/base/...` writes it there); `--init-from` names another place. A config without one
trains from scratch. Run from a source checkout, the workers install the package from it: `setup`, `up` and
`queued` first build its wheel (`pip wheel --no-deps .`) and copy it to `BUCKET/wheels/`; run from an installed
package, they install the same version (`instructjax==X`, from an index you use); `--package` names another (a
gs:// wheel, `git+https://...`, or a requirement).

On a worker the trainer runs in a loop (`train_command`) that resumes it after a preemption notice (exit 75) while
the VM lives, and records its shell's pid in ~/instructjax_loop.pid; `stop` leaves ~/instructjax_stop, so the loop
ends instead of resuming.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # a source checkout (instructjax/launch/ is this script's folder)
CHECKOUT = (ROOT / "pyproject.toml").is_file()  # else the script runs from an installed package
DEFAULT_RUNTIME = {"v4": "tpu-ubuntu2204-base", "v5litepod": "v2-alpha-tpuv5-lite", "v5e": "v2-alpha-tpuv5-lite",
                   "v5p": "v2-alpha-tpuv5", "v6e": "v2-alpha-tpuv6e"}
REMOTE_CONFIG = "~/instructjax_run.yaml"
REMOTE_LOG = "~/instructjax_train.log"
REMOTE_PID = "~/instructjax_loop.pid"  # the worker's training loop (its shell)
REMOTE_STOP = "~/instructjax_stop"  # left by `stop`: the loop ends instead of resuming
EXIT_PREEMPTED = 75  # `instructjax train` saved the step in flight on a signal (instructjax.core.stopping)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["create", "queued", "setup", "train", "up", "logs", "status", "stop", "delete",
                                      "watch"])
    p.add_argument("--name", required=True, help="TPU VM (node) name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", help="GCP project (default: gcloud's)")
    p.add_argument("--accelerator", default="v4-64", help="accelerator type, e.g. v4-64, v5litepod-16, v5p-128")
    p.add_argument("--runtime", help="TPU software version (default per generation)")
    p.add_argument("--spot", action="store_true", help="spot capacity (preemptible; use with queued + watch)")
    p.add_argument("--bucket", help="gs:// bucket for runs and base checkpoints")
    p.add_argument("--config", help="run config: a YAML file, or a shipped config by name (train, up, queued)")
    p.add_argument("--init-from", help="where the workers read model.init_from (default: the config's; a local path "
                   "P: BUCKET/P, copied there first when it is here)")
    p.add_argument("--package", help="what the workers install: a wheel on gs:// (copied down first), "
                   "git+https://..., or a requirement (default: this checkout's wheel, built and put in the bucket; "
                   "from an installed package: its version)")
    p.add_argument("--poll", type=int, default=300, help="watch: seconds between state checks")
    p.add_argument("--stop-timeout", type=int, default=1800, help="stop: seconds to wait for the workers' save")
    p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    args = p.parse_args(argv)
    if args.action in ("train", "up", "queued") and not (args.config and args.bucket):
        p.error(f"{args.action} needs --config and --bucket")
    if args.action == "setup" and not (args.package or args.bucket):
        p.error("setup needs --bucket (this checkout's wheel goes there) or --package")
    if args.bucket and not args.bucket.startswith("gs://"):
        p.error(f"--bucket must be a gs:// path, got {args.bucket!r}")
    if args.action in ("status", "stop", "watch") and not args.bucket:
        p.error(f"{args.action} needs --bucket (the run lives in BUCKET/runs/NAME)")
    if args.config:  # checked as the trainer reads it (a shipped config by name too): one line before any command
        from instructjax.cli import load_run_config
        from instructjax.core.errors import InstructJaxError
        from instructjax.core.shipped import config_file

        try:
            args.config = config_file(args.config)
            if "://" in args.config:
                raise InstructJaxError(f"--config must be a file here (it is copied to every worker), got {args.config}")
            args.run_config = load_run_config(args.config)
        except InstructJaxError as e:
            print(f"tpu_vm.py: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
    return args


def _where(args) -> list[str]:
    return ["--zone", args.zone] + (["--project", args.project] if args.project else [])


def _runtime(args) -> str:
    return args.runtime or DEFAULT_RUNTIME[args.accelerator.split("-")[0]]


def _ssh(args, command: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, *_where(args), f"--worker={worker}",
            "--command", command]


def version() -> str:
    """The package's version: the checkout's pyproject.toml, else the installed distribution's."""
    if CHECKOUT:
        import tomllib

        return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    from importlib.metadata import version as installed

    return installed("instructjax")


def wheel() -> str:
    """The file name of this checkout's wheel."""
    return f"instructjax-{version()}-py3-none-any.whl"


def package(args) -> str:
    """What the workers install: `--package`, else this checkout's wheel in the bucket, else (an installed
    package) the same version from an index."""
    if args.package:
        return args.package
    return f"{args.bucket}/wheels/{wheel()}" if CHECKOUT else f"instructjax=={version()}"


def publish_commands(args) -> list[list[str]]:
    """Build this checkout's wheel and copy it to the bucket (nothing when `--package` names another, or when
    there is no checkout to build)."""
    if args.package or not CHECKOUT:
        return []
    built = Path(tempfile.gettempdir()) / "instructjax-wheel"
    return [[sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(built), str(ROOT)],
            ["gcloud", "storage", "cp", str(built / wheel()), package(args)]]


def install_command(package: str) -> str:
    """Shell that installs the package (a gs:// wheel is copied down first) with TPU jax."""
    if package.startswith("gs://"):
        wheel = package.rsplit("/", 1)[1]
        return f"gcloud storage cp {package} /tmp/{wheel} && pip install '/tmp/{wheel}' 'jax[tpu]'"
    return f"pip install {shlex.quote(package)} 'jax[tpu]'"


def run_dir(args) -> str:
    """Where the run lives: BUCKET/runs/NAME (`instructjax sweep --launch tpu` reads it there too)."""
    return f"{args.bucket}/runs/{args.name}"


def init_from(args) -> tuple[str | None, Path | None]:
    """(where the workers read model.init_from, the local directory to copy there first or None); (None, None)
    for a config that trains from scratch. See the module doc."""
    config = getattr(args, "run_config", None)
    given = args.init_from or (config.model.init_from if config is not None else None)
    if not given or "://" in given or args.init_from:
        return given or None, None
    local = Path(given)
    inside = not local.is_absolute() and ".." not in local.parts
    remote = f"{args.bucket}/{local.as_posix()}" if inside else f"{args.bucket}/checkpoints/base/{local.resolve().name}"
    return remote, (local if local.is_dir() else None)


def upload_commands(args) -> list[list[str]]:
    """Copy a local model.init_from to where the workers read it (`init_from`); nothing when it is not here."""
    remote, local = init_from(args)
    return [["gcloud", "storage", "rsync", "--recursive", str(local), remote]] if local is not None else []


def train_command(args) -> str:
    """The training loop every worker runs: resume from the bucket, multi-host JAX, the tokenized cache in the bucket
    (shared by the workers, or made ahead by `instructjax data prepare`); a run that stopped for a preemption notice
    (exit 75, checkpoint saved) is resumed at once while the VM lives, unless `stop` asked for the stop. The run
    writes RUN_DIR/DONE itself once it trained to its last step. Started with `bash -c` (its pid is the loop's)."""
    remote, _ = init_from(args)
    overrides = [f"run_dir={run_dir(args)}", "distributed=true"] + ([f"model.init_from={remote}"] if remote else [])
    cache = f"INSTRUCTJAX_CACHE_DIR={args.bucket}/tokenized"  # the workers tokenize together, once (data prepare)
    train = f"{cache} instructjax train --config {REMOTE_CONFIG} --auto-resume " + " ".join(overrides)
    return (f"echo $$ > {REMOTE_PID}; rm -f {REMOTE_STOP}; "
            f"while [ ! -e {REMOTE_STOP} ]; do {train} >> {REMOTE_LOG} 2>&1 && rc=0 || rc=$?; "
            f"[ $rc -eq {EXIT_PREEMPTED} ] && [ ! -e {REMOTE_STOP} ] || break; "
            f"echo 'preempted: resuming' >> {REMOTE_LOG}; done")


# The loop's shell on this worker, when it runs: the pid file names a live `bash -c` of ours.
_LOOP = (f'loop=$(cat {REMOTE_PID} 2>/dev/null); '
         'if [ -n "$loop" ] && ps -ww -p "$loop" -o args= 2>/dev/null | grep -q "instructjax train"; then running=1; '
         'else running=; fi')


def stop_script(timeout: int) -> str:
    """What `stop` runs on every worker: the stop marker (no resume after this), one SIGTERM to each trainer the loop
    runs, then a wait (at most `timeout` s) until the loop has ended: the trainer saved and sealed the step in
    flight, with the other workers (JAX's preemption sync point), and exited. One line says which."""
    return (f"touch {REMOTE_STOP}; {_LOOP}; "
            'if [ -z "$running" ]; then echo "$(hostname): no training loop runs here"; exit 0; fi; '
            'sent=" "; while kill -0 "$loop" 2>/dev/null; do '
            'for p in $(pgrep -P "$loop"); do case "$sent" in *" $p "*) ;; '
            '*) kill -TERM "$p" 2>/dev/null; sent="$sent$p ";; esac; done; '
            f'if [ "$SECONDS" -ge {timeout} ]; then echo "$(hostname): still saving after {timeout} s"; exit 1; fi; '
            'sleep 1; done; echo "$(hostname): the training loop has ended"')


def status_script() -> str:
    """What `status` runs on every worker: whether its training loop runs (or was stopped), and its log's last line."""
    return (f"{_LOOP}; "
            'if [ -n "$running" ]; then echo "$(hostname): training"; '
            f'elif [ -e {REMOTE_STOP} ]; then echo "$(hostname): stopped by stop"; '
            'else echo "$(hostname): not training"; fi; '
            f'[ -e {REMOTE_LOG} ] && echo "$(hostname): $(tail -c 400 {REMOTE_LOG} | tr "\\r" "\\n" | grep . | tail -n 1)"'
            "; true")


def run_state(run: str) -> str:
    """What the run in `run` (BUCKET/runs/NAME) holds, in one line: DONE, else its newest step (sealed or not) and
    the last logged step."""
    from instructjax.core import checkpoint, integrity, storage

    done = storage.path(run) / "DONE"
    if done.is_file():
        return f"{run}: done, trained to step {json.loads(done.read_text())['step']} (DONE)"
    directory = checkpoint.checkpoints_dir(run)
    steps = integrity.steps_on_disk(directory)
    metrics = storage.path(run) / "metrics.jsonl"
    logged = [line for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() else []
    last = f"; last logged step {json.loads(logged[-1])['step']}" if logged else ""
    if not steps:
        return f"{run}: no checkpoint yet{last}"
    newest = steps[-1]
    if integrity.has_manifest(directory / str(newest)):
        return f"{run}: step {newest} saved and sealed{last}"
    sealed = [s for s in steps if integrity.has_manifest(directory / str(s))]
    before = f"step {sealed[-1]} is the newest sealed one" if sealed else "no step is sealed"
    return f"{run}: step {newest} is not sealed yet (being written, or torn); {before}{last}"


def startup_script(args) -> str:
    """Boot script of every worker of a queued resource: install, fetch the config, train (resumes)."""
    return "\n".join([
        "#!/bin/bash",
        "set -euo pipefail",
        "cd ~",
        install_command(package(args)),
        f"gcloud storage cp {args.bucket}/configs/{args.name}.yaml {REMOTE_CONFIG}",
        f"bash -c {shlex.quote(train_command(args))}",
        "",
    ])


def startup_path(args) -> Path:
    """Where the queued resource's startup script is written before `queued-resources create` reads it."""
    return Path(tempfile.gettempdir()) / f"instructjax-{args.name}-startup.sh"


def commands(args) -> list[list[str]]:
    """The gcloud commands of one action, in order (watch: those of one check)."""
    tpus = ["gcloud", "compute", "tpus"]
    create = [*tpus, "tpu-vm", "create", args.name, *_where(args), f"--accelerator-type={args.accelerator}",
              f"--version={_runtime(args)}"] + (["--spot"] if args.spot else [])
    setup = [*publish_commands(args), _ssh(args, install_command(package(args)))] if args.bucket or args.package \
        else []
    train = []
    if args.config:  # the trainer takes SIGINT and SIGTERM itself, whatever `&` leaves it (core.stopping)
        train = [[*tpus, "tpu-vm", "scp", args.config, f"{args.name}:{REMOTE_CONFIG}", *_where(args), "--worker=all"],
                 _ssh(args, f"nohup bash -c {shlex.quote(train_command(args))} > /dev/null 2>&1 &")]
    if args.action == "create":
        return [create]
    if args.action == "setup":
        return setup
    if args.action == "train":
        return [*upload_commands(args), *train]
    if args.action == "up":  # the wheel is built and the base weights copied before a VM is paid for
        return [*setup[:-1], *upload_commands(args), create, setup[-1], *train]
    if args.action == "logs":
        return [_ssh(args, f"tail -n 100 -f {REMOTE_LOG}", worker="0")]
    if args.action == "status":
        return [_ssh(args, status_script())]
    if args.action == "stop":
        return [_ssh(args, stop_script(args.stop_timeout))]
    if args.action == "delete":
        return [[*tpus, "tpu-vm", "delete", args.name, *_where(args), "--quiet"]]
    if args.action == "queued":
        return [*publish_commands(args), *upload_commands(args),
                ["gcloud", "storage", "cp", args.config, f"{args.bucket}/configs/{args.name}.yaml"],
                [*tpus, "queued-resources", "create", f"{args.name}-qr", f"--node-id={args.name}", *_where(args),
                 f"--accelerator-type={args.accelerator}", f"--runtime-version={_runtime(args)}",
                 f"--metadata-from-file=startup-script={startup_path(args)}"] + (["--spot"] if args.spot else [])]
    # watch: one check of the loop
    return [[*tpus, "queued-resources", "describe", f"{args.name}-qr", *_where(args), "--format=value(state.state)"]]


def requeue_commands(args) -> list[list[str]]:
    """What `watch` runs when the slice was preempted: delete the queued resource and queue it again."""
    delete = ["gcloud", "compute", "tpus", "queued-resources", "delete", f"{args.name}-qr", *_where(args),
              "--force", "--quiet"]
    return [delete, commands(argparse.Namespace(**{**vars(args), "action": "queued"}))[-1]]  # create it again


def _run(cmd: list[str], dry_run: bool, capture: bool = False) -> str:
    print("+ " + shlex.join(cmd), flush=True)
    if dry_run:
        return ""
    out = subprocess.run(cmd, check=True, text=True, capture_output=capture)
    return out.stdout.strip() if capture else ""


def watch(args) -> int:
    """Re-queue a preempted slice until BUCKET/runs/NAME/DONE exists."""
    done = ["gcloud", "storage", "ls", f"{run_dir(args)}/DONE"]
    while True:
        if args.dry_run:
            for cmd in [done, *commands(args), *requeue_commands(args)]:
                _run(cmd, True)
            return 0
        if subprocess.run(done, capture_output=True).returncode == 0:
            _run(["gcloud", "compute", "tpus", "queued-resources", "delete", f"{args.name}-qr", *_where(args),
                  "--force", "--quiet"], False)
            return 0
        state = _run(commands(args)[0], False, capture=True)
        print(f"state: {state}", flush=True)
        if state in ("SUSPENDED", "FAILED"):
            startup_path(args).write_text(startup_script(args))
            for cmd in requeue_commands(args):
                _run(cmd, False)
        time.sleep(args.poll)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.action == "watch":
        if not args.bucket:
            raise SystemExit("watch needs --bucket (it looks for the run's DONE marker)")
        return watch(args)
    if args.action == "queued":
        startup_path(args).write_text(startup_script(args))
        print(f"# startup script {startup_path(args)}:\n{startup_script(args)}", flush=True)
    for cmd in commands(args):
        try:
            _run(cmd, args.dry_run)
        except subprocess.CalledProcessError as e:  # its own output said why (a worker still saving: stop's line)
            print(f"tpu_vm.py: error: `{shlex.join(cmd[:6])} ...` exited {e.returncode}", file=sys.stderr)
            return 1
    if args.action in ("status", "stop"):
        if args.dry_run:
            print(f"# then: what {run_dir(args)} holds (DONE, the newest sealed step)", flush=True)
        else:
            state = run_state(run_dir(args))
            print(f"stopped: every worker's trainer has exited; {state}" if args.action == "stop" else state,
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
