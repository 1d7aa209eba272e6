"""Seed 004, How Far Can Camels Go? (Tulu): Tables 3, 4, 5, 6, 7, 8, 9 and 10.

A run is placed by what its config records (`experiment: {family: seed004, data}`, as `instructjax experiments`
writes them): `data` is the dataset of Table 3 it trained on (its `data.mixture` tulu_single_<dataset>, or the
_builtin twin), a mix (human, human_gpt) or `vanilla`, an eval-only config's base model evaluated as it is; its model
is `model.preset` (llama1-33b is the paper's "30B"), its size labelled "(LoRA)" or "(QLoRA)" where it trained adapters,
"(+DPO)" where it continued an SFT run on preference pairs; `table_preference` sets those beside the runs they started
from (Tulu 2's DPO stage; ours, not the paper's).
"""

from __future__ import annotations

from instructjax.report import numbers as n
from instructjax.report.figures import Figure
from instructjax.report.runs import Run
from instructjax.report.tables import Column, Table

KEY = "seed004"
TITLE = "How Far Can Camels Go? Exploring the State of Instruction Tuning on Open Resources (seed 004)"
MODELS = {"llama1-7b": ("LLaMA", "7B"), "llama1-13b": ("LLaMA", "13B"), "llama1-33b": ("LLaMA", "30B"),
          "llama1-65b": ("LLaMA", "65B"), "llama2-7b": ("LLaMA-2", "7B"), "llama2-13b": ("LLaMA-2", "13B"),
          "opt-6.7b": ("OPT", "6.7B"), "pythia-6.9b": ("Pythia", "6.9B")}
DATASETS = {"superni": "SuperNI", "cot": "CoT", "flan_v2": "Flan V2", "dolly": "Dolly", "oasst1": "Open Assistant 1",
            "self_instruct": "Self-instruct", "unnatural_instructions": "Unnatural Instructions", "alpaca": "Alpaca",
            "code_alpaca": "Code-Alpaca", "gpt4_alpaca": "GPT4-Alpaca", "baize": "Baize", "sharegpt": "ShareGPT"}
MIXES = {"human": ("+Human data mix.", "Human mix."), "human_gpt": ("+Human+GPT data mix.", "Tulu")}


def coordinates(run: Run) -> dict | None:
    """{data (a dataset of Table 3, human, human_gpt, or vanilla: the base model evaluated as it is), model
    (LLaMA, LLaMA-2, or the preset), size}."""
    recorded = run.config.experiment
    data = recorded.get("data")
    if recorded.get("family") != KEY or not isinstance(data, str) or not (data in DATASETS or data in MIXES or
                                             (data == "vanilla" and run.config.max_steps == 0)):
        return None
    model, size = MODELS.get(run.config.model.preset, (run.config.model.preset, ""))
    if run.adapter:  # "65B (QLoRA)": rows of its own, beside the full fine-tune's
        size = f"{size} ({run.adapter})".strip()
    if run.objective:  # "7B (+DPO)": the SFT run's rows stay its own (table_preference compares the two)
        size = f"{size} (+{run.objective})".strip()
    return {"data": data, "model": model, "size": size}


def _label(c: dict, table3: bool) -> str:
    if c["data"] in MIXES:
        return MIXES[c["data"]][0 if table3 else 1]
    return ("+" if table3 else "") + DATASETS[c["data"]]


def _vanilla(c: dict) -> str:
    return f"{c['model'].replace('LLaMA', 'LLaMa')} {c['size']}".strip()  # "LLaMa 13B", "LLaMa-2 7B"


def _table3_row(run: Run) -> tuple[str, ...] | None:
    c = coordinates(run)
    if not c:
        return None
    if c["data"] == "vanilla":
        return (f"Vanilla {_vanilla(c)}",)
    label = _label(c, True)
    if (c["model"], c["size"]) != ("LLaMA", "13B"):
        label += f" ({' '.join(filter(None, (c['model'], c['size'])))})"
    return (label,)


TABLE4 = {("LLaMA", "7B"): "LLAMA 7B", ("LLaMA-2", "7B"): "LLAMA-2 7B", ("OPT", "6.7B"): "OPT 6.7B",
          ("Pythia", "6.9B"): "Pythia 6.9B"}


def _table4_row(run: Run) -> tuple[str, ...] | None:
    c = coordinates(run)
    key = (c["model"], c["size"]) if c and c["data"] == "human_gpt" else None
    return (TABLE4[key],) if key in TABLE4 else None


