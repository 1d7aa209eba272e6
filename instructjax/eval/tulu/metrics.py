# Derived from Hugging Face evaluate (https://github.com/huggingface/evaluate), Copyright 2020 The HuggingFace Evaluate Authors, Apache-2.0;
# Derived from open-instruct (https://github.com/allenai/open-instruct), Copyright 2024 AllenAI, Apache-2.0.
# Modified for instructjax. See NOTICE.

"""The two metrics open-instruct's scripts load from Hugging Face `evaluate`, here so nothing is downloaded:
`exact_match` with ignore_case and ignore_punctuation (GSM, BBH), and SQuAD v1.1's F1 and exact match (TydiQA:
`squad`, the verifiers' own copy, data/verifiers/squad.py)."""

from __future__ import annotations

import string
from collections.abc import Sequence

from instructjax.data.verifiers.squad import squad

__all__ = ["exact_match", "squad"]

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
