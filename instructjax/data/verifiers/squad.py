# Derived from Hugging Face evaluate (https://github.com/huggingface/evaluate), Copyright 2020 The HuggingFace Evaluate Authors, Apache-2.0.
# Modified for instructjax. See NOTICE.

"""SQuAD v1.1's answer normalisation, token F1 and exact match (Hugging Face `evaluate`'s `squad` metric, here so
nothing is downloaded): the one copy, read by the verifiers (`string_f1`, `string_matcher`, `puzzle`, `flan`:
data/verifiers/builtin.py) and by the Tulu suite's TydiQA (eval/tulu/tydiqa.py)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation and English articles removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def f1_score(prediction: str, ground_truth: str) -> float:
    """SQuAD's token F1 of the normalised strings."""
    predicted, truth = normalize_answer(prediction).split(), normalize_answer(ground_truth).split()
    same = sum((Counter(predicted) & Counter(truth)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(predicted), same / len(truth)
    return 2 * precision * recall / (precision + recall)


def squad(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """SQuAD v1.1's exact match and F1 (0-100), each the best over a question's answers, averaged."""
    if not predictions:
        return {"exact_match": float("nan"), "f1": float("nan")}
    pairs = list(zip(predictions, answers, strict=True))
    em = sum(max(float(normalize_answer(p) == normalize_answer(a)) for a in truths) for p, truths in pairs)
    f1 = sum(max(f1_score(p, a) for a in truths) for p, truths in pairs)
    return {"exact_match": 100.0 * em / len(predictions), "f1": 100.0 * f1 / len(predictions)}
