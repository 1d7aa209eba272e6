# Derived from open-instruct (https://github.com/allenai/open-instruct), Copyright 2024 AllenAI, Apache-2.0.
# Modified for instructjax. See NOTICE.

"""Helpers of our lm-eval task YAMLs (this folder).

BBH Direct (seed 004, Table 8): open-instruct's `eval/bbh/run_eval.py --no_cot` turns each official 3-shot CoT
prompt (BIG-Bench-Hard `cot-prompts/<task>.txt`) into a direct one by keeping, of each exemplar, the question
and what follows its last "So the answer is" (with the sentence's period: "A: (A)."). lm-eval ships the same
official exemplars in `tasks/bbh/cot_fewshot/<task>.yaml` (question as `input`, reasoning and answer as
`target`); `bbh_<task>` returns them with the reasoning cut off by that rule, so the exemplars are read from
the installed lm-eval, not copied here.
"""

from __future__ import annotations

import functools
from pathlib import Path

import yaml

BBH_TASKS = (
    "boolean_expressions", "causal_judgement", "date_understanding", "disambiguation_qa", "dyck_languages",
    "formal_fallacies", "geometric_shapes", "hyperbaton", "logical_deduction_five_objects",
    "logical_deduction_seven_objects", "logical_deduction_three_objects", "movie_recommendation",
    "multistep_arithmetic_two", "navigate", "object_counting", "penguins_in_a_table",
    "reasoning_about_colored_objects", "ruin_names", "salient_translation_error_detection", "snarks",
    "sports_understanding", "temporal_sequences", "tracking_shuffled_objects_five_objects",
    "tracking_shuffled_objects_seven_objects", "tracking_shuffled_objects_three_objects", "web_of_lies",
    "word_sorting",
)
ANSWER_MARK = "So the answer is"


@functools.cache
def bbh_cot_config(task: str) -> dict:
    """lm-eval's `bbh_cot_fewshot_<task>` YAML (its own keys: description, fewshot_config, ...)."""
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / "bbh" / "cot_fewshot" / f"{task}.yaml"
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def direct_answer(cot_target: str) -> str:
    """The answer of a CoT exemplar as open-instruct's --no_cot keeps it: what follows the last "So the answer
    is", stripped (the sentence's period stays: "(A).")."""
    if ANSWER_MARK not in cot_target:
        raise ValueError(f"BBH CoT exemplar without {ANSWER_MARK!r}: {cot_target[-80:]!r}")
    return cot_target.split(ANSWER_MARK)[-1].strip()


def bbh_direct_samples(task: str) -> list[dict]:
    """The 3 official exemplars of a BBH task, their answers without the reasoning (lm-eval `samples`)."""
    samples = bbh_cot_config(task)["fewshot_config"]["samples"]
    return [{"input": s["input"], "target": direct_answer(s["target"])} for s in samples]


for _task in BBH_TASKS:  # `samples: !function utils.bbh_<task>` in tulu_bbh_direct_<task>.yaml
    globals()[f"bbh_{_task}"] = functools.partial(bbh_direct_samples, _task)
