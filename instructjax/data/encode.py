"""Conversation -> token ids and the per-token loss mask (1 on the template's trained spans: assistant
content, the EOS after it, and for Tulu the newline after a non-final EOS, as open-instruct trains it).

The ids are the tokenizer's ids of one string: BOS (where the tokenizer adds one), then the rendered
conversation with the tokenizer's EOS token after each assistant turn. The rendered text is cut at each
EOS marker; the pieces are tokenized the way the engine tokenizes them inside that string (the first as
a sequence start unless it follows BOS, the rest after a special token) and the real EOS id is put
between them, so a literal "</s>" typed in a message stays text. A token is trained when its
characters overlap a trained span of the template (a dummy-prefix "▁" that a SentencePiece model puts
before a piece covers that piece's first character).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from instructjax.core.errors import ConfigError
from instructjax.data.schema import Conversation
from instructjax.data.templates import ChatTemplate, render
from instructjax.data.tokenizer import Tokenizer


@dataclass(frozen=True)
class Encoded:
    """One tokenized example: `tokens` and `loss_mask` (int32[L]), trained-token count, truncation flag."""

    tokens: np.ndarray
    loss_mask: np.ndarray
    n_trained: int
    truncated: bool

    @property
    def empty_after_truncation(self) -> bool:
        """True when truncation left no token to train on: count and report these, never drop silently."""
        return self.n_trained == 0

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


def encode_conversation(
    conv: Conversation,
    template: str | ChatTemplate,
    tokenizer: Tokenizer,
    max_length: int | None = None,
) -> Encoded:
    """Tokenize `conv` under `template`; keep at most `max_length` tokens (BOS included)."""
    if max_length is not None and max_length < 1:
        raise ConfigError(f"max_length must be >= 1, got {max_length}")
    eos = tokenizer.eos_token
    rendered = render(conv, template, eos_token=eos)
    text = rendered.text

    # char_trained_before[i] = number of trained characters in text[:i]
    char_trained = np.zeros(len(text), dtype=np.int32)
    for start, end in rendered.trained_spans:
        char_trained[start:end] = 1
    char_trained_before = np.concatenate([[0], np.cumsum(char_trained)])

    bounds = [0]
    for offset in rendered.eos_offsets:
        bounds += [offset, offset + len(eos)]
    bounds.append(len(text))
    pieces = [text[bounds[i] : bounds[i + 1]] for i in range(0, len(bounds), 2)]

    token_parts: list[np.ndarray] = []
    mask_parts: list[np.ndarray] = []
    if tokenizer.adds_bos:
        token_parts.append(np.array([tokenizer.bos_id], np.int32))
        mask_parts.append(np.zeros(1, np.int32))
    for i, (ids, offsets) in enumerate(tokenizer.encode_continued(pieces, after_special=tokenizer.adds_bos)):
        if ids:
            spans = np.asarray(offsets, dtype=np.int64).reshape(-1, 2) + bounds[2 * i]
            starts, ends = spans[:, 0], spans[:, 1]
            overlap = char_trained_before[ends] - char_trained_before[starts]
            # a zero-width token (rare) is trained when the character at its position is
            at = char_trained[np.minimum(starts, len(text) - 1)]
            trained = np.where(ends > starts, overlap > 0, at > 0)
            token_parts.append(np.asarray(ids, np.int32))
            mask_parts.append(trained.astype(np.int32))
        if i < len(rendered.eos_offsets):
            token_parts.append(np.array([tokenizer.eos_id], np.int32))
            mask_parts.append(np.ones(1, np.int32))

    tokens = np.concatenate(token_parts)
    loss_mask = np.concatenate(mask_parts)
    truncated = max_length is not None and tokens.shape[0] > max_length
    if truncated:
        tokens, loss_mask = tokens[:max_length], loss_mask[:max_length]
    return Encoded(tokens, loss_mask, int(loss_mask.sum()), bool(truncated))


def response_token_length(conv: Conversation, tokenizer: Tokenizer) -> int:
    """Tokens in the assistant turns (stripped contents, each encoded alone, no EOS): for selection."""
    responses = [m["content"].strip() for m in conv.messages if m["role"] == "assistant"]
    return sum(len(ids) for ids in tokenizer.encode_batch(responses)) if responses else 0


def count_tokens(conv: Conversation, template: str | ChatTemplate, tokenizer: Tokenizer) -> int:
    """Length in tokens (BOS and EOS ids included) of `conv` after the chat template."""
    return len(encode_conversation(conv, template, tokenizer))
