"""Reaching the Hugging Face hub for a dataset: one split as memory-mapped Arrow rows, converted by one host
when several share the tokenized cache directory; a source's hub parts (`hub_parts`) and the identity the
tokenized cache keys them by (`hub_identity`); a failure there is one line naming the dataset and the way out
(local `data_files`, `HF_TOKEN`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from instructjax.core import hosts, storage
from instructjax.core.context import current
from instructjax.core.errors import BadRowPolicy, ConfigError, InstructJaxError, SkippedRow
from instructjax.data import cache
from instructjax.data.sources.data_files import part_name
from instructjax.data.sources.registry import Source, get_source
from instructjax.data.sources.rows import RowFile, datasets_quietly


def hub_table(hub_id: str, config: str | None, data_files, split: str, cache_dir: str | None, where: str) -> RowFile:
    """One hub split as memory-mapped Arrow rows (opened once per command: `core.context`). When several hosts share the
    tokenized cache directory (`core.hosts`), host 0 converts the split into its `hub/` directory and the
    others open the same Arrow files once it is done: no host but one converts a hub file whole."""
    tables = current().slot("data.hub_tables", lambda _: {})
    key = (hub_id, config, data_files, split, cache_dir)
    if key not in tables:
        shared = cache_dir or _shared_hub_dir()

        def convert():
            return from_hub(where, lambda: datasets_quietly().load_dataset(hub_id, config, data_files=data_files,
                                                                           split=split, cache_dir=shared))

        ds = hosts.first_then_others(f"hub/{where}", convert, f"converting {where}") if shared else convert()
        tables[key] = RowFile(where, dataset=ds)
    return tables[key]


def _shared_hub_dir() -> str | None:
    """`hub/` in the tokenized cache directory when several hosts see it as one local or network directory
    (Arrow files are memory-mapped: not a bucket); else None (each host's own `datasets` cache)."""
    where = cache.cache_dir()
    if hosts.current() is None or where is None or storage.is_remote(where):
        return None
    return str(where / "hub") if hosts.sees_one_directory(where) else None


def from_hub(what: str, call: Callable[[], Any], local: str | None = None) -> Any:
    """`call()`, which reaches the Hugging Face hub for dataset `what`; a failure there is one line naming the
    dataset and the way out (`local`: the way around the hub, `hub_problem`'s; a split it lacks is left to the
    caller: P3's evaluation-only subtasks)."""
    local = local or LOCAL_DATA
    try:
        return call()
    except (InstructJaxError, KeyboardInterrupt):
        raise
    except ValueError as exc:
        if "Unknown split" in str(exc):
            raise
        raise ConfigError(hub_problem(what, exc, local)) from None
    except Exception as exc:  # noqa: BLE001 - datasets and huggingface_hub raise many kinds
        raise ConfigError(hub_problem(what, exc, local)) from None


def hub_failure(exc: BaseException) -> str | None:
    """The hub dataset `exc` says could not be reached, found or opened (a library's error), else None."""

    text, kind = str(exc), type(exc).__name__
    if isinstance(exc, ImportError):  # ModuleNotFoundError: a package missing here, not a dataset on the hub
        return None
    if not (isinstance(exc, ConnectionError) or "NotFound" in kind or "Gated" in kind or "Couldn't reach" in text):
        return None
    found = (re.search(r"'([\w.-]+/[\w.-]+)'", text) or re.search(r"datasets?/([\w.-]+/[\w.-]+)", text)
             or re.search(r"dataset ([\w.-]+/[\w.-]+)", text))
    return found.group(1) if found else "(unnamed)"


LOCAL_DATA = "or give the task local data_files in the dataset's schema (`define: tasks: {NAME: {source: ..., " \
             "data_files: [...]}}`)"


def hub_problem(what: str, exc: BaseException, local: str = LOCAL_DATA) -> str:
    """What went wrong reaching hub dataset `what`, and what to do (`local`: the way around the hub), in one line."""
    kind, text = type(exc).__name__, " ".join(str(exc).split())
    if "Gated" in kind or "gated" in text.lower():
        return f"hub dataset {what} is gated: accept its terms on huggingface.co and set HF_TOKEN, {local}"
    if "NotFound" in kind or "doesn't exist" in text or "does not exist" in text:
        return f"hub dataset {what} does not exist (a wrong id, or private: set HF_TOKEN), {local}"
    if isinstance(exc, (ConnectionError, TimeoutError)) or "Couldn't reach" in text or "Offline" in text:
        offline = " (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set)" if "Offline" in text else ""
        return f"hub dataset {what}: the Hugging Face hub cannot be reached{offline}; download it where it can be, {local}"
    return f"hub dataset {what} cannot be read ({kind}: {text[:200]}); {local}"


def hub_parts(source: Source, split: str, hub_config: str | None, cache_dir: str | None,
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


def hub_identity(name: str) -> list[str] | None:
    """What names source `name`'s hub dataset without converting it (the tokenized cache's key): per part, the
    directory `datasets` would prepare it in (dataset, config, version and a hash of its resolved data files,
    which holds their revision); None for a source with no hub dataset."""
    source = get_source(name)
    if source.hub_id is None:
        return None
    known = current().slot("data.hub_ids", lambda _: {})  # looked up once per command
    if name not in known:
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
        known[name] = ids
    return known[name]
