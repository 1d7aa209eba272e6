"""What a run's step checkpoint holds, saved (`save_step`: the state, or a LoRA's adapters alone with the base they
train on, the data's global position, the tokens so far, the metrics window open at that step, the run's and the
model's configs) and resumed from the newest intact one: read and checked before anything is written (`read_resume`:
the model's shapes, what it trains, its tokenizer), then restored (`restore`)."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import TYPE_CHECKING

import jax

from instructjax.convert.saved import load_base
from instructjax.core import checkpoint as ckpt
from instructjax.core import integrity, storage
from instructjax.core.config import RunConfig, to_dict
from instructjax.core.errors import ConfigError
from instructjax.core.run_identity import training_changes
from instructjax.data.encoding.tokenizer import Tokenizer, materialize
from instructjax.model.config import DecoderConfig, runs_only_keys
from instructjax.train.resume_shapes import shape_change
from instructjax.train.setup import BoundRun, tokenizer_words

if TYPE_CHECKING:
    from instructjax.data.batches.pipeline import DataPipeline
    from instructjax.train.metrics import MetricsWindow
    from instructjax.train.step import StepBuild


def read_resume(run_dir: storage.Path, config: RunConfig, bound: BoundRun, *, accept_changes: bool
                ) -> tuple[int | None, dict | None, BoundRun]:
    """(the newest intact step, the config it was saved with, `bound` in the layout it was saved in), or (None, None,
    `bound`) where `run_dir` holds no step. Damaged newer steps are reported and set aside first; a model whose shapes
    moved, another tokenizer or (without `accept_changes`) a config that changes what the run trains is one line."""
    checkpoints = ckpt.checkpoints_dir(run_dir)  # read only: nothing is written before the checks pass
    if not integrity.steps_on_disk(checkpoints):
        return None, None, bound
    step = integrity.intact_step(checkpoints, set_aside=True)
    stored, saved_config, _ = ckpt.read_meta(run_dir, step)
    if stored["scan_layers"] != bound.model.scan_layers:  # continue in the layout it was saved in
        bound = dataclasses.replace(bound, model=bound.model.replace(scan_layers=stored["scan_layers"]))
    if moved := shape_change(stored, bound.model, config.model.overrides, config.model.init_from):
        raise ConfigError(f"{run_dir}: {moved}")  # --accept-changes or not: nothing to restore into
    check_unchanged(run_dir, saved_config or {}, bound.config, step, accept_changes)
    saved = ckpt.read_tokenizer(run_dir, step)
    if saved is not None and Tokenizer.load(materialize(saved["files"])) != bound.tokenizer:
        raise ConfigError(f"{run_dir} was trained with another tokenizer than "
                          f"{tokenizer_words(config).removeprefix('the ')}; "
                          "resume with the run's own tokenizer (config `tokenizer:` / model.init_from)")
    return step, saved_config, bound


def check_unchanged(run_dir: storage.Path, saved: dict, config: RunConfig, step: int, accept: bool) -> None:
    """A run resumed at `step` continues exactly: a `config` that changes what it trains (schedule and length,
    optimizer, data, model, seed: `training_changes`) against the one its checkpoint was saved with (`saved`) stops
    with one line listing the changes, unless `accept` (then they are noted and appended to RUN_DIR/changes.jsonl)."""
    changes = training_changes(saved, config, not_training=runs_only_keys(), ignore=("model.init_from", "tokenizer"))
    if not changes:
        return
    if not accept:
        raise ConfigError(f"{run_dir} was trained to step {step} with another config ({'; '.join(changes)}); "
                          "resume with the run's own values, or add --accept-changes to continue with these")
    if jax.process_index() == 0:
        log = run_dir / "changes.jsonl"
        before = log.read_text() if log.is_file() else ""
        storage.write_text(log, before + json.dumps({"step": step, "changes": changes}) + "\n")
        print(f"instructjax: note: resuming {run_dir} at step {step} with changes ({'; '.join(changes)}); "
              f"recorded in {log}", file=sys.stderr, flush=True)


def restore(checkpointer, run_dir: storage.Path, model: DecoderConfig, build: StepBuild, base: dict | None,
            pipeline: DataPipeline) -> tuple:
    """(params, opt_state, step, tokens so far, the metrics window open at that step or None) of the latest
    checkpoint (a torn newest step skipped); `base`: the init_from a LoRA's adapters were trained on
    (`reference.start_base`); `pipeline` continues from the step's global data position."""
    part = build.partition
    latest, params, opt_state, data, meta = checkpointer.restore_latest(
        part.trainable(build.params) if base else build.params, build.opt_state)
    if base:  # the adapters, on the base they were trained on
        saved_base = meta.get("base")
        if saved_base is None:
            raise ConfigError(f"{run_dir} step {latest} holds the whole model, not LoRA adapters on "
                              f"model.init_from: resume it with the version of instructjax that wrote it")
        ckpt.check_base(saved_base, f"{run_dir} step {latest}")
        params = part.combine(params, load_base(saved_base, model, build.param_shardings)[0])
    if not (data == data[0]).all():
        raise ConfigError(f"checkpoint step {latest} holds one data position per host (an older per-host "
                          f"layout); it cannot resume with the global plan")  # fmt: skip
    pipeline.restore(data[0])  # the global position: any number of hosts continues from it
    return params, opt_state, latest, int(meta.get("tokens", 0)), meta.get("metrics_window")


def save_step(checkpointer, step: int, config: RunConfig, model: DecoderConfig, build: StepBuild, base: dict | None,
              params, opt_state, tokens: int, position, window: MetricsWindow | None = None) -> None:
    """Save `step` (what `restore` reads back): the parameters (`base`: a LoRA on init_from, its adapters alone, the
    base named), the optimizer state, the data `position` after its batch, the `tokens` so far, the metrics `window`
    open at it and the configs."""
    meta = {"run_config": to_dict(config), "model_config": dataclasses.asdict(model), "tokens": tokens,
            "metrics_window": window.state() if window is not None else None}
    if base:  # what trains alone: the base is init_from's
        params, meta["base"] = build.partition.trainable(params), base
    checkpointer.save(step, params, opt_state, ckpt.gather_data_state(position.to_array()), meta)
