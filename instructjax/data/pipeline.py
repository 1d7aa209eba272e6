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
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from instructjax.core.config import DataSection
from instructjax.core.errors import ConfigError
from instructjax.data.packing import PackStats, SequencePacker
from instructjax.data.streams import ExampleStream, named_rng

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
    """Host batches (numpy, `[global_batch / process_count, seq_len]`) of a bound task or mixture."""

    def __init__(self, config: DataSection, *, process_index: int = 0, process_count: int = 1,
                 vocab_size: int | None = None):
        """`vocab_size`: the model's; a token id outside it is a ConfigError here, before training."""
        self.config = config
        self.process_index, self.process_count = process_index, process_count
        if config.global_batch % process_count:
            raise ConfigError(f"data.global_batch={config.global_batch} is not divisible by the {process_count} host(s)")
        self.stream = ExampleStream(config, vocab_size=vocab_size)
        self.task_names = self.stream.task_names
        self.packer = SequencePacker(config.seq_len, window=config.pack_window, overlong=config.overlong,
                                     pack=config.pack, in_input_order=not config.shuffle)
        self.state = IteratorState()

    @property
    def host_batch(self) -> int:
        return self.config.global_batch // self.process_count

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
        order = named_rng(self.config.seed, "window_rows", epoch, window).permutation(len(rows["tokens"]))
        return {k: v[order] for k, v in rows.items()}

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
        rows = self._rows(state)
        first = self.process_index * self.host_batch
        while True:
            global_chunk = [next(rows) for _ in range(self.config.global_batch)]
            chunk = global_chunk[first : first + self.host_batch]
            batch = {k: np.stack([r[k] for r, _ in chunk]) for k in BATCH_KEYS}
            yield batch, global_chunk[-1][1]

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
