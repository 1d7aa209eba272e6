"""The papers' lm-eval suites as data: lm-eval task names, shot counts, the metric each paper reports.

- "tulu" (seed 004, Tables 3 and 8) is not lm-eval's: open-instruct's own scripts, eval/tulu.
- "mixture" (seed 000, Table 1): zero-shot ARC-Challenge, Winogrande, PIQA, MMLU, RACE, HellaSwag,
  plus HumanEval pass@1/pass@10.
- "leaderboard" (seeds 002/003, Open LLM Leaderboard): ARC 25-shot, HellaSwag 10-shot, MMLU 5-shot,
  TruthfulQA MC 6-shot-in-prompt (0 extra shots), Winogrande 5-shot, GSM8K 8-shot CoT, BBH 3-shot CoT,
  and IFEval (seed 003) 0-shot.

Where lm-eval's task differs from a paper's setting, `note` says so. GSM8K and BBH carry their paper's
`Protocol` (instructjax.eval.protocols): a seeded subset of the test problems and the paper's answer rule,
applied to the raw generations.
"""

from __future__ import annotations

from dataclasses import dataclass

from instructjax.core.errors import ConfigError
from instructjax.eval.protocols import Protocol

CODEX_EVAL = "codex_eval"  # run by instructjax.eval.tulu.codex (HumanEval's programs by eval.humaneval), not lm-eval


@dataclass(frozen=True)
class SuiteTask:
    """One benchmark of a suite: lm-eval task (or group) name, few-shot count, reported metric."""

    benchmark: str
    task: str
    num_fewshot: int
    metric: str
    note: str = ""
    protocol: Protocol | None = None  # the paper's subset + answer rule (generative reasoning tasks)
    also: tuple[str, ...] = ()  # the task's other metrics the paper reports (lm-eval writes them beside `metric`)


SUITES: dict[str, tuple[SuiteTask, ...]] = {
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
        SuiteTask("IFEval", "ifeval", 0, "prompt_level_strict_acc", "seed 003 also reports loose and inst-level",
                  also=("inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")),
    ),
}


TULU = "tulu"  # open-instruct's scripts (eval/tulu), not lm-eval's tasks
SUITE_NAMES = (TULU, *SUITES)


def check_suite(name: str) -> str:
    """`name`, or a one-line ConfigError when no suite has it."""
    if name != TULU and name not in SUITES:
        raise ConfigError(f"unknown eval suite {name!r}; known: {', '.join(SUITE_NAMES)}")
    return name


def suite(name: str) -> tuple[SuiteTask, ...]:
    """The lm-eval suite `name` (see SUITES)."""
    if check_suite(name) == TULU:
        raise ConfigError("the tulu suite is open-instruct's scripts (instructjax.eval.tulu), not lm-eval tasks")
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
