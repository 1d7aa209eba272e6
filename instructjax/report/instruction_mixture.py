"""Seed 000, Understanding the Instruction Mixture: Tables 1-2 and Figure 2, from the `acp_*` runs.

A run is placed by what its config records (`experiment: {family: seed000, setting | ratio | count}`, as
`instructjax experiments` writes them) and `model.preset` (the paper's model, or a row of its own).
"""

from __future__ import annotations

from instructjax.report import numbers as n
from instructjax.report.figures import Figure, Panel, Series
from instructjax.report.runs import Run
from instructjax.report.tables import Column, RowOf, Table

KEY = "seed000"
TITLE = "Understanding the Instruction Mixture for LLM Fine-tuning (seed 000)"
MODELS = {"llama2-7b": "LLaMA-2-7B", "llama2-13b": "LLaMA-2-13B"}
SETTINGS = ("None", "A", "C", "P", "AC", "AP", "CP", "ACP")


def coordinates(run: Run) -> dict | None:
    """{model, and setting | ratio | count} of an A/C/P run, None for another family's."""
    recorded = run.config.experiment
    if recorded.get("family") != KEY:
        return None
    found = {}  # as the tables label them: the setting, the ratio as `g` prints it, the count
    if recorded.get("setting") in SETTINGS:
        found["setting"] = recorded["setting"]
    if isinstance(recorded.get("ratio"), (int, float)):
        found["ratio"] = f"{recorded['ratio']:g}"
    if isinstance(recorded.get("count"), int):
        found["count"] = str(recorded["count"])
    if len(found) != 1:
        return None
    return {"model": MODELS.get(run.config.model.preset, run.config.model.preset), **found}


def _key(field: str, skip: tuple[str, ...] = ()) -> RowOf:
    def row(run: Run) -> tuple[str, ...] | None:
        c = coordinates(run)
        return (c["model"], c[field]) if c and field in c and c[field] not in skip else None
    return row


NLP = (("ARC (challenge)", "arc_challenge"), ("Winogrande", "winogrande"), ("PIQA", "piqa"), ("MMLU", "mmlu"),
       ("Race", "race"), ("HellaSwag", "hellaswag"))
NLP_AVERAGE = n.mean(*(n.lm(task, 0, "acc") for _, task in NLP))
BENCHMARKS = (*(Column(label, n.lm(task, 0, "acc")) for label, task in NLP), Column("Average", NLP_AVERAGE),
              Column("HumanEval @1", n.codex(1)), Column("HumanEval @10", n.codex(10)))
SKILLS = (("Corr.", "logical correctness"), ("Fact.", "factuality"), ("Comm.", "commonsense understanding"),
          ("Compr.", "comprehension"), ("Compl.", "completeness"), ("Insight.", "insightfulness"),
          ("Read.", "readability"), ("Conc.", "conciseness"), ("Avg.", "average"))
SWEEP_NOTE = "The paper draws these points (Figure 2) without printing them: ours alone."

TABLES = (
    Table("table1", "zero-shot NLP and code benchmarks (suite `mixture`)", ("Model", "Data"), BENCHMARKS,
          _key("setting")),
    Table("table2", "FLASK alignment skills, GPT-4 judge scaled to [0, 100] (eval `flask`)", ("Model", "Data"),
          tuple(Column(label, n.judged("flask", skill), 1) for label, skill in SKILLS), _key("setting", ("None",))),
    Table("figure2_ratio", "specialized:general ratio, Alpaca fixed at 20K", ("Model", "Ratio"), BENCHMARKS,
          _key("ratio"), SWEEP_NOTE),
    Table("figure2_count", "examples of each of A, C, P", ("Model", "Count"), BENCHMARKS, _key("count"), SWEEP_NOTE),
)


def figures(runs: list[Run], published: dict) -> dict[str, Figure]:
    """Figure 2's two sweeps (NLP average and HumanEval pass@1 against the ratio / the count), where run."""
    out = {}
    for field, xlabel in (("ratio", "specialized : general ratio"), ("count", "examples of each type")):
        swept = [(coordinates(r), r) for r in runs if field in (coordinates(r) or {})]
        if not swept:
            continue
        panels = []
        for title, read in (("NLP benchmarks (average)", NLP_AVERAGE), ("HumanEval pass@1", n.codex(1))):
            panel = Panel(title, xlabel, "score (%)", xlog=field == "count")
            for model in sorted({c["model"] for c, _ in swept}):
                points = [(float(c[field]), read(r)) for c, r in swept if c["model"] == model and read(r) is not None]
                panel.series.append(Series(f"{model} (ours)", [p[0] for p in points], [p[1] for p in points]))
            panels.append(panel)
        out[f"figure2_{field}"] = Figure(f"Figure 2: {xlabel} (seed 000)", panels)
    return out
