"""The packer against brute-force references: unpacking, targets/weights, placement, efficiency."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructjax.core.errors import ConfigError, DataError
from instructjax.data.batches.example_reading import example_sizes
from instructjax.data.batches.packing import (
    FEATURES,
    PackStats,
    SequencePacker,
    best_fit_decreasing,
    count_rows,
    efficiency,
    pack_segments,
)


def make_examples(rng: np.random.Generator, lengths, vocab: int = 5) -> list[dict]:
    """Examples with small vocab (so token 0 is frequent) and source = example index."""
    return [
        dict(
            tokens=rng.integers(0, vocab, n).astype(np.int32),
            loss_mask=rng.integers(0, 2, n).astype(np.int32),
            source=i,
        )
        for i, n in enumerate(lengths)
    ]


def expected_segments(example: dict, seq_len: int, overlong: str) -> list[tuple[tuple, tuple]]:
    """The (tokens, loss_mask) segments an example must become, worked out directly."""
    tok, mask = example["tokens"].tolist(), example["loss_mask"].tolist()
    if not tok:
        return []
    if overlong == "truncate":
        return [(tuple(tok[:seq_len]), tuple(mask[:seq_len]))]
    return [(tuple(tok[j : j + seq_len]), tuple(mask[j : j + seq_len])) for j in range(0, len(tok), seq_len)]


def unpack(rows: dict[str, np.ndarray]) -> dict[int, list[dict]]:
    """Segments of packed rows, keyed by source id, found by segment_ids alone."""
    out: dict[int, list[dict]] = {}
    for r in range(rows["tokens"].shape[0]):
        seg = rows["segment_ids"][r]
        for s in np.unique(seg[seg > 0]):
            at = np.flatnonzero(seg == s)
            sources = np.unique(rows["source_ids"][r, at])
            assert len(sources) == 1, "a segment mixes examples"
            out.setdefault(int(sources[0]), []).append(
                {k: rows[k][r, at] for k in FEATURES} | {"row": r, "at": at}
            )
    return out


def reference_targets(rows, examples):
    """Brute-force targets (and, when no example was split, weights) position by position."""
    targets = np.zeros_like(rows["tokens"])
    weights = np.zeros(rows["tokens"].shape, np.float32)
    n_rows, S = rows["tokens"].shape
    for r in range(n_rows):
        for t in range(S - 1):
            seg = rows["segment_ids"][r, t]
            if seg == 0 or rows["segment_ids"][r, t + 1] != seg:
                continue
            targets[r, t] = rows["tokens"][r, t + 1]
            ex = examples[rows["source_ids"][r, t]]
            weights[r, t] = ex["loss_mask"][rows["positions"][r, t + 1]]
    return targets, weights


def reference_bfd(lengths, capacity):
    """Best-fit-decreasing the slow obvious way: scan every row for each item."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    fill, count = [], []
    row, offset, segment = [0] * len(lengths), [0] * len(lengths), [0] * len(lengths)
    for i in order:
        best = None
        for r in range(len(fill)):
            room = capacity - fill[r]
            if room >= lengths[i] and (best is None or room < capacity - fill[best]):
                best = r
        if best is None:
            best = len(fill)
            fill.append(0)
            count.append(0)
        row[i], offset[i] = best, fill[best]
        fill[best] += lengths[i]
        count[best] += 1
        segment[i] = count[best]
    return row, offset, segment, len(fill)


def optimal_bins(lengths, capacity):
    """Exact bin-packing optimum by exhaustive search (small inputs only)."""
    lengths = sorted(lengths, reverse=True)
    best = [len(lengths)]

    def place(i, bins):
        if len(bins) >= best[0]:
            return
        if i == len(lengths):
            best[0] = len(bins)
            return
        for b in sorted(set(range(len(bins))), key=lambda b: bins[b]):
            if bins[b] + lengths[i] <= capacity:
                bins[b] += lengths[i]
                place(i + 1, bins)
                bins[b] -= lengths[i]
        place(i + 1, bins + [lengths[i]])

    place(0, [])
    return best[0]


