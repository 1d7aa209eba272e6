"""Reading the rows of a local file (json, jsonl or parquet; json and jsonl may be gzipped, as the hub's
FLAN V2 files are) or a hub split, each numbered as a person finds
it: 1-based line numbers in jsonl, 0-based indices in JSON arrays, parquet files and hub splits.

A json or jsonl file of at most `SCAN_BYTES` is parsed here, row by row, with the json module: in memory, and without
`datasets`' import and Arrow conversion (twice as fast for a file of that size; the same rows, tests/data/test_sources).
`datasets` parses a larger file, or a parquet file, into its memory-mapped Arrow cache (`RowFile` then gives random
access: a sample of rows costs time in proportion to the sample); when it cannot (malformed JSON, bad UTF-8, a line
that is not an object) the file is re-read here so that each bad row is named, as a `DataError` in its place.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from instructjax.core import storage
from instructjax.core.errors import ConfigError, DataError

# A row as read from a file: its number as printed in errors, and the row or why it could not be read.
NumberedRow = tuple[int, "dict | DataError"]

_BATCH = 1024
SCAN_BYTES = 64 << 20  # a json or jsonl file up to this size is read here, not by `datasets` (see the module doc)
Share = Callable[[Callable[[list], list], list], list]  # share(fn, items) == fn(items), maybe over several hosts


@dataclass
class PipelineStats:
    """What one pipeline's data side did in this process (a run's, or one `data prepare`'s), for the lines the
    trainer and `data prepare` print: made once per pipeline and handed to the readers, the encoder and the
    cache writer, which count into it."""

    rows_read: int = 0  # rows fetched and adapted here (the hosts of a run share them)
    conversations_tokenized: int = 0  # conversations given to be tokenized here (`encoding.pool.Encoder`)
    cache_files: dict[str, Any] = field(default_factory=dict)  # task -> the cache file its examples were asked from
    from_cache: set[str] = field(default_factory=set)  # the tasks whose examples were read back from their cache file
    written: set[str] = field(default_factory=set)  # the cache files written here


def alone(fn: Callable[[list], list], items: list) -> list:
    """`Share` in one process."""
    return fn(items)


def _iter_dataset(ds) -> Iterator[dict]:
    """Rows of a `datasets.Dataset` as dicts, a column batch at a time (much faster than ds[i])."""
    for batch in ds.iter(batch_size=_BATCH):
        columns = list(batch)
        for values in zip(*(batch[c] for c in columns), strict=True):
            yield dict(zip(columns, values, strict=True))


def datasets_quietly():
    """The `datasets` library, quiet: no progress bars or log lines (one per file per task is noise)."""
    import datasets

    datasets.disable_progress_bars()
    import huggingface_hub.utils

    huggingface_hub.utils.logging.set_verbosity_error()  # its retry warnings: the hub error is one line of ours
    # CRITICAL: a file it cannot parse is logged at ERROR ("Failed to load JSON from file ...") before the
    # exception that `RowFile` answers by naming the bad row itself, in one line
    datasets.utils.logging.set_verbosity(datasets.utils.logging.CRITICAL)
    return datasets


class RowFile:
    """The rows of one file (or hub split) with random access: an Arrow-backed `datasets.Dataset` when
    `datasets` can parse it, else the rows scanned one by one here so that each bad row is named."""

    def __init__(self, path: str, cache_dir: str | None = None, *, dataset=None, numbered=None):
        self.path = path
        self._ds, self._scanned, self._numbers = dataset, numbered, None
        if dataset is None and numbered is None:
            self._open(cache_dir)

    def _open(self, cache_dir: str | None) -> None:
        try:
            self._read(cache_dir)
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # the file as a whole, not one row
            raise DataError(f"cannot decompress gzip file: {exc}", reason="unreadable", file=self.path) from None

    def _read(self, cache_dir: str | None) -> None:
        fmt = file_format(self.path)  # from the name: a bad one is said before anything is downloaded
        try:
            local = storage.local_copy(self.path)  # the file itself, or a bucket's file downloaded
        except FileNotFoundError:
            raise ConfigError(f"data file not found: {self.path}") from None
        if not os.path.isfile(local):
            raise ConfigError(f"data file not found: {self.path} (a directory)")
        fmt = file_format(self.path, local)
        scan = lambda: list(_scan_jsonl(local) if fmt == "jsonl" else _scan_json_array(local, self.path))  # noqa: E731
        if fmt != "parquet" and os.path.getsize(local) <= SCAN_BYTES:
            self._scanned = scan()
            return
        try:
            datasets = datasets_quietly()
        except ImportError:  # a bare accelerator image: json and jsonl are read here, parquet needs datasets
            if fmt == "parquet":
                raise ConfigError(f"{self.path}: reading parquet needs the `datasets` package") from None
            datasets = None
        if fmt != "parquet" and (datasets is None or not _is_utf8(local)):  # pyarrow may accept bad UTF-8
            self._scanned = scan()
            return
        try:
            self._ds = datasets.load_dataset("parquet" if fmt == "parquet" else "json", data_files=local,
                                             split="train", cache_dir=cache_dir)
        except (datasets.exceptions.DatasetGenerationError, ValueError) as exc:  # UnicodeDecodeError is one
            if fmt == "parquet":
                raise DataError(f"cannot read parquet file: {exc}", reason="unreadable", file=self.path) from exc
            self._scanned = scan()
            return
        if fmt == "jsonl":
            self._numbers = _LineNumbers(local)

    def __len__(self) -> int:
        return len(self._ds) if self._ds is not None else len(self._scanned)

    def number(self, position: int) -> int:
        """The row number errors print for the row at `position`."""
        if self._numbers is not None:
            return self._numbers[position]
        return position

    def rows(self, positions: list[int] | None = None) -> Iterator[NumberedRow]:
        """(row number, row or DataError) at `positions` (in that order), or of every row in order."""
        if self._scanned is not None:
            yield from (self._scanned if positions is None else (self._scanned[p] for p in positions))
            return
        if positions is None:
            yield from ((self.number(i), row) for i, row in enumerate(_iter_dataset(self._ds)))
            return
        ordered = sorted(set(positions))
        found = dict(zip(ordered, _iter_dataset(self._ds.select(ordered)), strict=True))
        yield from ((self.number(p), found[p]) for p in positions)

    def columns(self, names: tuple[str, ...]) -> Iterator[NumberedRow]:
        """(row number, {name: value, None where absent} or why the row could not be read) of every row in order:
        a few columns, without fetching the rest."""
        if self._scanned is not None:
            for number, row in self._scanned:
                yield number, row if isinstance(row, DataError) else {n: row.get(n) for n in names}
            return
        present = [n for n in names if n in self._ds.column_names]
        values = self._ds.select_columns(present)[:] if present else {}
        for i in range(len(self._ds)):
            yield self.number(i), {n: values[n][i] if n in values else None for n in names}


def fetch(tables: list[RowFile], starts: np.ndarray, wanted: np.ndarray) -> dict[int, tuple[int, int, Any]]:
    """The rows `wanted` of `tables` (ordinals over all of them; `starts`: each table's first ordinal, then the
    total): ordinal -> (its table's index, row number, row or DataError)."""
    which = np.searchsorted(starts, wanted, side="right") - 1
    fetched = {}
    for t in np.unique(which).tolist():
        local = (wanted[which == t] - starts[t]).tolist()
        for position, (rownum, row) in zip(local, tables[t].rows(local), strict=True):
            fetched[int(starts[t]) + position] = (t, rownum, row)
    return fetched


def locate(err: DataError, file: str, row: int | str, source: str) -> DataError:
    """`err` with file, row and source filled in where the adapter could not know them."""
    if err.file is not None:
        return err
    return type(err)(err.problem, reason=err.reason, file=file, row=row, source=source)


def file_format(path: str, local: str | None = None) -> str:
    """"parquet", "json" (one JSON array) or "jsonl" (one object per line), from the name and the first byte of
    `local` (the file's bytes, here; None: from the name alone, "json" for either of json and jsonl)."""
    lower = path.lower()
    if lower.endswith(".parquet"):
        return "parquet"
    if not lower.removesuffix(".gz").endswith((".json", ".jsonl")):
        raise ConfigError(f"{path}: unsupported file type (expected .json, .jsonl or .parquet; json and jsonl "
                          "may be gzipped: .json.gz, .jsonl.gz)")
    if local is None:
        return "json"
    with _open_bytes(local) as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "json" if head.startswith(b"[") else "jsonl"


def numbered_rows(path: str, cache_dir: str | None = None) -> Iterator[NumberedRow]:
    """Yield (row number, row or DataError) of one local file, in order (see `RowFile`)."""
    yield from RowFile(path, cache_dir).rows()


def _open_bytes(path: str):
    """A file's bytes, decompressed when its name ends in .gz."""
    return gzip.open(path, "rb") if path.lower().endswith(".gz") else open(path, "rb")  # noqa: SIM115


def _is_utf8(path: str, chunk: int = 1 << 24) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with _open_bytes(path) as f:
            while block := f.read(chunk):
                decoder.decode(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


class _LineNumbers:
    """1-based numbers of the non-blank lines of a jsonl file (datasets skips blank lines): the position
    + 1, unless the file has blank lines, whose line numbers are then read once."""

    _BLANK = re.compile(rb"\n[ \t\r]*\n")  # a blank line after the first (no `(?:^|\n)`: re would try every byte)
    _BLANK_FIRST = re.compile(rb"[ \t\r]*\n")

    def __init__(self, path: str, chunk: int = 1 << 26):
        self._table = None
        with _open_bytes(path) as f:
            tail = b""
            while block := f.read(chunk):
                data = tail + block
                if self._BLANK.search(data) or self._BLANK_FIRST.match(data):
                    f.seek(0)
                    self._table = [n for n, line in enumerate(f, start=1) if line.strip()]
                    return
                tail = block[block.rfind(b"\n") + 1:]  # starts a line, as the file's start does

    def __getitem__(self, position: int) -> int:
        return self._table[position] if self._table is not None else position + 1


def _parse_object(text: str | bytes) -> dict:
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"invalid UTF-8 at byte {exc.start}", reason="invalid_utf8") from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"malformed JSON: {exc.msg} at column {exc.colno}", reason="malformed_json") from None
    if not isinstance(row, dict):
        raise DataError(f"row is a JSON {type(row).__name__}, expected an object", reason="wrong_type")
    return row