def _table5_row(run: Run) -> tuple[str, ...] | None:
    c = coordinates(run)
    if not c:
        return None
    if c["data"] == "vanilla":
        return (_vanilla(c),)
    if c["data"] == "human_gpt":
        tulu = {"LLaMA": "Tulu", "LLaMA-2": "Tulu-1.1"}.get(c["model"])
        return (f"{tulu} {c['size']}",) if tulu else (f"Tulu ({c['model']})",)
    if c["data"] in ("sharegpt", "human") and (c["model"], c["size"]) == ("LLaMA", "65B"):
        return ("ShareGPT 65B" if c["data"] == "sharegpt" else "Human mix. 65B",)
    return None


def _table6_row(run: Run) -> tuple[str, ...] | None:
    c = coordinates(run)
    if not c or c["model"] != "LLaMA" or c["size"] not in ("7B", "13B"):
        return None
    return ({"vanilla": "LLaMA", "human": "+Human mix.", "human_gpt": "+Tulu",
             "unnatural_instructions": "+Unnatural Inst."}.get(c["data"]) or f"+{DATASETS[c['data']]}",)


def _table7_row(run: Run) -> tuple[str, ...] | None:
    c = coordinates(run)
    return (_label(c, False),) if c and c["model"] == "LLaMA" and c["data"] != "vanilla" else None


TABLE8_MIXES = {"human": "Human mix.", "human_gpt": "H+GPT mix"}


def _table8_row(run: Run) -> tuple[str, ...] | None:
    """(base model as Table 8's section names it, the row's label): "LLaMa 13B", "Flan V2"."""
    c = coordinates(run)
    if not c:
        return None
    base = _vanilla(c)
    if c["data"] == "vanilla":
        return (base, "Vanilla" if c["model"] not in ("LLaMA", "LLaMA-2") else f"Vanilla {c['model'].replace('LLaMA', 'LLaMa')}")
    return (base, TABLE8_MIXES.get(c["data"]) or DATASETS[c["data"]])


def _preference_row(run: Run) -> tuple[str, ...] | None:
    """A preference run that continues a run of these tables (its `start`): (the SFT run's model, the objective)."""
    c, before = coordinates(run), coordinates(run.start) if run.start is not None else None
    if not (c and before and run.objective) or before["data"] == "vanilla":
        return None
    return (_table5_row(run.start) or _table3_row(run.start) or ("?",))[0], run.objective


def _before(read: n.Read) -> n.Read:
    """`read` of the run a preference run started from."""
    return lambda run: read(run.start) if run.start is not None else None


def _at(size: str, read: n.Read) -> n.Read:
    """`read` of the runs of one model size (a row of these tables gathers a dataset's runs of every size)."""
    return lambda run: read(run) if (coordinates(run) or {}).get("size") == size else None


SUITE = (("MMLU", n.tulu("mmlu_0shot", "acc")), ("GSM", n.tulu("gsm_cot", "exact_match")),
         ("BBH", n.tulu("bbh_cot", "exact_match")), ("TydiQA", n.tulu("tydiqa_goldp_1shot", "f1", 1.0)),
         ("Codex-Eval", n.codex(10)), ("AlpacaEval", n.judged("alpaca_eval", "win_rate")))
COLUMNS = (*(Column(label, read, 1) for label, read in SUITE), Column("Average", n.mean(*(r for _, r in SUITE)), 1))
# Table 8: every setting (suite "tulu"); the average is the mean over benchmarks of each one's mean over settings
TABLE8 = (("MMLU", (("MMLU 0-shot", n.tulu("mmlu_0shot", "acc")), ("MMLU 5-shot", n.tulu("mmlu_5shot", "acc")))),
          ("GSM", (("GSM Direct", n.tulu("gsm_direct", "exact_match")), ("GSM CoT", n.tulu("gsm_cot", "exact_match")))),
          ("BBH", (("BBH Direct", n.tulu("bbh_direct", "exact_match")), ("BBH CoT", n.tulu("bbh_cot", "exact_match")))),
          ("TydiQA", (("TydiQA GP", n.tulu("tydiqa_goldp_1shot", "f1", 1.0)),
                      ("TydiQA CB", n.tulu("tydiqa_no_context_1shot", "f1", 1.0)))),
          ("Codex-Eval", (("Codex-Eval P@1", n.codex(1)), ("Codex-Eval P@10", n.codex(10)))),
          ("AlpacaEval", (("AlpacaEval v Davinci-003", n.judged("alpaca_eval", "win_rate")),)))
TABLE8_COLUMNS = (*(Column(label, read, 1) for _, settings in TABLE8 for label, read in settings),
                  Column("Average", n.mean(*(n.mean(*(r for _, r in settings)) for _, settings in TABLE8)), 1))
# Table 9: ToxiGen's % toxic per targeted group (the group keys are ToxiGen's prompt files', hate_<group>_1k.txt)
TOXIGEN_GROUPS = (("Asian", "asian"), ("Black", "black"), ("Chinese", "chinese"), ("Jewish", "jewish"),
                  ("Latino", "latino"), ("LGBTQ", "lgbtq"), ("Ment.", "mental_disability"), ("Mexican", "mexican"),
                  ("Mid. East", "middle_east"), ("Muslim", "muslim"), ("Nat. Amer.", "native_american"),
                  ("Phys.", "physical_disability"), ("Trans.", "trans"), ("Women", "women"), ("Overall", "overall"))