def martello_toth_l2(lengths, capacity):
    """Martello & Toth's L2 lower bound on the number of bins (1990), tried at every threshold."""
    lengths = np.asarray(lengths)
    best = math.ceil(lengths.sum() / capacity)
    for k in range(0, capacity // 2 + 1):
        big = lengths > capacity - k  # nothing else fits beside these
        mid = (lengths > capacity / 2) & ~big  # one per bin
        small = (lengths >= k) & (lengths <= capacity / 2)  # must go into mid bins' room or new bins
        room = mid.sum() * capacity - lengths[mid].sum()
        extra = max(0, math.ceil((lengths[small].sum() - room) / capacity))
        best = max(best, int(big.sum() + mid.sum() + extra))
    return best


pack_case = st.tuples(
    st.integers(2, 24),  # seq_len
    st.lists(st.integers(0, 60), min_size=0, max_size=40),  # example lengths
    st.sampled_from(["truncate", "split"]),
    st.booleans(),  # pack
    st.integers(0, 2**31 - 1),  # seed
)


@settings(max_examples=150, deadline=None)
@given(pack_case)
def test_rows_reproduce_every_example_and_targets_match_reference(case):
    seq_len, lengths, overlong, pack, seed = case
    examples = make_examples(np.random.default_rng(seed), lengths)
    rows, stats = SequencePacker(seq_len, overlong=overlong, pack=pack).pack_window(examples)
    assert set(rows) == set(FEATURES)
    assert all(v.shape == (stats.rows, seq_len) for v in rows.values())
    assert rows["loss_weights"].dtype == np.float32
    assert all(rows[k].dtype == np.int32 for k in FEATURES if k != "loss_weights")

    # Every example comes back exactly (tokens, and the mask of every predicted token), once.
    got = unpack(rows)
    for i, ex in enumerate(examples):
        want = [(t, m[1:]) for t, m in expected_segments(ex, seq_len, overlong)]
        segs = got.pop(i, [])
        # weight[t] = mask[t+1]: the packed weights give back the mask of tokens 1..n-1.
        have = [
            (tuple(s["tokens"].tolist()), tuple(s["loss_weights"][:-1].astype(int).tolist())) for s in segs
        ]
        assert sorted(have) == sorted(want)
        for s in segs:
            assert s["loss_weights"][-1] == 0 and s["targets"][-1] == 0
            np.testing.assert_array_equal(s["positions"], np.arange(len(s["at"])))
            np.testing.assert_array_equal(s["at"], s["at"][0] + np.arange(len(s["at"])))  # contiguous
    assert not got, "segments with a source that is no example"

    # Row layout: segments 1, 2, ... in order, then only padding; padding is inert.
    for r in range(stats.rows):
        seg = rows["segment_ids"][r]
        used = np.count_nonzero(seg)
        assert (seg[used:] == 0).all() and (seg[:used] > 0).all()
        np.testing.assert_array_equal(np.unique(seg[:used]), np.arange(1, seg[:used].max() + 1))
        assert (np.diff(seg[:used]) >= 0).all()
    pad = rows["segment_ids"] == 0
    assert (rows["loss_weights"][pad] == 0).all() and (rows["source_ids"][pad] == -1).all()
    assert (rows["positions"][pad] == 0).all()

    n = np.asarray(lengths, dtype=np.int64)
    targets, weights = reference_targets(rows, examples)
    np.testing.assert_array_equal(rows["targets"], targets)
    if overlong == "truncate" or not (n > seq_len).any():  # split chunks: checked by `have` above
        np.testing.assert_array_equal(rows["loss_weights"], weights)

    # Stats account for every example and token.
    assert stats.examples == len(lengths)
    assert stats.dropped_empty == int((n == 0).sum())
    long = int((n > seq_len).sum())
    assert (stats.truncated, stats.split) == ((long, 0) if overlong == "truncate" else (0, long))
    cut = int(np.maximum(n - seq_len, 0).sum()) if overlong == "truncate" else 0
    assert stats.truncated_tokens == cut
    assert stats.tokens == int(n.sum()) - cut == int((~pad).sum())
    assert stats.padding == int(pad.sum())
    assert stats.efficiency == pytest.approx(efficiency(rows)) or stats.rows == 0
    assert count_rows(lengths, seq_len, overlong=overlong, pack=pack) == stats.rows
    if not pack:
        assert (rows["segment_ids"].max(axis=1) == 1).all()


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 50), st.lists(st.integers(1, 50), max_size=60))
def test_best_fit_decreasing_matches_brute_force(capacity, lengths):
    lengths = [min(n, capacity) for n in lengths]
    place = best_fit_decreasing(lengths, capacity)
    row, offset, segment, n_rows = reference_bfd(lengths, capacity)
    assert place.n_rows == n_rows
    assert place.row.tolist() == row
    assert place.offset.tolist() == offset
    assert place.segment.tolist() == segment


