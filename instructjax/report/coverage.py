"""`instructjax report CONFIGS --coverage`: how many of the papers' published numbers our configs and protocols
can produce, per paper and table, and why not the rest.

A published number (a cell of `<family>.yaml`) is producible when its row is one a config of CONFIGS fills
(`Table.row` of the config's run) and its column has a protocol of ours (not `numbers.never`). The rest are named
with the reason: the column has no protocol yet, the row's subject is a proprietary model (ChatGPT, GPT-4: not a
run of ours), or no config makes the row.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from instructjax.report import numbers as n
from instructjax.report.families import FAMILIES, published
from instructjax.report.runs import Run
from instructjax.report.tables import Table

PROPRIETARY = re.compile(r"\b(ChatGPT|GPT-4|GPT4-Turbo|GPT-3\.5|Claude|Davinci)\b", re.IGNORECASE)


@dataclass
class TableCoverage:
    family: str
    table: str
    source: str
    published: int = 0
    producible: int = 0
    missing: Counter = field(default_factory=Counter)  # reason -> published numbers

    def line(self) -> str:
        rest = "; ".join(f"{count} {reason}" for reason, count in self.missing.most_common())
        return f"{self.family} {self.table} ({self.source}): {self.producible}/{self.published}" + \
            (f"  not: {rest}" if rest else "")


def _reason(table: Table, key: tuple[str, ...], column: int, reachable: set[tuple[str, ...]]) -> str | None:
    """Why a published cell cannot be produced (None: it can)."""
    label = " ".join(key)
    if PROPRIETARY.search(label):
        return "proprietary model as subject"
    if table.columns[column].read is n.never:
        return f"no protocol for {table.columns[column].label}"
    if key not in reachable:
        return "no config makes the row"
    return None


def coverage(config_paths: list[Path]) -> list[TableCoverage]:
    """Every transcribed table of every paper: its published numbers, those our configs can produce, the rest by
    reason."""
    from instructjax.core.config import load_config

    runs = [Run(p, load_config(p)) for p in config_paths]
    found = []
    for family in FAMILIES:
        data = published(family)
        for table in family.TABLES:
            reachable = {key for key in (table.row(r) for r in runs) if key is not None}
            spec = data["tables"][table.id]
            cov = TableCoverage(family.KEY, table.id, spec["source"])
            for row in spec["rows"]:
                key, values = tuple(str(v) for v in row[:len(table.keys)]), row[len(table.keys):]
                for i, value in enumerate(values):
                    if value is None:
                        continue
                    cov.published += 1
                    reason = _reason(table, key, i, reachable)
                    if reason is None:
                        cov.producible += 1
                    else:
                        cov.missing[reason] += 1
            found.append(cov)
    return found


def report(config_paths: list[Path]) -> str:
    """The coverage as text: a line per table, then the totals and the reasons over all tables."""
    tables = coverage(config_paths)
    total, producible = sum(t.published for t in tables), sum(t.producible for t in tables)
    reasons = sum((t.missing for t in tables), Counter())
    lines = [t.line() for t in tables]
    lines += ["", f"all transcribed tables: {producible}/{total} published numbers producible"]
    lines += [f"  {count} {reason}" for reason, count in reasons.most_common()]
    return "\n".join(lines)
