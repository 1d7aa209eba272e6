# Derived from open-instruct (https://github.com/allenai/open-instruct), Copyright 2024 AllenAI, Apache-2.0.
# Modified for instructjax. See NOTICE.

"""The built-in verifiers: open-instruct's `ground_truth_utils` verifiers (GSM8KVerifier, MathVerifier,
StrictMathVerifier, IFEvalVerifier, IFEvalVerifierOld, StringMatcherVerifier, F1Verifier, PuzzleMatcherVerifier,
FlanVerifier), each `(prediction, ground_truth) -> float`, under the names open-instruct registers them by.
`GROUND_TRUTH_CHECKS`: a verifier's check of a row's ground truth when the row is read (one DataError line)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable

import instructjax.data.verifiers.ifeval as ifevalg
import instructjax.data.verifiers.math_answers as m
from instructjax.data.verifiers.if_checks import CHECKS
from instructjax.data.verifiers.squad import f1_score, normalize_answer

log = logging.getLogger(__name__)


def remove_thinking_section(prediction: str) -> str:
    """The answer after a `</think>`, `<|assistant|>` and `<answer>` tags removed, stripped (open-instruct's)."""
    prediction = prediction.replace("<|assistant|>", "").strip().split("</think>")[-1]
    return prediction.replace("<answer>", "").replace("</answer>", "").strip()


def gsm8k(prediction: str, ground_truth: str) -> float:
    """1 when the last number of the prediction (thousands commas removed, its sign kept) is the ground truth's
    text (case-insensitive); the whole prediction when it holds no number."""
    response = re.sub(r"(\d),(\d)", r"\1\2", prediction)
    numbers = re.findall(r"[-+]?(?:\d*\.\d+|\d+)", response)
    extracted = numbers[-1] if numbers else response
    return float(str(extracted).lower() == str(ground_truth).lower())


def _equal(answers: list[str], ground_truth: str) -> float:
    return float(any(m.sympy_equal(a, ground_truth) or m.hendrycks_equal(a, ground_truth) for a in answers))


def math(prediction: str, ground_truth: str) -> float:
    """1 when an answer extracted from the prediction (its last `\\boxed{}`, Minerva's "Final Answer: ...", else its
    last `$...$`, else the whole text normalised and as it is) equals the ground truth (sympy or Hendrycks)."""
    answers = []
    boxed = m.last_boxed(prediction)
    if boxed is not None and (content := m.unbox(boxed)) is not None:
        answers.append(content)
    minerva = m.normalize_final(m.minerva_answer(prediction))
    if minerva != m.INVALID:
        answers.append(minerva)
    if not answers:
        dollars = [found.start() for found in re.finditer(r"\$", prediction)]
        if len(dollars) > 1:
            answers.append(m.normalize_final(prediction[dollars[-2] + 1 : dollars[-1]]))
    if not answers:
        answers += [m.normalize_final(prediction), prediction]
    return _equal(answers, ground_truth)


def strict_math(prediction: str, ground_truth: str) -> float:
    """`math` on Minerva's "Final Answer: The final answer is X. I hope it is correct." alone (else the whole
    prediction normalised)."""
    minerva = m.normalize_final(m.minerva_answer(prediction))
    return _equal([minerva if minerva != m.INVALID else m.normalize_final(prediction)], ground_truth)


def ifeval_old(prediction: str, ground_truth: str) -> float:
    """Tulu 3's RLVR-IFeval rows: the ground truth is JSON `{"func_name": ..., <its arguments>}` (null ones
    dropped), the check run on the answer after any thinking section."""
    answer = remove_thinking_section(prediction)
    constraint = json.loads(ground_truth) if isinstance(ground_truth, str) else dict(ground_truth)
    if "func_name" not in constraint:
        log.warning("ifeval_old: constraint without 'func_name': %s", constraint)
        return 0.0
    check = CHECKS[constraint.pop("func_name")]
    arguments = {k: v for k, v in constraint.items() if v is not None}
    return float(check(answer, **arguments) if constraint else check(answer))


def ifeval(prediction: str, ground_truth: str) -> float:
    """OLMo 3 / Tulu 3's IF_multi_constraints rows (IFEvalG, `verifiers.ifeval`): the fraction of the ground truth's
    instructions the answer (thinking section removed) follows; 0 for an empty one (or no instructions). A ground
    truth naming an unknown id is a DataError even for an empty answer (IFEvalVerifier scores that 0 unread)."""
    pairs = ifevalg.constraints(ground_truth)
    answer = remove_thinking_section(prediction)
    if not prediction or not answer:
        log.debug("ifeval: empty prediction, scored 0")
        return 0.0
    checks = ifevalg.followed(answer, ground_truth, pairs)
    return sum(checks) / max(len(checks), 1)


def string_matcher(prediction: str, ground_truth: str) -> float:
    """1 when the text between `<answer>` and `</answer>` equals the ground truth once normalised."""
    if "<answer>" not in prediction or "</answer>" not in prediction:
        return 0.0
    answer = prediction.split("<answer>")[-1].split("</answer>")[0]
    return float(normalize_answer(answer) == normalize_answer(ground_truth))


def string_f1(prediction: str, ground_truth: str | list[str]) -> float:
    """The best token F1 of the answer (thinking section removed) against the ground truth (or each of a list)."""
    labels = ground_truth if isinstance(ground_truth, list) else [ground_truth]
    answer = remove_thinking_section(prediction)
    return max(f1_score(answer, str(label)) for label in labels)


def puzzle(prediction: str, ground_truth: str) -> float:
    """1 when the answer (thinking section removed) equals the ground truth once normalised."""
    return float(normalize_answer(remove_thinking_section(prediction)) == normalize_answer(ground_truth))


def flan(prediction: str, ground_truth: str) -> float:
    """1 when the text after the last "The answer is: " equals the ground truth once normalised."""
    return float(normalize_answer(prediction.split("The answer is: ")[-1].strip()) == normalize_answer(ground_truth))


VERIFIERS: dict[str, Callable[[str, str], float]] = {
    "gsm8k": gsm8k, "math": math, "strict_math": strict_math, "ifeval": ifeval, "ifeval_old": ifeval_old,
    "string_matcher": string_matcher, "string_f1": string_f1, "puzzle": puzzle, "flan": flan,
}
GROUND_TRUTH_CHECKS: dict[str, Callable[[str], None]] = {"ifeval": ifevalg.check_ground_truth}
