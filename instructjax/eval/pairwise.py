# Derived from FastChat (https://github.com/lm-sys/FastChat), the FastChat authors (LMSYS), Apache-2.0.
# Modified for instructjax. See NOTICE.

"""LLM-as-judge evaluation as files: write judge requests, read the judge's replies, compute the scores.

The judge is an outside API; requests and replies are JSONL (`{"id", "system"?, "prompt", ...}` out,
`{"id", "reply"}` back), so runs are reproducible from recorded replies (eval/judge.py asks an endpoint
directly). The pairwise prompt is the papers' own (eval/judge_prompts.py); FLASK's is in our words. The
protocol of each paper (`JUDGE_PROTOCOLS`: scale, orders, tie rule, the evaluated model's generation length) is
the paper's:

- pairwise (seeds 002/003): each instruction is judged twice with the two responses swapped; the judge
  gives each response a 1-10 score on its first line. A system wins (loses) an instruction only when
  it is preferred (dispreferred) in both orders, otherwise it is a tie (equal scores in a pass prefer
  neither). Winning score = (Win - Lose) / N + 1, in [0, 2]; above 1 means A is better.
- alpacaeval (seed 004): the generation length of AlpacaEval's outputs (up to 8192 new tokens, greedily, with no
  stop sequence but the model's end of turn); the judging is the `alpaca_eval` package's (eval/alpacaeval.py).
- flask (seed 000 section 4.2, appendix A): one response rated 1-5 on each skill the instruction is
  annotated with, among eight; a skill's score is the mean over the instructions annotated with it, scaled
  to [0, 100] as mean / 5 * 100 (every value in Table 2 is 20 x a two-decimal mean; (mean - 1) / 4 * 100
  could not give 55.4); the average is over the eight skills.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from instructjax.core import storage
from instructjax.core.errors import ConfigError, DataError
from instructjax.core.user_paths import expect_file
from instructjax.eval.judge_prompts import JudgePrompt, pairwise_prompt


@dataclass(frozen=True)
class JudgeProtocol:
    """One paper's judging protocol (see the module docstring)."""

    mode: str
    papers: str
    scale: tuple[int, int] | None  # the judge's rating scale; None: it names a preference
    orders: str  # "both": judged twice, swapped; "random": one seeded random order; "single": one response
    tie_rule: str
    max_new_tokens: int  # the evaluated model's outputs (greedy)
    paper_says_length: bool  # False: the paper gives no generation length (ours)
    report: str


JUDGE_PROTOCOLS: dict[str, JudgeProtocol] = {
    "pairwise": JudgeProtocol(
        "pairwise", "seed 002 section 3 (Figure 4), seed 003 appendix B", (1, 10), "both",
        "win/lose only when preferred/dispreferred in both orders; anything else (incl. equal scores) a tie",
        2048, False, "winning score (Win - Lose) / N + 1"),
    "alpacaeval": JudgeProtocol(
        "alpacaeval", "seed 004 section 4 and appendix E", None, "random",
        "a tie counts half (AlpacaEval's win rate)", 8192, True, "win rate (%) against Davinci-003"),
    "flask": JudgeProtocol(
        "flask", "seed 000 section 4.2, Table 2, appendix A", (1, 5), "single",
        "no ties (absolute ratings)", 2048, False,
        "per-skill mean / 5 * 100 and its average over the eight skills"),
}

FLASK_SKILLS = ("logical correctness", "factuality", "commonsense understanding", "comprehension",
                "completeness", "insightfulness", "readability", "conciseness")

FLASK_PROMPT = """You rate an AI assistant's response on specific skills, each from 1 (poor) to 5 (excellent).

[Instruction]
{instruction}

[Response]
{response}
{reference}
Skills to rate: {skills}.
Write one line per skill as "<skill>: <score>", then a short justification."""


def read_jsonl(path: str) -> list[dict]:
    """Rows of a JSONL file (local or in a bucket), or a one-line DataError naming the bad line."""
    rows = []
    expect_file(path)  # a directory: one line, not IsADirectoryError
    try:
        text = storage.path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON ({e.msg})", reason="malformed_json", file=path, row=i) from None
    return rows


def write_jsonl(path: str, rows: Iterable[Mapping]) -> None:
    """One JSON object a line, the file written whole (`storage.write_text`)."""
    storage.write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def _by_id(rows: Sequence[Mapping], what: str) -> dict[str, Mapping]:
    out = {}
    for row in rows:
        if "id" not in row:
            raise DataError(f"{what} row without an 'id'", reason="missing_field")
        out[str(row["id"])] = row
    return out


