"""`instructjax sweep DIR_OR_GLOB`: run every config of a family in turn: train, export, `eval --config`.

A stage whose output is complete is skipped, so running the sweep again continues where it stopped:
  train   RUN_DIR/DONE: written once `train` has trained to the last step (launch/tpu_vm.py writes the same
          marker); an interrupted run resumes from its latest checkpoint. None for max_steps: 0 (eval only).
  export  RUN_DIR/hf/config.json: the export is written to RUN_DIR/hf.partial and renamed when whole.
  eval    RUN_DIR/eval/results.json (eval.out_dir) holds every part the eval: block names for this model;
          a judged part whose judge replies have arrived since is run again (the other parts are kept).
The stages run in this process, the same code as `train --resume`, `export` and `eval --config`. SIGTERM
during training saves the step in flight and the sweep exits 75, as `train` does. A stage that fails is
reported in one line, the run's later stages wait, and the sweep goes on with the next config.

One status table (config, stage, steps, result, elapsed) is printed at the end and kept, updated after every
stage, in sweep.json (`--status`; default: in the common parent of the run directories).

`--launch tpu|gpu` hands each run's training to launch/tpu_vm.py (`up`) or launch/gpu.py (`single`), with
`--launch-args`; a GPU run is then exported and evaluated here, a TPU run trains on its VM (checkpoints and
DONE in BUCKET/runs/NAME). `--dry-run` prints the commands instead of running them.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from instructjax.core.errors import InstructJaxError

if TYPE_CHECKING:
    import argparse

    from instructjax.core.config import RunConfig

STAGES = ("train", "export", "eval")
LAUNCH_DIR = Path(__file__).resolve().parents[2] / "launch"  # a source checkout's launch/ scripts
EXIT_PREEMPTED = 75  # as instructjax.train.preemption.EXIT_PREEMPTED (not imported: it loads jax)


def register(subparsers) -> None:
    p = subparsers.add_parser("sweep", help="run a family of configs: train, export, eval (resumable)")
    p.add_argument("configs", metavar="DIR_OR_GLOB", help="a directory of run configs (recursively) or a glob")
    p.add_argument("--status", help="where the status table is kept (default: RUNS_PARENT/sweep.json)")
    p.add_argument("--launch", choices=["tpu", "gpu"], help="hand each run's training to launch/tpu_vm.py "
                                                             "or launch/gpu.py")
    p.add_argument("--launch-args", default="", help="arguments for the launcher, e.g. '--zone Z --bucket gs://B' "
                                                      "(one flag alone: --launch-args=--spot)")
    p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    p.set_defaults(func=run)


@dataclass
class Row:
    """One line of the status table."""

    config: str
    stage: str
    steps: str = "-"
    result: str = "pending"
    elapsed: float | None = None


class Status:
    """The status table, printed and kept in sweep.json (rewritten whole after every change)."""

    def __init__(self, path: Path | None):
        self.path, self.rows = path, []  # path None (a dry run): kept nowhere

    def add(self, config: str, stage: str) -> Row:
        self.rows.append(Row(config, stage))
        return self.rows[-1]

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"updated": time.strftime("%Y-%m-%d %H:%M:%S"),
                                   "rows": [asdict(r) for r in self.rows]}, indent=2) + "\n")
        os.replace(tmp, self.path)

    def table(self) -> str:
        cells = [("config", "stage", "steps", "result", "elapsed")]
        cells += [(r.config, r.stage, r.steps, r.result, "-" if r.elapsed is None else f"{r.elapsed:.1f}s")
                  for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(4)]
        return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(4)) + "  " + c[4] for c in cells)


# ---- when a stage is complete ------------------------------------------------------------------------------


def latest_step(run_dir: Path) -> int | None:
    """The newest checkpoint step on disk (committed; not checked for integrity)."""
    steps = [int(p.name) for p in (run_dir / "checkpoints").glob("*") if p.name.isdigit()]
    return max(steps) if steps else None


def eval_todo(config: RunConfig) -> list[str]:
    """The eval: parts still to run: all of them without a results.json of this model, else the parts it lacks
    and the judged parts whose replies have arrived since."""
    from instructjax.core.config import eval_section
    from instructjax.eval.run import JUDGE_MODE, config_parts, eval_model, judge_files, out_dir, read_results

    ev = eval_section(config.eval)
    named, results = config_parts(ev), read_results(config)
    if not results or results.get("model") != eval_model(config):
        return named
    waiting = [p for p in named if p in JUDGE_MODE and "replies" in (results.get(p) or {})
               and os.path.exists(judge_files(ev, p, out_dir(config))["replies"])]
    return [p for p in named if p not in results.get("parts", []) or p in waiting]


def stage_done(config: RunConfig, stage: str) -> bool:
    """Whether the stage's output is complete (see the module's docstring)."""
    run_dir = Path(config.run_dir)
    if stage == "train":
        return (run_dir / "DONE").is_file()
    if stage == "export":
        return (run_dir / "hf" / "config.json").is_file()
    return not eval_todo(config)


# ---- running a stage ---------------------------------------------------------------------------------------


def train_stage(config: RunConfig, row: Row) -> bool:
    """Train (resuming); True when the run reached its last step, False when SIGTERM stopped it."""
    from instructjax.train.trainer import Trainer

    trainer = Trainer(config, resume=True)
    start = trainer.resume_from
    result = trainer.run()
    row.steps = f"{result.step}/{trainer.total_steps}"
    if result.preempted:
        row.result = f"preempted at step {result.step}: run the sweep again to resume"
        return False
    (Path(config.run_dir) / "DONE").write_text("done\n")
    row.result = "done" + (f" (resumed at step {start})" if start else "")
    return True


def export_stage(config: RunConfig, row: Row) -> None:
    """The run's latest checkpoint as an HF directory, RUN_DIR/hf, renamed into place when whole."""
    from instructjax.convert.saved import export_checkpoint

    final, partial = Path(config.run_dir) / "hf", Path(config.run_dir) / "hf.partial"
    shutil.rmtree(partial, ignore_errors=True)  # a killed export's leftovers
    export_checkpoint(config.run_dir, str(partial))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)
    row.steps, row.result = str(latest_step(Path(config.run_dir)) or "-"), "done"


