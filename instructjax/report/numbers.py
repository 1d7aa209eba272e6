"""How a paper's column is read from a run's results.json (layout: instructjax/eval/run.py), in the paper's
units: lm-eval accuracies and Codex pass@k as percentages, protocol exact match (already %), judged scores
as the judge module reports them. Every reader answers None for a number that is not there (a part not run,
a judge's replies not in yet, a protocol subset with no document), never zero.
"""

from __future__ import annotations

from collections.abc import Callable

from instructjax.report.runs import Run, number
from instructjax.report.tables import Read


def _suite(run: Run, task: str, shots: int) -> dict:
    return ((run.results or {}).get("suite") or {}).get(f"{task}|{shots}-shot") or {}


def _key(metric: str) -> str:
    return metric if "," in metric else f"{metric},none"  # lm-eval names a metric with its filter


def lm(task: str, shots: int, metric: str, scale: float = 100.0) -> Read:
    """An lm-eval metric of a suite task."""
    def read(run: Run) -> float | None:
        value = number(_suite(run, task, shots).get(_key(metric)))
        return None if value is None else value * scale
    return read


def leaf_mean(prefix: str, shots: int, metric: str, scale: float = 100.0) -> Read:
    """The mean of an lm-eval metric over the leaf tasks of a tag (e.g. TydiQA's languages)."""
    def read(run: Run) -> float | None:
        suite = (run.results or {}).get("suite") or {}
        values = [number(m.get(_key(metric))) for key, m in suite.items()
                  if key.startswith(prefix + "_") and key.endswith(f"|{shots}-shot")]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) * scale if values else None
    return read


def protocol(task: str, shots: int) -> Read:
    """Exact match (%) of a protocol-scored benchmark (GSM8K, BBH: the paper's subset and answer rule)."""
    def read(run: Run) -> float | None:
        scored = _suite(run, task, shots).get("protocol") or {}
        return number(scored.get("exact_match")) if scored.get("n") else None
    return read


def tulu(setting: str, metric: str, scale: float = 100.0) -> Read:
    """A Tulu suite setting's score (eval/tulu: open-instruct's metrics.json, fractions except TydiQA's 0-100)."""
    def read(run: Run) -> float | None:
        value = number((((run.results or {}).get("suite") or {}).get(setting) or {}).get(metric))
        return None if value is None else value * scale
    return read


def codex(k: int) -> Read:
    """Codex-Eval pass@k (%)."""
    def read(run: Run) -> float | None:
        value = number(((run.results or {}).get("codex") or {}).get(f"pass@{k}"))
        return None if value is None else 100 * value
    return read


def judged(part: str, key: str) -> Read:
    """A judged evaluation's score (pairwise, alpaca_eval, flask) once the judge's replies are in."""
    return lambda run: number(((run.results or {}).get(part) or {}).get(key))


def pairwise(key: str, against: Callable[[Run], bool]) -> Read:
    """The run's pairwise `key` (winning_score, win, tie, lose) in its comparison with a run for which `against`
    holds (the column's system, e.g. the full dataset)."""
    def read(run: Run) -> float | None:
        compared = ((run.results or {}).get("pairwise") or {}).get("vs") or {}
        for name, other in run.against.items():
            value = number((compared.get(name) or {}).get(key))
            if against(other) and value is not None:
                return value
        return None
    return read


def mean(*reads: Read) -> Read:
    """The mean of other columns, when all of them are there."""
    def read(run: Run) -> float | None:
        values = [r(run) for r in reads]
        return None if any(v is None for v in values) else sum(values) / len(values)
    return read


def never(run: Run) -> None:
    """A column none of our evaluations gives (e.g. a benchmark outside our suites)."""
    return None
