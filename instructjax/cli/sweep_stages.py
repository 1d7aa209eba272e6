"""The sweep's stages (`cli.sweep`): when each is complete (its marker stands for what the config asks now, the
rules in `cli.sweep`'s docstring) and running one (train resuming, export, `eval --config` of the parts still to
run), each recording its outcome in its status-table `Row`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

from instructjax.core import storage
from instructjax.core.run_identity import training_digest
from instructjax.eval import run as ev_run
from instructjax.eval.config import eval_section
from instructjax.eval.judged import JUDGED_PARTS, pending, resolve_runs, waiting
from instructjax.eval.run import evaluate_config, model_step

if TYPE_CHECKING:
    from instructjax.core.config import RunConfig

STAGES = ("train", "export", "eval")


@dataclass
class Row:
    """One line of the status table."""

    config: str
    stage: str
    steps: str = "-"
    result: str = "pending"
    elapsed: float | None = None


# ---- when a stage is complete ------------------------------------------------------------------------------


def _marker(path) -> dict:
    """A stage's JSON marker ({} when it is missing, torn or from before markers said what they stand for)."""
    try:
        found = json.loads(storage.path(path).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def trained_step(config: RunConfig) -> int | None:
    """The step RUN_DIR/DONE records, when it stands for this config's training (None otherwise)."""
    from instructjax.model.config import runs_only_keys

    done = _marker(storage.join(config.run_dir, "DONE"))
    return done.get("step") if done.get("config") == training_digest(config, not_training=runs_only_keys()) else None


def exported_step(config: RunConfig) -> int | None:
    """The checkpoint step RUN_DIR/hf holds, when it is the run's newest intact step (None otherwise)."""
    from instructjax.convert.saved import EXPORT_MARKER

    step = _marker(storage.join(config.run_dir, "hf", EXPORT_MARKER)).get("step")
    return step if step is not None and step == model_step(config.run_dir) else None


def eval_todo(config: RunConfig) -> list[str]:
    """The eval: parts still to run: all of them without a results.json of this model, step and block, else the
    parts it lacks and the judged parts whose replies have arrived since."""
    ev = resolve_runs(eval_section(config.eval), config.run_dir)
    named, results, model = ev_run.config_parts(ev), ev_run.read_results(config), ev_run.eval_model(config)
    if (not results or results.get("model") != model or results.get("eval") != ev_run.eval_digest(config)
            or results.get("step") != (ev_run.model_step(model) if model else None)):
        return named
    out = ev_run.out_dir(config)
    arrived = [p for p in named if p in JUDGED_PARTS and pending(ev, p, out, results.get(p) or {})]
    return [p for p in named if p not in results.get("parts", []) or p in arrived]


def stage_done(config: RunConfig, stage: str) -> bool:
    """Whether the stage's output is complete and stands for what the config asks (the module's docstring)."""
    if stage == "train":
        return trained_step(config) is not None
    if stage == "export":
        return exported_step(config) is not None
    return not eval_todo(config)


# ---- running a stage ---------------------------------------------------------------------------------------


def train_stage(config: RunConfig, row: Row) -> bool:
    """Train (resuming); True when the run reached its last step, False when a signal stopped it."""
    from instructjax.train.trainer import Trainer

    trainer = Trainer(config, resume=True, accept_changes=True)  # a changed config is what the sweep retrains for
    start = trainer.resume_from
    result = trainer.run()  # writes RUN_DIR/DONE when it reaches the last step
    row.steps = f"{result.step}/{trainer.total_steps}"
    if result.preempted:
        row.result = f"preempted at step {result.step}: run the sweep again to resume"
        return False
    row.result = "done" + (f" (resumed at step {start})" if start else "")
    return True


def export_stage(config: RunConfig, row: Row) -> None:
    """The run's newest intact checkpoint as an HF directory, RUN_DIR/hf; its marker is written last, so a killed
    export never counts as done."""
    from instructjax.convert.saved import EXPORT_MARKER, export_checkpoint

    final = storage.join(config.run_dir, "hf")
    storage.remove_tree(storage.join(final, EXPORT_MARKER))  # first: what follows no longer counts as done
    storage.remove_tree(final)  # an older export's files (fewer shards now, say)
    export_checkpoint(config.run_dir, final)
    row.steps, row.result = str(exported_step(config) or "-"), "done"


def eval_stage(config: RunConfig, row: Row) -> None:
    """`eval --config` of the parts still to run (eval_todo)."""
    results = evaluate_config(config, only=eval_todo(config))  # keeps the parts done before
    waits = [f"{p} {w}" for p in results["parts"] if p in JUDGED_PARTS for w in waiting(results.get(p) or {})]
    row.result = "done" + (f" (awaiting {', '.join(waits)})" if waits else "")
