"""The two metrics open-instruct's scripts load from Hugging Face `evaluate`, here so nothing is downloaded:
`exact_match` with ignore_case and ignore_punctuation (GSM, BBH), and SQuAD v1.1's F1 and exact match (TydiQA)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = str.maketrans("", "", string.punctuation)


def exact_match(predictions: Sequence[str], references: Sequence[str]) -> float:
    """The fraction of predictions equal to their reference once lower-cased and stripped of ASCII punctuation
    (`evaluate`'s exact_match, ignore_case=True, ignore_punctuation=True: a fraction, not a percentage)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return float("nan")
    same = [p.lower().translate(_PUNCTUATION) == r.lower().translate(_PUNCTUATION)
            for p, r in zip(predictions, references, strict=True)]
    return sum(same) / len(same)


def _normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no English articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _f1(prediction: str, truth: str) -> float:
    predicted, true = _normalize(prediction).split(), _normalize(truth).split()
    common = sum((Counter(predicted) & Counter(true)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(true)
    return 2 * precision * recall / (precision + recall)


def squad(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """SQuAD v1.1's exact match and F1 (0-100), each the best over a question's answers, averaged."""
    if not predictions:
        return {"exact_match": float("nan"), "f1": float("nan")}
    em = sum(max(float(_normalize(p) == _normalize(a)) for a in truths) for p, truths in zip(predictions, answers,
                                                                                              strict=True))
    f1 = sum(max(_f1(p, a) for a in truths) for p, truths in zip(predictions, answers, strict=True))
    return {"exact_match": 100.0 * em / len(predictions), "f1": 100.0 * f1 / len(predictions)}
