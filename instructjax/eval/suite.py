"""The papers' evaluation suites as data: lm-eval task names, shot counts, the metric each paper reports.

- "tulu" (seed 004, Tables 3 and 8): MMLU 0/5-shot, GSM8K 8-shot CoT and direct, BBH 3-shot CoT and
  direct, TydiQA 1-shot gold passage and closed book, TruthfulQA, ToxiGen, Codex-Eval (HumanEval pass@1 at
  T=0.1, pass@10 at T=0.8); AlpacaEval is the `alpaca_eval` part (eval/alpacaeval.py). The direct and
  closed-book settings are task YAMLs of ours (instructjax/eval/tasks) with open-instruct's prompts.
- "mixture" (seed 000, Table 1): zero-shot ARC-Challenge, Winogrande, PIQA, MMLU, RACE, HellaSwag,
  plus HumanEval pass@1/pass@10.
- "leaderboard" (seeds 002/003, Open LLM Leaderboard): ARC 25-shot, HellaSwag 10-shot, MMLU 5-shot,
  TruthfulQA MC 6-shot-in-prompt (0 extra shots), Winogrande 5-shot, GSM8K 8-shot CoT, BBH 3-shot CoT,
  and IFEval (seed 003) 0-shot.

Where lm-eval's task differs from a paper's script (TruthfulQA/ToxiGen judges are GPT/RoBERTa
classifiers in seed 004; lm-eval's toxigen is a classification task), `note` says so. GSM8K and BBH carry
their paper's `Protocol` (instructjax.eval.protocols): a seeded subset of the test problems and the paper's
answer rule, applied to the raw generations. `SUITE_MAX_GEN_TOKS`: seed 004 generates at most 512 new
tokens, greedily, unless a benchmark says otherwise (lm-eval's task defaults elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass

from instructjax.core.errors import ConfigError
from instructjax.eval.protocols import Protocol

CODEX_EVAL = "codex_eval"  # run by instructjax.eval.humaneval, not lm-eval


@dataclass(frozen=True)
class SuiteTask:
    """One benchmark of a suite: lm-eval task (or group) name, few-shot count, reported metric."""

    benchmark: str
    task: str
    num_fewshot: int
    metric: str
    note: str = ""
    protocol: Protocol | None = None  # the paper's subset + answer rule (generative reasoning tasks)


SUITES: dict[str, tuple[SuiteTask, ...]] = {
    "tulu": (
        SuiteTask("MMLU (0-shot)", "mmlu", 0, "acc"),
        SuiteTask("MMLU (5-shot)", "mmlu", 5, "acc"),
        SuiteTask("GSM8K (8-shot CoT)", "gsm8k_cot", 8, "exact_match,strict-match",
                  "200 of the 1,319 test problems drawn with seed 42 (the reference script's draw); "
                  "the last number in the response", Protocol("gsm8k", 200, 42)),
        SuiteTask("BBH (3-shot CoT)", "bbh_cot_fewshot", 3, "exact_match,get-answer",
                  "the official 3-shot CoT prompts are part of each task's prompt; 40 problems per task "
                  "(the reference scripts: the paper gives no number); the answer after 'So the answer is'",
                  Protocol("bbh", 40, 42)),
        SuiteTask("TydiQA (1-shot, gold passage)", "tydiqa_goldp", 1, "f1"),
        # Table 8's other settings: our task YAMLs (instructjax/eval/tasks), open-instruct's prompts
        SuiteTask("GSM8K (8-shot direct)", "tulu_gsm8k_direct", 8, "exact_match,last-number",
                  "the reference's --no_cot prompt: the 8 exemplars with their final answers only; the same 200 "
                  "problems and answer rule as the CoT setting", Protocol("gsm8k", 200, 42)),
        SuiteTask("BBH (3-shot direct)", "tulu_bbh_direct", 3, "exact_match,strip",
                  "the official 3-shot prompts without their reasoning (the reference's --no_cot); the same 40 "
                  "problems per task and answer rule as the CoT setting", Protocol("bbh", 40, 42)),
        SuiteTask("TydiQA (1-shot, closed book)", "tulu_tydiqa_cb", 1, "f1",
                  "the question without its passage, one exemplar per language (the reference's --no_context)"),
        SuiteTask("TruthfulQA", "truthfulqa_gen", 0, "bleu_acc",
                  "seed 004 judges with fine-tuned GPT classifiers; the 6 QA examples are in the prompt"),
        SuiteTask("ToxiGen", "toxigen", 0, "acc",
                  "seed 004 generates from hateful prompts and classifies with RoBERTa; lm-eval scores classification"),
        SuiteTask("Codex-Eval", CODEX_EVAL, 0, "pass@1,pass@10", "HumanEval: pass@1 at T=0.1, pass@10 at T=0.8"),
    ),
    "mixture": (
        SuiteTask("ARC (challenge)", "arc_challenge", 0, "acc"),
        SuiteTask("Winogrande", "winogrande", 0, "acc"),
        SuiteTask("PIQA", "piqa", 0, "acc"),
        SuiteTask("MMLU", "mmlu", 0, "acc"),
        SuiteTask("RACE", "race", 0, "acc"),
        SuiteTask("HellaSwag", "hellaswag", 0, "acc"),
        SuiteTask("HumanEval", CODEX_EVAL, 0, "pass@1,pass@10"),
    ),
    "leaderboard": (
        SuiteTask("ARC", "arc_challenge", 25, "acc_norm"),
        SuiteTask("HellaSwag", "hellaswag", 10, "acc_norm"),
        SuiteTask("MMLU", "mmlu", 5, "acc"),
        SuiteTask("TruthfulQA", "truthfulqa_mc2", 0, "acc", "the task's prompt holds the 6 QA examples"),
        SuiteTask("Winogrande", "winogrande", 5, "acc"),
        SuiteTask("GSM8K", "gsm8k_cot", 8, "exact_match,strict-match",
                  "seed 002 evaluates 200 random test problems (Appendix F)", Protocol("gsm8k", 200, 42)),
        SuiteTask("BBH", "bbh_cot_fewshot", 3, "exact_match,get-answer",
                  "seed 002 samples 50 problems per task (Appendix F)", Protocol("bbh", 50, 42)),
        SuiteTask("IFEval", "ifeval", 0, "prompt_level_strict_acc", "seed 003 also reports loose and inst-level"),
    ),
}


SUITE_MAX_GEN_TOKS: dict[str, int] = {"tulu": 512}


def suite(name: str) -> tuple[SuiteTask, ...]:
    """The suite `name` (see SUITES)."""
    if name not in SUITES:
        raise ConfigError(f"unknown eval suite {name!r}; known: {', '.join(SUITES)}")
    return SUITES[name]


def lm_eval_runs(name: str) -> list[tuple[int, list[str]]]:
    """The suite's lm-eval tasks grouped by shot count: one `simple_evaluate` call per group."""
    groups: dict[int, list[str]] = {}
    for t in suite(name):
        if t.task != CODEX_EVAL and t.task not in groups.get(t.num_fewshot, []):
            groups.setdefault(t.num_fewshot, []).append(t.task)
    return sorted(groups.items())


def protocols(name: str) -> dict[str, Protocol]:
    """{lm-eval task (or group): its Protocol} of the suite's protocol-scored benchmarks."""
    return {t.task: t.protocol for t in suite(name) if t.protocol is not None}
