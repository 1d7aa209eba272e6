"""Seed 003, Mosaic-IT: Tables 1, 2, 3, 4, 5 and 10 and the k distributions (Figures 3 and 5).

A run is placed by what its config records (`experiment: {family: seed003, dataset, method}`, an ablation's also
`ablation` (the data.mosaic key it varies: strategy, k_max, distribution) and `value`, as `instructjax experiments`
writes them) and `model.preset`. Winning scores are the comparison with a baseline run
(`eval.pairwise.against: {baseline: ...}`). The ablation rows are Mistral-7B's; another model's
runs get rows of their own, labelled with the model ("Llama-3-8B (LoRA)" where it trained adapters).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import numpy as np

from instructjax.data.mosaic.augment import sample_count
from instructjax.report import numbers as n
from instructjax.report.figures import Figure, Panel, Series
from instructjax.report.runs import Run
from instructjax.report.tables import Column, RowOf, Table

KEY = "seed003"
TITLE = "Mosaic-IT: compositional data augmentation (seed 003)"
MODELS = {"mistral-7b": "Mistral-7B", "llama2-7b": "Llama2-7B", "llama2-13b": "Llama2-13B", "llama3-8b": "Llama-3-8B",
          "phi3-mini": "Phi-3", "gemma2-2b": "Gemma2-2B"}
DATASETS = {"alpaca_gpt4": "Alpaca-GPT4", "alpaca": "Alpaca", "wizardlm": "Wizard-70k"}
MORE_DATASETS = {"vicuna": "Vicuna", "magpie": "Magpie"}  # Table 3 / Table 10: Vicuna 1M (LMSYS-Chat-1M), Magpie
METHODS = ("baseline", "mosaic")
ABLATIONS = ("strategy", "k_max", "distribution")  # the data.mosaic key an ablation (Tables 4a, 4b, 5) varies
STRATEGIES = {"primary": "Primary", "format": "Format", "permute": "Permute", "maskout": "Maskout"}
DISTRIBUTIONS = {"fixed": "Fix", "exponential": "Exponential", "pareto": "Pareto", "lognormal": "Log-normal",
                 "logistic": "Logistic"}
DRAWS = 20_000  # k draws per distribution for the figure and Table 5's "Mix <= 5"


def coordinates(run: Run) -> dict | None:
    """{model, dataset, method} of a main run, and {ablation, value} of an ablation; None for another family's."""
    recorded = run.config.experiment
    dataset, method = recorded.get("dataset"), recorded.get("method")
    if recorded.get("family") != KEY or not isinstance(dataset, str) or not isinstance(method, str) or \
            (dataset not in DATASETS and dataset not in MORE_DATASETS) or method not in METHODS:
        return None
    model = MODELS.get(run.config.model.preset, run.config.model.preset)
    if run.adapter:  # "Llama-3-8B (LoRA)": rows of its own, beside the full fine-tune's
        model = f"{model} ({run.adapter})"
    if "ablation" not in recorded:
        return {"model": model, "dataset": dataset, "method": method}
    ablation, value = recorded["ablation"], recorded.get("value")
    if not isinstance(ablation, str) or ablation not in ABLATIONS or isinstance(value, bool) or \
            not isinstance(value, (str, int)):
        return None
    return {"model": model, "dataset": dataset, "method": method, "ablation": ablation, "value": str(value)}


def _main_row(run: Run) -> tuple[str, ...] | None:
    """A row of Tables 1 and 2 (Alpaca-GPT4, Alpaca, WizardLM runs)."""
    c = coordinates(run)
    if not c or "ablation" in c or c["dataset"] not in DATASETS:
        return None
    return c["model"], DATASETS[c["dataset"]], "Baseline" if c["method"] == "baseline" else "Mosaic-IT"


def _more_row(run: Run) -> tuple[str, ...] | None:
    """A row of Tables 3 and 10 (the Vicuna 1M and Magpie runs)."""
    c = coordinates(run)
    if not c or "ablation" in c or c["dataset"] not in MORE_DATASETS:
        return None
    return c["model"], MORE_DATASETS[c["dataset"]], "Baseline" if c["method"] == "baseline" else "Mosaic-IT"


def _ablation_row(ablation: str, label: Callable[[str], str], default: str) -> RowOf:
    """The row of an ablation run, or of the default Mosaic-IT run (Alpaca-GPT4) under `default`."""
    def row(run: Run) -> tuple[str, ...] | None:
        c = coordinates(run)
        if not c:
            return None
        if c.get("ablation") == ablation:
            name = label(c["value"])
        elif "ablation" not in c and (c["dataset"], c["method"]) == ("alpaca_gpt4", "mosaic"):
            name = default
        else:
            return None
        return (name,) if c["model"] == "Mistral-7B" else (f"{name} ({c['model']})",)
    return row


def k_draws(run: Run) -> Counter | None:
    """How often each k is drawn from the run's mosaic distribution (data.mosaic.sample_count), None without."""
    section = run.config.data.mosaic
    if section is None:
        return None
    rng = np.random.default_rng(run.config.seed)
    return Counter(sample_count(rng, section) for _ in range(DRAWS))


def _mix_at_most_5(run: Run) -> float | None:
    """% of the mosaics the run trained on (every epoch's pass, RUN_DIR/mosaic_k.json) that join at most 5
    instructions: k as made, after a mosaic was cut to fit the length."""
    counts: Counter = Counter()
    for epoch in (run.mosaic_k or {}).values():
        for k, made in epoch.items():
            counts[int(k)] += int(made)
    total = sum(counts.values())
    return 100 * sum(v for k, v in counts.items() if k <= 5) / total if total else None


