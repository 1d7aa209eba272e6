"""Large chat collections of today (seed 003's Table 3): LMSYS-Chat-1M ("Vicuna 1M") and Magpie.

- `lmsys_chat` (`lmsys/lmsys-chat-1m`): real conversations with 25 LLMs, `conversation: [{role, content}]`
  plus `conversation_id`, `model`, `turn`, `language`, `openai_moderation` (one verdict per turn, with
  `flagged`) and `redacted` (personal data replaced by NAME_1-style placeholders). The turns are read as the
  `messages` format is (`sources.messages`: merged same-role turns, a trailing unanswered user turn dropped,
  cut at an empty turn, roles other than user/assistant skipped, each repair and skip counted). Optional
  filters, off by default because seed 003 names none: `languages` (keep only these `language` values),
  `drop_flagged` (a conversation with any turn flagged by the OpenAI moderation), `drop_redacted`; each row
  they drop is counted under its reason (language, flagged, redacted).
- `magpie` (`Magpie-Align/Magpie-Pro-300K-Filtered`): `conversations: [{from, value}]` of human and gpt
  turns (ShareGPT's format, read as WizardLM V2's: `dialogues.chat_messages`), `uuid`, and Magpie's own
  annotations kept as meta for selection (`task_category`, `difficulty`, `input_quality`, `instruct_reward`,
  `language`).
"""

from __future__ import annotations

from instructjax.core.errors import DataError, SkippedRow
from instructjax.data.schema import Conversation
from instructjax.data.sources.adapters import field, repaired, row_id, row_meta
from instructjax.data.sources.dialogues import chat_messages
from instructjax.data.sources.messages import messages

LMSYS_META = ("model", "language", "turn", "redacted")
MAGPIE_META = ("task_category", "difficulty", "input_quality", "instruct_reward", "language")


def _flagged(row: dict) -> bool:
    verdicts = row.get("openai_moderation") or []
    if not isinstance(verdicts, list):
        raise DataError(f"field 'openai_moderation' is {type(verdicts).__name__}, expected list", reason="wrong_type")
    return any(isinstance(v, dict) and v.get("flagged") for v in verdicts)


def lmsys_chat(row: dict, name: str, index: int, *, languages: list[str] | None = None, drop_flagged: bool = False,
               drop_redacted: bool = False) -> list[Conversation]:
    """One LMSYS-Chat-1M row -> its conversation (see the module doc)."""
    turns = field(row, "conversation", list)
    if languages is not None and row.get("language") not in languages:
        raise SkippedRow(f"language {row.get('language')!r} is not one of {languages}", reason="language")
    flagged = _flagged(row)
    if drop_flagged and flagged:
        raise SkippedRow("a turn is flagged by the OpenAI moderation", reason="flagged")
    if drop_redacted and row.get("redacted"):
        raise SkippedRow("the conversation is redacted", reason="redacted")
    (conv,) = messages({"messages": turns, "id": row.get("conversation_id")}, name, index)
    meta = {**row_meta(row, **{k: row[k] for k in LMSYS_META if row.get(k) is not None}), "flagged": flagged}
    return [Conversation(conv.messages, name, conv.id, repaired(meta, *conv.meta.get("repairs", [])))]


def magpie(row: dict, name: str, index: int) -> list[Conversation]:
    """One Magpie row -> its conversation (see the module doc)."""
    turns, repairs = chat_messages(field(row, "conversations", list))
    meta = row_meta(row, **{k: row[k] for k in MAGPIE_META if row.get(k) is not None})
    return [Conversation(turns, name, row_id(name, row, index, key="uuid"), repaired(meta, *repairs))]
