"""Conversation -> token ids and the per-token loss mask (1 on the template's trained spans: assistant
content, the EOS after it, and for Tulu the newline after a non-final EOS, as open-instruct trains it).

The ids are the tokenizer's ids of one string: BOS (where the tokenizer adds one), then the rendered
conversation with the tokenizer's EOS token after each assistant turn. The rendered text is cut at each
EOS marker; the segments are tokenized the way the engine tokenizes them inside that string (the first
as a sequence start unless it follows BOS, the rest after a special token) and the real EOS id is put
between them, so a literal "</s>" typed in a message stays text. A token is trained when its
characters overlap a trained span of the template (a dummy-prefix "▁" that a SentencePiece model puts
before a segment covers that segment's first character).

`encode_conversations` encodes a batch at once: every segment of every conversation through one call of
the tokenizer's batch path, the masks in a few numpy operations over the whole batch. Since the engine
never merges across a special token, a conversation's length is the sum of its segments' lengths: a
`Segments` memo tokenizes each distinct segment once, which is how a long conversation is split into
blocks of whole rounds without tokenizing any candidate block again (`count_tokens(..., segments)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from instructjax.core.errors import ConfigError
from instructjax.data.encoding.model_template import render_model
from instructjax.data.encoding.templates import MODEL_TEMPLATE, ChatTemplate, Rendered, render
from instructjax.data.encoding.tokenizer import Tokenizer
from instructjax.data.schema import Conversation


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


Segment = tuple[str, bool]  # (text between special tokens, whether it is the sequence start)


class Segments:
    """Token ids and character offsets of segments (see the module doc), each distinct one tokenized once,
    a batch of new ones through one call of the tokenizer's batch path.

    Where the tokenizer never merges across a newline (`Tokenizer.hard_break`), a new segment that is the text
    after a known segment's first newline (a block's first round, which the whole conversation held after an
    EOS and a newline) is tokenized only up to its own first newline: its tokens from there on are the known one's."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._known: dict[Segment, tuple[np.ndarray, np.ndarray]] = {}
        self._after_break: dict[str, Segment] = {}  # a known segment's text after its first hard break -> it
        self.derived = 0  # segments whose tokens after their first break were a known segment's

    def get(self, segments: Sequence[Segment]) -> list[tuple[np.ndarray, np.ndarray]]:
        """(ids int32[n], offsets int64[n, 2] within the segment) of each segment."""
        new = self._derive([s for s in dict.fromkeys(segments) if s not in self._known])
        if new:
            ids, offsets, lengths = _tokenize(new, self.tokenizer)
            ends = np.cumsum(lengths).tolist()
            brk = self.tokenizer.hard_break
            for segment, a, b in zip(new, [0, *ends[:-1]], ends, strict=True):
                self._known[segment] = (ids[a:b], offsets[a:b])
                at = segment[0].find(brk) if brk is not None else -1
                if at >= 0:
                    self._after_break.setdefault(segment[0][at + 1 :], segment)
        return [self._known[s] for s in segments]

    def _derive(self, new: list[Segment]) -> list[Segment]:
        """Known: the new segments that are the text after a known segment's first break (their head, up to and
        with their own first break, tokenized, the rest taken from the known one); the others are returned."""
        brk = self.tokenizer.hard_break
        donors = [(s, self._after_break.get(s[0])) for s in new] if brk is not None and self._after_break else []
        found = [(s, d, s[0].find(brk)) for s, d in donors if d is not None and brk in s[0]]
        if not found:
            return new
        ids, offsets, lengths = _tokenize([(s[0][: at + 1], s[1]) for s, _, at in found], self.tokenizer)
        ends = np.cumsum(lengths).tolist()
        for (segment, donor, at), a, b in zip(found, [0, *ends[:-1]], ends, strict=True):
            donor_ids, donor_offsets = self._known[donor]
            shift = len(donor[0]) - len(segment[0])  # the donor's characters before the segment's first
            k = int(np.searchsorted(donor_offsets[:, 0], shift + at))  # the donor's token of that break
            if (b > a and k < len(donor_ids) and donor_ids[k] == ids[b - 1] and offsets[b - 1].tolist() == [at, at + 1]
                    and donor_offsets[k].tolist() == [shift + at, shift + at + 1]):
                self._known[segment] = (np.concatenate([ids[a:b], donor_ids[k + 1 :]]),
                                        np.concatenate([offsets[a:b], donor_offsets[k + 1 :] - shift]))
                self.derived += 1
        return [s for s in new if s not in self._known]


