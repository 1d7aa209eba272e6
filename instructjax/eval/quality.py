"""Seed 002's quality ratings (Appendix D, Figure 3, after AlpaGasus): a judge rates each training instance's
response 0-5 for accuracy; the ratings are what `selection: {method: quality}` ranks by (`meta['score']`).

`quality_requests(rows)` writes one judge request per instance in Figure 3's words (eval/judge_prompts.py: prompt
(a) without an input, (b) with one), `rate(rows, replies)` gives the rows back with the rating in `score`.
Rows are Alpaca-like: `instruction`, `input` (or Dolly's `context`), `output` (or Dolly's `response`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from instructjax.core.errors import DataError
from instructjax.eval.judge_prompts import QUALITY_PROMPTS

SCALE = (0.0, 5.0)


def _field(row: Mapping, names: tuple[str, ...], i: int, required: bool = True) -> str:
    for name in names:
        if isinstance(row.get(name), str):
            return row[name]
    if required:
        raise DataError(f"quality rating needs a string {' or '.join(map(repr, names))}", reason="missing_field",
                        row=i + 1)
    return ""


def row_id(row: Mapping, i: int) -> str:
    """The request id of a row: its own `id`, else its line number (1-based)."""
    return str(row["id"]) if row.get("id") is not None else str(i + 1)


def quality_requests(rows: Sequence[Mapping]) -> list[dict]:
    """One {"id", "system", "prompt"} judge request per row, in Figure 3 (a) or (b)."""
    requests = []
    for i, row in enumerate(rows):
        given = _field(row, ("input", "context"), i, required=False).strip()
        system, user = QUALITY_PROMPTS[bool(given)].messages(
            instruction=_field(row, ("instruction",), i), input=given, response=_field(row, ("output", "response"), i))
        requests.append({"id": row_id(row, i), "system": system, "prompt": user})
    return requests


def parse_rating(reply: str, request_id: str = "", file: str | None = None) -> float:
    """The rating on the reply's first non-empty line ("4.5", "Score: 4", "4/5"), within 0-5."""
    line = next((line for line in reply.splitlines() if line.strip()), "")
    found = re.search(r"\d+(?:\.\d+)?", line)
    if found is None:
        raise DataError(f"judge reply's first line {line.strip()!r} holds no rating", reason="wrong_type",
                        file=file, row=request_id)
    value = float(found.group())
    if not SCALE[0] <= value <= SCALE[1]:
        raise DataError(f"judge rating {value:g} is outside 0-5", reason="wrong_type", file=file, row=request_id)
    return value


def rate(rows: Sequence[Mapping], replies: Sequence[Mapping], key: str = "score", file: str | None = None) -> list[dict]:
    """The rows with the judge's rating in `key`; every row needs a reply (a missing one: a one-line error naming
    the replies `file`)."""
    by_id = {str(r["id"]): str(r["reply"]) for r in replies}
    out = []
    for i, row in enumerate(rows):
        rid = row_id(row, i)
        if rid not in by_id:
            raise DataError(f"no judge reply for row {rid!r}", reason="missing_field", file=file, row=rid)
        out.append({**row, key: parse_rating(by_id[rid], rid, file)})
    return out