# ---- requests ---------------------------------------------------------------------------------------


def pairwise_requests(a: Sequence[Mapping], b: Sequence[Mapping], prompt: JudgePrompt | None = None) -> list[dict]:
    """Two requests per shared id ({"id", "instruction", "output"} rows): order "ab" and order "ba", in the
    judge prompt `prompt` (None: seed 002's Figure 4)."""
    prompt = prompt or pairwise_prompt(None)
    a_rows, b_rows = _by_id(a, "system A"), _by_id(b, "system B")
    missing = sorted(set(a_rows) ^ set(b_rows))
    if missing:
        raise DataError(f"id {missing[0]!r} is in only one of the two systems' outputs", reason="missing_field")
    requests = []
    for item, row in a_rows.items():
        outputs = {"a": row["output"], "b": b_rows[item]["output"]}
        for order in ("ab", "ba"):
            system, user = prompt.messages(question=row["instruction"], answer_1=outputs[order[0]],
                                           answer_2=outputs[order[1]])
            requests.append({"id": f"{item}|{order}", "item": item, "order": order, "system": system,
                             "prompt": user})
    return requests


def flask_subset(rows: Sequence[Mapping]) -> list[Mapping]:
    """Seed 000's FLASK set: the instructions whose annotated skills are all among the eight kept
    (appendix A: instructions annotated with any other skill are filtered out; 1,180 remain)."""
    return [row for row in rows if all(str(s).lower() in FLASK_SKILLS for s in row["skills"])]


def flask_requests(rows: Sequence[Mapping]) -> list[dict]:
    """One request per {"id", "instruction", "output", "skills": [...], "reference"?} row."""
    requests = []
    for row in rows:
        skills = [s.lower() for s in row["skills"]]
        unknown = [s for s in skills if s not in FLASK_SKILLS]
        if unknown:
            raise DataError(f"unknown FLASK skill {unknown[0]!r}; the eight are {', '.join(FLASK_SKILLS)}",
                            reason="wrong_type", row=row.get("id"))
        reference = f"\n[Reference answer]\n{row['reference']}\n" if row.get("reference") else ""
        prompt = FLASK_PROMPT.format(instruction=row["instruction"], response=row["output"], reference=reference,
                                     skills=", ".join(skills))
        requests.append({"id": str(row["id"]), "item": str(row["id"]), "skills": skills, "prompt": prompt})
    return requests


# ---- replies -> scores ---------------------------------------------------------------------------------


def _replies(requests: Sequence[Mapping], replies: Sequence[Mapping]) -> dict[str, str]:
    by_id = {str(r["id"]): str(r["reply"]) for r in replies}
    missing = [r["id"] for r in requests if r["id"] not in by_id]
    if missing:
        raise DataError(f"no judge reply for request {missing[0]!r} ({len(missing)} missing)", reason="missing_field")
    return by_id


def parse_score_pair(reply: str, request_id: str = "") -> tuple[float, float]:
    """The two scores of the reply's first line, read as FastChat's `eval_gpt_review.parse_score` reads them (the
    rule AlpaGasus and seed 002 follow): the line up to the first newline, commas made spaces, split at each space,
    exactly two numbers ("8 6", "8,6"; not "8, 6", "Scores: 8 6" or "Assistant 1: 8", which it cannot read). Ours
    besides: both on the 1-10 scale (FastChat compares any two numbers); a reply it cannot read is an error here,
    a tie in its order for score_pairwise, as FastChat's [-1, -1] is."""
    line = reply.split("\n")[0]
    fields = line.replace(",", " ").split(" ")
    try:
        if len(fields) != 2:
            raise ValueError
        numbers = [float(fields[0]), float(fields[1])]
    except ValueError:
        raise DataError(f"judge reply's first line {line!r} is not two scores separated by a space",
                        reason="wrong_type", row=request_id) from None
    low, high = JUDGE_PROTOCOLS["pairwise"].scale
    if not all(low <= n <= high for n in numbers):
        raise DataError(f"judge reply's scores {numbers} are outside the {low}-{high} scale", reason="wrong_type",
                        row=request_id)
    return numbers[0], numbers[1]