def _tokenize(segments: Sequence[Segment], tokenizer: Tokenizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, offsets, ids per segment) of the segments end to end, in their order: one batch call for the
    sequence starts, one for the rest (`Tokenizer.encode_offsets`)."""
    first = np.fromiter((start for _, start in segments), bool, len(segments))
    if first.all() or not first.any():
        return tokenizer.encode_offsets([text for text, _ in segments], continued=not first.any())
    order = np.concatenate([np.flatnonzero(first), np.flatnonzero(~first)])  # the two calls' order
    parts = [tokenizer.encode_offsets([segments[i][0] for i in which], continued=not start)
             for which, start in ((order[: first.sum()], True), (order[first.sum():], False))]
    ids, offsets = (np.concatenate([part[k] for part in parts]) for k in (0, 1))
    lengths = np.empty(len(segments), np.int64)
    lengths[order] = np.concatenate([part[2] for part in parts])
    begin = np.empty(len(segments), np.int64)  # where each segment's ids lie in the calls' output
    begin[order] = np.cumsum(lengths[order]) - lengths[order]
    gather = np.arange(int(lengths.sum())) + np.repeat(begin - (np.cumsum(lengths) - lengths), lengths)
    return ids[gather], offsets[gather], lengths


def render_with(conv: Conversation, template: str | ChatTemplate, tokenizer: Tokenizer) -> Rendered:
    """`conv` rendered by `template`: a built-in one with the tokenizer's EOS, or the model's own ("model")."""
    if getattr(template, "name", template) == MODEL_TEMPLATE:
        return render_model(conv, tokenizer)
    return render(conv, template, eos_token=tokenizer.eos_token)


def _bos(rendered: Rendered, tokenizer: Tokenizer) -> bool:
    return tokenizer.adds_bos and rendered.adds_bos


def _segments(rendered: Rendered, tokenizer: Tokenizer) -> tuple[list[Segment], list[int]]:
    """The segments of a rendered text (cut at each special token) and where each starts in the text."""
    bounds = [0]
    for start, end, _ in rendered.specials:
        bounds += [start, end]
    bounds.append(len(rendered.text))
    text = rendered.text
    starts = bounds[0::2]
    first = not _bos(rendered, tokenizer)
    return [(text[a:b], k == 0 and first) for k, (a, b) in enumerate(zip(starts, bounds[1::2], strict=True))], starts


def encode_conversations(convs: Sequence[Conversation], template: str | ChatTemplate, tokenizer: Tokenizer,
                         max_length: int | None = None, segments: Segments | None = None) -> list[Encoded]:
    """`encode_conversation` of each conversation, as one batch (`segments`: a memo to use and fill)."""
    return encode_rendered([render_with(conv, template, tokenizer) for conv in convs], tokenizer, max_length, segments)


def encode_rendered(rendered: Sequence[Rendered], tokenizer: Tokenizer, max_length: int | None = None,
                    segments: Segments | None = None) -> list[Encoded]:
    """The Encoded examples of conversations already rendered (their trained spans are the loss mask: a caller may
    narrow them, as preference pairs train their completion only), as one batch."""
    if max_length is not None and max_length < 1:
        raise ConfigError(f"max_length must be >= 1, got {max_length}")
    if not rendered:
        return []
    rendered = list(rendered)
    keys: list[Segment] = []
    starts: list[int] = []  # each segment's start in its conversation's text
    counts = []  # segments per conversation
    for r in rendered:
        k, s = _segments(r, tokenizer)
        keys += k
        starts += s
        counts.append(len(k))
    if segments is None:
        ids, offsets, lengths = _tokenize(keys, tokenizer)
    else:
        encoded = segments.get(keys)
        ids, offsets = (np.concatenate([e[k] for e in encoded]) for k in (0, 1))
        lengths = np.fromiter((e[0].shape[0] for e in encoded), np.int64, len(encoded))
    return _assemble(rendered, counts, starts, ids, offsets.reshape(-1, 2), lengths, tokenizer, max_length)


def _assemble(rendered: list[Rendered], counts: list[int], starts: list[int], ids: np.ndarray, offsets: np.ndarray,
              lengths: np.ndarray, tokenizer: Tokenizer, max_length: int | None) -> list[Encoded]:
    """Encoded examples from their segments' ids and offsets: [BOS] seg0 S0 seg1 S1 ... segN (S: the template's
    special tokens, EOS in the built-in ones), each token trained when its characters overlap a trained span
    (a zero-width one when the character at it is). Vectorized over the batch: conversation c's characters
    sit at char_base[c] in one long text."""
    n_conv = len(rendered)
    bos = int(_bos(rendered[0], tokenizer))
    counts_arr = np.asarray(counts, np.int64)
    conv_of = np.repeat(np.arange(n_conv), counts_arr)  # each segment's conversation
    text_len = np.fromiter((len(r.text) for r in rendered), np.int64, n_conv)
    char_base = np.cumsum(text_len) - text_len

    # the trained characters of every text, end to end, as sorted disjoint spans
    span_list = [(a, b) for r in rendered for a, b in r.trained_spans]
    per_conv = np.fromiter((len(r.trained_spans) for r in rendered), np.int64, n_conv)
    trained_chars = _disjoint(np.asarray(span_list, np.int64).reshape(-1, 2) + np.repeat(char_base, per_conv)[:, None])

    shift = np.repeat(char_base[conv_of] + np.asarray(starts, np.int64), lengths)
    first, last = offsets[:, 0] + shift, offsets[:, 1] + shift
    at = _covered(trained_chars, np.minimum(first, np.repeat((char_base + text_len - 1)[conv_of], lengths)))
    trained = np.where(last > first, _overlapped(trained_chars, first, last), at)

    # layout: conversation c at out_base[c]; segment k of it after BOS, the k segments before it and k EOS
    conv_len = bos + np.bincount(conv_of, lengths, n_conv).astype(np.int64) + counts_arr - 1
    out_base = np.cumsum(conv_len) - conv_len
    seg_base = np.cumsum(lengths) - lengths  # each segment's first token among all segments' tokens
    first_seg = np.cumsum(counts_arr) - counts_arr
    within = seg_base - seg_base[first_seg][conv_of]  # tokens of the earlier segments of its conversation
    index_in_conv = np.arange(len(lengths)) - first_seg[conv_of]
    seg_out = out_base[conv_of] + bos + within + index_in_conv
    where = np.arange(ids.shape[0]) + np.repeat(seg_out - seg_base, lengths)
    tokens = np.zeros(int(conv_len.sum()), np.int32)
    mask = np.zeros(int(conv_len.sum()), np.int32)
    if bos:
        tokens[out_base] = tokenizer.bos_id
    tokens[where] = ids
    mask[where] = trained
    # the special tokens: one after every segment but a conversation's last, trained where their start is
    special_at = (seg_out + lengths)[index_in_conv < counts_arr[conv_of] - 1]
    special_start = np.fromiter((char_base[c] + start for c, r in enumerate(rendered) for start, _, _ in r.specials),
                                np.int64, len(special_at))
    tokens[special_at] = np.fromiter((tokenizer.special_id(token) for r in rendered for _, _, token in r.specials),
                                     np.int32, len(special_at))
    mask[special_at] = _covered(trained_chars, special_start)

    keep = conv_len if max_length is None else np.minimum(conv_len, max_length)
    trained_total = np.concatenate([[0], np.cumsum(mask)])
    n_trained = (trained_total[out_base + keep] - trained_total[out_base]).tolist()
    truncated = (keep < conv_len).tolist()
    return [Encoded(tokens[a:b], mask[a:b], n, cut)
            for a, b, n, cut in zip(out_base.tolist(), (out_base + keep).tolist(), n_trained, truncated,
                                    strict=True)]


def _disjoint(spans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Character spans [start, end) as (starts, ends) of their union: sorted, disjoint, none empty."""
    spans = spans[spans[:, 1] > spans[:, 0]]
    spans = spans[np.argsort(spans[:, 0], kind="stable")]
    if not len(spans):
        return spans[:, 0], spans[:, 1]
    reach = np.maximum.accumulate(spans[:, 1])
    opens = np.flatnonzero(np.concatenate([[True], spans[1:, 0] > reach[:-1]]))
    return spans[opens, 0], np.maximum.reduceat(spans[:, 1], opens)


