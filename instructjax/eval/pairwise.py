"""LLM-as-judge evaluation as files: write judge requests, read the judge's replies, compute the scores.

The judge is an outside API; requests and replies are JSONL (`{"id", "prompt", ...}` out,
`{"id", "reply"}` back), so runs are reproducible from recorded replies. Three modes:

- pairwise (seeds 002/003): each instruction is judged twice with the two responses swapped; the judge
  gives each response a 1-10 score on its first line. A system wins (loses) an instruction only when
  it is preferred (dispreferred) in both orders, otherwise it is a tie. Winning score =
  (Win - Lose) / N + 1, in [0, 2]; above 1 means A is better.
- alpacaeval (seed 004): model output vs a reference output (e.g. Davinci-003), in a random order per
  instruction (fixed seed); the judge names the better output ("1", "2" or "tie"); win rate =
  (wins + ties / 2) / N, in percent.
- flask (seed 000 appendix A): one response rated 1-5 on each skill the instruction is annotated
  with, among eight; per-skill means scaled to 0-100 by (score - 1) / 4 * 100.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from instructjax.core.errors import DataError

FLASK_SKILLS = ("logical correctness", "factuality", "commonsense understanding", "comprehension",
                "completeness", "insightfulness", "readability", "conciseness")

PAIRWISE_PROMPT = """You are a careful, impartial judge of AI assistants.

[Instruction]
{instruction}

[Response of Assistant 1]
{first}

[Response of Assistant 2]
{second}

Rate how helpful, relevant, accurate and detailed each response is, on a scale of 1 to 10 (higher is better).
On the first line write only the two scores, Assistant 1's then Assistant 2's, separated by a space.
Then explain your ratings, making sure the order in which the responses were shown does not sway you."""

ALPACAEVAL_PROMPT = """You compare two outputs for the same instruction and pick the one a human would prefer.

[Instruction]
{instruction}

[Output 1]
{first}

[Output 2]
{second}

On the first line write only "1" or "2" for the better output, or "tie" if they are equally good."""

FLASK_PROMPT = """You rate an AI assistant's response on specific skills, each from 1 (poor) to 5 (excellent).

[Instruction]
{instruction}

[Response]
{response}
{reference}
Skills to rate: {skills}.
Write one line per skill as "<skill>: <score>", then a short justification."""


def read_jsonl(path: str) -> list[dict]:
    """Rows of a JSONL file, or a one-line DataError naming the bad line."""
    rows = []
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"invalid JSON ({e.msg})", reason="malformed_json", file=path, row=i) from None
    return rows


def write_jsonl(path: str, rows: Iterable[Mapping]) -> None:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _by_id(rows: Sequence[Mapping], what: str) -> dict[str, Mapping]:
    out = {}
    for row in rows:
        if "id" not in row:
            raise DataError(f"{what} row without an 'id'", reason="missing_field")
        out[str(row["id"])] = row
    return out


# ---- requests ---------------------------------------------------------------------------------------


def pairwise_requests(a: Sequence[Mapping], b: Sequence[Mapping]) -> list[dict]:
    """Two requests per shared id ({"id", "instruction", "output"} rows): order "ab" and order "ba"."""
    a_rows, b_rows = _by_id(a, "system A"), _by_id(b, "system B")
    missing = sorted(set(a_rows) ^ set(b_rows))
    if missing:
        raise DataError(f"id {missing[0]!r} is in only one of the two systems' outputs", reason="missing_field")
    requests = []
    for item, row in a_rows.items():
        outputs = {"a": row["output"], "b": b_rows[item]["output"]}
        for order in ("ab", "ba"):
            prompt = PAIRWISE_PROMPT.format(instruction=row["instruction"], first=outputs[order[0]],
                                            second=outputs[order[1]])
            requests.append({"id": f"{item}|{order}", "item": item, "order": order, "prompt": prompt})
    return requests


def alpacaeval_requests(model: Sequence[Mapping], reference: Sequence[Mapping], seed: int = 0) -> list[dict]:
    """One request per id, the model's output first or second at random (order "mr" or "rm")."""
    m_rows, r_rows = _by_id(model, "model"), _by_id(reference, "reference")
    rng = random.Random(seed)
    requests = []
    for item, row in m_rows.items():
        if item not in r_rows:
            raise DataError(f"id {item!r} has no reference output", reason="missing_field")
        order = rng.choice(("mr", "rm"))
        outputs = {"m": row["output"], "r": r_rows[item]["output"]}
        prompt = ALPACAEVAL_PROMPT.format(instruction=row["instruction"], first=outputs[order[0]],
                                          second=outputs[order[1]])
        requests.append({"id": item, "item": item, "order": order, "prompt": prompt})
    return requests


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


