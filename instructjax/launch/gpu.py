#!/usr/bin/env python
"""Run an instructjax config on GPUs: one node (all its GPUs, one process) or a SLURM multi-node job.

    python launch/gpu.py single --config configs/seed004_tulu/tulu_human_gpt_llama2_7b.yaml --dry-run
    python launch/gpu.py slurm --config CONFIG --nodes 4 --gpus-per-node 8 --partition gpu --dry-run

`single` runs `instructjax train --auto-resume` in one process that sees every local GPU. Both give the training
process the GPU XLA flags of instructjax.core.xla_flags (the scheduler, GEMM and collective settings measured
for LLaMA on H100s); a flag the user already has in XLA_FLAGS wins. `slurm` writes
an sbatch script: one task per node, `srun` starts the same command everywhere with the
jax.distributed environment the trainer reads (JAX_COORDINATOR_ADDRESS = the first node,
JAX_NUM_PROCESSES = tasks, JAX_PROCESS_ID = SLURM_PROCID); `--requeue` plus `--auto-resume` make a
preempted or failed-node job continue from its latest checkpoint. `--dry-run` prints the exact
commands (and the sbatch script) instead of running them.

SIGTERM or SIGINT makes `instructjax train` save the step in flight and exit 75 (EXIT_PREEMPTED): `single` then
runs it again (it resumes), unless the launcher itself was told to stop (Ctrl-C or SIGTERM to it: passed on to the
trainer once, which runs in a process group of its own so that a terminal's Ctrl-C reaches it once, through the
launcher; a second one, passed on too, ends the trainer at once); the sbatch script re-queues the job.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from instructjax.core import xla_flags

COORDINATOR_PORT = 12355
EXIT_PREEMPTED = 75  # `instructjax train` saved the step in flight on a signal (instructjax.core.stopping)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["single", "slurm"])
    p.add_argument("--config", required=True, help="run config YAML")
    p.add_argument("--run-dir", help="override the config's run_dir (e.g. shared storage)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--partition", help="SLURM partition")
    p.add_argument("--account", help="SLURM account")
    p.add_argument("--time", default="48:00:00", help="SLURM time limit")
    p.add_argument("--job-name", default="instructjax")
    p.add_argument("--script", default="instructjax.sbatch", help="where `slurm` writes the sbatch script")
    p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="passed on to `instructjax train`")
    args = p.parse_intermixed_args(argv)
    if args.nodes < 1 or args.gpus_per_node < 1:
        p.error("--nodes and --gpus-per-node must be >= 1")
    if args.mode == "single" and args.nodes != 1:
        p.error("single runs on one node; use `slurm` for --nodes > 1")
    return args


def train_argv(args, distributed: bool) -> list[str]:
    """`instructjax train` with the config, --auto-resume, and the launcher's overrides."""
    overrides = ([f"run_dir={args.run_dir}"] if args.run_dir else []) + (["distributed=true"] if distributed else [])
    return ["instructjax", "train", "--config", args.config, "--auto-resume", *overrides, *args.overrides]


def single_command(args) -> list[str]:
    """One process over the node's GPUs (XLA may take 95% of each GPU's memory)."""
    flags = xla_flags.merged(os.environ.get("XLA_FLAGS"), xla_flags.gpu_flags(args.gpus_per_node))
    env = ["env", "XLA_PYTHON_CLIENT_MEM_FRACTION=0.95", f"XLA_FLAGS={flags}",
           f"CUDA_VISIBLE_DEVICES={','.join(str(i) for i in range(args.gpus_per_node))}"]
    return env + train_argv(args, distributed=False)


def sbatch_script(args) -> str:
    """The sbatch script of a multi-node run (one task per node, all of its GPUs)."""
    header = [
        "#!/bin/bash",
        f"#SBATCH --job-name={args.job_name}",
        f"#SBATCH --nodes={args.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={args.gpus_per_node}",
        f"#SBATCH --time={args.time}",
        "#SBATCH --requeue",
        "#SBATCH --signal=TERM@300",  # before the time limit: save, exit 75, re-queue
        "#SBATCH --output=%x-%j.out",
    ]
    header += [f"#SBATCH --partition={args.partition}"] if args.partition else []
    header += [f"#SBATCH --account={args.account}"] if args.account else []
    body = [
        "set -euo pipefail",
        'HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"export JAX_COORDINATOR_ADDRESS=$HEAD:{COORDINATOR_PORT}",
        "export JAX_NUM_PROCESSES=$SLURM_NTASKS",
        "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95",
        # ours first: a flag the job's own XLA_FLAGS names again comes later and wins
        'export XLA_FLAGS="' + " ".join(xla_flags.gpu_flags(args.nodes * args.gpus_per_node)) + ' ${XLA_FLAGS:-}"',
        # JAX_PROCESS_ID must be each task's own rank, so it is set inside the srun'd shell
        "srun --kill-on-bad-exit=1 bash -c "
        + shlex.quote("JAX_PROCESS_ID=$SLURM_PROCID exec " + shlex.join(train_argv(args, distributed=True)))
        + " && rc=0 || rc=$?",
        f'if [ "$rc" -eq {EXIT_PREEMPTED} ]; then scontrol requeue "$SLURM_JOB_ID"; fi',
        'exit "$rc"',
        "",
    ]
    return "\n".join(header + body)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.mode == "single":
        cmd = single_command(args)
    else:
        script = sbatch_script(args)
        if args.dry_run:
            print(f"# {args.script}:\n{script}", end="")
        else:
            Path(args.script).write_text(script)
        cmd = ["sbatch", args.script]
    print("+ " + shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    return run_resuming(cmd) if args.mode == "single" else subprocess.run(cmd).returncode


def run_resuming(cmd: list[str]) -> int:
    """Run `cmd`; while it exits EXIT_PREEMPTED (saved on a signal) run it again, unless this launcher was itself
    sent SIGTERM or SIGINT (then each signal is passed on, and the status returned)."""
    stopping, child = False, None

    def forward(signum, frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, forward)
    while not stopping:
        child = subprocess.Popen(cmd, process_group=0)  # a terminal's Ctrl-C reaches it once: through `forward`
        code = child.wait()
        if code != EXIT_PREEMPTED or stopping:
            return code
        print("+ preempted (checkpoint saved): resuming", flush=True)
    return EXIT_PREEMPTED


if __name__ == "__main__":
    sys.exit(main())
