"""Continuous batching's shapes (model/batching.py): the length buckets, the rows of a fill call and the width of a
decode call (few shapes, few compilations), and the prefixes prompts share. `plan` and the memory estimates
(model/batching_memory.py) count with them too."""

from __future__ import annotations

from collections.abc import Sequence

MIN_PREFIX = 64  # a shared prefix shorter than this is filled with each prompt (a chat's system turn is)
FILL_TOKENS = 4096  # a fill call's rows x bucket length, at most (one row at least)


def bucket(n: int, minimum: int = 16) -> int:
    """The power of two at or above n (at least `minimum`): few shapes, few compilations."""
    return max(minimum, 1 << max(0, n - 1).bit_length())


def fill_rows(width: int, *, slots: int, shards: int, fill_tokens: int = FILL_TOKENS) -> int:
    """A full fill call's rows for prompts of `width` tokens: `fill_tokens`' worth, at most the slots, a power of two
    that the data-parallel devices (`shards`) divide."""
    rows = 1 << max(0, (max(1, min(slots, fill_tokens // width))).bit_length() - 1)
    return max(rows, shards)


def fill_budget(length: int, fill_tokens: int = FILL_TOKENS) -> int:
    """A fill call's tokens (rows x bucket length) for a cache of `length` rows: `fill_tokens`, fewer past 4096 rows
    so that its attention scores stay within fill_tokens x 4096 a head. A longer prompt is filled in pieces of that
    many tokens, one call after another (chunked prefill)."""
    return max(16, min(fill_tokens, fill_tokens * 4096 // max(length, 1)))


def widest_fill(length: int, *, slots: int, shards: int, fill_tokens: int = FILL_TOKENS) -> tuple[int, int]:
    """(rows, width) of the widest full fill call for a cache of `length` rows (what `plan` counts)."""
    budget = fill_budget(length, fill_tokens)
    width = min(bucket(length), bucket(budget))
    return fill_rows(width, slots=slots, shards=shards, fill_tokens=budget), width


def decode_width(live: int, *, slots: int, shards: int) -> int:
    """The front slots a decode call runs for `live` busy ones: all the slots, or, once a quarter of them (at least 8)
    or more stand idle, the next multiple of that quarter (few widths, few compilations). A cache whose slots split
    over devices (`shards` > 1) always runs whole: packing its rows would move them across devices."""
    quarter = max(8, slots // 4)
    if shards > 1 or live > slots - quarter:
        return slots
    return max(quarter, -(-live // quarter) * quarter)


def shared_prefixes(prompts: Sequence[Sequence[int]], minimum: int = MIN_PREFIX) -> list[int]:
    """Per prompt, the length of the prefix it shares with a run of neighbours (in sorted order) of at least
    `minimum` tokens (0: none); a prefix always leaves its prompts a token of their own."""
    order = sorted(range(len(prompts)), key=lambda i: tuple(prompts[i]))
    lcp = [0] * len(order)  # lcp[k]: common prefix of order[k - 1] and order[k]
    for k in range(1, len(order)):
        a, b = prompts[order[k - 1]], prompts[order[k]]
        n = min(len(a), len(b))
        j = next((j for j in range(n) if a[j] != b[j]), n)
        lcp[k] = j
    out = [0] * len(prompts)
    k = 0
    while k < len(order):
        end = k + 1
        while end < len(order) and lcp[end] >= minimum:
            end += 1
        if end - k >= 2:
            members = order[k:end]
            length = min(min(lcp[k + 1:end]), min(len(prompts[i]) for i in members) - 1)
            if length >= minimum:
                for i in members:
                    out[i] = length
        k = end
    return out