TABLE9_COLUMNS = tuple(Column(label, n.judged("toxigen", key), 1) for label, key in TOXIGEN_GROUPS)
# Table 10: TruthfulQA
TABLE10_COLUMNS = tuple(Column(label, n.judged("truthfulqa", key), 1) for label, key in (
    ("% Informative", "informative"), ("% Truthful", "truthful"), ("% Informative and Truthful", "truthful_and_informative")))
NOTE = ("MMLU EM 0-shot, GSM EM 8-shot CoT and BBH EM 3-shot CoT on the paper's subsets, TydiQA F1 1-shot gold "
        "passage (mean over languages), Codex-Eval pass@10, AlpacaEval win % against Davinci-003 (suite `tulu`).")

# Before and after preference tuning (Tulu 2's DPO stage on our SFT runs; not in seed 004): each suite figure of the
# SFT run, then of the run that continued it
PREFERENCE_COLUMNS = tuple(Column(f"{label} {when}", read if when == "after" else _before(read), 1)
                           for label, read in (*SUITE, ("Average", n.mean(*(r for _, r in SUITE))))
                           for when in ("before", "after"))

TABLES = (
    Table("table3", "instruction datasets on LLaMA 13B", ("Dataset",), COLUMNS, _table3_row,
          NOTE + " Runs of other sizes are rows of their own (their published numbers: Table 8)."),
    Table("table4", "base models trained on the Human+GPT mixture", ("Model",), COLUMNS, _table4_row, NOTE),
    Table("table5", "Tulu and the other mixtures across LLaMA sizes", ("Model",), COLUMNS, _table5_row, NOTE),
    Table("table6", "ToxiGen (% toxic, lower is better) and TruthfulQA (% truthful and informative) on LLaMA",
          ("Model",), (*(Column(f"ToxiGen {size}", _at(size, n.judged("toxigen", "overall")), 1) for size in ("7B", "13B")),
                       *(Column(f"TruthfulQA {size}", _at(size, n.judged("truthfulqa", "truthful_and_informative")), 1)
                         for size in ("7B", "13B"))), _table6_row,
          "ToxiGen: % of generations ToxiGen's RoBERTa deems toxic (500 hateful prompts per group); TruthfulQA: "
          "% of answers both judges accept (allenai's LLaMA-2 judges: the paper's GPT-3 judges are gone)."),
    Table("table7", "AlpacaEval win rate (%) against Davinci-003 by LLaMA size", ("Training Dataset",),
          tuple(Column(size, _at(size, n.judged("alpaca_eval", "win_rate")), 1) for size in ("7B", "13B", "30B", "65B")),
          _table7_row),
    Table("table8", "all models on every setting", ("Base model", "Model"), TABLE8_COLUMNS, _table8_row,
          "MMLU EM 0/5-shot, GSM EM 8-shot Direct/CoT and BBH EM 3-shot Direct/CoT on the paper's subsets, TydiQA F1 "
          "1-shot gold passage / closed book (mean over languages), Codex-Eval pass@1/@10, AlpacaEval win % against "
          "Davinci-003; Average: the mean over benchmarks of each benchmark's mean over its settings (suite `tulu`). "
          "The paper's text of this table is damaged: cells it does not show are missing (seed004.yaml says which)."),
    Table("table9", "ToxiGen % toxic by targeted group, all models", ("Base model", "Model"), TABLE9_COLUMNS, _table8_row,
          "% of generations ToxiGen's RoBERTa deems toxic, per group the hateful prompts target (500 each) and over "
          "all. The paper's text of this table is damaged: cells it does not show are missing (seed004.yaml says "
          "which)."),
    Table("table10", "TruthfulQA, all models", ("Base model", "Model"), TABLE10_COLUMNS, _table8_row,
          "% of answers the judges deem informative, truthful, both (allenai's LLaMA-2 judges: the paper's GPT-3 "
          "judges are gone)."),
    Table("table_preference", "the suite before and after preference tuning (ours: Tulu 2's DPO stage)",
          ("Model", "Objective"), PREFERENCE_COLUMNS, _preference_row,
          NOTE + " Before: the SFT run; after: the run that continued it on UltraFeedback (objective.loss; Tulu 2's "
          "DPO recipe, not in seed 004: no published numbers), or on verifiable prompts (+RLVR: grpo, Tulu 3's last "
          "stage, after DPO)."),
)


def figures(runs: list[Run], published: dict) -> dict[str, Figure]:
    """No sweep curves: the paper draws none from these runs (its figures are judge and human studies)."""
    return {}
