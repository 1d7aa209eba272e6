"""The current table at the top of RESULTS.md: one row per benchmark (figure, reference, ratio, date, machine),
its newest headline figure; the dated log the benchmarks append follows it, untouched.

`set_row(text, row)` replaces the row of `row[0]` (or adds it) and returns the new text; `update(row)` does it
to benchmarks/RESULTS.md. benchmarks/run_all.py calls it for each benchmark it runs with a headline.
"""

from __future__ import annotations

from pathlib import Path

import common

BEGIN = "<!-- current figures: one row per benchmark, rewritten by benchmarks/run_all.py; the dated log follows -->"
END = "<!-- end of the current figures -->"
HEADER = ["benchmark", "figure", "reference", "ratio", "date", "machine"]


def rows(text: str) -> list[list[str]]:
    """The current table's rows (cells stripped), in order; [] without a table."""
    if BEGIN not in text:
        return []
    block = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    lines = [line for line in block.splitlines() if line.startswith("|")][2:]  # past the header and rule
    return [[c.strip() for c in line.strip().strip("|").split(" | ")] for line in lines]


def render(table_rows: list[list[str]]) -> str:
    """The table between its markers."""
    cells = [[str(c).replace("|", "/").replace("\n", " ") for c in row] for row in table_rows]
    return f"{BEGIN}\n\n{common.table(HEADER, cells)}\n\n{END}"


def set_row(text: str, row: list[str]) -> str:
    """`text` with the current table's row for benchmark `row[0]` replaced by `row` (added at the end if new;
    the table made, after the title, if there is none). Everything outside the table stays as it was."""
    if len(row) != len(HEADER):
        raise ValueError(f"a row has {len(HEADER)} cells ({', '.join(HEADER)}), not {len(row)}")
    current = rows(text)
    names = [r[0] for r in current]
    if row[0] in names:
        current[names.index(row[0])] = list(row)
    else:
        current.append(list(row))
    if BEGIN in text:
        return text[:text.index(BEGIN)] + render(current) + text[text.index(END) + len(END):]
    cut = text.find("\n## ")  # the first log section; the table goes before it
    head, log = (text, "") if cut < 0 else (text[:cut + 1], text[cut + 1:])
    return head.rstrip("\n") + "\n\n" + render(current) + "\n\n" + log


def update(row: list[str], path: Path = common.RESULTS) -> None:
    """Replace benchmark `row[0]`'s row of the current table in RESULTS.md."""
    text = path.read_text() if path.exists() else common.RESULTS_HEADER
    path.write_text(set_row(text, row))
