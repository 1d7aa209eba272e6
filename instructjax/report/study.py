"""Any family of runs as a table: a row per run, the config keys that differ between the runs first, then every
number its evaluation left (results.json), as markdown and CSV; and, where the runs differ in one numeric key (a
count, a ratio, a learning rate), each metric against it as a sweep curve. A user's own study gets this; the
papers' families get it beside their paper layouts.

The differing keys come from each run's resolved config flattened to dotted keys (`optim.lr`,
`define.mixtures.mix.counts.alpaca`), leaving out what names or places a run (`name`, `run_dir`, `experiment`).
The numbers are every numeric leaf of results.json, named by their path (`suite / arc_challenge|25-shot /
acc_norm,none`), without standard errors; a run without results has empty cells, never zeros.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from instructjax.core.config import to_dict
from instructjax.core.tracking import numbers
from instructjax.report.figures import Figure, Panel, Series
from instructjax.report.runs import Run, number

PLACE = ("name", "run_dir", "experiment")  # keys that name or place a run (`experiment`: its paper's row, which the
# paper's layout shows): they say nothing of what differs between the runs
SEPARATOR = " / "


def flat(value, prefix: str = "", sep: str = ".") -> dict[str, object]:
    """Nested dicts as {joined key: leaf}."""
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(flat(item, f"{prefix}{sep}{key}" if prefix else str(key), sep))
        return out
    return {prefix: value}


def config_keys(run: Run) -> dict[str, object]:
    """The run's resolved config as dotted keys (lists and tuples as JSON)."""
    keys = flat(to_dict(run.config))  # as a config file writes them: `objective.dpo.beta`
    return {k: json.dumps(v) if isinstance(v, (list, tuple)) else v for k, v in keys.items()
            if k.split(".")[0] not in PLACE}


def result_numbers(run: Run) -> dict[str, float]:
    """Every number of the run's results.json by its path, standard errors left out."""
    return numbers(run.results, sep=SEPARATOR) if run.results is not None else {}


@dataclass
class Study:
    """The table: the differing config keys, the result columns, and each run's values."""

    runs: list[Run]
    keys: list[str]  # config keys that differ between the runs
    metrics: list[str]  # every result number any run has

    @classmethod
    def of(cls, runs: list[Run]) -> Study:
        configs = [config_keys(r) for r in runs]
        names = sorted({k for c in configs for k in c})
        keys = [k for k in names if len({json.dumps(c.get(k), default=str) for c in configs}) > 1]
        metrics = sorted({m for r in runs for m in result_numbers(r)})
        return cls(runs, keys, metrics)

    def rows(self) -> list[list[object]]:
        """[run name, its key values, its numbers] per run (None where missing)."""
        out = []
        for run in self.runs:
            config, numbers = config_keys(run), result_numbers(run)
            out.append([run.name, *(config.get(k) for k in self.keys), *(numbers.get(m) for m in self.metrics)])
        return out

    def sweep_key(self) -> str | None:
        """The one differing key, when there is exactly one and every run's value of it is a number."""
        if len(self.keys) != 1:
            return None
        values = [config_keys(r).get(self.keys[0]) for r in self.runs]
        return self.keys[0] if all(number(v) is not None for v in values) else None

    def markdown(self, title: str) -> str:
        header = ["run", *self.keys, *self.metrics]
        lines = [f"## {title}", "", f"{len(self.runs)} runs; first the config keys that differ between them, then "
                 "every number of their evaluation (results.json); — : missing.", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.rows():
            lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
        return "\n".join(lines) + "\n"

    def write_csv(self, path: Path) -> None:
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["run", *self.keys, *self.metrics])
            for row in self.rows():
                writer.writerow(["" if v is None else v for v in row])

    def sweep_figure(self, title: str) -> Figure | None:
        """Each metric against the one numeric key the runs differ in (None when there is no such key)."""
        key = self.sweep_key()
        if key is None or not self.metrics:
            return None
        xs = [number(config_keys(r).get(key)) for r in self.runs]
        panels = []
        for metric in self.metrics:
            points = [(x, result_numbers(r).get(metric)) for x, r in zip(xs, self.runs, strict=True)]
            points = [(x, y) for x, y in points if y is not None]
            panels.append(Panel(metric, key, "value", [Series("ours", [p[0] for p in points], [p[1] for p in points])]))
        return Figure(f"{title}: every metric against {key}", panels)


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
