"""The Conversation: what every source adapter yields and everything downstream consumes."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from instructjax.core.errors import DataError

ROLES = ("system", "user", "assistant")


@dataclass
class Conversation:
    """One training conversation.

    `messages` alternates user/assistant after an optional leading system turn and ends with an
    assistant turn (a prompt, `meta["prompt_turns"]` equal to its length, ends with a user turn: a verifiable
    prompt, `sources.verifiable`); `source` is the task name; `id` is stable (dataset name + row index, or the
    dataset's own id); `meta` carries what selection or analysis needs (e.g. a quality score).
    """

    messages: list[dict[str, str]]
    source: str
    id: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt_only(self) -> bool:
        """Whether every message is the prompt (`meta["prompt_turns"]` is their count): a verifiable prompt, which
        asks for the next assistant turn and ends on a user turn."""
        k = self.meta.get("prompt_turns")
        return isinstance(k, int) and not isinstance(k, bool) and k == len(self.messages) > 0

    def validate(self, *, file: str | None = None, row: int | str | None = None,
                 prompt_only: bool | None = None) -> Conversation:
        """Check the contract; raise a `DataError` naming file, row and problem. Returns self. `prompt_only` (None:
        `self.prompt_only`): the conversation is a prompt, which ends on a user turn instead."""
        prompt_only = self.prompt_only if prompt_only is None else prompt_only
        where = dict(file=file, row=row if row is not None else self.id, source=self.source)
        if not self.messages:
            raise DataError("conversation has no messages", reason="empty_conversation", **where)
        turns = self.messages
        for i, m in enumerate(turns):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise DataError(f"message {i} lacks role/content", reason="missing_field", **where)
            if m["role"] not in ROLES:
                raise DataError(f"message {i} has unknown role {m['role']!r}", reason="role_order", **where)
            if not isinstance(m["content"], str):
                raise DataError(
                    f"message {i} content is {type(m['content']).__name__}, expected str",
                    reason="wrong_type",
                    **where,
                )
        if turns[0]["role"] == "system":
            turns = turns[1:]
        if not turns:
            raise DataError("conversation has only a system turn", reason="empty_conversation", **where)
        for i, m in enumerate(turns):
            expected = "user" if i % 2 == 0 else "assistant"
            if m["role"] != expected:
                raise DataError(
                    f"roles out of order: turn {i} is {m['role']!r}, expected {expected!r}",
                    reason="role_order",
                    **where,
                )
        if prompt_only and turns[-1]["role"] != "user":
            raise DataError("a prompt ends on an assistant turn, not a user turn", reason="role_order", **where)
        if not prompt_only and turns[-1]["role"] != "assistant":
            raise DataError("conversation ends on a user turn", reason="ends_on_user", **where)
        for i, m in enumerate(turns):
            if m["role"] == "assistant" and not m["content"].strip():
                raise DataError(f"assistant turn {i} is empty", reason="empty_response", **where)
        return self

    @property
    def rounds(self) -> int:
        """Number of user->assistant exchanges."""
        return sum(1 for m in self.messages if m["role"] == "assistant")

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    def with_system_turn(self, how: str) -> Conversation:
        """The conversation with its system turn kept ("keep"), dropped ("drop"), or folded into the first user turn
        ("merge": the system text, a blank line, then the user's, as LLaMA-Factory does for templates that have no
        system role)."""
        if how == "keep" or not self.messages or self.messages[0].get("role") != "system":
            return self
        system, rest = self.messages[0], self.messages[1:]
        if how == "merge" and rest and rest[0].get("role") == "user":
            rest = [{**rest[0], "content": f"{system['content']}\n\n{rest[0]['content']}"}, *rest[1:]]
        meta = self.meta
        if isinstance(meta.get("prompt_turns"), int):  # a preference side: its prompt lost the turn too
            meta = {**meta, "prompt_turns": meta["prompt_turns"] - (len(self.messages) - len(rest))}
        return Conversation(rest, self.source, self.id, meta)

    @classmethod
    def from_json(cls, text: str) -> Conversation:
        d = json.loads(text)
        return cls(messages=d["messages"], source=d["source"], id=d["id"], meta=d.get("meta", {}))