def reads_score_pair(request: Mapping, reply: str) -> bool:
    """Whether `parse_score_pair` reads the reply (what the judge's cache keeps)."""
    try:
        parse_score_pair(reply)
    except DataError:
        return False
    return True


@dataclass(frozen=True)
class PairwiseResult:
    win: int
    tie: int
    lose: int
    unparsed: int = 0  # replies whose first line is not two scores on the scale (parse_score_pair): ties in their order

    @property
    def n(self) -> int:
        return self.win + self.tie + self.lose

    @property
    def winning_score(self) -> float:
        """(Win - Lose) / N + 1."""
        return (self.win - self.lose) / self.n + 1


def score_pairwise(requests: Sequence[Mapping], replies: Sequence[Mapping]) -> PairwiseResult:
    """Win/tie/lose of system A: a win (loss) needs A preferred (dispreferred) in both orders. A reply that holds no
    two scores is a tie in its order, as the reference code reads it (FastChat's `eval_gpt_review.parse_score`, which
    AlpaGasus and seed 002 use, scores it [-1, -1]), and counted in `unparsed`."""
    texts = _replies(requests, replies)
    prefs: dict[str, dict[str, int]] = {}  # item -> order -> +1 (A preferred), -1, 0
    unparsed, items = 0, {}
    for req in requests:
        items.setdefault(req["item"], set()).add(req["order"])
        try:
            s1, s2 = parse_score_pair(texts[req["id"]], req["id"])
        except DataError:
            unparsed += 1
            s1 = s2 = -1.0
        a, b = (s1, s2) if req["order"] == "ab" else (s2, s1)
        prefs.setdefault(req["item"], {})[req["order"]] = (a > b) - (a < b)
    win = tie = lose = 0
    for item, orders in items.items():
        if orders != {"ab", "ba"}:
            raise DataError(f"item {item!r} was not judged in both orders", reason="missing_field")
    for p in prefs.values():
        if p["ab"] == p["ba"] == 1:
            win += 1
        elif p["ab"] == p["ba"] == -1:
            lose += 1
        else:
            tie += 1
    return PairwiseResult(win, tie, lose, unparsed)


def flask_scale(mean: float) -> float:
    """A 1-5 mean rating on seed 000's [0, 100] scale: mean / 5 * 100."""
    return mean / 5 * 100


def flask_ratings(reply: str, skills: Sequence[str]) -> dict[str, float]:
    """The 1-5 rating the reply gives each of `skills` ("skill: 4" lines; the first of each)."""
    found: dict[str, float] = {}
    for line in reply.splitlines():
        m = re.match(r"\s*[-*]?\s*([a-z ]+?)\s*:\s*([1-5](?:\.\d+)?)\b", line.lower())
        if m and m.group(1) in skills:
            found.setdefault(m.group(1), float(m.group(2)))
    return found


def reads_flask(request: Mapping, reply: str) -> bool:
    """Whether the reply rates every skill of the request (what the judge's cache keeps)."""
    return len(flask_ratings(reply, request["skills"])) == len(request["skills"])


def score_flask(requests: Sequence[Mapping], replies: Sequence[Mapping], *,
                round_like_table: bool = False) -> dict[str, float]:
    """Per-skill mean rating scaled to [0, 100] (`flask_scale`), plus the average over skills (the mean of
    the skills' 1-5 means, scaled). `round_like_table`: round each 1-5 mean to two decimals before scaling,
    as seed 000's Table 2 values imply."""
    texts = _replies(requests, replies)
    ratings: dict[str, list[float]] = {}
    unparsed = 0
    for req in requests:
        found = flask_ratings(texts[req["id"]], req["skills"])
        if any(s not in found for s in req["skills"]):  # counted, left out
            unparsed += 1
            continue
        for skill, score in found.items():
            ratings.setdefault(skill, []).append(score)
    if not ratings:
        raise DataError(f"no judge reply rates every skill it was asked to ({unparsed} unparsed)",
                        reason="missing_field")
    means = {skill: sum(v) / len(v) for skill, v in ratings.items()}
    average = sum(means.values()) / len(means)
    if round_like_table:
        means = {skill: round(m, 2) for skill, m in means.items()}
        average = round(sum(means.values()) / len(means), 2)
    out = {skill: flask_scale(m) for skill, m in means.items()}
    out["average"] = flask_scale(average)
    out["unparsed"] = unparsed
    return out
