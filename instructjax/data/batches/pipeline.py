"""From a bound task or mixture to this host's packed batches, deterministic and resumable.

One global plan: the examples (`example_order.ExampleStream`: which ones, in which order) are cut into windows;
each window is packed on its own (best-fit-decreasing), so the global sequence of packed rows is a pure
function of (seed, epoch, window), computed alike on every host. A step takes the next `global_batch` rows
and host h keeps its slice `[h * B/H, (h+1) * B/H)`: every host plans the same steps and batch shapes, and
the iterator state (`epoch`, `window`, `row`: rows of that window already consumed) is global, so a run
saved on H hosts resumes on any H' and sees the same global batches. A background thread prefetches.

A window's rows come in a seeded random order, or with `data.shuffle: false` in the order of the first
example each holds (one example a row with `pack: false`: the rows are the examples, in order); the
examples' own order is `example_order`'.

`pack: per_step` keeps every step of `pack: false` (the same examples, the same iterator state, so resume and
resume on other hosts are unchanged) and packs its `global_batch` one-example rows into fewer rows; the shapes
the steps take are planned once from the examples' sizes (`plan_steps`, by `data.batches.step_plan`).
"""

from __future__ import annotations

import contextvars
import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from instructjax.core.config import DataSection
from instructjax.core.errors import ConfigError
from instructjax.core.objectives import ReadyReference, StoredLogProbs
from instructjax.data.batches.example_order import ExampleStream, named_rng
from instructjax.data.batches.packing import PackStats, SequencePacker, segment_lengths
from instructjax.data.batches.step_plan import StepPlan, plan_step_rows
from instructjax.data.binding import Resolved
from instructjax.data.sources.rows import PipelineStats

BATCH_KEYS = ("tokens", "targets", "loss_weights", "segment_ids", "positions", "source_ids")


@dataclass
class IteratorState:
    """Where the global row stream stands: the next row is row `row` of window `window` of `epoch`."""

    epoch: int = 0
    window: int = 0
    row: int = 0

    def to_array(self) -> np.ndarray:
        return np.array([self.epoch, self.window, self.row], dtype=np.int64)

    @classmethod
    def from_array(cls, a) -> IteratorState:
        return cls(*(int(x) for x in np.asarray(a).reshape(3)))


@dataclass
class EpochPlan:
    """Sizes of one epoch of the global stream (what `data stats` and the trainer need): the same on every host."""

    examples: int
    rows: int
    tokens: int
    trained_tokens: int
    efficiency: float
    steps: int
    packing: dict = field(default_factory=dict)


