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
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from instructjax.core.errors import BadRowPolicy, ConfigError, DataError
from instructjax.data import adapters
from instructjax.data.rows import RowFile, datasets_quietly
from instructjax.data.schema import Conversation


@dataclass(frozen=True)
class Source:
    """One instruction dataset: where it lives on the hub, its native columns, and its adapter."""

    name: str
    title: str
    hub_id: str
    columns: tuple[str, ...]
    adapter: Callable[..., Any]
    hub_config: str | None = None
    hub_data_files: str | tuple[str, ...] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    tree: bool = False  # rows are messages of trees: the adapter needs the whole table
    split_long: bool = False  # conversations longer than a row are split into blocks of whole rounds


_ALPACA = ("instruction", "input", "output")
SOURCES: dict[str, Source] = {s.name: s for s in [
    Source("superni", "SuperNI", "Muennighoff/natural-instructions",
           ("task_name", "id", "definition", "inputs", "targets"), adapters.superni),
    Source("cot", "CoT", "SirNeural/flan_v2", ("inputs", "targets", "task"), adapters.inputs_targets,
           hub_data_files="cot_zs_opt_train.jsonl.gz"),
    Source("flan_v2", "Flan V2", "SirNeural/flan_v2", ("inputs", "targets", "task"), adapters.inputs_targets,
           hub_data_files="flan_zs_opt_train.jsonl.gz"),
    Source("dolly", "Dolly", "databricks/databricks-dolly-15k",
           ("instruction", "context", "response", "category"), adapters.dolly),
    Source("oasst1", "Open Assistant 1", "OpenAssistant/oasst1",
           ("message_id", "parent_id", "role", "text", "rank", "lang", "message_tree_id", "deleted"),
           adapters.oasst1_conversations, options={"top_k": None}, tree=True),
    Source("self_instruct", "Self-instruct", "yizhongw/self_instruct", ("prompt", "completion"),
           adapters.self_instruct, hub_config="self_instruct"),
    Source("unnatural_instructions", "Unnatural Instructions", "mrm8488/unnatural-instructions-core",
           ("instruction", "instances"), adapters.unnatural_instructions),
    Source("alpaca", "Alpaca", "tatsu-lab/alpaca", _ALPACA, adapters.alpaca_style),
    Source("code_alpaca", "Code-Alpaca", "sahil2801/CodeAlpaca-20k", _ALPACA, adapters.alpaca_style),
    Source("gpt4_alpaca", "GPT4-Alpaca", "vicgalle/alpaca-gpt4", _ALPACA, adapters.alpaca_style),
    Source("baize", "Baize", "taskydata/baize_chatbot", ("topic", "input"), adapters.baize,
           hub_data_files=("alpaca_chat_data.json", "medical_chat_data.json", "quora_chat_data.json",
                           "stackoverflow_chat_data.json")),
    Source("sharegpt", "ShareGPT", "anon8231489123/ShareGPT_Vicuna_unfiltered", ("id", "conversations"),
           adapters.sharegpt,
           hub_data_files=("HTML_cleaned_raw_dataset/sg_90k_part1_html_cleaned.json",
                           "HTML_cleaned_raw_dataset/sg_90k_part2_html_cleaned.json"), split_long=True),
    Source("p3", "P3", "bigscience/P3", ("inputs_pretokenized", "targets_pretokenized"), adapters.p3),
    Source("wizardlm", "WizardLM", "WizardLM/WizardLM_evol_instruct_70k", ("instruction", "output"),
           adapters.wizardlm),
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
    **options: Any,
) -> Iterator[Conversation]:
    """Yield the validated Conversations of source `name`, in row order or, with `shuffle_seed`, in a
    seeded random order of the rows (of the conversations, for a tree source).

    `data_files` None reads the hub dataset (`hub_config` overrides the registered config; P3 needs one,
    e.g. "super_glue_boolq_GPT_3_Style"); otherwise local json/jsonl/parquet files in the native schema.
    `options` are per source: oasst1 `top_k`. `policy` counts the rows read, skipped and repaired.
    """
    source = get_source(name)
    unknown = set(options) - set(source.options)
    if unknown:
        raise ConfigError(f"source {name!r} takes options {sorted(source.options) or 'none'}, "
                          f"not {sorted(unknown)}")
    opts = {**source.options, **options}
    policy = policy if policy is not None else BadRowPolicy()
    if data_files is None:
        tables = [_hub_table(source, split, hub_config, cache_dir)]
    else:
        paths = [data_files] if isinstance(data_files, (str, os.PathLike)) else list(data_files)
        if not paths:
            raise ConfigError(f"source {name!r}: data_files is empty")
        tables = [RowFile(str(p), cache_dir) for p in paths]
    if source.tree:
        conversations = list(_tree_conversations(source, tables, policy, opts))
        if shuffle_seed is not None:
            order = np.random.default_rng(shuffle_seed).permutation(len(conversations))
            conversations = [conversations[i] for i in order]
        yield from conversations
    else:
        yield from _row_conversations(source, tables, policy, opts, shuffle_seed)


def _locate(err: DataError, file: str, row: int | str, source: str) -> DataError:
    """`err` with file, row and source filled in where the adapter could not know them."""
    if err.file is not None:
        return err
    return type(err)(err.problem, reason=err.reason, file=file, row=row, source=source)


def _row_conversations(source: Source, tables: list[RowFile], policy: BadRowPolicy, opts: dict,
                       shuffle_seed: int | None) -> Iterator[Conversation]:
    for index, file, rownum, row in _visit(tables, shuffle_seed):
        policy.read += 1
        try:
            if isinstance(row, DataError):
                raise row
            conversations = source.adapter(row, source.name, index, **opts)  # index: ordinal over all files
            for convo in conversations:
                convo.validate(file=file, row=rownum)
        except DataError as err:
            policy.handle(_locate(err, file, rownum, source.name))
            continue
        for convo in conversations:
            for how in convo.meta.get("repairs", ()):
                policy.repaired[how] += 1
        yield from conversations


def _visit(tables: list[RowFile], shuffle_seed: int | None, chunk: int = 4096) -> Iterator[tuple]:
    """(ordinal, file, row number, row or DataError) of every row of `tables`: in order, or in a seeded
    random order fetched `chunk` rows at a time."""
    sizes = [len(t) for t in tables]
    starts = np.cumsum([0] + sizes)
    if shuffle_seed is None:
        for t, table in enumerate(tables):
            for local, (rownum, row) in enumerate(table.rows()):
                yield int(starts[t]) + local, table.path, rownum, row
        return
    order = np.random.default_rng(shuffle_seed).permutation(int(starts[-1]))
    for begin in range(0, len(order), chunk):
        wanted = order[begin: begin + chunk]
        which = np.searchsorted(starts, wanted, side="right") - 1
        fetched = {}
        for t in np.unique(which):
            local = wanted[which == t] - starts[t]
            for position, item in zip(local.tolist(), tables[t].rows(local.tolist()), strict=True):
                fetched[int(starts[t]) + position] = item
        for ordinal, t in zip(wanted.tolist(), which.tolist(), strict=True):
            rownum, row = fetched[ordinal]
            yield ordinal, tables[t].path, rownum, row


def _tree_conversations(source: Source, tables: list[RowFile], policy: BadRowPolicy, opts: dict
                        ) -> Iterator[Conversation]:
    located = []
    for table in tables:
        for rownum, row in table.rows():
            policy.read += 1
            if isinstance(row, DataError):
                policy.handle(_locate(row, table.path, rownum, source.name))
            else:
                located.append(((table.path, rownum), row))

    def report(err: DataError, where: tuple[str, int]) -> None:
        policy.handle(_locate(err, *where, source.name))

    for (file, rownum), convo in source.adapter(located, source.name, report, **opts):
        try:
            yield convo.validate(file=file, row=rownum)
        except DataError as err:
            policy.handle(err)


def _hub_table(source: Source, split: str, hub_config: str | None, cache_dir: str | None) -> RowFile:
    datasets = datasets_quietly()

    config = hub_config or source.hub_config
    if source.name == "p3" and config is None:
        raise ConfigError("source 'p3' needs hub_config: bigscience/P3 has one config per prompted subtask")
    ds = datasets.load_dataset(source.hub_id, config, data_files=source.hub_data_files, split=split,
                               cache_dir=cache_dir)
    return RowFile(source.hub_id, dataset=ds)


