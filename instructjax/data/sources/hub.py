"""Reaching the Hugging Face hub for a dataset: one split as memory-mapped Arrow rows, converted by one host
when several share the tokenized cache directory; a failure there is one line naming the dataset and the
way out (local `data_files`, `HF_TOKEN`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from instructjax.core import hosts, storage
from instructjax.core.errors import ConfigError, InstructJaxError
from instructjax.data import cache
from instructjax.data.sources.rows import RowFile, datasets_quietly

_TABLES: dict[tuple, RowFile] = {}


def hub_table(hub_id: str, config: str | None, data_files, split: str, cache_dir: str | None, where: str) -> RowFile:
    """One hub split as memory-mapped Arrow rows (opened once per process). When several hosts share the
    tokenized cache directory (`core.hosts`), host 0 converts the split into its `hub/` directory and the
    others open the same Arrow files once it is done: no host but one converts a hub file whole."""
    key = (hub_id, config, data_files, split, cache_dir)
    if key not in _TABLES:
        shared = cache_dir or _shared_hub_dir()

        def convert():
            return from_hub(where, lambda: datasets_quietly().load_dataset(hub_id, config, data_files=data_files,
                                                                           split=split, cache_dir=shared))

        ds = hosts.first_then_others(f"hub/{where}", convert, f"converting {where}") if shared else convert()
        _TABLES[key] = RowFile(where, dataset=ds)
    return _TABLES[key]


def _shared_hub_dir() -> str | None:
    """`hub/` in the tokenized cache directory when several hosts see it as one local or network directory
    (Arrow files are memory-mapped: not a bucket); else None (each host's own `datasets` cache)."""
    where = cache.cache_dir()
    if hosts.current() is None or where is None or storage.is_remote(where):
        return None
    return str(where / "hub") if hosts.sees_one_directory(where) else None


def from_hub(what: str, call: Callable[[], Any]) -> Any:
    """`call()`, which reaches the Hugging Face hub for dataset `what`; a failure there is one line naming the
    dataset and the way out (a split it lacks is left to the caller: P3's evaluation-only subtasks)."""
    try:
        return call()
    except (InstructJaxError, KeyboardInterrupt):
        raise
    except ValueError as exc:
        if "Unknown split" in str(exc):
            raise
        raise ConfigError(hub_problem(what, exc)) from None
    except Exception as exc:  # noqa: BLE001 - datasets and huggingface_hub raise many kinds
        raise ConfigError(hub_problem(what, exc)) from None


def hub_failure(exc: BaseException) -> str | None:
    """The hub dataset `exc` says could not be reached, found or opened (a library's error), else None."""

    text, kind = str(exc), type(exc).__name__
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
