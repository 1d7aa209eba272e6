"""A tree source's read (rows are messages of trees, `Source.tree`): the trees found by union-find over the
message and parent ids, then adapted a share of trees per host (`TreeRead`)."""

from __future__ import annotations

import numpy as np

from instructjax.core.errors import BadRowPolicy, DataError
from instructjax.data.schema import Conversation
from instructjax.data.sources.registry import Source
from instructjax.data.sources.rows import PipelineStats, RowFile, Share, alone, fetch, locate


class TreeRead:
    """A tree source's read in two parts: its trees, which every reader finds from two columns of every row (the
    message's id and its parent's, `Source.tree`): the rows that share an id, as their own or their parent's, are
    one component (union-find over the ids, so a broken or cyclic link stays with the rows it touches); and
    `conversations`: the components adapted (`share` maps that over the hosts of a run: a host fetches the rows of
    its components only), their events merged in the order the adapter gives them over the whole table. Each row
    fetched and adapted here is counted into `stats.rows_read`."""

    def __init__(self, source: Source, tables: list[RowFile], opts: dict, stats: PipelineStats | None = None):
        self.source, self.tables, self.opts = source, tables, opts
        self.stats = stats if stats is not None else PipelineStats()
        self._starts = np.cumsum([0] + [len(t) for t in tables])
        self.unread: list[DataError] = []  # the rows that could not be read, in order (located)
        link = list(range(int(self._starts[-1])))  # union-find over the rows: a row's link towards its component

        def find(i: int) -> int:
            while link[i] != i:
                link[i] = link[link[i]]
                i = link[i]
            return i

        owner: dict[str, int] = {}  # an id -> the first row that names it
        readable, ordinal = [], 0
        for table in tables:
            for rownum, links in table.columns(source.tree):
                if isinstance(links, DataError):
                    self.unread.append(locate(links, table.path, rownum, source.name))
                else:
                    readable.append(ordinal)
                    for value in links.values():
                        if isinstance(value, str):  # other ids are a bad row of its own
                            link[find(ordinal)] = find(owner.setdefault(value, ordinal))
                ordinal += 1
        components: dict[int, list[int]] = {}
        for row in readable:
            components.setdefault(find(row), []).append(row)
        self.components = list(components.values())  # in the order of their first rows, each in row order

    def __len__(self) -> int:
        return int(self._starts[-1])

    def conversations(self, policy: BadRowPolicy, share: Share = alone) -> list[Conversation]:
        """The validated conversations, counting into `policy` what one process reading every row counts, in
        its order: the rows that could not be read, then the adapter's events (raising where it raises)."""
        for error in self.unread:
            policy.handle(error)
        policy.read += len(self)
        events = sorted((event for component in share(self._adapt, self.components) for event in component),
                        key=lambda event: event[0])
        kept = []
        for _, item in events:
            if isinstance(item, DataError):
                policy.handle(item)
            else:
                kept.append(item)
        return kept

    def _adapt(self, components: list[list[int]]) -> list[list[tuple]]:
        """Per component, its events: (order, located error or validated conversation), from one run of the
        adapter over all their rows."""
        which = {ordinal: k for k, rows in enumerate(components) for ordinal in rows}
        wanted = np.array(sorted(which), dtype=np.int64)
        fetched = fetch(self.tables, self._starts, wanted)
        self.stats.rows_read += len(wanted)
        events: list[list[tuple]] = [[] for _ in components]
        rows = ((ordinal, fetched[ordinal][2]) for ordinal in wanted.tolist())
        for order, ordinal, item in self.source.adapter(rows, self.source.name, **self.opts):
            t, rownum, _ = fetched[ordinal]
            if isinstance(item, DataError):
                item = locate(item, self.tables[t].path, rownum, self.source.name)
            else:
                try:
                    item = item.validate(file=self.tables[t].path, row=rownum)
                except DataError as err:
                    item = err
            events[which[ordinal]].append((order, item))
        return events
