"""Source registry and loading: dataset name -> hub id + native schema + adapter -> Conversations.

`load_conversations("alpaca")` reads the hub dataset through `datasets.load_dataset` (for users;
tests never touch the hub); `load_conversations("alpaca", ["rows.jsonl"])` reads local json / jsonl /
parquet files in the same native schema, also through `datasets`. Bad rows raise one `DataError`
naming file, row and problem, or are skipped and counted under a `BadRowPolicy(on_bad_row="skip")`;
rows the dataset's reference pipeline drops are always skipped and counted, repairs are counted
(see `adapters`). Rows are numbered as a person finds them: 1-based line numbers in jsonl, 0-based
indices in JSON arrays, parquet files and hub splits.

`shuffle_seed` visits the rows in a seeded random order, fetching them a chunk at a time from the
memory-mapped Arrow table `datasets` keeps, so taking the first 100K conversations of a source of
millions costs time in proportion to 100K (the rows are only rendered and tokenized as they are taken).

Pooled sources (option `per_part`): the source is read as parts (P3: one per prompted subtask; CoT: its
zero-shot and few-shot submixes), and each part gives the first `per_part` rows of its own random order,
seeded by `pool_seed` and the part's name, that the adapter makes a conversation of (rows it skips on the
way are counted). The pool depends on nothing else, so it is the same in every run and mixture, a
smaller `per_part` gives a subset of a larger one, and adding a part leaves the others' rows alone. Parts
are the hub's configs or files (`Source.hub_parts`), or, from local data, the files: a directory in
`data_files` stands for the files in it (sorted by name), and a part is named after its file without the
extension (P3: `<directory>/<subtask>.jsonl`, as the hub config names the subtask). A file that already
holds a pool (P3 pooled elsewhere) is read whole with `per_part: null` in the task's `source_options`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from instructjax.core import storage
from instructjax.core.errors import BadRowPolicy, ConfigError, DataError, SkippedRow
from instructjax.data.schema import Conversation
from instructjax.data.sources import adapters, chat_logs, dialogues, messages, sharegpt
from instructjax.data.sources.hub import from_hub, hub_table
from instructjax.data.sources.rows import ROWS_ADAPTED, RowFile, Share, alone, datasets_quietly, fetch


@dataclass(frozen=True)
class Source:
    """One instruction dataset: where it lives on the hub, its native columns, and its adapter."""

    name: str
    title: str
    hub_id: str | None  # None: no hub dataset, the user's own files (data_files is required)
    columns: tuple[str, ...]
    adapter: Callable[..., Any]
    hub_config: str | None = None
    hub_data_files: str | tuple[str, ...] | None = None
    hub_parts: str | None = None  # pooled: "configs" (every hub config is a part) or "files" (every hub file)
    options: dict[str, Any] = field(default_factory=dict)
    # rows are messages of trees: the columns of a message's id and its parent's (the adapter needs whole trees)
    tree: tuple[str, str] | None = None
    split_long: bool = False  # conversations longer than a row are split into blocks of whole rounds
    # (local tables or None for the hub, adapter options, share) -> adapter options: a pass over every row, in file
    # order, before any row is adapted (ShareGPT's `clean: fastchat` cleans and de-duplicates the dump, the
    # cleaning mapped over the hosts of a run by `share`; `sharegpt.prepare`)
    prepare: Callable[..., dict[str, Any]] | None = None


_ALPACA = ("instruction", "input", "output")
# The Flan Collection (SirNeural/flan_v2): five submixes, each zero-/few-shot and with/without answer options
# (`{submix}_{zs|fs}_{opt|noopt}_train*.jsonl.gz`; some are split into parts). Tulu's FLAN V2 samples them all.
FLAN_V2_SUBMIXES = ("flan", "t0", "niv2", "cot", "dialog")
POOL_OPTIONS = {"per_part": None, "pool_seed": 0}  # every row source takes these (see the module doc)
SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("superni", "SuperNI", "Muennighoff/natural-instructions",
           ("task_name", "id", "definition", "inputs", "targets"), adapters.superni),
    # CoT as open-instruct's convert_cot_data: 50K zero-shot + 50K few-shot (the pool of two parts)
    Source("cot", "CoT", "SirNeural/flan_v2", ("inputs", "targets", "task"), adapters.inputs_targets,
           hub_data_files=("cot_zs_opt_train.jsonl.gz", "cot_fs_opt_train.jsonl.gz"), hub_parts="files",
           options={"per_part": 50_000, "pool_seed": 0}),
    Source("flan_v2", "Flan V2", "SirNeural/flan_v2", ("inputs", "targets", "task"), adapters.inputs_targets,
           hub_data_files=tuple(f"{m}_*_train*.jsonl.gz" for m in FLAN_V2_SUBMIXES)),
    Source("dolly", "Dolly", "databricks/databricks-dolly-15k",
           ("instruction", "context", "response", "category"), adapters.dolly),
    Source("oasst1", "Open Assistant 1", "OpenAssistant/oasst1",
           ("message_id", "parent_id", "role", "text", "rank", "lang", "message_tree_id", "deleted"),
           dialogues.oasst1_conversations, options={"top_k": None}, tree=dialogues.TREE_LINKS),
    Source("self_instruct", "Self-instruct", "yizhongw/self_instruct", ("prompt", "completion"),
           adapters.self_instruct, hub_config="self_instruct"),
    Source("unnatural_instructions", "Unnatural Instructions", "mrm8488/unnatural-instructions-core",
           ("instruction", "instances"), adapters.unnatural_instructions),
    Source("alpaca", "Alpaca", "tatsu-lab/alpaca", _ALPACA, adapters.alpaca_style),
    Source("code_alpaca", "Code-Alpaca", "sahil2801/CodeAlpaca-20k", _ALPACA, adapters.alpaca_style),
    Source("gpt4_alpaca", "GPT4-Alpaca", "vicgalle/alpaca-gpt4", _ALPACA, adapters.alpaca_style),
    Source("baize", "Baize", "taskydata/baize_chatbot", ("topic", "input"), dialogues.baize,
           hub_data_files=("alpaca_chat_data.json", "medical_chat_data.json", "quora_chat_data.json",
                           "stackoverflow_chat_data.json")),
    # the html-cleaned release as open-instruct reads it; `clean: fastchat` cleans a raw HTML dump (`sharegpt`)
    Source("sharegpt", "ShareGPT", "anon8231489123/ShareGPT_Vicuna_unfiltered", ("id", "conversations"),
           sharegpt.sharegpt,
           hub_data_files=("HTML_cleaned_raw_dataset/sg_90k_part1_html_cleaned.json",
                           "HTML_cleaned_raw_dataset/sg_90k_part2_html_cleaned.json"), split_long=True,
           options={"clean": None}, prepare=sharegpt.prepare),
    # seed 000's P3 pool: 1K rows of every prompted subtask (one hub config each)
    Source("p3", "P3", "bigscience/P3", ("inputs_pretokenized", "targets_pretokenized"), adapters.p3,
           hub_parts="configs", options={"per_part": 1000, "pool_seed": 0}),
    Source("wizardlm", "WizardLM", "WizardLM/WizardLM_evol_instruct_70k", ("instruction", "output"),
           dialogues.wizardlm),
    # seed 003's Table 3: "Vicuna 1M" is LMSYS-Chat-1M (gated on the hub: accept its terms, then log in)
    Source("lmsys_chat", "LMSYS-Chat-1M (Vicuna 1M)", "lmsys/lmsys-chat-1m",
           ("conversation_id", "model", "conversation", "turn", "language", "openai_moderation", "redacted"),
           chat_logs.lmsys_chat, split_long=True,
           options={"languages": None, "drop_flagged": False, "drop_redacted": False}),
    Source("magpie", "Magpie-Pro-300K-Filtered", "Magpie-Align/Magpie-Pro-300K-Filtered", ("uuid", "conversations"),
           chat_logs.magpie),
    # your own chats in today's standard format ({messages: [{role, content}]}): no hub dataset of its own
    Source("messages", "Your own chats (messages)", None, ("messages",), messages.messages),
]}


def get_source(name: str) -> Source:
    """The registered source called `name`; ConfigError listing the known names otherwise."""
    if name not in SOURCES:
        raise ConfigError(f"unknown source {name!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[name]


def load_conversations(
    name: str,
    data_files: str | os.PathLike | Iterable[str | os.PathLike] | None = None,
    *,
    split: str = "train",
    policy: BadRowPolicy | None = None,
    hub_config: str | None = None,
    cache_dir: str | None = None,
    shuffle_seed: int | None = None,
    positions: list[int] | None = None,
    total: list[int] | None = None,
    share: Share = alone,
    **options: Any,
) -> Iterator[Conversation]:
    """Yield the validated Conversations of source `name`, in row order or, with `shuffle_seed`, in a
    seeded random order of the rows (of the conversations, for a tree source).

    `data_files` None reads the hub dataset (`hub_config` overrides the registered config; for P3 it names
    the one subtask to read; `messages` has none: a ConfigError); otherwise local json/jsonl/parquet files
    in the native schema, a directory standing for the files in it. `options` are per source: oasst1
    `top_k`; sharegpt `clean` (null: the html-cleaned release, or "fastchat": FastChat's cleaner on a raw
    HTML dump; see `sharegpt`); every row source `per_part` and `pool_seed` (see the module doc;
    `per_part=None` reads every row). `policy` counts the rows read, skipped and repaired. `positions`, when
    given, gets each conversation's place in row order appended just before it is yielded (its row's ordinal
    over all files; a tree source's conversation index): how a shuffled read is put back in file order.
    `total`, when given, gets the number of rows the read visits once the files are open (for progress).
    `share` maps a tree source's adapting over its trees (over the hosts of a run: `TreeRead`), and a source's
    pass before its rows (`Source.prepare`).
    """
    policy = policy if policy is not None else BadRowPolicy()
    source, parts, opts = _open_source(name, data_files, split, policy, hub_config, cache_dir, options, share)
    tables = [table for _, table in parts]
    if total is not None:
        total.append(sum(len(t) for t in tables) if opts.get("per_part") is None or source.tree
                     else opts["per_part"] * len(tables))  # fmt: skip
    if source.tree:
        conversations = TreeRead(source, tables, opts).conversations(policy, share)
        order = (np.random.default_rng(shuffle_seed).permutation(len(conversations)) if shuffle_seed is not None
                 else np.arange(len(conversations)))
        for i in order.tolist():
            if positions is not None:
                positions.append(i)
            yield conversations[i]
        return
    read = RowRead(source, parts, opts, shuffle_seed, policy)
    for outcome, conversations in read.adapt(0, len(read)):
        outcome.count(policy)
        for convo in conversations:
            if positions is not None:
                positions.append(outcome.index)
            yield convo


def read_rows(name: str, data_files=None, *, policy: BadRowPolicy, shuffle_seed: int | None = None,
              split: str = "train", hub_config: str | None = None, cache_dir: str | None = None,
              share: Share = alone, **options: Any) -> RowRead | None:
    """The read `load_conversations` makes of a row source, as a `RowRead` (None for a tree source): its
    rows in visiting order, each adapted when asked for. `policy` counts what drawing the pools read; `share`
    maps the drawing's adapting, and the source's pass before its rows (over the hosts of a run)."""
    source, parts, opts = _open_source(name, data_files, split, policy, hub_config, cache_dir, options, share)
    return None if source.tree else RowRead(source, parts, opts, shuffle_seed, policy, share)


def _open_source(name: str, data_files, split: str, policy: BadRowPolicy, hub_config: str | None,
                 cache_dir: str | None, options: dict, share: Share = alone
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
            opts = source.prepare(None, opts, share)
        parts = _hub_parts(source, split, hub_config, cache_dir, policy)
    else:
        parts = [(part_name(p), RowFile(p, cache_dir)) for p in local_files(data_files, name)]
        if source.prepare is not None:
            opts = source.prepare([table for _, table in parts], opts, share)
    return source, parts, {**opts, **pool}


def local_files(data_files: str | os.PathLike | Iterable[str | os.PathLike], source: str) -> list[str]:
    """The files of `data_files` (local or in a bucket), in order; a directory stands for the files in it, sorted
    by name (files whose names start with "." are not data)."""
    paths = [data_files] if isinstance(data_files, (str, os.PathLike)) else list(data_files)
    if not paths:
        raise ConfigError(f"source {source!r}: data_files is empty")
    files = []
    for path in map(str, paths):
        folder = storage.path(path)
        if not folder.is_dir():
            if not folder.exists():  # before its file type is looked at: a missing folder has none
                raise ConfigError(f"source {source!r}: data_files {path}: no such file or directory")
            files.append(path)
            continue
        inside = [p for p in sorted(folder.iterdir(), key=lambda p: p.name) if not p.name.startswith(".")]
        if not inside:
            raise ConfigError(f"source {source!r}: data directory {path} holds no files")
        for entry in inside:
            if entry.is_dir():
                raise ConfigError(f"source {source!r}: {entry} is a directory; a data directory holds files only")
        files += [f"{path.rstrip('/')}/{p.name}" for p in inside]
    return files


def part_name(path: str) -> str:
    """The name of the part a file holds: its file name without the data extension (P3: the subtask)."""
    base = os.path.basename(path)
    for ext in (".jsonl.gz", ".json.gz", ".jsonl", ".json", ".parquet"):
        if base.endswith(ext):
            return base[: -len(ext)]
    return base


def part_order(pool_seed: int, part: str, size: int) -> np.ndarray:
    """The random order in which a pooled source visits the `size` rows of `part`."""
    key = int.from_bytes(hashlib.sha256(part.encode()).digest()[:8], "little")
    return np.random.default_rng([pool_seed, key]).permutation(size)


def _locate(err: DataError, file: str, row: int | str, source: str) -> DataError:
    """`err` with file, row and source filled in where the adapter could not know them."""
    if err.file is not None:
        return err
    return type(err)(err.problem, reason=err.reason, file=file, row=row, source=source)


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
    hosts), the skipped ones counted into `policy`."""

    def __init__(self, source: Source, parts: list[tuple[str, RowFile]], opts: dict, shuffle_seed: int | None,
                 policy: BadRowPolicy, share: Share = alone, chunk: int = 4096):
        opts = dict(opts)
        per_part, pool_seed = opts.pop("per_part", None), opts.pop("pool_seed", 0)
        self.source, self.opts, self.chunk = source, opts, chunk
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
        ROWS_ADAPTED[0] += 1
        try:
            if isinstance(row, DataError):
                raise row
            conversations = self.source.adapter(row, self.source.name, index, **self.opts)
            for convo in conversations:
                convo.validate(file=file, row=rownum)
            return conversations, None
        except DataError as err:
            return [], _locate(err, file, rownum, self.source.name)

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


