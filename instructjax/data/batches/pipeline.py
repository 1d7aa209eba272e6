"""From a bound task or mixture to this host's packed batches, deterministic and resumable.

One global plan: the examples (`streams.ExampleStream`: which ones, in which order) are cut into windows;
each window is packed on its own (best-fit-decreasing), so the global sequence of packed rows is a pure
function of (seed, epoch, window), computed alike on every host. A step takes the next `global_batch` rows
and host h keeps its slice `[h * B/H, (h+1) * B/H)`: every host plans the same steps and batch shapes, and
the iterator state (`epoch`, `window`, `row`: rows of that window already consumed) is global, so a run
saved on H hosts resumes on any H' and sees the same global batches. A background thread prefetches.

A window's rows come in a seeded random order, or with `data.shuffle: false` in the order of the first
example each holds (one example a row with `pack: false`: the rows are the examples, in order); the
examples' own order is `streams`'.

`pack: per_step` keeps every step of `pack: false` (the same examples, the same iterator state, so resume and
resume on other hosts are unchanged) and packs its `global_batch` one-example rows into fewer rows
(`packing.pack_segments`); the loss, being a sum over trained tokens, is the same up to float reassociation.
XLA needs few shapes: `plan_steps` works out from the examples' sizes how many rows every step of the run
fills and picks at most `MAX_STEP_SHAPES` row counts (multiples of the mesh's row multiple) that waste the
fewest rows; each step is padded with empty rows to the smallest that holds it. Where a step's examples fill
few rows for the multiple (128 Tulu examples fill about 40 rows of 2048; FSDP over 32 chips wants 32 or 64),
the steps instead have a fixed number of rows whose length varies (up to twice seq_len: 32 rows of 2560 to
3584 tokens), chosen the same way (`plan_step_rows`).
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from instructjax.core.config import DataSection
from instructjax.core.errors import ConfigError, DataError
from instructjax.data.batches.packing import (
    PackStats,
    SequencePacker,
    best_fit_decreasing,
    pack_segments,
    segment_lengths,
)
from instructjax.data.batches.streams import ExampleStream, named_rng
from instructjax.data.binding import Resolved

BATCH_KEYS = ("tokens", "targets", "loss_weights", "segment_ids", "positions", "source_ids")
# pack: per_step: at most this many step shapes (each compiled once). Tulu lengths, seq 2048, batch 128, rows a
# multiple of 1 or 8: 70-79% of the tokens processed are real with one shape, 91-95% with four, 98% with a shape
# for every step (benchmarks/per_step.py, benchmarks/RESULTS.md)
MAX_STEP_SHAPES = 4
# Long rows (a fixed number of rows whose length varies): lengths are multiples of seq_len / LONG_ROW_QUANTUM, at most
# MAX_ROW_FACTOR * seq_len, and taken only when they process at least LONG_ROW_GAIN fewer tokens than rows of
# seq_len (a long row's attention also spans the segments it masks). Tulu, rows a multiple of 32: 93.1% real
LONG_ROW_QUANTUM, MAX_ROW_FACTOR, LONG_ROW_GAIN = 8, 2, 0.05


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


@dataclass(frozen=True)
class StepPlan:
    """`pack: per_step` over a run: the shapes (rows x row length) steps are padded to and what each step needs.

    Two layouts: rows of seq_len whose number varies (`fixed_rows` 0: a step needs the rows best-fit-decreasing
    fills), or `fixed_rows` rows whose length varies (a step needs the shortest row length, a multiple of
    `row_quantum`, into which best-fit-decreasing packs its examples in that many rows). A step takes the smallest
    size at least its need; with long rows its examples are packed at their needed length and the rows padded."""

    needed: np.ndarray  # per step: the rows (or the row length) its examples fill
    tokens: np.ndarray  # their real (non-padding) tokens
    sizes: tuple[int, ...]  # the rows (or row lengths) a step may have, ascending: one compiled step each
    seq_len: int
    fixed_rows: int = 0

    @property
    def shapes(self) -> tuple[tuple[int, int], ...]:
        """(rows, row length) of every step shape, fewest tokens first."""
        return tuple((self.fixed_rows, s) if self.fixed_rows else (s, self.seq_len) for s in self.sizes)

    def need(self, lengths: np.ndarray) -> int | None:
        """What a step whose examples have these segment lengths needs (`step_need`)."""
        return step_need(lengths, self.seq_len, self.fixed_rows)

    def size(self, needed: int | np.ndarray) -> int | np.ndarray:
        """The size a step that needs `needed` takes: the smallest at least that."""
        i = np.searchsorted(self.sizes, needed)
        if np.any(i == len(self.sizes)):
            raise DataError(f"a step needs {np.max(needed)} {'tokens a row' if self.fixed_rows else 'rows'}, more "
                            f"than the {self.sizes[-1]} planned (past the planned steps?)", reason="unplanned_step")
        return np.asarray(self.sizes)[i]

    def pack(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One step's unpacked rows (one segment each) packed into its shape."""
        needed = self.need(np.count_nonzero(rows["segment_ids"], axis=1))
        if needed is None:
            raise DataError("a step's examples do not fit its longest planned rows (past the planned steps?)",
                            reason="unplanned_step")
        size = int(self.size(needed))
        if self.fixed_rows:
            return pack_segments(rows, self.fixed_rows, capacity=needed, row_length=size)
        return pack_segments(rows, size)

    @property
    def processed(self) -> int:
        """Tokens (real and padding) of the run's rows."""
        taken = self.size(self.needed) if len(self.needed) else np.zeros(0, np.int64)
        return int(np.sum(taken) * (self.fixed_rows or self.seq_len))

    @property
    def efficiency(self) -> float:
        """Real tokens / all tokens of the run's rows."""
        return float(self.tokens.sum() / self.processed) if len(self.needed) else 1.0