def _first_line(reply: str) -> str:
    return next((line.strip() for line in reply.splitlines() if line.strip()), "")


def _replies(requests: Sequence[Mapping], replies: Sequence[Mapping]) -> dict[str, str]:
    by_id = {str(r["id"]): str(r["reply"]) for r in replies}
    missing = [r["id"] for r in requests if r["id"] not in by_id]
    if missing:
        raise DataError(f"no judge reply for request {missing[0]!r} ({len(missing)} missing)", reason="missing_field")
    return by_id


def parse_score_pair(reply: str, request_id: str = "") -> tuple[float, float]:
    """The two scores on the reply's first line ("8 6", "8, 6", "8/10 6/10")."""
    numbers = re.findall(r"\d+(?:\.\d+)?(?:\s*/\s*10)?", _first_line(reply))
    numbers = [float(n.split("/")[0]) for n in numbers]
    if len(numbers) != 2:
        raise DataError(f"judge reply's first line {_first_line(reply)!r} does not hold two scores",
                        reason="wrong_type", row=request_id)
    return numbers[0], numbers[1]


@dataclass(frozen=True)
class PairwiseResult:
    win: int
    tie: int
    lose: int

    @property
    def n(self) -> int:
        return self.win + self.tie + self.lose

    @property
    def winning_score(self) -> float:
        """(Win - Lose) / N + 1."""
        return (self.win - self.lose) / self.n + 1


def score_pairwise(requests: Sequence[Mapping], replies: Sequence[Mapping]) -> PairwiseResult:
    """Win/tie/lose of system A: a win (loss) needs A preferred (dispreferred) in both orders."""
    texts = _replies(requests, replies)
    prefs: dict[str, dict[str, int]] = {}  # item -> order -> +1 (A preferred), -1, 0
    for req in requests:
        s1, s2 = parse_score_pair(texts[req["id"]], req["id"])
        a, b = (s1, s2) if req["order"] == "ab" else (s2, s1)
        prefs.setdefault(req["item"], {})[req["order"]] = (a > b) - (a < b)
    win = tie = lose = 0
    for item, p in prefs.items():
        if set(p) != {"ab", "ba"}:
            raise DataError(f"item {item!r} was not judged in both orders", reason="missing_field")
        if p["ab"] == p["ba"] == 1:
            win += 1
        elif p["ab"] == p["ba"] == -1:
            lose += 1
        else:
            tie += 1
    return PairwiseResult(win, tie, lose)


def score_alpacaeval(requests: Sequence[Mapping], replies: Sequence[Mapping]) -> dict[str, float]:
    """Win rate (%) of the model over the reference; a tie counts half."""
    texts = _replies(requests, replies)
    points = []
    for req in requests:
        choice = _first_line(texts[req["id"]]).lower().strip(" .\"'*[]()")
        if choice not in ("1", "2", "tie"):
            raise DataError(f"judge reply's first line {choice!r} is not 1, 2 or tie", reason="wrong_type",
                            row=req["id"])
        if choice == "tie":
            points.append(0.5)
        else:
            points.append(1.0 if req["order"][int(choice) - 1] == "m" else 0.0)
    return {"win_rate": 100 * sum(points) / len(points), "n": len(points)}


def score_flask(requests: Sequence[Mapping], replies: Sequence[Mapping]) -> dict[str, float]:
    """Per-skill mean rating scaled to 0-100 ((score - 1) / 4 * 100), plus the average over skills."""
    texts = _replies(requests, replies)
    ratings: dict[str, list[float]] = {}
    for req in requests:
        found = {}
        for line in texts[req["id"]].splitlines():
            m = re.match(r"\s*[-*]?\s*([a-z ]+?)\s*:\s*([1-5](?:\.\d+)?)\b", line.lower())
            if m and m.group(1) in req["skills"]:
                found.setdefault(m.group(1), float(m.group(2)))
        missing = [s for s in req["skills"] if s not in found]
        if missing:
            raise DataError(f"judge reply rates no {missing[0]!r}", reason="missing_field", row=req["id"])
        for skill, score in found.items():
            ratings.setdefault(skill, []).append(score)
    out = {skill: (sum(v) / len(v) - 1) / 4 * 100 for skill, v in ratings.items()}
    out["average"] = sum(out.values()) / len(out)
    return out