def eval_stage(config: RunConfig, row: Row) -> None:
    """`eval --config` of the parts still to run (eval_todo)."""
    from instructjax.eval.run import evaluate_config

    results = evaluate_config(config, only=eval_todo(config))  # keeps the parts done before
    waiting = [p for p in results["parts"] if "replies" in (results.get(p) or {})]
    row.result = "done" + (f" (awaiting judge replies: {', '.join(waiting)})" if waiting else "")


def launch_command(kind: str, path: Path, config: RunConfig, launch_args: str, dry_run: bool) -> list[str]:
    """The launcher's command line for one config's training (with --dry-run: the launcher prints its own)."""
    if not LAUNCH_DIR.is_dir():
        raise InstructJaxError(f"--launch needs the launch/ scripts of a source checkout ({LAUNCH_DIR} is missing)")
    if kind == "tpu":
        name = config.name.lower().replace("_", "-").replace(".", "-")  # TPU node names: a-z, 0-9, -
        cmd = [sys.executable, str(LAUNCH_DIR / "tpu_vm.py"), "up", "--name", name, "--config", str(path)]
    else:
        cmd = [sys.executable, str(LAUNCH_DIR / "gpu.py"), "single", "--config", str(path)]
    return cmd + shlex.split(launch_args) + (["--dry-run"] if dry_run else [])


def local_commands(path: Path, config: RunConfig) -> dict[str, str]:
    """What each stage amounts to on the command line (printed by --dry-run)."""
    hf = os.path.join(config.run_dir, "hf")
    return {"train": f"instructjax train --config {path} --resume && touch {os.path.join(config.run_dir, 'DONE')}",
            "export": f"instructjax export --checkpoint {config.run_dir} --out {hf}",
            "eval": f"instructjax eval --config {path}"}


# ---- the sweep ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from instructjax.core.config import load_config
    from instructjax.report.runs import config_paths

    paths = config_paths(args.configs)
    loaded, failed_to_load = {}, {}
    for path in paths:
        try:
            loaded[path] = load_config(path)
            stages_of(loaded[path])  # an unknown suite: one line, before anything runs
        except InstructJaxError as e:
            loaded.pop(path, None)
            failed_to_load[path] = str(e)
    parents = [Path(c.run_dir).absolute().parent for c in loaded.values()] or [Path.cwd()]
    where = Path(args.status) if args.status else Path(os.path.commonpath(parents)) / "sweep.json"
    status = Status(None if args.dry_run else where)
    code = 0
    for path in paths:
        if path in failed_to_load:
            status.add(path.stem, "config").result = f"failed: {failed_to_load[path]}"
            code = 1
            continue
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


def stages_of(config: RunConfig) -> tuple[str, ...]:
    """train and export unless the config only evaluates (max_steps: 0); eval when its eval: block names parts."""
    from instructjax.core.config import eval_section
    from instructjax.eval.run import config_parts

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
                row.steps = str(latest_step(Path(config.run_dir)) or "-")
            continue
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
        except Exception as e:  # a failed run is reported and the sweep goes on
            if not isinstance(e, InstructJaxError):
                traceback.print_exc()
            row.result = f"failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
            return "failed"
        finally:
            row.elapsed = time.perf_counter() - started
            status.save()
    return "done"


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
    (Path(config.run_dir) / "DONE").write_text("done\n")
    row.steps, row.result = str(latest_step(Path(config.run_dir)) or "-"), "done (gpu launcher)"
    return "done"