class TreeRead:
    """A tree source's read in two parts: its trees, which every reader finds from two columns of every row (the
    message's id and its parent's, `Source.tree`): the rows that share an id, as their own or their parent's, are
    one component (union-find over the ids, so a broken or cyclic link stays with the rows it touches); and
    `conversations`: the components adapted (`share` maps that over the hosts of a run: a host fetches the rows of
    its components only), their events merged in the order the adapter gives them over the whole table."""

    def __init__(self, source: Source, tables: list[RowFile], opts: dict):
        self.source, self.tables, self.opts = source, tables, opts
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
                    self.unread.append(_locate(links, table.path, rownum, source.name))
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
        ROWS_ADAPTED[0] += len(wanted)
        events: list[list[tuple]] = [[] for _ in components]
        rows = ((ordinal, fetched[ordinal][2]) for ordinal in wanted.tolist())
        for order, ordinal, item in self.source.adapter(rows, self.source.name, **self.opts):
            t, rownum, _ = fetched[ordinal]
            if isinstance(item, DataError):
                item = _locate(item, self.tables[t].path, rownum, self.source.name)
            else:
                try:
                    item = item.validate(file=self.tables[t].path, row=rownum)
                except DataError as err:
                    item = err
            events[which[ordinal]].append((order, item))
        return events


