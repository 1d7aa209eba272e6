# Derived from open-instruct (https://github.com/allenai/open-instruct), Copyright 2024 AllenAI, Apache-2.0.
# Modified for instructjax. See NOTICE.

"""MMLU as open-instruct's eval/mmlu/run_eval.py (e44fcf5): every test question of every subject, `ntrain` dev
questions before it (fewer while the prompt is over 2048 tokens), the answer read from the next token's
probabilities of "A", "B", "C", "D" after "Answer:" (chat format: after "The answer is:"); accuracy over all
questions."""

from __future__ import annotations

from collections.abc import Sequence

import instructjax.eval.tulu.files as files
from instructjax.eval.tulu.request import Request, Turn, format_prompt

CHOICES = ("A", "B", "C", "D")
MAX_PROMPT_TOKENS = 2048


def _subject(subject: str) -> str:
    return "".join(" " + word for word in subject.split("_"))  # " abstract algebra": a leading space, as the script


def _question(df, i: int, with_answer: bool = True) -> str:
    prompt = df.iloc[i, 0]
    k = df.shape[1] - 2
    for j in range(k):
        prompt += f"\n{CHOICES[j]}. {df.iloc[i, j + 1]}"
    prompt += "\nAnswer:"
    if with_answer:
        prompt += f" {df.iloc[i, k + 1]}\n\n"
    return prompt


def _shots(dev, subject: str, k: int) -> str:
    head = f"The following are multiple choice questions (with answers) about {_subject(subject)}.\n\n"
    return head + "".join(_question(dev, i) for i in range(k))


def _subjects(data_dir: str):
    """(subject, dev table, test table) in subject order: the data_dir's CSVs (read as the script reads them), else
    the hub's copy in the same columns (question, the four choices, the answer letter)."""
    if files.local(data_dir, "mmlu"):
        for subject in files.names(data_dir, "mmlu/test", "_test.csv"):
            yield (subject, files.read_csv(files.need(data_dir, "mmlu", "dev", f"{subject}_dev.csv")),
                   files.read_csv(files.need(data_dir, "mmlu", "test", f"{subject}_test.csv")))
        return
    import pandas as pd

    tables: dict[str, dict[str, list]] = {}
    for split in ("dev", "test"):
        for row in files.hub_rows("mmlu", split, data_dir):
            tables.setdefault(row["subject"], {"dev": [], "test": []})[split].append(
                [row["question"], *row["choices"], CHOICES[int(row["answer"])]])
    for subject in sorted(tables):
        yield subject, pd.DataFrame(tables[subject]["dev"]), pd.DataFrame(tables[subject]["test"])


def requests(data_dir: str, hf_tokenizer, chat_format: str, *, ntrain: int, protocol: str) -> list[Request]:
    """One log-likelihood request per test question."""
    out = []
    for subject, dev, test in _subjects(data_dir):
        dev = dev[:ntrain]
        for i in range(test.shape[0]):
            k, end = min(ntrain, dev.shape[0]), _question(test, i, with_answer=False)  # fewer dev rows: all
            prompt = _shots(dev, subject, k) + end
            while k > 0 and len(hf_tokenizer(prompt, add_special_tokens=False)["input_ids"]) > MAX_PROMPT_TOKENS:
                k -= 1
                prompt = _shots(dev, subject, k) + end
            turn = Turn(user=prompt.strip(), reply_start="The answer is:", raw=prompt)
            out.append(Request(protocol, f"{subject}/{i}", format_prompt(turn, chat_format, hf_tokenizer),
                               continuations=CHOICES, target=str(test.iloc[i, -1]), group=subject))
    return out


def candidate_ids(hf_tokenizer) -> list[int]:
    """The id each choice letter starts with (the script's `tokenizer.encode(choice)[0]`, no special tokens)."""
    return [hf_tokenizer.encode(c, add_special_tokens=False)[0] for c in CHOICES]


def score(reqs: Sequence[Request], picked: Sequence[int]) -> dict:
    """Accuracy (a fraction) over all questions, and per subject; `picked`: the index of the likeliest choice."""
    correct = [CHOICES[p] == r.target for r, p in zip(reqs, picked, strict=True)]
    subjects: dict[str, list[bool]] = {}
    for r, c in zip(reqs, correct, strict=True):
        subjects.setdefault(r.group, []).append(c)
    return {"acc": sum(correct) / len(correct) if correct else float("nan"), "n": len(correct),
            "subjects": {s: sum(v) / len(v) for s, v in subjects.items()}}
