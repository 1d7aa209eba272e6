"""The papers' protocols for the generative reasoning benchmarks: which test problems, how an answer is read.

- GSM8K (seed 004 Appendix E, seed 002 Appendix F): 8-shot chain-of-thought; the answer is the last number
  in the response; 200 test problems drawn at random from the 1,319. The draw is
  `random.Random(seed).sample(range(n), k)` with seed 42, the same indices as the Tulu reference script
  (`random.seed(42); random.sample(test_data, 200)`), so the same 200 problems.
- BBH (same sections): 3-shot chain-of-thought; the answer is what follows "the answer is" up to the end
  of that sentence (the whole response when the phrase is missing); `per_task` problems of each of the 27
  task files drawn at random: 40 in the Tulu reference scripts (seed 004 gives no number), 50 in seed 002.
  Each task has its own generator, seeded by (seed, task name without the lm-eval prefix), so a task's
  subset depends on neither the order nor the set of the other tasks, and CoT and direct variants of a
  task get the same problems.

lm-eval generates the responses (`samples=` picks the documents, `log_samples` keeps the raw text); we
score the raw text here, so the answer rule is the paper's, not the task YAML's filter.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

PROTOCOL_KINDS = ("gsm8k", "bbh")
GSM8K_TEST_SIZE = 1319


@dataclass(frozen=True)
class Protocol:
    """`kind` (gsm8k | bbh): its answer rule; `per_task` documents of each leaf task drawn with `seed`
    (None: all of them)."""

    kind: str
    per_task: int | None
    seed: int = 42

    def __post_init__(self):
        if self.kind not in PROTOCOL_KINDS:
            raise ValueError(f"protocol kind must be one of {PROTOCOL_KINDS}, got {self.kind!r}")
        if self.per_task is not None and self.per_task < 1:
            raise ValueError(f"protocol per_task must be >= 1, got {self.per_task}")


# ---- which documents ------------------------------------------------------------------------------------


def subset(n_docs: int, k: int | None, seed: int, key: str = "") -> list[int]:
    """`k` distinct document indices of `n_docs`, drawn by `random.Random(seed)` (or by a generator seeded
    with `f"{seed}/{key}"` when `key` names a task), in the order drawn; all of them when k is None or >= n."""
    if k is None or k >= n_docs:
        return list(range(n_docs))
    rng = random.Random(f"{seed}/{key}" if key else seed)
    return rng.sample(range(n_docs), k)


def task_key(leaf: str, group: str) -> str:
    """The task's name without its lm-eval variant prefix: "bbh_cot_fewshot_snarks" in "bbh_cot_fewshot" ->
    "snarks" (its subset is then the same in every variant)."""
    return leaf[len(group) + 1:] if leaf.startswith(group + "_") else leaf


def protocol_samples(protocol: Protocol, group: str, sizes: Mapping[str, int]) -> dict[str, list[int]]:
    """lm-eval `samples=` for one suite task: {leaf task: sorted document ids}. `sizes` holds each leaf's
    document count; a single task (GSM8K) is drawn with the plain seed, a group's leaves (BBH) per task."""
    if protocol.kind == "gsm8k" or list(sizes) == [group]:
        return {leaf: sorted(subset(n, protocol.per_task, protocol.seed)) for leaf, n in sizes.items()}
    return {leaf: sorted(subset(n, protocol.per_task, protocol.seed, task_key(leaf, group)))
            for leaf, n in sizes.items()}


# ---- how an answer is read ----------------------------------------------------------------------------------

# a number: optional minus (only where it cannot be a subtraction: not right after a word or number),
# optional "$", digits with thousands separators or plain, optional decimals
_NUMBER = re.compile(r"(?:(?<![\w)\]])([-−]))?\$?((?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|\.\d+)")


def canonical_number(text: str) -> str | None:
    """"1,000.50" -> "1000.5", "-3" -> "-3", "18.0" -> "18"; None when `text` is not a number."""
    text = text.strip().replace(",", "").replace("$", "").replace("−", "-").rstrip(".")
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == 0:
        return "0"
    out = format(value.normalize(), "f")
    return out.rstrip("0").rstrip(".") if "." in out else out


def gsm8k_answer(response: str) -> str | None:
    """The last number in the response, canonical (see `canonical_number`); None when there is none."""
    found = _NUMBER.findall(response)
    if not found:
        return None
    sign, digits = found[-1]
    return canonical_number(("-" if sign else "") + digits)


def gsm8k_target(doc: Mapping) -> str:
    """The reference answer of a GSM8K document: the number after "####"."""
    answer = canonical_number(str(doc["answer"]).split("####")[-1])
    if answer is None:
        raise ValueError(f"GSM8K answer {doc['answer']!r} does not end in a number")
    return answer


_THE_ANSWER_IS = re.compile(r"the answer is", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.(?=\s|$)|\n")


def bbh_answer(response: str) -> str:
    """What follows the first "the answer is" (as in "So the answer is (A).") up to the end of that
    sentence (a period before a space or the end, or a line break); the whole response when the phrase is
    missing."""
    m = _THE_ANSWER_IS.search(response)
    if not m:
        return response.strip()
    rest = response[m.end():]
    end = _SENTENCE_END.search(rest)
    return (rest[: end.start()] if end else rest).strip()


_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_text(text: str) -> str:
    """Lower case, no punctuation, single spaces: "(A)" and "a" compare equal, as in the reference
    scripts' exact match (ignore_case, ignore_punctuation)."""
    return " ".join(text.lower().translate(_PUNCT).split())


def is_correct(kind: str, response: str, doc: Mapping) -> bool:
    """Whether the response's answer (by `kind`'s rule) is the document's."""
    if kind == "gsm8k":
        answer = gsm8k_answer(response)
        return answer is not None and answer == gsm8k_target(doc)
    return normalize_text(bbh_answer(response)) == normalize_text(str(doc["target"]))


# ---- scoring lm-eval's logged samples ---------------------------------------------------------------------


def _response(sample: Mapping) -> str:
    resps = sample["resps"][0]
    return str(resps[0] if isinstance(resps, (list, tuple)) else resps)


def score_samples(kind: str, samples: Iterable[Mapping]) -> dict[str, float]:
    """Exact match (0-100) over lm-eval logged samples of one leaf task: one per document (a task with
    several filters logs each document once per filter; the raw response is the same)."""
    seen: dict[int, bool] = {}
    for sample in samples:
        seen.setdefault(int(sample["doc_id"]), is_correct(kind, _response(sample), sample["doc"]))
    n = len(seen)
    return {"exact_match": 100 * sum(seen.values()) / n if n else 0.0, "n": n}


def score_suite_task(kind: str, leaves: Sequence[str], samples: Mapping[str, Sequence[Mapping]]) -> dict:
    """Per-leaf scores and their unweighted mean (BBH: the average over tasks, as the reference scripts)."""
    per_leaf = {leaf: score_samples(kind, samples.get(leaf, ())) for leaf in leaves}
    scored = [s["exact_match"] for s in per_leaf.values() if s["n"]]
    out: dict = {"exact_match": sum(scored) / len(scored) if scored else 0.0,
                 "n": sum(int(s["n"]) for s in per_leaf.values())}
    if len(per_leaf) > 1:
        out["tasks"] = per_leaf
    return out
