"""`instructjax sweep DIR_OR_GLOB`: run every config of a family in turn: train, export, `eval --config`.

A stage whose output is complete and stands for what the config asks now is skipped, so running the sweep
again continues where it stopped and redoes what a changed config changed. Each stage's marker records what
it stands for:
  train   RUN_DIR/DONE, written by `train` when it trained to the last step: {step, config} with the config's
          `training_digest`; a changed training config (more epochs, other data) trains again, resuming from the
          latest checkpoint. None for max_steps: 0 (eval only).
  export  RUN_DIR/hf/instructjax_export.json, written last by `export`: the checkpoint step it holds, which must
          be the run's newest intact step (a damaged newest step: the one before, as export itself takes).
  eval    RUN_DIR/eval/results.json (eval.out_dir): the model, the checkpoint step evaluated and the eval: block's
          digest, and every part the block names; another step (an `eval --config` taken during training) or
          another block is evaluated again; a judged part is run again when what it waits for has arrived
          since (the judge's replies, another run's outputs for a pairwise comparison: eval/judged.py), its
          outputs and the other parts kept.
RUN_DIR may be local or in a bucket. With `--launch tpu` a run lives where the launcher puts it
(BUCKET/runs/NAME, launch/tpu_vm.py `run_dir`), and every stage reads it there.
The stages run in this process, the same code as `train --auto-resume`, `export --force` and `eval --config`.
SIGTERM or SIGINT (Ctrl-C) during training saves the step in flight and the sweep exits 75, as `train` does; during another
stage, that stage finishes (its marker written) and the sweep exits 75 before the next (`core.stopping`). A stage
that fails is reported in one line, the run's later stages wait, and the sweep goes on with the next config.

One status table (config, stage, steps, result, elapsed) is printed at the end and kept, updated after every
stage, in sweep.json (`--status`; default: in the common parent of the run directories, local or a bucket).

`--launch tpu|gpu` hands each run's training to launch/tpu_vm.py (`up`) or launch/gpu.py (`single`), with
`--launch-args`; a GPU run is then exported and evaluated here, a TPU run trains on its VM (checkpoints and
DONE in BUCKET/runs/NAME). `--dry-run` prints the commands instead of running them.

A config whose model.init_from is another config's run directory (a preference stage continuing an SFT run) runs
after it, and waits (reported, exit 1) while that run has not trained to its end.

Each config's stages run in a context of their own (`core.context`): the tasks and mixtures its `define:` block
registers are its own, so configs that define a mixture of one name with other rates (a swarm's proxies,
`mix swarm`) each train their own.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from instructjax.cli import add_on_bad_row, load_run_config, on_bad_row_overrides
from instructjax.cli.sweep_stages import (  # noqa: F401  (the stages' names, at their old import path too)
    STAGES,
    Row,
    _marker,
    eval_stage,
    eval_todo,
    export_stage,
    exported_step,
    stage_done,
    train_stage,
    trained_step,
)
from instructjax.core import stopping, storage
from instructjax.core.context import Context, current
from instructjax.core.errors import InstructJaxError
from instructjax.core.shipped import launch_dir
from instructjax.core.stopping import EXIT_PREEMPTED
from instructjax.eval.config import eval_section
from instructjax.eval.run import config_parts

if TYPE_CHECKING:
    import argparse

    from instructjax.core.config import RunConfig

LAUNCH_DIR = launch_dir()  # the shipped launch scripts (a checkout's launch/ links here)


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="run a family of configs: train, export, eval (resumable)")
    p.add_argument("configs", metavar="DIR_OR_GLOB", help="a directory of run configs (recursively) or a glob")
    p.add_argument("--status", help="where the status table is kept (default: RUNS_PARENT/sweep.json)")
    p.add_argument("--launch", choices=["tpu", "gpu"], help="hand each run's training to launch/tpu_vm.py "
                                                             "or launch/gpu.py")
    p.add_argument("--launch-args", default="", help="arguments for the launcher, e.g. '--zone Z --bucket gs://B' "
                                                      "(one flag alone: --launch-args=--spot)")
    p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    add_on_bad_row(p)
    p.set_defaults(func=run)


class Status:
    """The status table, printed and kept in sweep.json (rewritten whole after every change)."""

    def __init__(self, path: str | None):
        self.path, self.rows = path, []  # path None (a dry run): kept nowhere

    def add(self, config: str, stage: str) -> Row:
        self.rows.append(Row(config, stage))
        return self.rows[-1]

    def save(self) -> None:
        if self.path is None:
            return
        storage.write_text(self.path, json.dumps({"updated": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                  "rows": [asdict(r) for r in self.rows]}, indent=2) + "\n")

    def table(self) -> str:
        cells = [("config", "stage", "steps", "result", "elapsed")]
        cells += [(r.config, r.stage, r.steps, r.result, "-" if r.elapsed is None else f"{r.elapsed:.1f}s")
                  for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(4)]
        return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(4)) + "  " + c[4] for c in cells)




def launch_command(kind: str, path: Path, config: RunConfig, launch_args: str, dry_run: bool) -> list[str]:
    """The launcher's command line for one config's training (with --dry-run: the launcher prints its own)."""
    if not LAUNCH_DIR.is_dir():
        raise InstructJaxError(f"--launch needs the launch scripts the package ships ({LAUNCH_DIR} is missing: reinstall instructjax)")
    if kind == "tpu":
        cmd = [sys.executable, str(LAUNCH_DIR / "tpu_vm.py"), "up", "--name", tpu_name(config), "--config", str(path)]
        if storage.is_remote(config.model.init_from or ""):  # where the launcher put the run it starts from
            cmd += ["--init-from", config.model.init_from]
    else:
        cmd = [sys.executable, str(LAUNCH_DIR / "gpu.py"), "single", "--config", str(path)]
    return cmd + shlex.split(launch_args) + (["--dry-run"] if dry_run else [])


def local_commands(path: Path, config: RunConfig) -> dict[str, str]:
    """What each stage amounts to on the command line (printed by --dry-run)."""
    return {"train": f"instructjax train --config {path} --auto-resume",
            "export": f"instructjax export --checkpoint {config.run_dir} --out {storage.join(config.run_dir, 'hf')} "
                      "--force",
            "eval": f"instructjax eval --config {path}"}


def launcher_run_dir(path: Path, config: RunConfig, launch_args: str) -> str:
    """Where launch/tpu_vm.py puts the run of `config` (its own `run_dir`, from the same arguments)."""
    spec = importlib.util.spec_from_file_location("instructjax_tpu_vm", LAUNCH_DIR / "tpu_vm.py")
    launcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launcher)
    args = launcher.parse_args(["train", "--name", tpu_name(config), "--config", str(path), *shlex.split(launch_args)])
    return launcher.run_dir(args)


def tpu_name(config: RunConfig) -> str:
    return config.name.lower().replace("_", "-").replace(".", "-")  # TPU node names: a-z, 0-9, -


# ---- the sweep ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    with stopping.listening():
        return _sweep(args)


def _sweep(args: argparse.Namespace) -> int:
    from instructjax.report.runs import config_paths

    paths = config_paths(args.configs)
    loaded, failed_to_load = {}, {}
    for path in paths:
        try:
            loaded[path] = load_run_config(path, on_bad_row_overrides(args))
            stages_of(loaded[path])  # an unknown suite: one line, before anything runs
        except (InstructJaxError, SystemExit) as e:
            loaded.pop(path, None)
            failed_to_load[path] = str(e)
    starts = started_from(paths, loaded)  # by the run directories the configs name
    if args.launch == "tpu":
        to_launcher(paths, loaded, failed_to_load, starts, args.launch_args)
    where = args.status or storage.join(common_parent([c.run_dir for c in loaded.values()]), "sweep.json")
    status = Status(None if args.dry_run else where)
    code = 0
    for path in after_their_starts(paths, starts):
        if path in failed_to_load:
            status.add(path.stem, "config").result = f"failed: {failed_to_load[path]}"
            code = 1
            continue
        start = starts.get(path)
        if start is not None and not args.dry_run and not stage_done(loaded[start], "train"):
            status.add(loaded[path].name, "train").result = f"waiting: {loaded[start].name} has not trained"
            code = 1
            continue
        with Context(parent=current()):  # the config's own registry: two configs' `define:` of one name each count
            outcome = sweep_one(path, loaded[path], status, args)
        if outcome == "preempted":
            code = EXIT_PREEMPTED
            break
        if outcome == "failed":
            code = 1
    status.save()
    print(status.table())
    if status.path is not None:
        print(f"status kept in {status.path}")
    return code


def to_launcher(paths: list[Path], loaded: dict, failed: dict, starts: dict[Path, Path], launch_args: str) -> None:
    """`--launch tpu`: each run lives where the launcher puts it (every stage reads it there), and a run that starts
    from another config's run starts from where the launcher put that one (`launch_command` passes it on)."""
    for path in paths:
        try:
            if path in loaded:
                remote = launcher_run_dir(path, loaded[path], launch_args)
                loaded[path] = dataclasses.replace(loaded[path], run_dir=remote)
        except (InstructJaxError, SystemExit) as e:
            loaded.pop(path, None)
            failed[path] = str(e)
    for path, start in starts.items():
        if path in loaded and start in loaded:
            model = dataclasses.replace(loaded[path].model, init_from=loaded[start].run_dir)
            loaded[path] = dataclasses.replace(loaded[path], model=model)


