"""Seed 002, Rethinking Data Selection for SFT: Tables 1-4 and 6-8 and the selection-size sweep.

A run is placed by what its config records (`experiment: {family: seed002, dataset, method, k}`, as
`instructjax experiments` writes them; k null: the full dataset; the eval-only base model: {method: base}).
A winning score lands in the column of the run its comparison names (`eval.pairwise.against`, runs.link_pairwise):
the generated configs name them (cli/experiment_grid.py SEED002_VERSUS), e.g. `full: alpaca_full_llama2_7b` fills
"vs. Full"; a run with several comparisons with the column's run (Longest-1K's length-neutral rejudging) fills it
from the first.
"""

from __future__ import annotations

from collections.abc import Callable

from instructjax.report import numbers as n
from instructjax.report.figures import Figure, Panel, Series
from instructjax.report.runs import Run
from instructjax.report.tables import Column, RowOf, Table

KEY = "seed002"
TITLE = "Rethinking Data Selection for SFT (seed 002)"
DATASETS = {"alpaca": "Alpaca", "wizardlm": "WizardLM", "dolly": "Dolly"}
STRATEGY = {"full": "Full", "random": "Random", "kmeans": "Diversity", "kcenter": "Diversity (k-center)",
            "quality": "Quality", "longest": "Longest", "shortest": "Shortest"}
BENCHMARK_K = {"alpaca": 1000, "dolly": 1000, "wizardlm": 4200}  # the runs Tables 3, 7, 8 are matched with


def coordinates(run: Run) -> dict | None:
    """{dataset, method, k (None: the full dataset), size (the paper's label: 1K, 6%)}, None for another family's;
    the eval-only base model's run is {method: base} (dataset None)."""
    recorded = run.config.experiment
    if recorded.get("family") != KEY:
        return None
    method, dataset, k = recorded.get("method"), recorded.get("dataset"), recorded.get("k")
    if method == "base" and run.config.max_steps == 0:  # the "Base" row: the model not fine-tuned
        return {"dataset": None, "method": "base", "k": None, "size": None}
    if dataset not in DATASETS or method not in STRATEGY or not (k is None or isinstance(k, int)):
        return None
    label = None if k is None else "6%" if (dataset, k) == ("wizardlm", 4200) else (
        f"{k // 1000}K" if k % 1000 == 0 else str(k))
    return {"dataset": dataset, "method": method, "k": k, "size": label}


def _method(*methods: str) -> Callable[[Run], bool]:
    return lambda run: (coordinates(run) or {}).get("method") in methods


def _vs(method: str, key: str = "winning_score") -> n.Read:
    return n.pairwise(key, _method(method))


def _row(methods: tuple[str, ...], label: Callable[[dict], tuple[str, ...]]) -> RowOf:
    def row(run: Run) -> tuple[str, ...] | None:
        c = coordinates(run)
        return label(c) if c and c["method"] in methods and c["k"] is not None else None
    return row


def _benchmark_row(dataset: str) -> RowOf:
    def row(run: Run) -> tuple[str, ...] | None:
        c = coordinates(run)
        if c and c["method"] == "base":  # one base model, a row of each dataset's table
            return ("Base",)
        if not c or c["dataset"] != dataset:
            return None
        name = STRATEGY[c["method"]]
        return (name,) if c["k"] in (None, BENCHMARK_K[dataset]) else (f"{name}-{c['size']}",)
    return row


def _shortest(dataset: str, size: str) -> n.Read:
    def read(run: Run) -> float | None:
        c = coordinates(run)
        return _vs("full")(run) if c and (c["dataset"], c["size"]) == (dataset, size) else None
    return read


LEADERBOARD = (("ARC", n.lm("arc_challenge", 25, "acc_norm")), ("HellaSwag", n.lm("hellaswag", 10, "acc_norm")),
               ("MMLU", n.lm("mmlu", 5, "acc")), ("TruthfulQA", n.lm("truthfulqa_mc2", 0, "acc")),
               ("Winogrande", n.lm("winogrande", 5, "acc")), ("GSM8K", n.protocol("gsm8k_cot", 8)),
               ("BBH", n.protocol("bbh_cot_fewshot", 3)))
AVG2 = n.mean(*(read for _, read in LEADERBOARD))
LONG_FORM = (("LongForm", n.judged("long_form", "LongForm")), ("ELI5", n.judged("long_form", "ELI5")))
AVG1 = n.mean(*(read for _, read in LONG_FORM))
BENCHMARKS = (*(Column(label, r) for label, r in LONG_FORM), *(Column(label, r) for label, r in LEADERBOARD),
              Column("AVG1", AVG1), Column("AVG2", AVG2))
