"""huggingface/evaluate's `exact_match` and `squad` metrics (commit a7dd338386a4fae9a1767e05eb9ef9479513d9e8,
metrics/exact_match/exact_match.py `_compute` and metrics/squad/compute_score.py, unchanged below the line;
Apache License 2.0, Copyright 2020 The HuggingFace Datasets Authors), served as the `evaluate` module
open-instruct's scripts import: `evaluate.load(name).compute(...)`. What `evaluate` adds around them is here
above the line: keyword arguments, and the squad metric's features, which turn a reference's `answers` list of
{text, answer_start} into {text: [...], answer_start: [...]} as `datasets` encodes a Sequence of a dict."""

import re
import string
import sys
from collections import Counter

import numpy as np


class _Metric:
    def __init__(self, name):
        self.name = name

    def compute(self, predictions, references, **kwargs):
        if self.name == "exact_match":
            return _compute(self, predictions, references, **kwargs)
        references = [{"id": r["id"], "answers": {"text": [a["text"] for a in r["answers"]],
                                                  "answer_start": [a.get("answer_start") for a in r["answers"]]}}
                      for r in references]
        return _squad_compute(predictions, references)


def load(name):
    assert name in ("exact_match", "squad"), name
    return _Metric(name)


def _squad_compute(predictions, references):  # metrics/squad/squad.py, Squad._compute
    pred_dict = {prediction["id"]: prediction["prediction_text"] for prediction in predictions}
    dataset = [
        {
            "paragraphs": [
                {
                    "qas": [
                        {
                            "answers": [{"text": answer_text} for answer_text in ref["answers"]["text"]],
                            "id": ref["id"],
                        }
                        for ref in references
                    ]
                }
            ]
        }
    ]
    score = compute_score(dataset=dataset, predictions=pred_dict)
    return score


# ---- metrics/exact_match/exact_match.py -------------------------------------------------------------------
def _compute(
    self,
    predictions,
    references,
    regexes_to_ignore=None,
    ignore_case=False,
    ignore_punctuation=False,
    ignore_numbers=False,
):

    if regexes_to_ignore is not None:
        for s in regexes_to_ignore:
            predictions = np.array([re.sub(s, "", x) for x in predictions])
            references = np.array([re.sub(s, "", x) for x in references])
    else:
        predictions = np.asarray(predictions)
        references = np.asarray(references)

    if ignore_case:
        predictions = np.char.lower(predictions)
        references = np.char.lower(references)

    if ignore_punctuation:
        repl_table = string.punctuation.maketrans("", "", string.punctuation)
        predictions = np.char.translate(predictions, table=repl_table)
        references = np.char.translate(references, table=repl_table)

    if ignore_numbers:
        repl_table = string.digits.maketrans("", "", string.digits)
        predictions = np.char.translate(predictions, table=repl_table)
        references = np.char.translate(references, table=repl_table)

    score_list = predictions == references

    return {"exact_match": np.mean(score_list)}

# ---- metrics/squad/compute_score.py -----------------------------------------------------------------------
def normalize_answer(s):
    """Lower text and remove punctuation, articles and extra whitespace."""

    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    f1 = (2 * precision * recall) / (precision + recall)
    return f1


def exact_match_score(prediction, ground_truth):
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def metric_max_over_ground_truths(metric_fn, prediction, ground_truths):
    scores_for_ground_truths = []
    for ground_truth in ground_truths:
        score = metric_fn(prediction, ground_truth)
        scores_for_ground_truths.append(score)
    return max(scores_for_ground_truths)


def compute_score(dataset, predictions):
    f1 = exact_match = total = 0
    for article in dataset:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                total += 1
                if qa["id"] not in predictions:
                    message = "Unanswered question " + qa["id"] + " will receive score 0."
                    print(message, file=sys.stderr)
                    continue
                ground_truths = list(map(lambda x: x["text"], qa["answers"]))
                prediction = predictions[qa["id"]]
                exact_match += metric_max_over_ground_truths(exact_match_score, prediction, ground_truths)
                f1 += metric_max_over_ground_truths(f1_score, prediction, ground_truths)

    exact_match = 100.0 * exact_match / total
    f1 = 100.0 * f1 / total

    return {"exact_match": exact_match, "f1": f1}


