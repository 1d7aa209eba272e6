"""`plan`'s data side: each task of a run's mixture counted, read from the tokenized cache, or estimated from the
papers, and the epoch and the run they make.

Where a task's figures come from (`TaskCount.origin`, printed on its line):
- `counted`: its rows read and encoded now by the trainer's own code (`data.tokenized.examples`, cached as `train`
  caches them, so the run starts from them): local or bucket `data_files` (a local copy of a dataset the papers
  sized only up to COUNT_BYTES: more is the paper's estimate, unless `--real-data`), the built-in rows, a user's
  own seqio Task; with `--real-data` every task, hub datasets too.
- `cache`: the tokenized cache holds the task already (`data prepare`, an earlier run or plan).
- `paper estimate`: a hub dataset the cache does not hold: the papers' sizes and mean lengths (Tulu Table 1 and our
  estimates in `data.sources.synthetic.LENGTH_STATS`): `rounds x (prompt + completion)` tokens an example (a pair:
  both sides), truncated to `seq_len`.
Counted and cached tasks give their pairs or rows skipped, by reason (the task report).

With every task counted or cached the epoch is the real pipeline's (`DataPipeline.plan_epoch`: its rows and steps,
and with `pack: per_step` every step's shape as the trainer plans it); else it is estimated from the tasks' examples
and tokens: packed rows fill PACKING_EFFICIENCY of `seq_len` (benchmarks/RESULTS.md), Mosaic-IT divides the
examples by the mean count of a draw capped by the budget, and `pack: per_step` a step takes the shape its mean
examples fill (`step_plan.mean_step_shape`). The run's steps are `train.setup.run_steps`: `max_steps` where set,
else `optim.epochs` epochs, as the trainer runs them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from instructjax.core import storage
from instructjax.core.config import RunConfig
from instructjax.core.errors import ConfigError
from instructjax.data.batches.example_reading import example_sizes
from instructjax.data.batches.step_plan import mean_step_shape
from instructjax.data.blends import specs
from instructjax.data.blends.specs import BUILTIN
from instructjax.data.mosaic.augment import sample_count
from instructjax.data.sources.data_files import local_files
from instructjax.data.sources.rows import PipelineStats
from instructjax.data.sources.synthetic import LENGTH_STATS, TULU_TABLE1
from instructjax.train import setup as run_setup

if TYPE_CHECKING:
    from instructjax.data.batches.pipeline import DataPipeline

PACKING_EFFICIENCY = 0.995  # best-fit-decreasing, window 1000 (benchmarks/RESULTS.md: 99.6-99.8%)
COUNT_BYTES = 32 * 2**20  # a local copy of a dataset the papers sized is counted up to this (about 30 s on 2 cores)
COUNTED, CACHE, PAPER = "counted", "cache", "paper estimate"


@dataclass
class TaskCount:
    """One task of the mixture as the epoch takes it: its examples (a preference task's: pairs) and their tokens
    (each example cut at the row), where the figures came from (`origin`: counted, cache, paper estimate) and, for a
    counted or cached task, the rows read and those left out by reason."""

    task: str  # as the config names it
    examples: int
    tokens: int
    origin: str
    detail: str  # where from, in words: the files read, the cache file, the paper's table
    pairs: bool = False
    read: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # the task report's lines: skipped, repaired, truncated

    def words(self) -> str:
        unit = "pair(s)" if self.pairs else "example(s)"
        how = f"{self.origin}: {self.detail}" + "".join(f"; {note}" for note in self.notes)
        return f"{self.task}: {self.examples:,} {unit}, {self.tokens:,} tokens ({how})"


@dataclass
class DataEstimate:
    """One epoch's size: examples, rows, tokens and steps, where each task's figures came from (`tasks`), and the
    run's steps and tokens (`run_steps`: as the trainer runs them)."""

    examples: int
    rows: int
    tokens: int
    steps: int
    source: str  # the origins of the tasks' figures, in words
    per_task: dict[str, int] = field(default_factory=dict)  # examples by task
    step_shapes: tuple[tuple[int, int], ...] = ()  # (rows, row length) of a step (per_step: each shape, or the
    # mean step's estimated)
    real_share: float = 0.0  # real tokens / all tokens of the rows the steps process
    step: str = ""  # how a step's rows are laid out, in words
    epoch: str = ""  # the epoch in words: examples, rows, steps, as the layout has them
    tasks: list[TaskCount] = field(default_factory=list)
    run_steps: int = 0  # the steps the run trains (`train.setup.run_steps`)
    run_tokens: int = 0  # about: the epoch's tokens a step times the run's steps
    run: str = ""  # the run in words


@dataclass
class DataCounts:
    """Every task of a mixture counted, read from the cache or estimated (`count_tasks`), and what the real
    pipeline needs where none is estimated (`bound`: the run bound by `train.setup.bind_run`)."""

    tasks: list[TaskCount]
    bound: run_setup.BoundRun | None = None
    _pipeline: DataPipeline | None = None

    @property
    def real(self) -> bool:
        """Whether every task was counted or read from the cache (the epoch is then the real pipeline's)."""
        return self.bound is not None and all(t.origin != PAPER for t in self.tasks)

    def pipeline(self) -> DataPipeline:
        """The run's data pipeline (opened once: its tasks' examples are this process's already)."""
        if self._pipeline is None:
            self._pipeline = run_setup.open_pipeline(self.bound)
        return self._pipeline


def _data_bytes(spec) -> int:
    """The bytes of a task's local or bucket `data_files` (a directory: its files)."""
    return sum(storage.stat(f).size for f in local_files(spec.data_files, spec.source))


def _reads(spec, real_data: bool) -> bool:
    """Whether `plan` reads a task's rows (see the module doc): None is a user's own seqio Task."""
    if spec is None or real_data or spec.data_files == (BUILTIN,):
        return True
    if spec.data_files is None:  # a hub dataset: its paper estimate unless the cache holds it
        return False
    return spec.source not in LENGTH_STATS or _data_bytes(spec) <= COUNT_BYTES


def count_tasks(config: RunConfig, registry, *, real_data: bool = False,
                bound: run_setup.BoundRun | None = None) -> DataCounts:
    """Each task of `config`'s mixture (looked up in `registry`) counted, read from the cache, or estimated (see the
    module doc). The run is bound (its tokenizer read) only where a task is read or the cache holds a file of one;
    `bound`: bound already (`train.resolution`)."""
    from instructjax.data.tokenized import examples as examples_lib

    resolved = run_setup.checked_mixture(config, registry)
    if resolved is None:
        raise registry.unknown(config.data.mixture, "a registered task or mixture (data.mixture)")
    reads = [_reads(spec, real_data) for spec in resolved.specs]
    if bound is None and any(reads):
        bound = run_setup.bind_run(config, registry)
    elif bound is None and any(examples_lib.cache_holds(task) for task in resolved.tasks):  # maybe there for the run's tokenizer
        try:
            bound = run_setup.bind_run(config, registry)
        except ConfigError:  # no tokenizer yet (`init_from` not imported): nothing cached can be the run's
            pass
    out = []
    for i, (task, spec) in enumerate(zip(resolved.tasks, resolved.specs, strict=True)):
        if bound is not None:  # the task bound to the run: its tokenizer, template and row length
            name, bound_spec = bound.data.resolved.tasks[i], bound.data.resolved.specs[i]
            count = _count_of(bound.data.resolved, name)
            seed = config.data.seed if count is not None else None
            if reads[i] or (bound_spec is not None and examples_lib.cached_file(name, bound_spec, count, seed) is not None):
                out.append(_read_task(specs.base_name(task), name, bound_spec, count, seed))
                continue
        out.append(_paper_task(config, task, spec, _count_of(resolved, task)))
    return _checked(config, resolved, DataCounts(out, bound))


def _checked(config: RunConfig, resolved, counts: DataCounts) -> DataCounts:
    """`counts`, unless a rate-mode mixture (endless) has a task to estimate: one line."""
    mixture = resolved.mixture
    if mixture is not None and not mixture.epoch_mode and not counts.real:
        raise ConfigError(f"mixture {config.data.mixture!r} is rate mode (endless): plan needs an epoch mixture, or "
                          "--real-data to count its tasks")
    return counts


def _count_of(resolved, task: str) -> int | None:
    """The examples an epoch-mode mixture takes of `task` (None: all of them, or a single task)."""
    mixture = resolved.mixture
    return dict(mixture.counts).get(task) if mixture is not None and mixture.epoch_mode else None


def _read_task(shown: str, name: str, spec, count: int | None, seed: int | None) -> TaskCount:
    """Task `name` (bound to the run) read as the trainer reads it: from the tokenized cache where it is there, else
    its rows read and encoded now (and cached); no example is one line saying why."""
    from instructjax.data.tokenized import examples as examples_lib

    if spec is None:  # a user's own seqio Task: read through seqio, no report
        from instructjax.data.seqio import lookup

        examples = lookup.examples(name, count, seed)
        if not examples:
            raise ConfigError(f"task {shown!r} has no usable examples")
        return TaskCount(shown, len(examples), int(example_sizes(examples)[0].sum()), COUNTED, "its seqio Task read")
    cached = examples_lib.cached_file(name, spec, count, seed)  # before this read: what the cache held
    stats = PipelineStats()
    examples = examples_lib.encoded_examples(name, count, seed, spec=spec, stats=stats)
    report = examples_lib.task_report(name, seed, spec=spec, stats=stats)
    if not examples:
        raise report.unusable(shown)
    if cached is not None:
        origin, detail = CACHE, f"tokenized earlier, {cached.name}: {report.read:,} row(s) read"
    else:
        origin, detail = COUNTED, f"{report.read:,} row(s) read" + _files_words(spec)
    return TaskCount(shown, len(examples), int(example_sizes(examples)[0].sum()), origin, detail, spec.preference,
                     report.read, dict(report.skipped), report.lines())


def _files_words(spec) -> str:
    if spec.data_files is None:
        return " from the hub"
    if spec.data_files == (BUILTIN,):
        return " of the built-in rows"
    return f" from {', '.join(map(str, spec.data_files))}"


def _paper_task(config: RunConfig, task: str, spec, count: int | None) -> TaskCount:
    """A task's examples and tokens from the papers' size and mean lengths (a preference task's example is a pair:
    both sides), each example cut at the row."""
    stats = LENGTH_STATS.get(spec.source)
    if stats is None:
        raise ConfigError(f"task {task!r}: no paper size for source {spec.source!r}; use --real-data")
    n = stats.instances
    if spec.selection is not None and spec.selection.k is not None:
        n = min(n, spec.selection.k)
    if count is not None:
        n = min(n, count)
    sides = 2 if spec.preference else 1  # a pair: its prompt twice, a completion each
    mean = sides * stats.rounds * (stats.prompt + stats.completion)
    table = "Tulu Table 1" if spec.source in TULU_TABLE1 else "our estimate of the dataset"
    where = "the hub dataset, not in the tokenized cache" if spec.data_files is None else (
        f"data_files of {_data_bytes(spec) / 2**20:,.1f} MiB, more than plan reads ({COUNT_BYTES / 2**20:,.1f} MiB): "
        "--real-data counts them")
    detail = f"{table}, about {mean:,.0f} tokens each; {where}"
    return TaskCount(specs.base_name(task), n, int(n * min(mean, config.data.seq_len)), PAPER, detail,
                     spec.preference)


def epoch_of(config: RunConfig, counts: DataCounts, multiple: int = 1) -> DataEstimate:
    """The epoch and the run of `counts` (`count_tasks`); `multiple`: what a per_step step's rows are a multiple of."""
    estimate = _real_epoch(config, counts, multiple) if counts.real else _estimated_epoch(config, counts, multiple)
    from instructjax.train.setup import run_steps

    papers = sum(t.origin == PAPER for t in counts.tasks)
    estimate.epoch += (" (the real pipeline's: every task counted or cached)" if counts.real else
                       f" (estimated: {papers} of {len(counts.tasks)} task(s) from the papers' figures)")
    estimate.tasks, estimate.per_task = counts.tasks, {t.task: t.examples for t in counts.tasks}
    estimate.source = ", ".join(dict.fromkeys(t.origin for t in counts.tasks))
    estimate.run_steps = run_steps(config, estimate.steps)
    estimate.run_tokens = round(estimate.tokens * estimate.run_steps / max(estimate.steps, 1))
    estimate.run = _run_words(config, estimate)
    return estimate


def _real_epoch(config: RunConfig, counts: DataCounts, multiple: int) -> DataEstimate:
    """The real pipeline's epoch 0; per_step: the run's step shapes, rows a multiple of `multiple`, as the trainer
    plans them."""
    from instructjax.train.setup import run_steps

    pipeline = counts.pipeline()
    plan = pipeline.plan_epoch(0)
    shapes, real_share = ((config.data.global_batch, config.data.seq_len),), plan.efficiency
    if config.data.pack == "per_step":
        steps = pipeline.plan_steps(run_steps(config, plan.steps), multiple)
        shapes, real_share = steps.shapes, steps.efficiency
    return DataEstimate(plan.examples, plan.rows, plan.tokens, plan.steps, "", step_shapes=shapes,
                        real_share=real_share, step=_step_words(config.data, shapes),
                        epoch=_epoch_words(config.data, plan.examples, plan.rows, plan.steps, plan.tokens))


def _estimated_epoch(config: RunConfig, counts: DataCounts, multiple: int) -> DataEstimate:
    """One epoch from the tasks' examples and tokens (see the module doc)."""
    data = config.data
    examples = tokens = 0.0
    for task in counts.tasks:
        n, mean_len = task.examples, task.tokens / max(task.examples, 1)
        if data.mosaic is not None:
            cap = max(1, int(data.mosaic_budget // mean_len))
            rng = np.random.default_rng(0)
            k = np.mean([min(sample_count(rng, data.mosaic), cap) for _ in range(4000)])
            n_out, length = n / k, min(k * mean_len, data.seq_len)
        else:
            n_out, length = n, mean_len
        examples += n_out
        tokens += n_out * length
    rows = math.ceil(examples) if data.pack is not True else math.ceil(tokens / (data.seq_len * PACKING_EFFICIENCY))
    shape = (data.global_batch, data.seq_len)
    if data.pack == "per_step":  # the shape the mean step's examples fill, packed
        shape = mean_step_shape(data.global_batch * tokens / examples, data.global_batch, data.seq_len, multiple,
                                PACKING_EFFICIENCY)
    step = (f"{data.global_batch} examples packed into about {_shape_words((shape,))} (the mean step; "
            "--real-data plans every step)") if data.pack == "per_step" else _step_words(data)
    steps = math.ceil(rows / data.global_batch)
    return DataEstimate(math.ceil(examples), rows, int(tokens), steps, "", step_shapes=(shape,),
                        real_share=tokens / (rows / data.global_batch * shape[0] * shape[1]), step=step,
                        epoch=_epoch_words(data, math.ceil(examples), rows, steps, int(tokens)))


def _run_words(config: RunConfig, d: DataEstimate) -> str:
    """The run as the trainer runs it: `max_steps` where set, else `optim.epochs` epochs."""
    epochs = config.optim.epochs
    if not config.max_steps:
        return f"{epochs} epoch(s): {d.run_steps:,} steps, {d.run_tokens:,} tokens"
    return (f"max_steps {config.max_steps:,}: {d.run_steps:,} steps, {d.run_steps / max(d.steps, 1):.3g} epoch(s) of "
            f"{d.steps:,} steps (optim.epochs {epochs} would be {epochs * d.steps:,}), about {d.run_tokens:,} tokens")


def _epoch_words(data, examples: int, rows: int, steps: int, tokens: int) -> str:
    """One epoch in the words of its layout (`data.pack`)."""
    if data.pack == "per_step":  # the unpacked run's steps, each step's examples packed apart
        return f"{examples:,} examples, {steps:,} steps of {data.global_batch} examples, {tokens:,} tokens"
    if data.pack:
        return (f"{examples:,} examples packed into {rows:,} rows of {data.seq_len}, {steps:,} steps of "
                f"{data.global_batch} rows, {tokens:,} tokens")
    return f"{examples:,} examples, one a row, {steps:,} steps of {data.global_batch} rows, {tokens:,} tokens"


def _shape_words(shapes: tuple[tuple[int, int], ...]) -> str:
    """Step shapes (rows, row length) in words: "40, 48 or 64 rows of 2,048 tokens", "32 rows of 2,304 or 2,560 tokens"."""
    def either(values) -> str:
        values = [f"{v:,}" for v in sorted(set(values))]
        return values[0] if len(values) == 1 else f"{', '.join(values[:-1])} or {values[-1]}"

    return f"{either(rows for rows, _ in shapes)} rows of {either(length for _, length in shapes)} tokens"


def _step_words(data, shapes: tuple[tuple[int, int], ...] = ()) -> str:
    """How a step's rows are laid out under `data.pack`, in words."""
    if data.pack == "per_step":
        return (f"{data.global_batch} examples packed into {_shape_words(shapes)} "
                f"({len(shapes)} step shape(s), each compiled once)")
    return f"{data.global_batch} rows" + (" of packed examples" if data.pack else ", one example each")

