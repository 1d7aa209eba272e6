"""A table of proxy runs, one row each: its source weights and its targets (held-out losses, eval scores), from a
CSV file with a header (any tool's, as long as it has the columns)."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

import numpy as np

from instructjax.core import storage
from instructjax.core.errors import ConfigError


@dataclass(frozen=True)
class Table:
    """The rows' `weights` [n, d] (columns `sources`) and `targets` {column: [n]}, from `path`."""

    path: str
    sources: list[str]
    weights: np.ndarray
    targets: dict[str, np.ndarray]


def weight_columns(header: list[str], spec: str, path: str) -> list[str]:
    """The weight columns `spec` names: a comma-separated list of columns, or one prefix every weight column starts
    with (e.g. `weight.`); at least 2 (a mixture of one source is no mixture)."""
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if len(names) > 1 or (names and names[0] in header):
        missing = [n for n in names if n not in header]
        if missing:
            raise ConfigError(f"{path}: no column {', '.join(map(repr, missing))} (its columns: {', '.join(header)})")
        found = names
    else:
        found = [c for c in header if names and c.startswith(names[0])]
    if len(found) < 2:
        raise ConfigError(f"{path}: --weights {spec!r} names {len(found)} column(s); a mixture needs at least 2 "
                          f"sources (its columns: {', '.join(header)})")
    return found


def read_table(path: str, weights: str, targets: list[str]) -> Table:
    """The table at `path` (local or gs://): the weight columns `weights` names (`weight_columns`) and the
    `targets` columns, every cell a number; a bad cell is one line naming its row and column."""
    try:
        text = storage.path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"table not found: {path}") from None
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise ConfigError(f"{path}: empty (a header line, then a row per proxy)")
    header, body = rows[0], [r for r in rows[1:] if any(cell.strip() for cell in r)]
    sources = weight_columns(header, weights, path)
    missing = [t for t in targets if t not in header]
    if missing:
        raise ConfigError(f"{path}: no target column {', '.join(map(repr, missing))} (its columns: {', '.join(header)})")
    columns = {name: header.index(name) for name in [*sources, *targets]}
    values = {name: np.empty(len(body)) for name in columns}
    empty: dict[str, list[int]] = {t: [] for t in targets}  # a target some proxies have no figure for
    for i, row in enumerate(body, start=2):  # the header is line 1
        for name, at in columns.items():
            cell = row[at].strip() if at < len(row) else ""
            if not cell and name in empty:
                empty[name].append(i)
                continue
            try:
                number = float(cell)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                raise ConfigError(f"{path}, line {i}, column {name!r}: {cell!r} is not a number")
            if number < 0 and name in sources:
                raise ConfigError(f"{path}, line {i}, column {name!r}: a weight of {cell} (a mixture's weights are "
                                  "0 or more)")
            values[name][i - 2] = number
    for target, lines in empty.items():
        if lines:
            raise ConfigError(f"{path}: target {target!r} is missing from {len(lines)} of {len(body)} proxies (line(s) "
                              f"{', '.join(map(str, lines))})")
    return Table(path, sources, np.stack([values[s] for s in sources], axis=1), {t: values[t] for t in targets})
