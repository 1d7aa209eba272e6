"""Sequence packing: tokenized examples -> fixed-length rows, the packed batch the trainer eats.

Examples are `(tokens int32[L], loss_mask int32[L])` pairs (dicts or objects with those two fields,
plus an optional integer `source`). A preference pair is one example, its chosen side's tokens then its
rejected side's from `rejected_at` on: it is packed whole, into one row, as two segments (2k - 1 the chosen side,
2k the rejected, positions from 0 in each), so a pair's index in its row is (segment - 1) // 2. The stream is cut into windows of `window` examples; each window
is packed on its own by best-fit-decreasing, so a window's rows are a function of the window alone
(the pipeline resumes from a window and a row in it). `pack_segments` packs one step's unpacked rows (`data.pack:
per_step`) into fewer rows, by the same best-fit-decreasing.

One packed row, all `[seq_len]` (the batch contract the trainer eats):
  tokens        the example tokens, concatenated; 0 on padding (the value is irrelevant)
  targets       the next token of the same segment; 0 on the last token of a segment and on padding
  loss_weights  float32 loss_mask of the target token (weight[t] = loss_mask[t + 1]); 0 on the last
                token of every segment and on padding, so nothing is trained across a boundary
  segment_ids   1..n per row, 0 = padding (the only way padding is marked: token 0 is a real token)
  positions     0.. restarting at every segment
  source_ids    the example's `source` index (0 when absent), -1 on padding
and where the examples carry it (a preference run with a cached reference):
  reference_logps  float32, the reference model's log-prob of each token's target, placed as the tokens are
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from instructjax.core.errors import ConfigError, DataError
from instructjax.data.batches.example_reading import read_example, rejected_at

FEATURES = ("tokens", "targets", "loss_weights", "segment_ids", "positions", "source_ids")
REFERENCE = "reference_logps"  # a preference run's cached reference log-prob of each target (train/reference.py)
OVERLONG_MODES = ("truncate", "split")
# Examples per window: 99.6% efficient at 2048 and 99.2% at 512 on the Tulu Human+GPT mix; 250 would
# already meet 98% / 95% (efficiency against window: benchmarks/RESULTS.md, benchmarks/packing.py).
DEFAULT_WINDOW = 1000



@dataclass
class PackStats:
    """What packing did; every example is accounted for (packed, truncated, split or dropped-empty)."""

    examples: int = 0  # examples read
    truncated: int = 0  # examples cut to seq_len (overlong="truncate")
    truncated_tokens: int = 0  # tokens cut off by truncation
    split: int = 0  # examples cut into seq_len chunks (overlong="split")
    dropped_empty: int = 0  # examples with no tokens (the only ones not packed)
    segments: int = 0  # segments placed in rows (a split example gives several)
    tokens: int = 0  # non-padding tokens in the rows
    padding: int = 0  # padding tokens in the rows
    rows: int = 0

    @property
    def efficiency(self) -> float:
        """Non-padding tokens / all tokens in the rows (1.0 when there are no rows)."""
        total = self.tokens + self.padding
        return self.tokens / total if total else 1.0

    def __iadd__(self, other: PackStats) -> PackStats:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def summary(self) -> str:
        """One line for logs."""
        return (
            f"packed {self.examples} examples into {self.rows} rows ({self.efficiency:.2%} efficient): "
            f"{self.truncated} truncated ({self.truncated_tokens} tokens cut), {self.split} split, "
            f"{self.dropped_empty} empty dropped"
        )


@dataclass(frozen=True)
class Placement:
    """Where each segment goes, in input order: its row, its offset in the row and its segment id."""

    row: np.ndarray
    offset: np.ndarray
    segment: np.ndarray
    n_rows: int


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> Placement:
    """Place items of `lengths` (each 1..capacity) into rows of `capacity` by best-fit-decreasing.

    Items are taken longest first (ties: input order); each goes into the open row with the least
    remaining room that still fits it (ties: the row opened first), else opens a new row. Rows are
    numbered in opening order; segment ids within a row follow placement order (1, 2, ...).
    """
    lengths_list = [int(n) for n in lengths]
    if lengths_list and (min(lengths_list) < 1 or max(lengths_list) > capacity):
        raise ValueError(f"item lengths must be in 1..{capacity}")
    order = np.argsort(-np.asarray(lengths_list, dtype=np.int64), kind="stable").tolist()
    n = len(lengths_list)
    row, offset, segment = [0] * n, [0] * n, [0] * n
    fill: list[int] = []  # tokens used per row
    count: list[int] = []  # segments per row
    # Open rows with room left, as sorted keys remaining << 32 | row: bisect finds the best fit.
    open_keys: list[int] = []
    for i in order:
        length = lengths_list[i]
        k = bisect.bisect_left(open_keys, length << 32)
        if k == len(open_keys):
            r = len(fill)
            fill.append(0)
            count.append(0)
        else:
            r = open_keys.pop(k) & 0xFFFFFFFF
        row[i], offset[i] = r, fill[r]
        fill[r] += length
        count[r] += 1
        segment[i] = count[r]
        if fill[r] < capacity:
            bisect.insort(open_keys, ((capacity - fill[r]) << 32) | r)
    return Placement(
        np.asarray(row, np.int64), np.asarray(offset, np.int64), np.asarray(segment, np.int32), len(fill)
    )


def rows_in_input_order(place: Placement) -> Placement:
    """`place` with its rows renumbered by the first item each holds (in input order), instead of by
    opening order (best-fit-decreasing opens the longest first); offsets and segment ids are unchanged."""
    first = np.full(place.n_rows, len(place.row), np.int64)
    np.minimum.at(first, place.row, np.arange(len(place.row)))
    rank = np.empty(place.n_rows, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(place.n_rows)
    return Placement(rank[place.row], place.offset, place.segment, place.n_rows)


def one_per_row(lengths: Sequence[int]) -> Placement:
    """The no-packing placement: item i alone in row i."""
    n = len(lengths)
    return Placement(np.arange(n, dtype=np.int64), np.zeros(n, np.int64), np.ones(n, np.int32), n)


def segment_lengths(lengths: Sequence[int], seq_len: int, overlong: str = "truncate") -> np.ndarray:
    """The segment lengths examples of `lengths` become, in order (a split example's chunks in its order):
    empty ones dropped, over-long ones cut. One a row, this is the order of `pack=False`'s rows."""
    lengths = np.asarray(lengths, dtype=np.int64)
    lengths = lengths[lengths > 0]
    if overlong == "truncate":
        return np.minimum(lengths, seq_len)
    chunks = -(-lengths // seq_len)
    out = np.full(int(chunks.sum()), seq_len, np.int64)
    out[np.cumsum(chunks) - 1] = lengths - (chunks - 1) * seq_len  # each example's last chunk: the rest
    return out


def count_rows(lengths: Sequence[int], seq_len: int, *, overlong: str = "truncate", pack: bool = True) -> int:
    """Rows that one window of examples with these token lengths packs into."""
    segs = segment_lengths(lengths, seq_len, overlong)
    return best_fit_decreasing(segs, seq_len).n_rows if pack else len(segs)


def efficiency(batch: dict[str, np.ndarray]) -> float:
    """Non-padding tokens / all tokens of a packed batch (padding is segment_ids == 0)."""
    seg = batch["segment_ids"]
    return float(np.count_nonzero(seg)) / seg.size if seg.size else 1.0


def empty_rows(n_rows: int, seq_len: int) -> dict[str, np.ndarray]:
    """`n_rows` rows of pure padding."""
    shape = (n_rows, seq_len)
    rows = {k: np.zeros(shape, np.int32) for k in FEATURES}
    rows["loss_weights"] = np.zeros(shape, np.float32)
    rows["source_ids"] = np.full(shape, -1, np.int32)
    return rows


def pack_segments(rows: dict[str, np.ndarray], n_rows: int | None = None, *, capacity: int | None = None,
                  row_length: int | None = None, segments_per_row: int = 1) -> dict[str, np.ndarray]:
    """Rows of one example each (`pack=False` rows: the segment, or a preference pair's `segments_per_row=2`, from
    offset 0, then padding) packed whole by
    best-fit-decreasing into `n_rows` rows of `capacity` tokens (default: as few as they fill; the rows' own
    length), empty rows last; the rows are `row_length` long (default `capacity`), padded after `capacity`.

    A segment keeps every value of every feature (targets and loss weights never cross a segment boundary):
    only its row, its offset and its segment id change."""
    seq_len = rows["segment_ids"].shape[1]
    capacity = seq_len if capacity is None else capacity
    row_length = capacity if row_length is None else row_length
    lengths = np.count_nonzero(rows["segment_ids"], axis=1)
    inside = np.arange(seq_len) < lengths[:, None]
    kind = segments_per_row  # 2: a preference pair's row (its chosen side, then its rejected side)
    per_row = rows["segment_ids"].max(axis=1, initial=0)
    if not (np.array_equal(rows["segment_ids"] > 0, inside) and np.all(per_row[lengths > 0] == kind)
            and np.all(np.diff(rows["segment_ids"], axis=1)[inside[:, 1:]] >= 0)):
        what = "segment" if kind == 1 else f"example of {kind} segments"
        raise ValueError(f"pack_segments takes rows of one {what} each, from offset 0")
    if capacity > row_length:
        raise ValueError(f"rows of {row_length} tokens cannot hold {capacity}")
    place = best_fit_decreasing(lengths, capacity)
    n_rows = place.n_rows if n_rows is None else n_rows
    if place.n_rows > n_rows:
        raise ValueError(f"these segments fill {place.n_rows} rows, more than the {n_rows} asked for")
    out = empty_rows(n_rows, row_length)
    row, at = np.nonzero(inside)  # every token, by its row and position in it
    dest = place.row[row], place.offset[row] + at
    for k in rows:  # a run's own features (a cached reference's log-probs, grpo's advantages), placed as the tokens
        if k not in out:
            out[k] = np.zeros((n_rows, row_length), rows[k].dtype)
    for k in out:
        out[k][dest] = rows[k][row, at]
    out["segment_ids"][dest] = kind * (place.segment[row] - 1) + rows["segment_ids"][row, at]
    return out


class SequencePacker:
    """Packs examples into rows of `seq_len`, best-fit-decreasing within windows of `window` examples.

    `overlong`: "truncate" keeps the first seq_len tokens of a longer example, "split" cuts it into
    seq_len chunks (each its own segment). `pack=False` puts one segment per row (the baseline).
    `in_input_order`: a window's rows in the order of the first example each holds (`rows_in_input_order`),
    not in best-fit-decreasing's opening order (longest first); one segment per row is input order anyway.
    """

    def __init__(
        self,
        seq_len: int,
        *,
        window: int = DEFAULT_WINDOW,
        overlong: str = "truncate",
        pack: bool = True,
        in_input_order: bool = False,
    ):
        if seq_len < 2:
            raise ConfigError(f"packing seq_len must be >= 2, got {seq_len}")
        if window < 1:
            raise ConfigError(f"packing window must be >= 1, got {window}")
        if overlong not in OVERLONG_MODES:
            raise ConfigError(f"overlong must be one of {OVERLONG_MODES}, got {overlong!r}")
        self.seq_len, self.window, self.overlong, self.pack = seq_len, window, overlong, pack
        self.in_input_order = in_input_order

    def pack_window(
        self, examples: Sequence[Any], *, first_index: int = 0
    ) -> tuple[dict[str, np.ndarray], PackStats]:
        """Pack one window; returns the rows (each feature [rows, seq_len]) and what was done.

        `first_index` is the stream index of `examples[0]`, used in error messages.
        """
        S = self.seq_len
        stats = PackStats()
        tokens, masks, sources, splits, references = [], [], [], [], []
        for i, example in enumerate(examples):
            tok, mask, source = read_example(example, first_index + i)
            if isinstance(example, dict) and REFERENCE in example:  # aligned with the tokens (a pair: never cut)
                references.append(np.asarray(example[REFERENCE], np.float32))
            split = rejected_at(example, tok.size, S, first_index + i)
            stats.examples += 1
            if tok.size == 0:
                stats.dropped_empty += 1
                continue
            if splits and (split > 0) != (splits[0] > 0):
                raise DataError("preference pairs and SFT examples in one window: a run trains one or the other",
                                reason="mixed_kinds", row=first_index + i, source=str(source))
            if tok.size > S and self.overlong == "truncate":
                stats.truncated += 1
                stats.truncated_tokens += tok.size - S
                tok, mask = tok[:S], mask[:S]
            elif tok.size > S:
                stats.split += 1
                tokens.extend(tok[j : j + S] for j in range(0, tok.size, S))
                masks.extend(mask[j : j + S] for j in range(0, tok.size, S))
                sources.extend(itertools.repeat(source, -(-tok.size // S)))
                splits.extend(itertools.repeat(0, -(-tok.size // S)))
                continue
            tokens.append(tok)
            masks.append(mask)
            sources.append(source)
            splits.append(split)

        lengths = np.fromiter((t.size for t in tokens), np.int64, len(tokens))
        place = best_fit_decreasing(lengths, S) if self.pack else one_per_row(lengths)
        if self.pack and self.in_input_order:
            place = rows_in_input_order(place)
        rows = empty_rows(place.n_rows, S)
        if references:
            if len(references) != len(examples):
                raise DataError("some examples of a window carry reference log-probs and some do not",
                                reason="missing_field", row=first_index)
            rows[REFERENCE] = np.zeros((place.n_rows, S), np.float32)
        stats.rows, stats.segments = place.n_rows, len(lengths)
        stats.tokens = int(lengths.sum())
        stats.padding = place.n_rows * S - stats.tokens
        if not tokens:
            return rows, stats

        # Lay all segments end to end as one stream, then scatter the stream into the flat rows.
        tok = np.concatenate(tokens).astype(np.int32)
        mask = np.concatenate(masks).astype(np.float32)
        starts = np.cumsum(lengths) - lengths
        segment_of = np.repeat(np.arange(len(lengths)), lengths)
        position = np.arange(tok.size) - starts[segment_of]
        last = position == lengths[segment_of] - 1
        split = np.asarray(splits, np.int64)[segment_of]  # a pair: where its rejected side begins (0: not a pair)
        rejected = (split > 0) & (position >= split)
        last |= (split > 0) & (position == split - 1)  # the chosen side ends there: no target across
        targets = np.zeros_like(tok)
        targets[:-1] = tok[1:]
        weights = np.zeros_like(mask)
        weights[:-1] = mask[1:]
        targets[last], weights[last] = 0, 0.0
        dest = (place.row * S + place.offset)[segment_of] + position
        flat = {k: v.reshape(-1) for k, v in rows.items()}
        flat["tokens"][dest] = tok
        flat["targets"][dest] = targets
        flat["loss_weights"][dest] = weights
        flat["segment_ids"][dest] = place.segment[segment_of]
        if splits[0] > 0:  # a pair's sides are segments 2k - 1 (chosen) and 2k (rejected), positions from 0 each
            flat["segment_ids"][dest] = 2 * place.segment[segment_of] - 1 + rejected
            position = position - np.where(rejected, split, 0)
        flat["positions"][dest] = position
        flat["source_ids"][dest] = np.asarray(sources, np.int32)[segment_of]
        if references:
            flat[REFERENCE][dest] = np.concatenate([r for r in references if r.size])
        return rows, stats

    def plan_window(self, lengths: np.ndarray, trained: np.ndarray) -> tuple[PackStats, int]:
        """What `pack_window` reports for a window of examples of these sizes (`example_sizes`), and the
        trained tokens of its rows, without laying the rows out. No length may exceed seq_len (what a longer
        example trains depends on where it is cut: pack that window)."""
        lengths = np.asarray(lengths, np.int64)
        if lengths.size and lengths.max() > self.seq_len:
            raise ValueError(f"an example of {lengths.max()} tokens is longer than seq_len={self.seq_len}")
        kept = lengths[lengths > 0]
        rows = best_fit_decreasing(kept, self.seq_len).n_rows if self.pack else kept.size
        tokens = int(kept.sum())
        stats = PackStats(examples=lengths.size, dropped_empty=lengths.size - kept.size, segments=kept.size,
                          tokens=tokens, padding=rows * self.seq_len - tokens, rows=rows)  # fmt: skip
        return stats, int(np.asarray(trained, np.int64)[lengths > 0].sum())

    def windows(self, examples: Iterable[Any]) -> Iterator[tuple[dict[str, np.ndarray], PackStats]]:
        """(rows, stats) of every window of `examples`, in order (the pipeline packs one window at a time,
        resumable from its own state; this is for measuring a whole stream)."""
        stream = iter(examples)
        index = 0
        while chunk := list(itertools.islice(stream, self.window)):
            yield self.pack_window(chunk, first_index=index * self.window)
            index += 1