def row_quantum(seq_len: int) -> int:
    """Long rows are a multiple of this long."""
    return max(1, seq_len // LONG_ROW_QUANTUM)


def step_need(lengths: np.ndarray, seq_len: int, fixed_rows: int = 0) -> int | None:
    """The rows of seq_len best-fit-decreasing packs these segment lengths into; with `fixed_rows`, the shortest
    row length (a multiple of seq_len / LONG_ROW_QUANTUM) in which it packs them into that many rows (None when
    even MAX_ROW_FACTOR * seq_len does not)."""
    if not fixed_rows:
        return best_fit_decreasing(lengths, seq_len).n_rows
    quantum = row_quantum(seq_len)
    at_least = max(int(np.max(lengths, initial=1)), -(-int(np.sum(lengths)) // fixed_rows))
    for length in range(-(-at_least // quantum) * quantum, MAX_ROW_FACTOR * seq_len + 1, quantum):
        if best_fit_decreasing(lengths, length).n_rows <= fixed_rows:
            return length
    return None


def plan_step_rows(segments: np.ndarray, global_batch: int, seq_len: int, multiple: int = 1) -> StepPlan:
    """The StepPlan of a run whose unpacked rows hold segments of these lengths, in order: `global_batch` a step.

    Rows of seq_len, a multiple of `multiple` a step; or, where that pads much (few rows for `multiple`), a fixed
    number of rows of varying length: of the two smallest multiples of `multiple` (at most the most rows of seq_len)
    whose longest rows hold every step, the one that processes the fewest tokens, if at least LONG_ROW_GAIN fewer
    than rows of seq_len."""
    steps = [segments[i : i + global_batch] for i in range(0, len(segments) - global_batch + 1, global_batch)]
    tokens = np.asarray([step.sum() for step in steps], np.int64)
    needed = np.asarray([step_need(step, seq_len) for step in steps], np.int64)
    best = StepPlan(needed, tokens, step_shapes(needed, multiple), seq_len)
    if not steps:
        return best
    fewest = max(1, -(-int(tokens.max()) // (MAX_ROW_FACTOR * seq_len * multiple))) * multiple
    limit, candidates = (1 - LONG_ROW_GAIN) * best.processed, 0
    for rows in range(fewest, max(best.sizes) + 1, multiple):
        lengths = [step_need(step, seq_len, rows) for step in steps]
        if None in lengths:
            continue
        plan = StepPlan(np.asarray(lengths, np.int64), tokens, (), seq_len, rows)
        plan = dataclasses.replace(plan, sizes=step_shapes(plan.needed, row_quantum(seq_len)))
        if plan.processed < limit:
            best, limit = plan, plan.processed
        candidates += 1
        if candidates == 2:
            break
    return best


def mean_step_shape(step_tokens: float, global_batch: int, seq_len: int, multiple: int = 1,
                    efficiency: float = 1.0) -> tuple[int, int]:
    """(rows, row length) of a per_step step holding `step_tokens` tokens, packed `efficiency` full, by the
    rule `plan_step_rows` applies to every step: for plans from sizes alone. Its longest example is taken to be
    seq_len long."""
    quantum = row_quantum(seq_len)
    fill = step_tokens / efficiency
    rows = min(global_batch, -(-math.ceil(fill / seq_len) // multiple) * multiple)
    long_rows = multiple * max(1, math.ceil(fill / (MAX_ROW_FACTOR * seq_len * multiple)))
    length = max(seq_len, -(-math.ceil(fill / long_rows) // quantum) * quantum)
    if long_rows < rows and long_rows * length < (1 - LONG_ROW_GAIN) * rows * seq_len:
        return long_rows, length
    return rows, seq_len


def step_shapes(needed: Sequence[int], multiple: int = 1, limit: int = MAX_STEP_SHAPES) -> tuple[int, ...]:
    """At most `limit` sizes (rows or row lengths), multiples of `multiple`, such that padding every step up to
    the smallest one that holds its `needed` costs the fewest in all (exact: dynamic programming over the
    distinct values; the largest is always one, and fewer are taken when they do as well)."""
    values, counts = np.unique(-(-np.asarray(needed, np.int64) // multiple) * multiple, return_counts=True)
    below = np.concatenate([[0], np.cumsum(counts)])  # steps needing less than values[i]
    n = len(values)
    # cost[k, i]: fewest rows for the steps needing up to values[i - 1], with k shapes, the largest values[i - 1]
    cost = np.full((limit + 1, n + 1), np.inf)
    cost[0, 0] = 0
    prev = np.zeros((limit + 1, n + 1), np.int64)
    for k in range(1, limit + 1):
        for i in range(1, n + 1):
            options = cost[k - 1, :i] + values[i - 1] * (below[i] - below[:i])
            prev[k, i] = np.argmin(options)
            cost[k, i] = options[prev[k, i]]
    k, i, shapes = int(np.argmin(cost[1:, n])) + 1, n, []
    while i:
        shapes.append(int(values[i - 1]))
        i, k = prev[k, i], k - 1
    return tuple(sorted(shapes))


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
        self.stream = ExampleStream(config, vocab_size=vocab_size, resolved=resolved)
        self.task_names = self.stream.task_names
        self.per_step = config.pack == "per_step"  # the rows (and state) are pack: false's, packed per step
        self.packer = SequencePacker(config.seq_len, window=config.pack_window, overlong=config.overlong,
                                     pack=config.pack is True, in_input_order=not config.shuffle)
        self.state = IteratorState()
        self.step_plan: StepPlan | None = None  # pack: per_step: set by plan_steps

    def report(self) -> list[str]:
        """What the data did not train as given (see `ExampleStream.report`)."""
        return self.stream.report()

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
                yield {k: packed[k][r] for k in BATCH_KEYS}, following
            window, row = window + 1, 0

    def _batches(self, state: IteratorState) -> Iterator[tuple[dict[str, np.ndarray], IteratorState]]:
        """This host's slice of each global batch, with the (global) state after the whole global batch."""
        if self.per_step and self.step_plan is None:
            raise ConfigError("data.pack=per_step: plan the run's steps first (DataPipeline.plan_steps)")
        rows = self._rows(state)
        while True:
            global_chunk = [next(rows) for _ in range(self.config.global_batch)]
            batch = {k: np.stack([r[k] for r, _ in global_chunk]) for k in BATCH_KEYS}
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

        thread = threading.Thread(target=produce, daemon=True, name="instructjax-prefetch")
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