class DataPipeline:
    """Host batches (numpy, `[rows / process_count, seq_len]`) of a bound task or mixture: `global_batch` rows a
    step, or with `pack: per_step` the rows its `plan_steps` gives that step."""

    def __init__(self, config: DataSection, *, process_index: int = 0, process_count: int = 1,
                 vocab_size: int | None = None, resolved: Resolved | None = None):
        """`vocab_size`: the model's; a token id outside it is a ConfigError here, before training. `resolved`:
        `config.mixture` as `binding.bind` resolved it (else resolved here)."""
        self.config = config
        self.process_index, self.process_count = process_index, process_count
        if config.global_batch % process_count:
            raise ConfigError(f"data.global_batch={config.global_batch} is not divisible by the {process_count} host(s)")
        self.stats = PipelineStats()  # what its data side read, tokenized and cached here (`examples.cache_report`)
        self.stream = ExampleStream(config, vocab_size=vocab_size, resolved=resolved, stats=self.stats)
        self.task_names = self.stream.task_names
        self.per_step = config.pack == "per_step"  # the rows (and state) are pack: false's, packed per step
        self.packer = SequencePacker(config.seq_len, window=config.pack_window, overlong=config.overlong,
                                     pack=config.pack is True, in_input_order=not config.shuffle)
        self.state = IteratorState()
        self.step_plan: StepPlan | None = None  # pack: per_step: set by plan_steps

    def report(self) -> list[str]:
        """What the data did not train as given (see `ExampleStream.report`)."""
        return self.stream.report()

    def use_reference(self, reference: ReadyReference) -> None:
        """The run's reference as train/reference.py made it ready: stored log-probs (`StoredLogProbs`: per task,
        each token's target log-prob end to end and the offsets per example) are carried by the batches made from
        here on as `reference_logps`; any other kind gives the batches nothing."""
        self.stream.reference = reference.value if reference.kind is StoredLogProbs else None

    def attach(self, build, mesh, engine_mesh=None) -> None:
        """The run's step and mesh: examples read from the data need nothing of them (rollouts do: train/rollout.py)."""

    def packed_window(self, epoch: int, window: int) -> dict[str, np.ndarray] | None:
        """One window's rows, in a seeded random order (best-fit-decreasing opens long rows first), or without
        shuffling in the order of their first examples."""
        examples = self.stream.window_examples(epoch, window)
        if examples is None:
            return None
        rows, _ = self.packer.pack_window(examples, first_index=window * self.config.pack_window)
        if not self.config.shuffle:
            return rows
        order = self._row_order(epoch, window, len(rows["tokens"]))
        return {k: v[order] for k, v in rows.items()}

    def _row_order(self, epoch: int, window: int, n_rows: int) -> np.ndarray:
        """The seeded order of a window's rows (with `shuffle`)."""
        return named_rng(self.config.seed, "window_rows", epoch, window).permutation(n_rows)

    # ---- iteration and state ------------------------------------------------------------------
    def _rows(self, state: IteratorState) -> Iterator[tuple[dict[str, np.ndarray], IteratorState]]:
        """Rows from `state` on, each with the state that follows it."""
        epoch, window, row = state.epoch, state.window, state.row
        while True:
            packed = self.packed_window(epoch, window)
            if packed is None:
                epoch, window, row = epoch + 1, 0, 0
                continue
            n = len(packed["tokens"])
            for r in range(row, n):
                following = IteratorState(epoch, window, r + 1) if r + 1 < n else IteratorState(epoch, window + 1, 0)
                yield {k: packed[k][r] for k in packed}, following  # BATCH_KEYS, and reference_logps where cached
            window, row = window + 1, 0

    def _batches(self, state: IteratorState) -> Iterator[tuple[dict[str, np.ndarray], IteratorState]]:
        """This host's slice of each global batch, with the (global) state after the whole global batch."""
        if self.per_step and self.step_plan is None:
            raise ConfigError("data.pack=per_step: plan the run's steps first (DataPipeline.plan_steps)")
        rows = self._rows(state)
        while True:
            global_chunk = [next(rows) for _ in range(self.config.global_batch)]
            batch = {k: np.stack([r[k] for r, _ in global_chunk]) for k in global_chunk[0][0]}
            if self.per_step:  # the step's examples packed whole, padded to its planned shape
                batch = self.step_plan.pack(batch)
            share = len(batch["tokens"]) // self.process_count
            mine = slice(self.process_index * share, (self.process_index + 1) * share)
            yield {k: v[mine] for k, v in batch.items()}, global_chunk[-1][1]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        """Host batches from the current state on; `self.state` follows the batches handed out."""
        start = self.state
        if self.config.prefetch <= 0:
            for batch, following in self._batches(start):
                self.state = following
                yield batch
            return
        q: queue.Queue = queue.Queue(maxsize=self.config.prefetch)
        stop = threading.Event()

        def produce():
            try:
                for item in self._batches(start):
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as e:  # hand the error to the consumer
                q.put(e)

        thread = threading.Thread(target=contextvars.copy_context().run, args=(produce,), daemon=True,
                                  name="instructjax-prefetch")  # in the command's context (`core.context`)
        thread.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                batch, self.state = item
                yield batch
        finally:
            stop.set()

    def batch_source(self, run_dir, total_steps: int, place):
        """The run's batches (`data.batches.source`): the next made while a step runs, from the current state on,
        placed on the mesh by `place`."""
        from instructjax.data.batches.source import Batch, MadeBetweenSteps

        batches = None

        def make(params) -> Batch:
            nonlocal batches
            batches = batches or iter(self)  # from the state restored
            return Batch(next(batches))

        return MadeBetweenSteps(make, lambda: self.state, place)

    def restore(self, state: IteratorState | np.ndarray | dict) -> None:
        """Continue from a saved state: the next batch is the one that followed it."""
        if isinstance(state, dict):
            state = IteratorState(**state)
        elif not isinstance(state, IteratorState):
            state = IteratorState.from_array(state)
        self.state = state

    # ---- sizes --------------------------------------------------------------------------------
    def plan_steps(self, steps: int, multiple: int = 1) -> StepPlan:
        """`pack: per_step`: the rows of the run's `steps` steps (from its start, whatever the state), from the
        examples' sizes alone, and the row counts (multiples of `multiple`: hosts x micro-batches x data-parallel
        devices) its batches are padded to; iteration uses them from here on."""
        rows, have, epoch, window = steps * self.config.global_batch, 0, 0, 0
        segments = [np.zeros(0, np.int64)]  # the lengths of pack: false's rows, in their order
        while have < rows:
            sizes = self.stream.window_sizes(epoch, window)
            if sizes is None:
                epoch, window = epoch + 1, 0
                continue
            lengths = segment_lengths(sizes[0], self.config.seq_len, self.config.overlong)
            segments.append(lengths[self._row_order(epoch, window, len(lengths))] if self.config.shuffle else lengths)
            have, window = have + len(lengths), window + 1
        self.step_plan = plan_step_rows(np.concatenate(segments)[:rows], self.config.global_batch,
                                        self.config.seq_len, multiple)
        return self.step_plan

    def plan_epoch(self, epoch: int = 0) -> EpochPlan:
        """Rows, tokens, packing efficiency and optimizer steps of one epoch (of the global stream).

        In rate mode an "epoch" is as many draws as all tasks together hold. Each window is planned from
        its examples' sizes (`packer.plan_window`: the same counts as packing it), or packed when one of
        them is longer than a row.
        """
        stats = PackStats()
        total = sum(len(e) for e in self.stream.examples) if self.stream.rate_mode else self.stream.epoch_size(epoch)
        trained = 0
        for w in range(math.ceil(total / self.config.pack_window)):
            lengths, weights = self.stream.window_sizes(epoch, w)
            if lengths.size and lengths.max() > self.config.seq_len:  # cut where packing cuts: pack it
                packed, window_stats = self.packer.pack_window(self.stream.window_examples(epoch, w))
                window_trained = int((packed["loss_weights"] > 0).sum())
            else:
                window_stats, window_trained = self.packer.plan_window(lengths, weights)
            stats += window_stats
            trained += window_trained
        return EpochPlan(
            examples=stats.examples,
            rows=stats.rows,
            tokens=stats.tokens,
            trained_tokens=trained,
            efficiency=stats.efficiency if stats.rows else 0.0,
            steps=math.ceil(stats.rows / self.config.global_batch),
            packing=asdict(stats),
        )
