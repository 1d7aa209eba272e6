"""A run's config resolved once per command: the registry its names are looked up in, the model's shapes, the run
bound to its tokenizer, and the data's sizes, from where its `sizes` mode says.

Modes (where the sizes come from):
- `pipeline`: the data pipeline's own epoch, every task read as train reads it (hub datasets too). The trainer,
  `data prepare`, `plan --real-data` and `plan --compile --real-data` / `--save-executable`. The trainer and
  `data prepare` open the pipeline itself (`train.setup.resolve_run`, `open_pipeline`); `plan` counts the tasks
  through the same code (`task_counts`).
- `estimate`: `plan` and `plan --compile`: each task counted where that is cheap (local, bucket and built-in data
  up to `plan_data.COUNT_BYTES`, a user's seqio Task), read from the tokenized cache where it holds it, else the
  papers' sizes (`train.plan_data`; each task's line says which).

Nothing here writes anything but the tokenized cache (a counted task is cached as train caches it, so the run starts
from it); `model.init_from`'s metadata is read once (the bound model's, else `stored_model`'s).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from instructjax.core import storage
from instructjax.core.config import RunConfig
from instructjax.model.config import DecoderConfig, with_overrides
from instructjax.model.presets import preset
from instructjax.train import setup as run_setup
from instructjax.train.plan_data import DataCounts, count_tasks

if TYPE_CHECKING:
    from instructjax.data.blends.specs import Registry

PIPELINE, ESTIMATE = "pipeline", "estimate"


@dataclass(frozen=True)
class Resolution:
    """`config` resolved (see the module doc): `model` its shapes (fitted to the tokenizer where the run is bound),
    `bound` the run bound to its tokenizer and data (None where no task is read: every size from the papers), `counts`
    each task's size (None: not counted yet in `pipeline` mode, or an evaluation-only config), `sources` the number of
    the mixture's tasks (the per-source loss sums a step returns)."""

    config: RunConfig
    sizes: str
    registry: Registry
    model: DecoderConfig
    bound: run_setup.BoundRun | None
    counts: DataCounts | None
    sources: int

    def counted(self) -> Resolution:
        """This resolution with each task's size (`counts`): `estimate`'s made with it; `pipeline`'s counted now by the
        trainer's code from the bound run (what `plan --real-data` prints). An evaluation-only config has none."""
        if self.counts is not None or self.config.max_steps == 0:
            return self
        counts = count_tasks(self.config, self.registry, real_data=True, bound=self.bound)
        return dataclasses.replace(self, counts=counts)


def resolve(config: RunConfig, *, sizes: str = ESTIMATE, registry: Registry | None = None) -> Resolution:
    """`config` resolved once (see the module doc), its names looked up in `run_setup.run_registry(config,
    registry)`."""
    if sizes not in (PIPELINE, ESTIMATE):
        raise ValueError(f"sizes must be {PIPELINE!r} or {ESTIMATE!r}, not {sizes!r}")
    registry = run_setup.run_registry(config, registry)
    counts = None
    if sizes == PIPELINE:
        bound = run_setup.bind_run(config, registry)
    else:
        counts = count_tasks(config, registry) if config.max_steps != 0 else None
        bound = counts.bound if counts is not None else None
    model = bound.model if bound is not None else model_shapes(config)
    if counts is not None:
        sources = len(counts.tasks)
    elif bound is not None:
        sources = len(bound.data.sources)
    else:
        sources = _task_count(config, registry)
    return Resolution(config, sizes, registry, model, bound, counts, sources)


def _task_count(config: RunConfig, registry: Registry) -> int:
    """The number of tasks `config`'s mixture has (1 where it names none: an evaluation-only config)."""
    from instructjax.data.binding import specs_of

    found = specs_of(config.data.mixture, registry)
    return len(found.tasks) if found is not None else 1


def model_shapes(config: RunConfig) -> DecoderConfig:
    """The model a plan counts where the run is not bound: the config stored with `model.init_from` where that
    checkpoint exists (its metadata, never its weights: `stored_model`), else the preset with the config's overrides
    (a paper config planned before the import)."""
    if config.model.init_from:
        if storage.path(config.model.init_from).exists():
            stored = stored_model(config.model.init_from)
            if stored is None:  # no step's metadata reads: the trainer's own check says why, in one line
                return run_setup.resolve_model_config(config)
            return with_overrides(DecoderConfig.from_dict(stored), config.model.overrides)
    return preset(config.model.preset, **config.model.overrides)


def stored_model(init_from: str) -> dict | None:
    """The model config stored with the newest step of checkpoint `init_from` whose files are all there, or None:
    its `meta` item alone (`read_meta` without hashing: no array file is opened, so a plan of a 70B import reads a few
    KB)."""
    from instructjax.core.checkpoint import read_meta  # orbax: loaded where a plan starts from a checkpoint

    try:
        return read_meta(init_from, contents=False)[0]
    except Exception:  # noqa: BLE001  no step reads: the trainer's own check says why, in one line
        return None