@settings(max_examples=60, deadline=None)
@given(st.integers(10, 40), st.lists(st.integers(1, 40), min_size=1, max_size=9))
def test_best_fit_decreasing_within_known_bound_of_optimum(capacity, lengths):
    lengths = [min(n, capacity) for n in lengths]
    opt = optimal_bins(lengths, capacity)
    rows = best_fit_decreasing(lengths, capacity).n_rows
    assert opt <= rows <= 11 / 9 * opt + 6 / 9  # Dosa's tight bound for FFD/BFD


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("capacity,max_len", [(2048, 1024), (512, 512), (2048, 300)])
def test_efficiency_near_lower_bound_on_random_lengths(seed, capacity, max_len):
    lengths = np.random.default_rng(seed).integers(1, max_len + 1, 3000)
    rows = count_rows(lengths, capacity)
    lower = martello_toth_l2(lengths, capacity)
    assert lower >= math.ceil(lengths.sum() / capacity)
    assert lower <= rows <= lower * 1.01 + 2


def test_token_zero_is_real_and_padding_is_segment_zero():
    examples = [dict(tokens=np.zeros(3, np.int32), loss_mask=np.ones(3, np.int32))]
    rows, _ = SequencePacker(8).pack_window(examples)
    np.testing.assert_array_equal(rows["segment_ids"][0], [1, 1, 1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(rows["loss_weights"][0], [1, 1, 0, 0, 0, 0, 0, 0])


def test_objects_and_lists_are_examples_too():
    @dataclass
    class Example:
        tokens: list
        loss_mask: list

    rows, stats = SequencePacker(8).pack_window([Example([5, 6, 7], [0, 1, 1]), Example([], [])])
    np.testing.assert_array_equal(rows["tokens"][0, :3], [5, 6, 7])
    np.testing.assert_array_equal(rows["targets"][0, :3], [6, 7, 0])
    assert (stats.examples, stats.dropped_empty, stats.rows) == (2, 1, 1)


def test_rows_in_deterministic_best_fit_order():
    lengths = [3, 6, 2, 5, 4, 1]
    rows, _ = SequencePacker(8).pack_window(make_examples(np.random.default_rng(0), lengths))
    # Decreasing: 6 -> row0, 5 -> row1, 4 -> row2, 3 -> row1 (room 3), 2 -> row0 (room 2), 1 -> row2.
    assert [list(dict.fromkeys(r[r >= 0].tolist())) for r in rows["source_ids"]] == [[1, 2], [3, 0], [4, 5]]


@pytest.mark.parametrize(
    "bad, reason",
    [
        (dict(tokens=[1, 2, 3], loss_mask=[1, 1]), "wrong_shape"),
        (dict(tokens=np.array([1.0, 2.0]), loss_mask=[1, 1]), "wrong_type"),
        (dict(tokens=[1, 2], loss_mask=[1, 2]), "bad_mask"),
        (dict(tokens=[-1, 2], loss_mask=[1, 1]), "bad_token"),
        (dict(tokens=[1, 2]), "missing_field"),
        (dict(tokens=[1, 2], loss_mask=[1, 1], source="flan"), "wrong_type"),
    ],
)
def test_bad_example_names_its_row(bad, reason):
    good = dict(tokens=[1, 2], loss_mask=[1, 1])
    packer = SequencePacker(8, window=2)
    with pytest.raises(DataError) as err:
        list(packer.windows([good, good, good, bad]))
    assert err.value.reason == reason and err.value.row == 3
    assert "row 3" in str(err.value)
    as_arrays = lambda ex: {k: v if k == "source" else np.asarray(v) for k, v in ex.items()}  # noqa: E731
    with pytest.raises(DataError) as err:  # planning from sizes, with the encoder's numpy arrays: the same error
        example_sizes([as_arrays(good)] * 3 + [as_arrays(bad)])
    assert err.value.reason == reason and err.value.row == 3


@pytest.mark.parametrize("kwargs", [dict(overlong="drop"), dict(window=0), dict(seq_len=1)])
def test_bad_config(kwargs):
    with pytest.raises(ConfigError):
        SequencePacker(**({"seq_len": 8} | kwargs))


def test_long_tailed_lengths_pack_over_98_percent_full():
    """Tulu-like lengths (log-normal) in windows of 1000: rows are almost full (speed: benchmarks/packing.py)."""
    rng = np.random.default_rng(0)
    lengths = np.clip(rng.lognormal(5.5, 1.0, 4000).astype(int), 1, None)
    total = PackStats()
    for _, stats in SequencePacker(2048).windows(make_examples(rng, lengths, vocab=32000)):
        total += stats
    assert total.examples == 4000 and total.efficiency > 0.98


def test_split_keeps_every_token():
    examples = make_examples(np.random.default_rng(2), [20, 7])
    rows, stats = SequencePacker(8, overlong="split").pack_window(examples)
    assert (stats.split, stats.segments, stats.tokens, stats.truncated_tokens) == (1, 4, 27, 0)
    chunks = sorted(unpack(rows)[0], key=lambda s: (-len(s["at"]), s["row"]))  # ties: input order
    joined = np.concatenate([c["tokens"] for c in chunks])
    np.testing.assert_array_equal(joined, examples[0]["tokens"])


@settings(max_examples=150, deadline=None)
@given(pack_case)
def test_planning_a_window_from_sizes_counts_what_packing_it_does(case):
    """`plan_window` (sizes only, no rows laid out) reports the stats and trained tokens of `pack_window`."""
    seq_len, lengths, _, pack, seed = case
    lengths = [min(n, seq_len) for n in lengths]  # planning is for windows without over-long examples
    examples = make_examples(np.random.default_rng(seed), lengths)
    packer = SequencePacker(seq_len, pack=pack)
    rows, stats = packer.pack_window(examples)
    planned, trained = packer.plan_window(*example_sizes(examples))
    assert planned == stats
    assert trained == int((rows["loss_weights"] > 0).sum())
    if max(lengths, default=0) > 2:
        with pytest.raises(ValueError, match="longer than seq_len"):
            SequencePacker(max(lengths) - 1, pack=pack).plan_window(*example_sizes(examples))


@settings(max_examples=100, deadline=None)
@given(pack_case)
def test_pack_segments_moves_whole_segments_and_keeps_every_value(case):
    """One-segment rows (`pack=False`'s) packed into fewer rows: every segment comes back with all its features,
    placed as best-fit-decreasing places its length; asked-for extra rows are empty, too few is an error."""
    seq_len, lengths, overlong, _, seed = case
    examples = make_examples(np.random.default_rng(seed), lengths)
    rows, stats = SequencePacker(seq_len, overlong=overlong, pack=False).pack_window(examples)
    packed = pack_segments(rows, stats.rows + 1)
    used = np.count_nonzero(packed["segment_ids"].any(axis=1))
    assert used == best_fit_decreasing(np.count_nonzero(rows["segment_ids"], axis=1), seq_len).n_rows
    assert all(v.shape == (stats.rows + 1, seq_len) and v.dtype == rows[k].dtype for k, v in packed.items())
    assert not packed["segment_ids"][used:].any() and (packed["source_ids"][used:] == -1).all()

    def segments(batch):
        return sorted(tuple(batch[k][r, batch["segment_ids"][r] == s].tobytes() for k in FEATURES if k != "segment_ids")
                      for r in range(len(batch["tokens"])) for s in np.unique(batch["segment_ids"][r]) if s)  # fmt: skip

    assert segments(packed) == segments(rows)
    if stats.rows:
        assert pack_segments(rows)["tokens"].shape == (used, seq_len)
    if used > 1:
        with pytest.raises(ValueError, match="more than the"):
            pack_segments(rows, used - 1)
    if packed["segment_ids"].max(initial=0) > 1:
        with pytest.raises(ValueError, match="one segment each"):
            pack_segments({k: v[:used] for k, v in packed.items()})
    # long rows (per_step's fixed-row layout): packed at a capacity of 1.5 rows, laid out in rows of 2
    lengths = np.count_nonzero(rows["segment_ids"], axis=1)
    capacity = max(3 * seq_len // 2, 1)
    long = pack_segments(rows, stats.rows + 1, capacity=capacity, row_length=2 * seq_len)
    assert long["tokens"].shape == (stats.rows + 1, 2 * seq_len) and segments(long) == segments(rows)
    assert np.count_nonzero(long["segment_ids"], axis=1).max(initial=0) <= capacity
    assert np.count_nonzero(long["segment_ids"].any(axis=1)) == best_fit_decreasing(lengths, capacity).n_rows
    with pytest.raises(ValueError, match="cannot hold"):
        pack_segments(rows, capacity=seq_len + 1, row_length=seq_len)
