"""Loading a source by name: dataset name -> its rows (hub or local files) -> validated Conversations.

`load_conversations("alpaca")` reads the hub dataset through `datasets.load_dataset` (for users;
tests never touch the hub); `load_conversations("alpaca", ["rows.jsonl"])` reads local json / jsonl /
parquet files in the same native schema, also through `datasets`. Bad rows raise one `DataError`
naming file, row and problem, or are skipped and counted under a `BadRowPolicy(on_bad_row="skip")`;
rows the dataset's reference pipeline drops are always skipped and counted, repairs are counted
(see `adapters`). Rows are numbered as a person finds them: 1-based line numbers in jsonl, 0-based
indices in JSON arrays, parquet files and hub splits. The reads themselves: `row_read` (row order, shuffling,
pools) and `tree_read`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from instructjax.core.errors import BadRowPolicy, ConfigError
from instructjax.data.schema import Conversation
from instructjax.data.sources.data_files import local_files, part_name
from instructjax.data.sources.hub import hub_parts
from instructjax.data.sources.registry import POOL_OPTIONS, Source, get_source
from instructjax.data.sources.row_read import RowRead
from instructjax.data.sources.rows import PipelineStats, RowFile, Share, alone
from instructjax.data.sources.tree_read import TreeRead


def load_conversations(
    name: str,
    data_files: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
    *,
    split: str | None = None,
    policy: BadRowPolicy | None = None,
    hub_config: str | None = None,
    cache_dir: str | None = None,
    shuffle_seed: int | None = None,
    positions: list[int] | None = None,
    total: list[int] | None = None,
    share: Share = alone,
    stats: PipelineStats | None = None,
    **options: Any,
) -> Iterator[Conversation]:
    """Yield the validated Conversations of source `name`, in row order or, with `shuffle_seed`, in a
    seeded random order of the rows (of the conversations, for a tree source).

    `data_files` None reads the hub dataset's `split` (None: the source's `hub_split`); `hub_config` overrides
    the registered config (for P3 it names the one subtask to read); `messages` has none: a ConfigError.
    Otherwise local json/jsonl/parquet files in the native schema, a directory standing for the files in it.
    `options` are per source: oasst1 `top_k`; sharegpt `clean` (null: the html-cleaned release, or "fastchat": FastChat's cleaner on a raw
    HTML dump; see `sharegpt`); every row source `per_part` and `pool_seed` (see `row_read`;
    `per_part=None` reads every row). `policy` counts the rows read, skipped and repaired. `positions`, when
    given, gets each conversation's place in row order appended just before it is yielded (its row's ordinal
    over all files; a tree source's conversation index): how a shuffled read is put back in file order.
    `total`, when given, gets the number of rows the read visits once the files are open (for progress).
    `share` maps a tree source's adapting over its trees (over the hosts of a run: `TreeRead`), and a source's
    pass before its rows (`Source.prepare`). `stats` counts the rows read (`PipelineStats.rows_read`).
    """
    policy = policy if policy is not None else BadRowPolicy()
    stats = stats if stats is not None else PipelineStats()
    source, parts, opts = _open_source(name, data_files, split, policy, hub_config, cache_dir, options, share, stats)
    tables = [table for _, table in parts]
    if total is not None:
        total.append(sum(len(t) for t in tables) if opts.get("per_part") is None or source.tree
                     else opts["per_part"] * len(tables))  # fmt: skip
    if source.tree:
        conversations = TreeRead(source, tables, opts, stats).conversations(policy, share)
        order = (np.random.default_rng(shuffle_seed).permutation(len(conversations)) if shuffle_seed is not None
                 else np.arange(len(conversations)))
        for i in order.tolist():
            if positions is not None:
                positions.append(i)
            yield conversations[i]
        return
    read = RowRead(source, parts, opts, shuffle_seed, policy, stats=stats)
    for outcome, conversations in read.adapt(0, len(read)):
        outcome.count(policy)
        for convo in conversations:
            if positions is not None:
                positions.append(outcome.index)
            yield convo


def open_row_read(name: str, data_files=None, *, policy: BadRowPolicy, shuffle_seed: int | None = None,
                  split: str | None = None, hub_config: str | None = None, cache_dir: str | None = None,
                  share: Share = alone, stats: PipelineStats | None = None, **options: Any) -> RowRead | None:
    """The read `load_conversations` makes of a row source, as a `RowRead` (None for a tree source): its
    rows in visiting order, each adapted when asked for. `policy` counts what drawing the pools read; `share`
    maps the drawing's adapting, and the source's pass before its rows (over the hosts of a run); `stats` counts
    the rows read."""
    stats = stats if stats is not None else PipelineStats()
    source, parts, opts = _open_source(name, data_files, split, policy, hub_config, cache_dir, options, share, stats)
    return None if source.tree else RowRead(source, parts, opts, shuffle_seed, policy, share, stats=stats)


def _open_source(name: str, data_files, split: str | None, policy: BadRowPolicy, hub_config: str | None,
                 cache_dir: str | None, options: dict, share: Share, stats: PipelineStats
                 ) -> tuple[Source, list[tuple[str, RowFile]], dict]:
    """The source, its parts (name, rows: its files, or the hub's parts) opened, and the adapter's options
    (with `per_part` and `pool_seed` for a row source)."""
    source = get_source(name)
    defaults = {**({} if source.tree else POOL_OPTIONS), **source.options}
    unknown = set(options) - set(defaults)
    if unknown:
        raise ConfigError(f"source {name!r} takes options {sorted(defaults) or 'none'}, not {sorted(unknown)}")
    opts = {**defaults, **options}
    per_part = opts.get("per_part")
    if per_part is not None and (not isinstance(per_part, int) or per_part < 1):
        raise ConfigError(f"source {name!r}: per_part must be a positive integer or null, got {per_part!r}")
    pool = {k: opts.pop(k) for k in POOL_OPTIONS if k in opts}  # the adapter gets the rest
    if data_files is None:
        if source.hub_id is None:
            raise ConfigError(f"source {name!r} has no hub dataset: set data_files to your own json, jsonl or "
                              "parquet files (or a directory of them)")
        if source.prepare is not None:  # None: the hub dataset, its options checked before it is fetched
            opts = source.prepare(None, opts, share, stats)
        parts = hub_parts(source, split or source.hub_split, hub_config, cache_dir, policy)
    else:
        parts = [(part_name(p), RowFile(p, cache_dir)) for p in local_files(data_files, name)]
        if source.prepare is not None:
            opts = source.prepare([table for _, table in parts], opts, share, stats)
    return source, parts, {**opts, **pool}
