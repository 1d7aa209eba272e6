"""The `preference` format (DPO / SimPO): a row holds a prompt and two completions of it, `chosen` and
`rejected`; the row becomes two Conversations, each the prompt and its completion, linked by their meta.

One reader takes the three schemas preference data comes in:

- HuggingFaceH4/ultrafeedback_binarized (`train_prefs`): `prompt` (a string), `prompt_id`, `chosen` and
  `rejected` (whole conversations: the user's prompt and the assistant's answer), `score_chosen`,
  `score_rejected` (and `messages`, unused);
- open-instruct's preference mixtures (allenai/ultrafeedback_binarized_cleaned, the Tulu 3 preference mixes):
  `chosen` and `rejected` whole conversations sharing every turn but the last assistant turn, `prompt` optional;
- TRL's conversational preference format: `prompt` a list of messages, `chosen` and `rejected` the assistant
  turn(s) alone.

A side (`chosen` or `rejected`) whose first turn is an assistant turn holds a completion only: its prompt is the
row's `prompt` (a string is one user turn). Any other side is a whole conversation: its prompt is every turn
through its last user turn, its completion the assistant turn(s) after. Both sides must have the same prompt
(roles equal, contents equal once stripped), and a whole conversation must agree with the row's `prompt` when
the row has one (a list: the same turns; a string: the last user turn's content): a mismatch is a DataError
(reason `prompt_mismatch`) naming the row. Contents are kept as written: the chat template decides on whitespace.

Bad rows, as for SFT (docs/data.md): a schema break (a side missing or not a list of {role, content} objects of
strings, a completion-only side with no `prompt`) is a DataError; a pair whose completion is empty (no turn, or an
empty assistant turn) or whose completions are the same (stripped) is skipped and counted (`SkippedRow`, reasons
`empty_completion` and `identical_completions`); turns out of order fail `Conversation.validate` (a DataError).

Each Conversation's meta: `pair` (the row's id, shared), `side` ("chosen" | "rejected"), `prompt_turns` (how many
of its messages are the prompt), the row's scores (`score_chosen`, `score_rejected`), `prompt_id`, and the usual
meta columns. Ids are f"{pair}/chosen" and f"{pair}/rejected", chosen first; `pair` is f"{source}-{id}" of the row's
`id`, else of its `prompt_id` (UltraFeedback's: one pair a prompt), else of its row index.
"""

from __future__ import annotations

from typing import Any

from instructjax.core.errors import DataError, SkippedRow
from instructjax.data.schema import Conversation
from instructjax.data.sources.adapters import row_id, row_meta

SIDES = ("chosen", "rejected")
PAIR_META = ("score_chosen", "score_rejected", "prompt_id", "dataset", "source")  # copied when a row has them
Turns = list[dict[str, str]]


def checked_turns(value: Any, key: str) -> Turns:
    """`value` checked to be a list of {role, content} objects of strings; a DataError naming `key`[k] otherwise."""
    if value is None:
        raise DataError(f"missing field {key!r} (absent or null)", reason="missing_field")
    if not isinstance(value, list):
        raise DataError(f"field {key!r} is {type(value).__name__}, expected a list of messages", reason="wrong_type")
    out = []
    for k, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise DataError(f"{key}[{k}] is {type(turn).__name__}, expected object", reason="wrong_type")
        for part in ("role", "content"):
            if turn.get(part) is None:
                raise DataError(f"{key}[{k}]: missing field {part!r} (absent or null)", reason="missing_field")
            if not isinstance(turn[part], str):
                raise DataError(f"{key}[{k}]: field {part!r} is {type(turn[part]).__name__}, expected str",
                                reason="wrong_type")
        out.append({"role": turn["role"], "content": turn["content"]})
    return out


def _row_prompt(row: dict) -> Turns | str | None:
    value = row.get("prompt")
    return value if value is None or isinstance(value, str) else checked_turns(value, "prompt")


def _same(a: Turns, b: Turns) -> int | None:
    """The first turn where `a` and `b` differ (role, or content once stripped); None when they are the same."""
    for k, (x, y) in enumerate(zip(a, b, strict=False)):
        if x["role"] != y["role"] or x["content"].strip() != y["content"].strip():
            return k
    return None if len(a) == len(b) else min(len(a), len(b))


def _mismatch(what: str, k: int) -> DataError:
    return DataError(f"{what} differ at prompt turn {k}", reason="prompt_mismatch")


def split_side(row: dict, side: str) -> tuple[Turns, Turns, bool]:
    """(prompt, completion, whether the side held the whole conversation) of one side of a row."""
    turns = checked_turns(row.get(side), side)
    prompt = _row_prompt(row)
    if not turns or turns[0]["role"] == "assistant":  # the completion alone: the prompt is the row's
        if prompt is None:
            raise DataError(f"{side!r} holds a completion only and the row has no 'prompt'", reason="missing_field")
        return ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt), turns, False
    last_user = max((k for k, t in enumerate(turns) if t["role"] == "user"), default=-1)
    if last_user < 0:
        raise DataError(f"{side!r} has no user turn", reason="role_order")
    own, completion = turns[: last_user + 1], turns[last_user + 1:]
    if isinstance(prompt, str):
        if prompt.strip() != own[-1]["content"].strip():
            raise DataError(f"'prompt' differs from the last user turn of {side!r}", reason="prompt_mismatch")
    elif prompt is not None and (k := _same(prompt, own)) is not None:
        raise _mismatch(f"'prompt' and {side!r}", k)
    return own, completion, True


def preference(row: dict, name: str, index: int) -> list[Conversation]:
    """One preference row -> [chosen, rejected] Conversations (see the module doc)."""
    (prompt, chosen, _), (other, rejected, _) = (split_side(row, side) for side in SIDES)
    if (k := _same(prompt, other)) is not None:
        raise _mismatch("'chosen' and 'rejected'", k)
    for side, completion in zip(SIDES, (chosen, rejected), strict=True):
        if not completion or any(t["role"] == "assistant" and not t["content"].strip() for t in completion):
            raise SkippedRow(f"the {side} completion is empty", reason="empty_completion")
    if _same(chosen, rejected) is None:
        raise SkippedRow("the chosen and rejected completions are the same", reason="identical_completions")
    pair = row_id(name, row, index, "id" if row.get("id") not in (None, "") else "prompt_id")
    meta = row_meta(row, **{k: row[k] for k in PAIR_META if isinstance(row.get(k), (str, int, float))})
    return [Conversation([*prompt, *completion], name, f"{pair}/{side}",
                         {**meta, "pair": pair, "side": side, "prompt_turns": len(prompt)})
            for side, completion in zip(SIDES, (chosen, rejected), strict=True)]


def pairs(conversations: list[Conversation]) -> list[tuple[Conversation, Conversation]]:
    """(chosen, rejected) of a preference source's conversations in the order it yields them (chosen first);
    a DataError when two that follow each other are not the two sides of one pair."""
    if len(conversations) % 2:
        raise DataError(f"{len(conversations)} preference conversations: not whole pairs", reason="unpaired")
    out = []
    for chosen, rejected in zip(conversations[0::2], conversations[1::2], strict=True):
        if ((chosen.meta.get("side"), rejected.meta.get("side")) != SIDES
                or chosen.meta.get("pair") is None or chosen.meta.get("pair") != rejected.meta.get("pair")):
            raise DataError(f"conversations {chosen.id!r} and {rejected.id!r} are not the two sides of one pair",
                            reason="unpaired")
        out.append((chosen, rejected))
    return out
