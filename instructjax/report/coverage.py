"""`instructjax report CONFIGS --coverage`: how many of the papers' published numbers our configs and protocols
can produce, per paper and table, and why not the rest.

Each config's results are laid out as its `eval:` block would write them (`planned_results`: every key, no model
run), with the record of the mosaics a Mosaic-IT run makes; a published number (a cell of `<family>.yaml`) is
producible when the report fills its cell from those. The rest are named with the reason: the row's subject is a
proprietary model (ChatGPT, GPT-4: not a run of ours), no config makes the row, the column has no protocol, or
the configs that make the row do not run what the column reads. Cells filled only from a judge's replies are
counted apart (`judged`): they need the judge (or its replies) before they are numbers.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from instructjax.core.config import load_config
from instructjax.eval.config import eval_section
from instructjax.eval.judged import resolve_runs
from instructjax.eval.pairwise import FLASK_SKILLS
from instructjax.eval.run import config_parts
from instructjax.eval.suite import TULU, suite
from instructjax.eval.toxigen import GROUPS
from instructjax.eval.tulu import SCORED
from instructjax.report import numbers as n
from instructjax.report.families import FAMILIES, published
from instructjax.report.runs import Run, link_pairwise
from instructjax.report.tables import Table

PROPRIETARY = re.compile(r"\b(ChatGPT|GPT-4|GPT4-Turbo|GPT-3\.5|Claude|Davinci)\b", re.IGNORECASE)


@dataclass
class TableCoverage:
    family: str
    table: str
    source: str
    published: int = 0
    producible: int = 0
    judged: int = 0  # of the producible: filled only from a judge's replies
    missing: Counter = field(default_factory=Counter)  # reason -> published numbers

    def line(self) -> str:
        rest = "; ".join(f"{count} {reason}" for reason, count in self.missing.most_common())
        judged = f" ({self.judged} from a judge's replies)" if self.judged else ""
        return f"{self.family} {self.table} ({self.source}): {self.producible}/{self.published}{judged}" + \
            (f"  not: {rest}" if rest else "")


JUDGED_PARTS = ("pairwise", "alpaca_eval", "flask", "mt_bench")
_X = 0.5  # every planned number


def planned_results(config) -> dict:
    """results.json as `eval --config` writes it for this config's `eval:` block (eval/run.py), every number 0.5:
    the keys, not the values."""
    ev = resolve_runs(eval_section(config.eval), config.run_dir)
    parts = config_parts(ev)
    out: dict = {"model": "planned", "parts": parts}
    if "suite" in parts and ev.suite == TULU:
        out["suite"] = {name: {"acc": _X, "exact_match": _X, "f1": _X, "n": 1} for name in SCORED}
    elif "suite" in parts:
        out["suite"] = {}
        for t in suite(ev.suite):
            entry = out["suite"].setdefault(f"{t.task}|{t.num_fewshot}-shot", {})
            for metric in (t.metric, *t.also):
                entry[metric if "," in metric else f"{metric},none"] = _X
            if t.protocol is not None:
                entry["protocol"] = {"exact_match": _X, "n": 1}
    if "tasks" in parts:
        out["tasks"] = {task: {} for task in ev.tasks}
    if "codex" in parts:
        out["codex"] = {"pass@1": _X, "pass@10": _X}
    if "toxigen" in parts:
        out["toxigen"] = {**{g: _X for g in GROUPS}, "overall": _X, "n": 1}
    if "truthfulqa" in parts:
        out["truthfulqa"] = {"truthful": _X, "informative": _X, "truthful_and_informative": _X, "n": 1}
    if "long_form" in parts:
        out["long_form"] = {"LongForm": _X, "ELI5": _X, "n": {"LongForm": 1, "ELI5": 1}}
    if "mt_bench" in parts:
        out["mt_bench"] = {"turn_1": _X, "turn_2": _X}
    if "alpaca_eval" in parts:
        out["alpaca_eval"] = {"win_rate": _X, "length_controlled_winrate": _X, "n": 1}
    if "flask" in parts:
        out["flask"] = {**{skill: _X for skill in FLASK_SKILLS}, "average": _X}
    if "pairwise" in parts:
        out["pairwise"] = {"vs": {name: {"win": 1, "tie": 1, "lose": 1, "n": 3, "winning_score": _X}
                                  for name in ev.judged("pairwise").comparisons()}}
    return out


def _planned_runs(config_paths: list[Path], *, judged: bool) -> list[Run]:
    """Each config's run with its planned results (`judged` False: without the judged parts' results) and, for a
    Mosaic-IT run, a record of the mosaics it makes."""
    runs = []
    for p in config_paths:
        config = load_config(p)
        results = planned_results(config)
        if not judged:
            results = {k: v for k, v in results.items() if k not in JUDGED_PARTS}
        mosaic = {str(k): 1 for k in range(1, config.data.mosaic.k_max + 1)} if config.data.mosaic else None
        runs.append(Run(p, config, results, mosaic_k={"0": mosaic} if mosaic else None))
    link_pairwise(runs)
    return runs


def _filled(table: Table, runs: list[Run]) -> dict[tuple[str, ...], set[int]]:
    """{row key: the columns the report fills in it} over the runs that make the row."""
    filled: dict[tuple[str, ...], set[int]] = {}
    for run in runs:
        key = table.row(run)
        if key is None:
            continue
        cells = filled.setdefault(key, set())
        cells.update(i for i, column in enumerate(table.columns) if column.read(run) is not None)
    return filled


def _reason(table: Table, key: tuple[str, ...], column: int, filled: dict) -> str | None:
    """Why a published cell cannot be produced (None: it can)."""
    label = " ".join(key)
    if PROPRIETARY.search(label):
        return "proprietary model as subject"
    if table.columns[column].read is n.never:
        return f"no protocol for {table.columns[column].label}"
    if key not in filled:
        return "no config makes the row"
    if column not in filled[key]:
        return f"the row's configs do not run {table.columns[column].label}"
    return None


def coverage(config_paths: list[Path]) -> list[TableCoverage]:
    """Every transcribed table of every paper: its published numbers, those our configs can produce (and of them,
    those that need a judge's replies), the rest by reason."""
    with_judge = _planned_runs(config_paths, judged=True)
    without_judge = _planned_runs(config_paths, judged=False)
    found = []
    for family in FAMILIES:
        data = published(family)
        for table in family.TABLES:
            filled, unjudged = _filled(table, with_judge), _filled(table, without_judge)
            spec = data["tables"][table.id]
            cov = TableCoverage(family.KEY, table.id, spec["source"])
            for row in spec["rows"]:
                key, values = tuple(str(v) for v in row[:len(table.keys)]), row[len(table.keys):]
                for i, value in enumerate(values):
                    if value is None:
                        continue
                    cov.published += 1
                    reason = _reason(table, key, i, filled)
                    if reason is None:
                        cov.producible += 1
                        cov.judged += i not in unjudged.get(key, set())
                    else:
                        cov.missing[reason] += 1
            found.append(cov)
    return found


def report(config_paths: list[Path]) -> str:
    """The coverage as text: a line per table, then the totals and the reasons over all tables."""
    tables = coverage(config_paths)
    total, producible = sum(t.published for t in tables), sum(t.producible for t in tables)
    judged = sum(t.judged for t in tables)
    reasons = sum((t.missing for t in tables), Counter())
    lines = [t.line() for t in tables]
    lines += ["", f"all transcribed tables: {producible}/{total} published numbers producible, {judged} of them "
                  "from a judge's replies"]
    lines += [f"  {count} {reason}" for reason, count in reasons.most_common()]
    return "\n".join(lines)