def _overlapped(chars: tuple[np.ndarray, np.ndarray], first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Whether each [first, last) holds a character of the disjoint spans `chars`."""
    starts, ends = chars
    if not len(ends):
        return np.zeros(len(first), bool)
    i = np.minimum(np.searchsorted(ends, first, side="right"), len(ends) - 1)  # the first span ending after first
    return (ends[i] > first) & (starts[i] < last)


def _covered(chars: tuple[np.ndarray, np.ndarray], at: np.ndarray) -> np.ndarray:
    """Whether each character `at` lies in the disjoint spans `chars`."""
    return _overlapped(chars, at, at + 1)


def encode_conversation(
    conv: Conversation,
    template: str | ChatTemplate,
    tokenizer: Tokenizer,
    max_length: int | None = None,
) -> Encoded:
    """Tokenize `conv` under `template`; keep at most `max_length` tokens (BOS included)."""
    return encode_conversations([conv], template, tokenizer, max_length)[0]


def response_token_length(conv: Conversation, tokenizer: Tokenizer) -> int:
    """Tokens in the assistant turns (stripped contents, each encoded alone, no EOS): for selection."""
    responses = [m["content"].strip() for m in conv.messages if m["role"] == "assistant"]
    return sum(len(ids) for ids in tokenizer.encode_batch(responses)) if responses else 0


def count_tokens(conv: Conversation, template: str | ChatTemplate, tokenizer: Tokenizer,
                 segments: Segments | None = None) -> int:
    """Length in tokens (BOS and EOS ids included) of `conv` after the chat template (`segments`: a memo)."""
    rendered = render_with(conv, template, tokenizer)
    keys, _ = _segments(rendered, tokenizer)
    lengths = [e[0].shape[0] for e in segments.get(keys)] if segments is not None else _tokenize(keys, tokenizer)[2]
    return int(_bos(rendered, tokenizer)) + int(sum(lengths)) + len(keys) - 1