BASELINE = lambda run: (coordinates(run) or {}).get("method") == "baseline"  # noqa: E731


def _winning_score(run: Run) -> float | None:
    """Against the baseline; a baseline's own is 1 by the paper's definition ((Win - Lose) / N + 1 of a system
    against itself), once its pairwise part has run (its outputs, which the Mosaic-IT runs are judged against)."""
    if BASELINE(run) and (run.results or {}).get("pairwise") is not None:
        return 1.0
    return n.pairwise("winning_score", BASELINE)(run)


VERSUS = (Column("Winning Score", _winning_score, 3),
          *(Column(label, n.pairwise(key, BASELINE), 0) for label, key in (("Win", "win"), ("Tie", "tie"),
                                                                             ("Lose", "lose"))))
LEADERBOARD = (("ARC", n.lm("arc_challenge", 25, "acc_norm")), ("HellaSwag", n.lm("hellaswag", 10, "acc_norm")),
               ("MMLU", n.lm("mmlu", 5, "acc")), ("TruthfulQA", n.lm("truthfulqa_mc2", 0, "acc")))
IFEVAL = (("IFEval Prompt (S)", "prompt_level_strict_acc"), ("IFEval Inst (S)", "inst_level_strict_acc"),
          ("IFEval Prompt (L)", "prompt_level_loose_acc"), ("IFEval Inst (L)", "inst_level_loose_acc"))
KEYS = ("Model", "Dataset", "Method")
MT_BENCH = (Column("MT-Bench 1-round", n.judged("mt_bench", "turn_1")),
            Column("MT-Bench 2-round", n.judged("mt_bench", "turn_2")))
OPEN_LLM = Column("Open LLM Average", n.mean(*(r for _, r in LEADERBOARD)))
ALPACA_EVAL_2 = (Column("AlpacaEval 2 Rate (LC)", n.judged("alpaca_eval", "length_controlled_winrate")),
                 Column("AlpacaEval 2 Rate", n.judged("alpaca_eval", "win_rate")))

TABLES = (
    Table("table1", "pairwise winning score (Mosaic-IT vs. baseline) and the Open LLM Leaderboard", KEYS,
          (VERSUS[0], Column("Average", n.mean(*(r for _, r in LEADERBOARD))),
           *(Column(label, r) for label, r in LEADERBOARD)), _main_row,
          "A baseline's winning score is 1 by definition (once its pairwise outputs are made)."),
    Table("table2", "MT-Bench, AlpacaEval 2 and IFEval", KEYS,
          (*MT_BENCH, *ALPACA_EVAL_2, *(Column(label, n.lm("ifeval", 0, metric)) for label, metric in IFEVAL)),
          _main_row,
          "MT-Bench: FastChat's single-answer judging, mean rating of each turn (eval.mt_bench); AlpacaEval 2: the "
          "alpaca_eval package's weighted GPT-4 Turbo annotator, length-controlled and raw win rates "
          "(eval.alpaca_eval); IFEval is lm-eval's (suite `leaderboard`)."),
    Table("table3", "more model families and datasets (Vicuna 1M, Magpie): all five metrics", KEYS,
          (Column("Pair-wise Score", VERSUS[0].read, 3), OPEN_LLM,
           *ALPACA_EVAL_2, *MT_BENCH,
           *(Column(label, n.lm("ifeval", 0, metric)) for label, metric in IFEVAL[2:])), _more_row,
          "Vicuna 1M is LMSYS-Chat-1M (source `lmsys_chat`); 300K conversations of each dataset, 4096 tokens, 2 epochs."),
    Table("table10", "more model families and datasets: the Open LLM Leaderboard and IFEval in detail (Appendix F)",
          KEYS, (OPEN_LLM, *(Column(label, r) for label, r in LEADERBOARD),
                 *(Column(label, n.lm("ifeval", 0, metric)) for label, metric in IFEVAL)), _more_row),
    Table("table4a", "ablation: Mosaic-IT strategies (vs. the baseline)", ("Strategy",), VERSUS,
          _ablation_row("strategy", STRATEGIES.get, "Permute/Maskout")),
    Table("table4b", "ablation: the maximum number of instructions (vs. the baseline)", ("Max Count",), VERSUS,
          _ablation_row("k_max", lambda v: f"Max Count = {v}", "Max Count = 10")),
    Table("table5", "ablation: the distribution of the number of instructions (vs. the baseline)", ("Distribution",),
          (*VERSUS, Column("Mix <= 5", _mix_at_most_5)), _ablation_row("distribution", DISTRIBUTIONS.get, "Uniform"),
          "\"Mix <= 5\": % of the mosaics the run made (every epoch) with k <= 5, after a mosaic was cut to fit "
          "the length (RUN_DIR/mosaic_k.json)."),
)


def figures(runs: list[Run], published: dict) -> dict[str, Figure]:
    """The k distribution of every distinct data.mosaic count setting among the runs (Figures 3 and 5)."""
    panels, seen = [], set()
    for run in runs:
        section = run.config.data.mosaic
        if section is None or coordinates(run) is None:
            continue
        setting = (section.distribution, section.k_max, tuple(sorted(section.params.items())))
        if setting in seen:
            continue
        seen.add(setting)
        counts = k_draws(run)
        ks = list(range(1, section.k_max + 1))
        panels.append(Panel(f"{section.distribution}, k_max = {section.k_max}", "k (instructions per mosaic)",
                            "share of mosaics (%)", [Series(run.name, ks, [100 * counts[k] / DRAWS for k in ks])],
                            bars=True))
    return {"k_distributions": Figure("Mosaic-IT: the number of instructions k (seed 003)", panels)} if panels else {}
