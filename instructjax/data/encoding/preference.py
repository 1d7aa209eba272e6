"""Preference pairs -> token ids and loss masks: each side (chosen, rejected) tokenized as the SFT encoder
tokenizes the whole conversation (`encode`), its loss mask 1 on its completion's trained tokens only.

The mask is still the template's trained character spans (`Rendered.trained_spans`), narrowed to the completion's:
the spans that end after where the completion's first message begins. That place is found by rendering the prompt
with a probe reply in place of the completion, so it holds for every template, the model's own included (a prompt's
own assistant turns end before its last user turn, so their spans are left out; the completion's span keeps what
the template trains around a reply: tulu's content and EOS, a model template's turn end, Qwen3's empty thinking
block). The prompt must render the same before either completion; a template that renders it otherwise is one
DataError naming the conversation.

Truncation is open-instruct's DPO rule (and TRL's `keep_start`): `max_length` keeps the first tokens of each side.
A side with no trained token left (`Encoded.empty_after_truncation`) leaves its pair nothing to compare:
`encode_pairs` leaves such a pair out and counts it into the `BadRowPolicy` it is given (skipped, reason
`truncated_away`, never silently), as open-instruct's `preference_tulu_filter_v1` drops it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from instructjax.core.errors import BadRowPolicy, DataError, SkippedRow
from instructjax.data.encoding.encode import Encoded, Segments, encode_rendered, render_with
from instructjax.data.encoding.templates import ChatTemplate, Rendered
from instructjax.data.encoding.tokenizer import Tokenizer
from instructjax.data.schema import Conversation

PROBE = "\ue006completion\ue007"  # a reply no template writes itself


def prompt_turns(conv: Conversation) -> int:
    """How many of `conv`'s messages are its prompt (`meta["prompt_turns"]`, set by the `preference` source)."""
    k = conv.meta.get("prompt_turns")
    if not isinstance(k, int) or isinstance(k, bool) or not 0 < k < len(conv.messages):
        raise DataError(f"conversation {conv.id!r}: meta['prompt_turns'] is {k!r}, not a count of its prompt's "
                        f"messages (1..{len(conv.messages) - 1})", reason="missing_field")
    return k


def completion_rendered(conv: Conversation, template: str | ChatTemplate, tokenizer: Tokenizer) -> Rendered:
    """`conv` rendered by `template`, its trained spans narrowed to the completion's (see the module doc)."""
    k = prompt_turns(conv)
    rendered = render_with(conv, template, tokenizer)
    probe = Conversation([*conv.messages[:k], {"role": "assistant", "content": PROBE}], conv.source, conv.id)
    text = render_with(probe, template, tokenizer).text
    begins = text.find(PROBE)
    if begins < 0 or not rendered.text.startswith(text[:begins]):
        raise DataError(f"conversation {conv.id!r}: the template renders the prompt otherwise before this completion",
                        reason="template")
    return replace(rendered, trained_spans=[(a, b) for a, b in rendered.trained_spans if b > begins])


def encode_completions(convs: Sequence[Conversation], template: str | ChatTemplate, tokenizer: Tokenizer,
                       max_length: int | None = None, segments: Segments | None = None) -> list[Encoded]:
    """Each conversation's ids (those `encode_conversations` gives) and a loss mask on its completion only, as one
    batch (`segments`: a memo to use and fill)."""
    return encode_rendered([completion_rendered(c, template, tokenizer) for c in convs], tokenizer, max_length,
                           segments)


def encode_pair(chosen: Conversation, rejected: Conversation, template: str | ChatTemplate, tokenizer: Tokenizer,
                max_length: int | None = None) -> tuple[Encoded, Encoded]:
    """(chosen, rejected) encoded: the whole conversations' ids, the loss mask on each completion's trained tokens,
    the first `max_length` tokens of each. Check `.empty_after_truncation` on both (or use `encode_pairs`)."""
    chosen_enc, rejected_enc = encode_completions([chosen, rejected], template, tokenizer, max_length)
    return chosen_enc, rejected_enc


def encode_pairs(pairs: Sequence[tuple[Conversation, Conversation]], template: str | ChatTemplate,
                 tokenizer: Tokenizer, max_length: int | None = None, policy: BadRowPolicy | None = None,
                 segments: Segments | None = None) -> list[tuple[Encoded, Encoded]]:
    """`encode_pair` of each pair, as one batch; a pair with a side that truncation left nothing to train on is left
    out and counted into `policy` (skipped, reason `truncated_away`)."""
    flat = encode_completions([c for pair in pairs for c in pair], template, tokenizer, max_length, segments)
    policy = policy if policy is not None else BadRowPolicy()
    out = []
    for (chosen, _), chosen_enc, rejected_enc in zip(pairs, flat[0::2], flat[1::2], strict=True):
        if chosen_enc.empty_after_truncation or rejected_enc.empty_after_truncation:
            policy.handle(SkippedRow(f"max_length {max_length} leaves a completion no token to train on",
                                     reason="truncated_away", row=chosen.meta.get("pair", chosen.id),
                                     source=chosen.source))
            continue
        out.append((chosen_enc, rejected_enc))
    return out
