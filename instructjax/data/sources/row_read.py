"""A row source's read: its rows in visiting order (`RowRead.order`), fetched and adapted a chunk at a time
(`RowRead.adapt`), with each row's outcome (`RowOutcome`) to count.

`shuffle_seed` visits the rows in a seeded random order, fetching them a chunk at a time from the
memory-mapped Arrow table `datasets` keeps, so taking the first 100K conversations of a source of
millions costs time in proportion to 100K (the rows are only rendered and tokenized as they are taken).

Pooled sources (option `per_part`): the source is read as parts (P3: one per prompted subtask; CoT: its
zero-shot and few-shot submixes), and each part gives the first `per_part` rows of its own random order
(`part_order`), seeded by `pool_seed` and the part's name, that the adapter makes a conversation of (rows it
skips on the way are counted). The pool depends on nothing else, so it is the same in every run and mixture, a
smaller `per_part` gives a subset of a larger one, and adding a part leaves the others' rows alone. Parts
are the hub's configs or files (`Source.hub_parts`), or, from local data, the files: a directory in
`data_files` stands for the files in it (sorted by name), and a part is named after its file without the
extension (P3: `<directory>/<subtask>.jsonl`, as the hub config names the subtask). A file that already
holds a pool (P3 pooled elsewhere) is read whole with `per_part: null` in the task's `source_options`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from instructjax.core.errors import BadRowPolicy, DataError
from instructjax.data.schema import Conversation
from instructjax.data.sources.registry import Source
from instructjax.data.sources.rows import PipelineStats, RowFile, Share, alone, fetch, locate


def part_order(pool_seed: int, part: str, size: int) -> np.ndarray:
    """The random order in which a pooled source visits the `size` rows of `part`."""
    key = int.from_bytes(hashlib.sha256(part.encode()).digest()[:8], "little")
    return np.random.default_rng([pool_seed, key]).permutation(size)


@dataclass(frozen=True)
class RowOutcome:
    """What adapting one row gave, without its conversations: small, and replayed on every host in row order
    (`count`) to count what one process reading every row counts."""

    index: int  # the row's ordinal over all files
    repairs: tuple[tuple[str, ...], ...]  # per conversation it gave, the adapter's repairs
    error: DataError | None  # a bad or skipped row (located): the policy raises or counts it

    def count(self, policy: BadRowPolicy) -> int:
        """Count the row into `policy` (raising where it raises on a bad row); the conversations it gave."""
        policy.read += 1
        if self.error is not None:
            policy.handle(self.error)
            return 0
        for repairs in self.repairs:
            for how in repairs:
                policy.repaired[how] += 1
        return len(self.repairs)


class RowRead:
    """A row source's read in two parts: its rows put in visiting order (`order`: the row ordinals, in order or
    a seeded random order, of every row or, pooled, of the pools' rows), which every reader makes alike from
    the files' sizes; and `adapt(a, b)`: the rows a..b of that order fetched and adapted, which the hosts of a
    run share (`tokenized.shared`). Drawing the pools adapts the candidate rows (`share` maps that over the
    hosts), the skipped ones counted into `policy`. Each row adapted here is counted into `stats.rows_read`."""

    def __init__(self, source: Source, parts: list[tuple[str, RowFile]], opts: dict, shuffle_seed: int | None,
                 policy: BadRowPolicy, share: Share = alone, chunk: int = 4096, stats: PipelineStats | None = None):
        opts = dict(opts)
        per_part, pool_seed = opts.pop("per_part", None), opts.pop("pool_seed", 0)
        self.source, self.opts, self.chunk = source, opts, chunk
        self.stats = stats if stats is not None else PipelineStats()
        self.tables = [table for _, table in parts]
        self._starts = np.cumsum([0] + [len(t) for t in self.tables])
        if per_part is None:
            order = np.arange(int(self._starts[-1]))
        else:
            pools = self._pools(parts, per_part, pool_seed, policy, share)
            order = np.concatenate([self._starts[t] + pool for t, pool in enumerate(pools)] + [np.zeros(0, np.int64)])
        if shuffle_seed is not None:
            order = order[np.random.default_rng(shuffle_seed).permutation(len(order))]
        self.order = order

    def __len__(self) -> int:
        return len(self.order)

    def adapt(self, a: int, b: int) -> Iterator[tuple[RowOutcome, list[Conversation]]]:
        """(outcome, validated conversations) of the rows a..b of the visiting order, fetched `chunk` at a time."""
        for begin in range(a, b, self.chunk):
            yield from self._fetched(self.order[begin : min(b, begin + self.chunk)])

    def _fetched(self, wanted: np.ndarray) -> Iterator[tuple[RowOutcome, list[Conversation]]]:
        """(outcome, validated conversations) of the rows `wanted` (ordinals over all files), in that order."""
        fetched = fetch(self.tables, self._starts, wanted)
        for ordinal in wanted.tolist():
            t, rownum, row = fetched[ordinal]
            conversations, error = self._adapt(row, ordinal, self.tables[t].path, rownum)
            yield RowOutcome(ordinal, tuple(tuple(c.meta.get("repairs", ())) for c in conversations),
                             error), conversations

    def _adapt(self, row: dict | DataError, index: int, file: str, rownum: int
               ) -> tuple[list[Conversation], DataError | None]:
        """The validated conversations of one row, or the located error of a bad or skipped one."""
        self.stats.rows_read += 1
        try:
            if isinstance(row, DataError):
                raise row
            conversations = self.source.adapter(row, self.source.name, index, **self.opts)
            for convo in conversations:
                convo.validate(file=file, row=rownum)
            return conversations, None
        except DataError as err:
            return [], locate(err, file, rownum, self.source.name)

    def _pools(self, parts: list[tuple[str, RowFile]], per_part: int, pool_seed: int, policy: BadRowPolicy,
               share: Share) -> list[np.ndarray]:
        """Per part, the sorted positions of the first `per_part` rows of `part_order` that the adapter makes
        a conversation of. Every part draws at once, a block of candidates each (`share` maps the adapting over
        them, over the hosts of a run), until each has its pool or runs out of rows. The rows skipped on the way
        are counted here, part after part, in order; the kept ones when visited."""
        orders = [part_order(pool_seed, name, len(table)) for name, table in parts]
        kept, skipped, begins = [[] for _ in parts], [[] for _ in parts], [0] * len(parts)
        drawing = [t for t in range(len(parts)) if len(orders[t])]
        starts = self._starts.tolist()
        while drawing:
            candidates = []  # (row ordinal, part), each part's in its own order
            for t in drawing:
                block = orders[t][begins[t] : begins[t] + max(per_part - len(kept[t]), 64)].tolist()
                begins[t] += len(block)
                candidates += [(starts[t] + position, t) for position in block]
            errors = iter(share(self._judge, [ordinal for ordinal, _ in candidates]))
            for (ordinal, t), error in zip(candidates, errors, strict=True):
                if len(kept[t]) == per_part:
                    continue  # past this part's pool: judged, not counted
                if error is None:
                    kept[t].append(ordinal - starts[t])
                else:
                    skipped[t].append(error)
            drawing = [t for t in drawing if len(kept[t]) < per_part and begins[t] < len(orders[t])]
        for errors in skipped:
            for error in errors:
                policy.handle(error)
                policy.read += 1
        return [np.sort(np.array(rows, dtype=np.int64)) for rows in kept]

    def _judge(self, ordinals: list[int]) -> list[DataError | None]:
        """Per row (its ordinal over all files), the located error when the adapter makes no conversation of it."""
        wanted = np.array(ordinals, dtype=np.int64)
        return [outcome.error for begin in range(0, len(wanted), self.chunk)
                for outcome, _ in self._fetched(wanted[begin : begin + self.chunk])]

