"""A task's read cut into shards that are encoded apart, by any process (seqio's Beam cache, `data prepare --runner
beam`), and put back together into exactly the examples, order and report of one process.

A task's units are its rows in visiting order (a row source) or its conversations (a tree source, a selection), as
`shared.units_of` makes them; a shard is a span lo..hi of them (`cut`: at most `SHARD_UNITS` each, and at the
boundaries of the files where the rows are visited in file order, so a shard names a file and a range of its rows).
`encode` makes a shard's piece: each row's outcome and the results of its conversations, in this process alone.
`shard_examples` is one shard's examples by themselves (its rows counted under a policy of their own, so a bad row
raises in its place under `on_bad_row: error`); `assemble` replays every piece in order into the task's stream, as
`shared` does for the hosts of a run, and reads on in rounds here where a subset's count is not reached yet (rows
skipped, or left with nothing to train). No seqio, TensorFlow or Beam here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from instructjax.data.blends.specs import TaskSpec
from instructjax.data.tokenized import shared, stream

SHARD_UNITS = 8192  # rows (or conversations) a shard holds at most


@dataclass(frozen=True)
class Shard:
    """Units lo..hi of a task; `label` says where they lie (a file and its rows, or the span of the read)."""

    lo: int
    hi: int
    label: str


def cut(name: str, units, hi: int, size: int = SHARD_UNITS) -> list[Shard]:
    """Units 0..`hi` of task `name` as shards of at most `size`, each within one file where the rows are visited in
    file order (a file's own rows numbered from 0), else spans of the read's order."""
    read = getattr(units, "read", None)  # a row source's `row_read.RowRead` (a tree source, a selection: none)
    if read is not None:
        starts = np.cumsum([0] + [len(t) for t in read.tables])
        if np.array_equal(read.order[:hi], np.arange(hi)):
            out = []
            for t, table in enumerate(read.tables):
                lo_t, hi_t = int(starts[t]), min(int(starts[t + 1]), hi)
                out += [Shard(a, b, f"{table.path}[{a - lo_t}:{b - lo_t}]") for a, b in _even(lo_t, hi_t, size)]
            return out
        return [Shard(a, b, f"{name}: rows {a}-{b} of its visiting order") for a, b in _even(0, hi, size)]
    return [Shard(a, b, f"{name}: conversations {a}-{b}") for a, b in _even(0, hi, size)]


def _even(lo: int, hi: int, size: int) -> list[tuple[int, int]]:
    """lo..hi cut into the fewest spans of at most `size`, of even lengths."""
    n = -(-(hi - lo) // size)
    bounds = [lo + (hi - lo) * i // n for i in range(n + 1)] if n else []
    return list(zip(bounds, bounds[1:], strict=False))


def encode(units, job, lo: int, hi: int):
    """The piece of units lo..hi: read (a tree source's or a selection's conversations as far as `hi`), adapted and
    encoded here."""
    units.upto(hi)
    return units.encode(job, lo, hi)


def shard_examples(name: str, spec: TaskSpec, units, lo: int, hi: int) -> list[dict]:
    """The examples of units lo..hi by themselves, as the whole task's read makes them (`units`: `shared.units_of`
    with `seed` None)."""
    piece = encode(units, stream.job_of(spec), lo, hi)
    return stream.TaskStream(name, spec, None, results=units.alone(piece, lo, hi)).take(None)


def assemble(name: str, spec: TaskSpec, seed: int | None, count: int | None, units, shards: list[Shard],
             piece: Callable[[Shard], object | None]) -> tuple[stream.TaskStream, list[dict]]:
    """The task's stream replayed from the pieces of `shards` (units 0..the last shard's end, `piece(shard)`: its
    piece, or None where it is missing: then encoded here), then read on here in rounds until it gives `count`
    examples (None: every unit); (the stream, its first `count` examples) as one process makes them."""
    job = stream.job_of(spec)
    first = (0, shards[-1].hi if shards else 0)

    def make(lo: int, hi: int, spans: list) -> tuple[list, bool]:
        if (lo, hi) == first:
            return [_or_encode(piece(s), units, job, s) for s in shards], True
        return [encode(units, job, a, b) for a, b in spans], True

    shared.rounds(units, count, make)  # every piece is at hand: no round is lost
    replayed = stream.TaskStream(name, spec, seed, results=units.replay())
    return replayed, replayed.take(count)


def _or_encode(found, units, job, shard: Shard):
    return found if found is not None else encode(units, job, shard.lo, shard.hi)