def started_from(paths: list[Path], loaded: dict) -> dict[Path, Path]:
    """Each config whose model.init_from is the run directory of another config here -> that config (an SFT run a
    preference run continues: the family's stages, one after the other)."""
    by_dir = {loaded[p].run_dir.rstrip("/"): p for p in paths if p in loaded}
    found = {p: by_dir.get((loaded[p].model.init_from or "").rstrip("/")) for p in paths if p in loaded}
    return {p: start for p, start in found.items() if start is not None and start != p}


def after_their_starts(paths: list[Path], starts: dict[Path, Path]) -> list[Path]:
    """`paths` in their order, but each after the config it starts from (`started_from`)."""
    out: list[Path] = []

    def visit(path: Path, trail: frozenset) -> None:
        if path in out or path in trail:  # done, or a cycle (left in the order given)
            return
        if path in starts:
            visit(starts[path], trail | {path})
        out.append(path)

    for path in paths:
        visit(path, frozenset())
    return out


def stages_of(config: RunConfig) -> tuple[str, ...]:
    """train and export unless the config only evaluates (max_steps: 0); eval when its eval: block names parts."""
    stages = STAGES if config.max_steps != 0 else ("eval",)
    return stages if config_parts(eval_section(config.eval)) else tuple(s for s in stages if s != "eval")


