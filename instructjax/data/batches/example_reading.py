"""Examples as the packer reads them: each one's tokens, loss mask and source checked (a DataError names a bad one),
a preference pair's `rejected_at`, and the sizes planning needs (`example_sizes`) without laying out rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from instructjax.core.errors import DataError
from instructjax.data.cache import array_sizes

_INT32_MAX = np.iinfo(np.int32).max


def read_example(example: Any, index: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(tokens, loss_mask, source) of one example, checked; a DataError names the bad one."""
    get = example.get if isinstance(example, dict) else lambda k, d=None: getattr(example, k, d)
    tokens, mask, source = get("tokens"), get("loss_mask"), get("source", None)
    where = dict(row=index, source=None if source is None else str(source))
    if tokens is None or mask is None:
        raise DataError("example lacks 'tokens' or 'loss_mask'", reason="missing_field", **where)
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    if tokens.ndim != 1 or mask.ndim != 1 or tokens.shape != mask.shape:
        raise DataError(
            f"tokens {tokens.shape} and loss_mask {mask.shape} must be 1-D of equal length",
            reason="wrong_shape",
            **where,
        )
    if tokens.size:
        if tokens.dtype.kind not in "iu" or mask.dtype.kind not in "iub":
            raise DataError(
                f"tokens ({tokens.dtype}) and loss_mask ({mask.dtype}) must be integers",
                reason="wrong_type",
                **where,
            )
        if tokens.min() < 0 or tokens.max() > _INT32_MAX:
            raise DataError("token ids must be in 0..2**31-1", reason="bad_token", **where)
        if mask.dtype.kind != "b" and (mask.min() < 0 or mask.max() > 1):
            raise DataError("loss_mask values must be 0 or 1", reason="bad_mask", **where)
    if source is not None and not isinstance(source, (int, np.integer)):
        raise DataError(f"source must be an int index, got {source!r}", reason="wrong_type", **where)
    return tokens, mask, 0 if source is None else int(source)


def rejected_at(example: Any, size: int, seq_len: int, index: int) -> int:
    """Where a preference pair's rejected side begins (its `rejected_at`), 0 for an SFT example; a pair is packed
    whole (both sides in one row), so one over the row is a DataError."""
    at = example.get("rejected_at") if isinstance(example, dict) else getattr(example, "rejected_at", None)
    if at is None:
        return 0
    if not 0 < at < size:
        raise DataError(f"rejected_at {at} is not inside the pair's {size} tokens", reason="bad_pair", row=index)
    if size > seq_len:
        raise DataError(f"a preference pair of {size} tokens does not fit one row of data.seq_len={seq_len}; each "
                        "side is cut at half a row unless its task sets max_length", reason="pair_too_long", row=index)
    return int(at)


def checked_sizes(examples: Sequence[Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """`example_sizes` of dicts of 1-D integer arrays (what the encoder makes), all checked at once; None when any
    is otherwise or fails a check (then each is read on its own, and the bad one named)."""
    tokens, masks = [], []
    for ex in examples:
        t, m = (ex.get("tokens"), ex.get("loss_mask")) if isinstance(ex, dict) else (None, None)
        if not (isinstance(t, np.ndarray) and isinstance(m, np.ndarray) and t.ndim == 1 and t.shape == m.shape
                and t.dtype.kind in "iu" and m.dtype.kind in "iu" and isinstance(ex.get("source", 0), (int, np.integer))):
            return None
        tokens.append(t)
        masks.append(m)
    lengths, trained, (low, high), (mask_lo, mask_hi) = array_sizes(tokens, masks)
    if low.min(initial=0) < 0 or high.max(initial=0) > _INT32_MAX or mask_lo < 0 or mask_hi > 1:
        return None
    return lengths, trained


def example_sizes(examples: Sequence[Any], *, first_index: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(token lengths, trained weights when packed whole) of examples: what planning rows needs.

    An example packed whole trains its nonzero loss_mask[1:] (a segment's last token has no target). A
    sequence with its own `sizes()` (`cache.CachedExamples`) answers without making its examples; other
    examples are read and checked as `pack_window` reads them (a DataError names a bad one)."""
    if hasattr(examples, "sizes"):
        return examples.sizes()
    sizes = checked_sizes(examples)
    if sizes is not None:
        return sizes
    lengths, trained = np.zeros(len(examples), np.int64), np.zeros(len(examples), np.int64)
    for i, example in enumerate(examples):
        tokens, mask, _ = read_example(example, first_index + i)
        lengths[i], trained[i] = tokens.size, np.count_nonzero(mask[1:])
    return lengths, trained