def _hub_parts(source: Source, split: str, hub_config: str | None, cache_dir: str | None,
               policy: BadRowPolicy) -> list[tuple[str, RowFile]]:
    """(part name, rows) of the hub dataset: one part per config or file for a source with `hub_parts`
    (P3: every config, or the one `hub_config` names), else one."""
    datasets = datasets_quietly()

    config = hub_config or source.hub_config

    def load(config: str | None, data_files, where: str) -> RowFile:
        return hub_table(source.hub_id, config, data_files, split, cache_dir, where)

    if source.hub_parts == "files":
        return [(part_name(f), load(config, f, f"{source.hub_id}/{f}")) for f in source.hub_data_files]
    if source.hub_parts == "configs" and config is None:
        parts = []
        for name in sorted(from_hub(source.hub_id, lambda: datasets.get_dataset_config_names(source.hub_id))):
            try:
                parts.append((name, load(name, None, f"{source.hub_id}:{name}")))
            except ValueError as exc:  # a subtask with no such split (P3 has evaluation-only subtasks)
                if "Unknown split" not in str(exc):
                    raise
                policy.handle(SkippedRow(f"subtask has no {split!r} split", reason="no_split",
                                         file=f"{source.hub_id}:{name}", source=source.name))
        return parts
    where = source.hub_id if config is None else f"{source.hub_id}:{config}"
    return [(config or source.name, load(config, source.hub_data_files, where))]


_HUB_IDS: dict[str, list[str]] = {}


def hub_identity(name: str) -> list[str] | None:
    """What names source `name`'s hub dataset without converting it (the tokenized cache's key): per part, the
    directory `datasets` would prepare it in (dataset, config, version and a hash of its resolved data files,
    which holds their revision); None for a source with no hub dataset."""
    source = get_source(name)
    if source.hub_id is None:
        return None
    if name not in _HUB_IDS:
        datasets = datasets_quietly()

        def identity(config: str | None, data_files) -> str:
            return from_hub(source.hub_id, lambda: datasets.load_dataset_builder(
                source.hub_id, config, data_files=data_files)._relative_data_dir())

        config = source.hub_config
        if source.hub_parts == "files":
            ids = [identity(config, f) for f in source.hub_data_files]
        elif source.hub_parts == "configs" and config is None:
            names = from_hub(source.hub_id, lambda: datasets.get_dataset_config_names(source.hub_id))
            ids = [identity(c, None) for c in sorted(names)]
        else:
            ids = [identity(config, source.hub_data_files)]
        _HUB_IDS[name] = ids
    return _HUB_IDS[name]