BENCHMARK_NOTE = ("LongForm and ELI5: METEOR x100 (eval.long_form: HF evaluate's meteor, the ELI5 reference the "
                  "answer with the most votes); AVG1 is their mean. The paper does not say "
                  "which selection size this table shows: the K={k} runs fill its rows; other sizes get their own.")
VS_NOTE = "A winning score fills the column of the run its comparison names (`eval.pairwise.against`)."

TABLES = (
    Table("table1", "winning scores against the full dataset and random selection", ("Dataset", "Size", "Strategy"),
          (Column("vs. Full", _vs("full"), 4), Column("vs. Random", _vs("random"), 4)),
          _row(("kmeans", "quality", "longest"), lambda c: (DATASETS[c["dataset"]], c["size"],
                                                             STRATEGY[c["method"]])), VS_NOTE),
    Table("table2", "winning scores of the longest responses against diversity and quality", ("Dataset", "Strategy-Size"),
          (Column("vs. Diversity", _vs("kmeans"), 4), Column("vs. Quality", _vs("quality"), 4)),
          _row(("longest",), lambda c: (DATASETS[c["dataset"]], f"Longest-{c['size']}")), VS_NOTE),
    Table("table3", "benchmarks, Alpaca", ("Strategy",), BENCHMARKS, _benchmark_row("alpaca"),
          BENCHMARK_NOTE.format(k=1000)),
    Table("table4", "winning scores of the shortest responses against the full dataset", ("",),
          (Column("Alpaca-1K", _shortest("alpaca", "1K"), 4), Column("WizardLM-6%", _shortest("wizardlm", "6%"), 4),
           Column("Dolly-1K", _shortest("dolly", "1K"), 4)), _row(("shortest",), lambda c: ("vs. Full",)), VS_NOTE),
    Table("table6", "winning scores of k-center greedy diversity", ("Dataset", "Subset-Size"),
          (Column("vs. Full", _vs("full"), 4), Column("vs. Random", _vs("random"), 4),
           Column("vs. Longest", _vs("longest"), 4)),
          _row(("kcenter",), lambda c: (DATASETS[c["dataset"]], f"Diversity-{c['size']}")), VS_NOTE),
    Table("table7", "benchmarks, WizardLM", ("Strategy",), BENCHMARKS, _benchmark_row("wizardlm"),
          BENCHMARK_NOTE.format(k=4200)),
    Table("table8", "benchmarks, Dolly", ("Strategy",), BENCHMARKS, _benchmark_row("dolly"),
          BENCHMARK_NOTE.format(k=1000)),
)
PAPER_K = {"1K": 1000, "9K": 9000, "3K": 3000, "6%": 4200}


def figures(runs: list[Run], published: dict) -> dict[str, Figure]:
    """The selection-size sweep per dataset: winning score vs. Full (the paper's Table 1 dashed, ours solid)
    and our leaderboard average (AVG2), against K."""
    sized = [(coordinates(r), r) for r in runs if (coordinates(r) or {}).get("k")]
    if not sized:
        return {}
    table1 = published["tables"]["table1"]["rows"]
    top, bottom = [], []
    for dataset, label in DATASETS.items():
        win = Panel(f"{label}: vs. Full", "selection size K", "winning score")
        avg = Panel(f"{label}: leaderboard average (AVG2)", "selection size K", "score (%)")
        for color, method in enumerate(("random", "kmeans", "quality", "longest")):
            mine = [(c["k"], r) for c, r in sized if (c["dataset"], c["method"]) == (dataset, method)]
            paper = [(PAPER_K[row[1]], row[3]) for row in table1 if row[0] == label and row[2] == STRATEGY[method]]
            if paper:
                win.series.append(Series(f"{STRATEGY[method]} (paper)", *map(list, zip(*paper, strict=True)), "--s",
                                         f"C{color}"))
            for panel, read in ((win, _vs("full")), (avg, AVG2)):
                points = [(k, read(r)) for k, r in mine if read(r) is not None]
                if points:
                    panel.series.append(Series(f"{STRATEGY[method]} (ours)", *map(list, zip(*points, strict=True)),
                                              color=f"C{color}"))
        top.append(win)
        bottom.append(avg)
    return {"size_sweep": Figure("Selection size sweep (seed 002)", top + bottom, columns=len(top))}
