"""`pack: per_step`: the shapes (rows x row length) a run's steps are padded to, planned once from its examples'
sizes.

A per_step step packs the `global_batch` one-example rows an unpacked step takes into fewer rows
(`packing.pack_segments`); the loss, being a sum over trained tokens, is the same up to float reassociation. XLA
needs few shapes: `plan_step_rows` works out how many rows every step of the run fills and picks at most
`MAX_STEP_SHAPES` row counts (multiples of the mesh's row multiple) that waste the fewest rows (`step_shapes`);
each step is padded with empty rows to the smallest that holds it. Where a step's examples fill few rows for the
multiple (128 Tulu examples fill about 40 rows of 2048; FSDP over 32 chips wants 32 or 64), the steps instead
have a fixed number of rows whose length varies (up to twice seq_len: 32 rows of 2560 to 3584 tokens), chosen
the same way. `mean_step_shape` applies the rule to a mean step, for plans from sizes alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from instructjax.core.errors import DataError
from instructjax.data.batches.packing import best_fit_decreasing, pack_segments

# pack: per_step: at most this many step shapes (each compiled once). Tulu lengths, seq 2048, batch 128, rows a
# multiple of 1 or 8: 70-79% of the tokens processed are real with one shape, 91-95% with four, 98% with a shape
# for every step (benchmarks/per_step.py, benchmarks/RESULTS.md)
MAX_STEP_SHAPES = 4
# Long rows (a fixed number of rows whose length varies): lengths are multiples of seq_len / LONG_ROW_QUANTUM, at most
# MAX_ROW_FACTOR * seq_len, and taken only when they process at least LONG_ROW_GAIN fewer tokens than rows of
# seq_len (a long row's attention also spans the segments it masks). Tulu, rows a multiple of 32: 93.1% real
LONG_ROW_QUANTUM, MAX_ROW_FACTOR, LONG_ROW_GAIN = 8, 2, 0.05


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
        """One step's unpacked rows (one example each: a segment, or a pair's two) packed into its shape."""
        needed = self.need(np.count_nonzero(rows["segment_ids"], axis=1))
        if needed is None:
            raise DataError("a step's examples do not fit its longest planned rows (past the planned steps?)",
                            reason="unplanned_step")
        size = int(self.size(needed))
        per_row = int(rows["segment_ids"].max(initial=1))  # unpacked rows: 2 are a preference pair's sides
        if self.fixed_rows:
            return pack_segments(rows, self.fixed_rows, capacity=needed, row_length=size, segments_per_row=per_row)
        return pack_segments(rows, size, segments_per_row=per_row)

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
