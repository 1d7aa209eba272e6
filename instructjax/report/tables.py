"""A paper's table with our numbers beside the published ones: its rows and columns, filled from the runs.

A `Table` says which row a run fills (`row`) and how each column's number is read from a run (`Column.read`);
the published numbers come from the paper's data file (`<family>.yaml` beside this module). A row holds the
paper's rows first, in its order, then rows of ours the paper does not have (another model or size). Several
runs may share a row (one per column, e.g. a size per column): a cell takes the first run that has a number.
Missing is `None`, shown as "—" and left empty in the CSV, never zero. Columns of lm-eval `tasks:` a run was
evaluated on outside the paper's (e.g. an offline test task) follow as ours only.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from instructjax.core.errors import ConfigError
from instructjax.report.runs import Run, number

Read = Callable[[Run], float | None]  # a column's number from a run
RowOf = Callable[[Run], tuple[str, ...] | None]  # the row a run fills


@dataclass(frozen=True)
class Column:
    label: str  # the paper's header
    read: Read  # our number from a run (None: missing)
    digits: int = 2  # as the paper prints it


@dataclass(frozen=True)
class Table:
    id: str  # its key in the published data file
    title: str
    keys: tuple[str, ...]  # the headers of the row labels
    columns: tuple[Column, ...]
    row: RowOf  # the row a run fills, None: not in this table
    note: str = ""


@dataclass
class Row:
    key: tuple[str, ...]
    ours: list[float | None]
    paper: list[float | None]
    extra: dict[str, float] = field(default_factory=dict)  # lm-eval `tasks:` outside the paper's columns

    def diff(self, i: int) -> float | None:
        ours, paper = self.ours[i], self.paper[i]
        return None if ours is None or paper is None else ours - paper


@dataclass
class Filled:
    table: Table
    source: str  # the paper's table/figure
    rows: list[Row]
    extra: list[str]  # labels of the extra columns


def task_metrics(run: Run) -> dict[str, float]:
    """{"TASK METRIC": value} of the run's lm-eval `tasks:` part."""
    tasks = (run.results or {}).get("tasks") or {}
    out = {}
    for task, metrics in tasks.items():
        for key, value in (metrics or {}).items():
            if key != "sample_len" and number(value) is not None:
                out[f"{task} {key.split(',')[0]}"] = float(value)
    return out


def fill(table: Table, runs: list[Run], published: dict) -> Filled:
    """The table's rows: the paper's (published numbers) with ours, then ours alone."""
    labels = [c.label for c in table.columns]
    if published["columns"] != labels:
        raise ConfigError(f"published {table.id}: columns {published['columns']} are not the layout's {labels}")
    width = len(table.keys)
    paper = {tuple(str(k) for k in r[:width]): [number(v) for v in r[width:]] for r in published["rows"]}
    by_key: dict[tuple[str, ...], list[Run]] = {key: [] for key in paper}
    for run in runs:
        key = table.row(run)
        if key is not None:
            by_key.setdefault(key, []).append(run)
    rows, extra = [], []
    for key, members in by_key.items():
        ours = [next((v for v in (c.read(r) for r in members) if v is not None), None) for c in table.columns]
        row = Row(key, ours, paper.get(key, [None] * len(labels)))
        for r in members:
            for label, value in task_metrics(r).items():
                row.extra.setdefault(label, value)
                extra += [label] if label not in extra else []
        rows.append(row)
    return Filled(table, published.get("source", table.id), rows, extra)


def _fmt(value: float | None, digits: int, sign: bool = False) -> str:
    return "—" if value is None else f"{value:{'+' if sign else ''}.{digits}f}"


def markdown(filled: Filled) -> str:
    """The table in markdown: each cell `ours / paper (ours - paper)`, "—" where a number is missing."""
    t = filled.table
    head = [*t.keys, *(c.label for c in t.columns), *filled.extra]
    lines = [f"### {filled.source}: {t.title}", ""]
    if t.note:
        lines += [t.note, ""]
    if filled.extra:
        lines += ["After the paper's columns: lm-eval `tasks:` our runs were evaluated on outside its suite (ours).", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in filled.rows:
        cells = list(row.key)
        for i, c in enumerate(t.columns):
            text = f"{_fmt(row.ours[i], c.digits)} / {_fmt(row.paper[i], c.digits)}"
            if row.diff(i) is not None:
                text += f" ({_fmt(row.diff(i), c.digits, sign=True)})"
            cells.append(text)
        cells += [_fmt(row.extra.get(label), 4) for label in filled.extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(filled: Filled, path: Path) -> None:
    """One line per row: its labels, then ours, paper and diff of every column (full precision; empty when
    missing), then the extra columns (ours)."""
    t = filled.table
    head = list(t.keys)
    for c in t.columns:
        head += [f"{c.label} (ours)", f"{c.label} (paper)", f"{c.label} (diff)"]
    head += [f"{label} (ours)" for label in filled.extra]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(head)
        for row in filled.rows:
            values: list = list(row.key)
            for i in range(len(t.columns)):
                values += [row.ours[i], row.paper[i], row.diff(i)]
            values += [row.extra.get(label) for label in filled.extra]
            writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in values])
