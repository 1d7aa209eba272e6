"""A source's local `data_files`: the files they name (a directory stands for the files in it, sorted by name),
and the part of a pooled source each file holds."""

from __future__ import annotations

import os
from collections.abc import Iterable

from instructjax.core import storage
from instructjax.core.errors import ConfigError


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