def sweep_one(path: Path, config: RunConfig, status: Status, args: argparse.Namespace) -> str:
    """The stages of one config: 'done', 'failed', 'preempted' or 'waiting' (training elsewhere)."""
    stages = stages_of(config)
    rows = {stage: status.add(config.name, stage) for stage in stages}
    status.save()
    for stage in stages:
        row = rows[stage]
        if stage_done(config, stage):
            row.result = "complete (skipped)"
            if stage == "train":
                row.steps = str(trained_step(config))
            elif stage == "export":
                row.steps = str(exported_step(config))
            continue
        if stopping.requested():  # a signal came during the stage before: it is done, stop before this one
            row.result = "stopped before this stage: run the sweep again to go on"
            return "preempted"
        if args.dry_run and not (stage == "train" and args.launch):
            print(f"+ {local_commands(path, config)[stage]}", flush=True)
            row.result = "would run"
            continue
        row.result, started = "running", time.perf_counter()
        status.save()
        try:
            if stage == "train" and args.launch:
                outcome = launch_stage(path, config, row, args)
                if outcome != "done":
                    return outcome
            elif stage == "train":
                if not train_stage(config, row):
                    return "preempted"
            elif stage == "export":
                export_stage(config, row)
            else:
                eval_stage(config, row)
        except stopping.Stopped as e:  # while the run's data was tokenized: the tasks before are in the cache
            row.result = f"{e}".replace("run the same command", "run the sweep")
            return "preempted"
        except Exception as e:  # a failed run is reported and the sweep goes on
            if not isinstance(e, InstructJaxError):
                traceback.print_exc()
            row.result = f"failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            return "failed"
        finally:
            row.elapsed = time.perf_counter() - started
            status.save()
    return "done"


def common_parent(run_dirs: list[str]) -> str:
    """The deepest directory holding every run directory (local paths or URLs); the working directory when they
    share none."""
    prefix: list[str] = []
    for parts in zip(*(str(storage.path(d).parent).split("/") for d in run_dirs), strict=False):
        if any(p != parts[0] for p in parts):
            break
        prefix.append(parts[0])
    shallow = len(prefix) < (3 if prefix and prefix[0].endswith(":") else 2)  # "/", or "gs://" without a bucket
    return os.getcwd() if shallow else "/".join(prefix)


def launch_stage(path: Path, config: RunConfig, row: Row, args: argparse.Namespace) -> str:
    """Training through a launcher: 'done' (a GPU run that finished here), 'waiting', 'preempted', 'failed'."""
    cmd = launch_command(args.launch, path, config, args.launch_args, args.dry_run)
    print("+ " + shlex.join(cmd), flush=True)
    code = subprocess.run(cmd).returncode
    if code == EXIT_PREEMPTED:
        row.result = "preempted: run the sweep again to resume"
        return "preempted"
    if code != 0:
        row.result = f"failed: the launcher exited {code}"
        return "failed"
    if args.dry_run or args.launch == "tpu":
        row.result = "printed" if args.dry_run else "launched: training on the TPU VM"
        return "waiting"
    step = trained_step(config)  # the run's own DONE marker, written when it reached its last step
    if step is None:
        row.result = "failed: the launcher exited 0 but the run wrote no DONE marker for this config"
        return "failed"
    row.steps, row.result = str(step), "done (gpu launcher)"
    return "done"
