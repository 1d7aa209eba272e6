"""Checks of the paths a user gives (local or in a bucket, through `core.storage`), each a one-line ConfigError: a
directory where a file is expected, an output that is its own input."""

from __future__ import annotations

import os

from instructjax.core import storage
from instructjax.core.errors import ConfigError


def expect_file(path: str, what: str | None = None) -> None:
    """One ConfigError line where `path`, given as `what` (a flag, "config file"; None: the path alone), is a
    directory rather than a file, or is not there."""
    where, named = storage.path(path), f"{what} {path}" if what else str(path)
    if where.is_dir():
        raise ConfigError(f"{named} is a directory: give a file")
    if not where.exists():
        raise ConfigError(f"{named}: no such file")


def same_path(a: str, b: str) -> bool:
    """Whether two paths name one file: in a bucket the same URL, on a disk the same file once `~`, `..` and symbolic
    links are resolved."""
    if storage.is_remote(a) or storage.is_remote(b):
        return os.fspath(storage.path(a)).rstrip("/") == os.fspath(storage.path(b)).rstrip("/")
    return os.path.realpath(os.fspath(storage.path(a))) == os.path.realpath(os.fspath(storage.path(b)))
