"""LongForm and ELI5 scored by METEOR, as seed 002 reports them (Tables 3, 7, 8, "following Köksal et al. 2023").

LongForm: its test set (HF `akoksal/LongForm`: `input` is the instruction, `output` the reference). ELI5: the
validation set of the original `eli5` dataset (`title`, `selftext`, `answers` {a_id, text, score}); the
question is the title (with `eli5_selftext`: the title, a blank line and the selftext where it is non-empty) and
the reference is the answer with the highest score ("the reference with the most votes"; the first of equal
scores). The model answers each as its user turn in its chat template, greedily, up to `max_new_tokens`.

METEOR is HF `evaluate`'s `meteor` metric (the one Köksal et al. used): per pair,
`single_meteor_score(word_tokenize(reference), word_tokenize(prediction), alpha=0.9, beta=3, gamma=0.5)` with
nltk's default WordNet, the mean over pairs, reported x100. nltk needs two data packages for it (WordNet and
punkt_tab); they are never downloaded here: a missing one stops the run with one line (`NltkDataMissing`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping

import numpy as np

from instructjax.core import storage
from instructjax.core.errors import ConfigError, DataError, NltkDataMissing
from instructjax.data.sources.rows import numbered_rows
from instructjax.eval.config import LongFormSection
from instructjax.eval.pairwise import write_jsonl

BENCHMARKS = ("LongForm", "ELI5")
METEOR_PARAMS = {"alpha": 0.9, "beta": 3, "gamma": 0.5}  # evaluate's meteor defaults
NLTK_DATA = {"wordnet": "corpora/wordnet", "punkt_tab": "tokenizers/punkt_tab/english/"}


def require_nltk_data() -> None:
    """Stop with one line naming the nltk data packages METEOR needs that nltk cannot find."""
    import nltk

    missing = []
    for name, resource in NLTK_DATA.items():
        try:
            nltk.data.find(resource)
        except LookupError:
            missing.append(f"{name} ({resource.rstrip('/')})")
    if missing:
        raise NltkDataMissing(f"METEOR needs nltk data that is not installed: {', '.join(missing)}; get it with "
                              "`python -m nltk.downloader wordnet punkt_tab` or point NLTK_DATA at a folder "
                              "that holds it")


def _read(path: str, what: str) -> list[tuple[int, dict]]:
    """(row number, row) of a jsonl/json/parquet file (`data.sources.rows`: jsonl lines from 1, parquet rows from
    0) or a CSV (data rows from 1); a row that cannot be read is one DataError naming the file and row."""
    if not storage.path(path).is_file():
        raise ConfigError(f"eval.long_form.{what}: {path} does not exist")
    if path.lower().endswith(".csv"):
        return list(enumerate(csv.DictReader(io.StringIO(storage.path(path).read_text())), 1))

    rows = []
    for number, row in numbered_rows(path):
        if isinstance(row, DataError):
            raise DataError(row.problem, reason=row.reason, file=path, row=number)
        rows.append((number, row))
    return rows


def _text(row: Mapping, key: str, path: str, number: int) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"no {key!r} (a non-empty string)", reason="missing_field", file=path, row=number)
    return value


def read_longform(path: str, limit: int | None = None) -> list[dict]:
    """[{id, instruction, reference}] of LongForm rows (`input`, `output`), in file order."""
    return [{"id": str(number), "instruction": _text(row, "input", path, number),
             "reference": _text(row, "output", path, number)} for number, row in _read(path, "longform")[:limit]]


def best_answer(answers, path: str, number: int) -> str:
    """The text of the highest-scored answer of an ELI5 `answers` {text: [...], score: [...]} (the first of
    equal scores)."""
    texts = answers.get("text") if isinstance(answers, Mapping) else None
    scores = answers.get("score") if isinstance(answers, Mapping) else None
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise DataError("'answers.text' is not a non-empty list of answers", reason="missing_field", file=path,
                        row=number)
    if not isinstance(scores, list) or len(scores) != len(texts) or not all(
            isinstance(s, int | float) and not isinstance(s, bool) for s in scores):
        raise DataError("'answers.score' is not a number for each answer", reason="missing_field", file=path,
                        row=number)
    return texts[max(range(len(texts)), key=lambda i: scores[i])]


def read_eli5(path: str, limit: int | None = None, selftext: bool = False) -> list[dict]:
    """[{id, instruction, reference}] of ELI5 rows: the title (and the selftext, see the module) and the
    highest-scored answer."""
    out = []
    for number, row in _read(path, "eli5")[:limit]:
        question = _text(row, "title", path, number)
        body = row.get("selftext")
        if selftext and isinstance(body, str) and body.strip():
            question = f"{question}\n\n{body}"
        out.append({"id": str(row.get("q_id") or number), "instruction": question,
                    "reference": best_answer(row.get("answers"), path, number)})
    return out


def meteor_scores(predictions: list[str], references: list[str], wordnet=None) -> list[float]:
    """Each pair's METEOR as evaluate's `meteor` computes it (`wordnet`: None for nltk's default)."""
    from nltk.tokenize import word_tokenize
    from nltk.translate.meteor_score import single_meteor_score

    extra = {} if wordnet is None else {"wordnet": wordnet}
    return [single_meteor_score(word_tokenize(r), word_tokenize(p), **METEOR_PARAMS, **extra)
            for p, r in zip(predictions, references, strict=True)]


def meteor(predictions: list[str], references: list[str], wordnet=None) -> float:
    """evaluate's `meteor`: the mean of the pairs' scores, x100."""
    return mean_meteor(meteor_scores(predictions, references, wordnet))


def mean_meteor(scores: list[float]) -> float:
    """The corpus score of the pairs' METEOR scores as evaluate reports it (np.mean), x100."""
    return 100 * float(np.mean(scores))


def run_long_form(generator, section: LongFormSection, data: Mapping[str, str], out: str) -> dict:
    """The part's result: {"LongForm", "ELI5"} METEOR x100 and "n" per benchmark; each answer in
    <out>/long_form_outputs.jsonl ({benchmark, id, instruction, output, reference, meteor})."""
    from instructjax.eval.generate import Sampling

    sets = {"LongForm": read_longform(data["LongForm"], section.limit),
            "ELI5": read_eli5(data["ELI5"], section.limit, section.eli5_selftext)}
    for name, items in sets.items():
        if not items:
            raise ConfigError(f"eval.long_form: {data[name]} holds no {name} rows")
    require_nltk_data()
    sampling = Sampling(section.max_new_tokens, 0.0)
    rows, result = [], {}
    for name, items in sets.items():
        outputs = generator.chat([[{"role": "user", "content": r["instruction"]}] for r in items], sampling)
        scores = meteor_scores(outputs, [r["reference"] for r in items])
        rows += [{"benchmark": name, **r, "output": o, "meteor": s}
                 for r, o, s in zip(items, outputs, scores, strict=True)]
        result[name] = mean_meteor(scores)
    write_jsonl(storage.join(out, "long_form_outputs.jsonl"), rows)
    return {**result, "n": {name: len(items) for name, items in sets.items()}, "metric": "meteor"}
