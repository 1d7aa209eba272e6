"""The `messages` format: a user's own chat data as today's chat SFT datasets hold it (`{role, content}`
lists), its quirks repaired or skipped as documented in docs/data.md."""

from __future__ import annotations

from typing import Any

from instructjax.core.errors import DataError, SkippedRow
from instructjax.data.schema import Conversation
from instructjax.data.sources.adapters import field, repaired, row_id, row_meta

# --- the messages format: a user's own chat data ---------------------------------------------------

MESSAGE_ROLES = ("system", "user", "assistant")
MESSAGES_META = ("dataset", "source")  # the origin columns of open-instruct's Tulu v2 / Tulu 3 mixtures
MERGED, EMPTY_SYSTEM = "merged consecutive same-role turns", "dropped an empty system turn"
LEADING, TRAILING = "dropped a leading assistant turn", "dropped a trailing unanswered user turn"
EMPTY_TURN = "cut at an empty turn"


def _turn_text(turn: Any, key: str, k: int) -> str:
    """`turn[key]` of messages[k], checked to be a string in an object; a DataError naming messages[k] otherwise."""
    if not isinstance(turn, dict):
        raise DataError(f"messages[{k}] is {type(turn).__name__}, expected object", reason="wrong_type")
    try:
        return field(turn, key)
    except DataError as err:
        raise DataError(f"messages[{k}]: {err.problem}", reason=err.reason) from None


def messages(row: dict, name: str, index: int) -> list[Conversation]:
    """Today's chat format (open-instruct's Tulu v2 and later mixtures, TRL, most chat datasets on the hub):
    `messages: [{role, content}, ...]`, roles system / user / assistant, multi-turn; an optional `id` (else
    the row index); META_COLUMNS and `dataset` / `source` (where a mixture's row came from) go to meta.
    It has no hub dataset: the source reads the user's own files.

    Schema breaks (DataError, the bad-row policy): `messages` missing or not a list, a message not an object,
    `role` or `content` missing or not a string. Then, in this order (contents stripped, as open-instruct
    strips them when it encodes; repairs listed in meta["repairs"], skips counted by reason):

    - a role other than system/user/assistant (tool, function, ...): skipped, unknown_role (the turns around
      it depend on it; checked before the contents, so a tool call's null content is no schema break);
    - a system turn after a user or assistant turn: skipped, system_not_first;
    - fewer than two user/assistant turns: skipped, too_short (as `chat_messages`);
    - consecutive turns of one role are merged, their non-empty contents joined by a blank line (MERGED);
    - an empty system turn is dropped (EMPTY_SYSTEM); a non-empty one stays first, rendered by the chat
      template (tulu: "<|system|>\\n...\\n", as open-instruct renders it);
    - a leading assistant turn is dropped (LEADING), and a trailing unanswered user turn (TRAILING);
    - the conversation is cut at its first empty turn, to whole rounds (EMPTY_TURN: open-instruct would train
      an empty reply, the end marker alone); no round left: skipped, no_answered_round.

    A conversation longer than the row is truncated when it is encoded, as open-instruct's encoder does."""
    raw = field(row, "messages", list)
    roles = [_turn_text(turn, "role", k) for k, turn in enumerate(raw)]
    for k, role in enumerate(roles):
        if role not in MESSAGE_ROLES:
            raise SkippedRow(f"messages[{k}] has role {role!r}, not system, user or assistant",
                             reason="unknown_role")
    contents = [_turn_text(turn, "content", k).strip() for k, turn in enumerate(raw)]
    begun = next((k for k, role in enumerate(roles) if role != "system"), len(roles))
    if "system" in roles[begun:]:
        k = roles.index("system", begun)
        raise SkippedRow(f"messages[{k}] is a system turn after the conversation began",
                         reason="system_not_first")
    if len(roles) - begun < 2:
        raise SkippedRow(f"{len(roles) - begun} user/assistant turn(s): nothing to train on",
                         reason="too_short")
    merged: list[tuple[str, list[str]]] = []  # (role, the contents of its consecutive turns)
    for role, text in zip(roles, contents, strict=True):
        if merged and merged[-1][0] == role:
            merged[-1][1].append(text)
        else:
            merged.append((role, [text]))
    repairs = [MERGED] if len(merged) < len(roles) else []
    turns = [(role, "\n\n".join(t for t in texts if t)) for role, texts in merged]
    system = turns[:1] if turns[0][0] == "system" else []
    turns = turns[len(system):]
    if system and not system[0][1]:
        system, repairs = [], [*repairs, EMPTY_SYSTEM]
    if turns and turns[0][0] == "assistant":
        turns, repairs = turns[1:], [*repairs, LEADING]
    if turns and turns[-1][0] == "user":
        turns, repairs = turns[:-1], [*repairs, TRAILING]
    empty = next((k for k, (_, text) in enumerate(turns) if not text), None)
    if empty is not None:
        turns, repairs = turns[: empty // 2 * 2], [*repairs, EMPTY_TURN]
    if not turns:
        raise SkippedRow("no answered user/assistant round", reason="no_answered_round")
    meta = row_meta(row, **{k: row[k] for k in MESSAGES_META if isinstance(row.get(k), str)})
    convo = [{"role": role, "content": text} for role, text in system + turns]
    return [Conversation(convo, name, row_id(name, row, index), repaired(meta, *repairs))]