def _scan_jsonl(path: str) -> Iterator[NumberedRow]:
    with _open_bytes(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, _parse_object(line.rstrip(b"\r\n"))  # an error past the end: its column, not line 2
            except DataError as err:
                yield number, err


def _scan_json_array(path: str, name: str) -> Iterator[NumberedRow]:
    """Elements of a JSON array one by one, so a problem names its index. Bad UTF-8 is confined to the
    element holding it; malformed JSON cannot be skipped (the parser loses its place) and always raises."""
    with _open_bytes(path) as f:
        text = f.read().decode("utf-8", errors="surrogateescape").lstrip("\ufeff \t\r\n")
    decoder = json.JSONDecoder()
    pos, index = 1, 0  # just past "["
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos < len(text) and text[pos] == "]" and index == 0:
            return
        try:
            element, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(f"malformed JSON in array element: {exc.msg}; the rest of the file cannot be read",
                            reason="malformed_json", file=name, row=index) from None
        if _has_bad_bytes(element):
            yield index, DataError("invalid UTF-8 in a string", reason="invalid_utf8")
        elif not isinstance(element, dict):
            yield index, DataError(f"row is a JSON {type(element).__name__}, expected an object",
                                   reason="wrong_type")
        else:
            yield index, element
        index += 1
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos < len(text) and text[pos] == ",":
            pos += 1
        elif pos < len(text) and text[pos] == "]":
            return
        else:
            raise DataError("malformed JSON: expected ',' or ']' after the element; the rest of the file "
                            "cannot be read", reason="malformed_json", file=name, row=index)


def _has_bad_bytes(value: Any) -> bool:
    """True if a decoded JSON value holds undecodable bytes (surrogate escapes)."""
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, dict):
        return any(_has_bad_bytes(k) or _has_bad_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_bad_bytes(v) for v in value)
    return False
