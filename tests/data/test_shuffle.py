"""`data.shuffle: false`: the epoch's examples and the rows in file order, checked against the data files read
with json (not through our readers); exact resume and one global plan over hosts without shuffling. The
shuffled stream is tests/data/test_pipeline.py's."""

import json
import re

import numpy as np
import pytest
from helpers.batches import take  # the batches and the state after each

from instructjax.core.config import DataSection, MosaicSection
from instructjax.data.batches.packing import best_fit_decreasing, rows_in_input_order
from instructjax.data.batches.pipeline import DataPipeline
from instructjax.data.blends import specs
from instructjax.data.encoding.tokenizer import Tokenizer
from instructjax.data.mosaic.augment import mosaic_epoch
from instructjax.data.schema import Conversation
from instructjax.data.seqio import mixtures

MARK = re.compile(r"Item ([AB]\d+):")
SIZES = {"A": 40, "B": 30}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, list[dict]]:
    """Two tasks of local alpaca rows of varied lengths, and mixtures of them; their rows as json reads them."""
    rng = np.random.default_rng(0)
    where = tmp_path_factory.mktemp("shuffle")
    for task, n in SIZES.items():
        lines = [json.dumps({"instruction": f"Item {task}{i}: " + "tell me more " * int(rng.integers(1, 25)),
                             "input": "", "output": f"Done {task}{i}."}) for i in range(n)]
        (where / f"{task}.jsonl").write_text("\n".join(lines) + "\n")
        specs.add_task(f"shuf_{task}", specs.TaskSpec(source="alpaca", data_files=(str(where / f"{task}.jsonl"),)))
    mixtures.register_epoch_mixture("shuf_ab", {"shuf_A": None, "shuf_B": None})
    mixtures.register_epoch_mixture("shuf_sub", {"shuf_A": 15, "shuf_B": None})
    mixtures.register_rate_mixture("shuf_rate", {"shuf_A": 1.0, "shuf_B": 3.0})
    return {task: [json.loads(line) for line in (where / f"{task}.jsonl").read_text().splitlines()]
            for task in SIZES}  # fmt: skip


def config(mixture: str = "shuf_ab", **kw) -> DataSection:
    base = dict(mixture=mixture, seq_len=256, global_batch=4, pack_window=8, prefetch=0, seed=5, shuffle=False)
    return DataSection(**{**base, **kw})




def segments(rows: dict, files: dict[str, list[dict]]) -> list[list[str]]:
    """Per row, the file row ("A7") of each of its segments, in segment order, checked to hold that row's
    instruction and output as the file has them."""
    tok, out = Tokenizer.load(None), []
    for tokens, seg in zip(rows["tokens"], rows["segment_ids"], strict=True):
        marks = []
        for s in range(1, int(seg.max()) + 1):
            text = tok.decode(tokens[seg == s])
            (mark,) = MARK.findall(text)
            row = files[mark[0]][int(mark[1:])]
            assert row["instruction"].strip() in text and row["output"] in text
            marks.append(mark)
        out.append(marks)
    return out


def file_order(files: dict[str, list[dict]], task: str) -> list[str]:
    return [MARK.match(row["instruction"]).group(1) for row in files[task]]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_one_example_a_row_gives_the_files_rows_in_order_every_epoch(files):
    """pack: false: step s holds rows 4s..4s+3 of the tasks' files, A's then B's, and the next epoch the same."""
    expected = file_order(files, "A") + file_order(files, "B")
    steps = take(DataPipeline(config(pack=False)), 20)  # 80 rows: an epoch of 70 and 10 more
    got = [row for batch, _ in steps for row in segments(batch, files)]
    assert got == [[expected[g % 70]] for g in range(80)]
    assert steps[-1][1].epoch == 1


def test_packed_windows_hold_consecutive_examples_and_rows_keep_their_order(files):
    """pack: true: window w packs examples 8w..8w+7 of the file order; its rows come in the order of the first
    example each holds (no random permutation), and the first steps take them in that order."""
    expected = file_order(files, "A") + file_order(files, "B")
    pipe = DataPipeline(config())
    for w in (0, 5):  # A0..A7, and B0..B7 (examples 40..47)
        rows = segments(pipe.packed_window(0, w), files)
        assert sorted(m for row in rows for m in row) == sorted(expected[8 * w: 8 * w + 8])
        firsts = [min(expected.index(m) for m in row) for row in rows]
        assert firsts == sorted(firsts) and firsts[0] == 8 * w
    window = pipe.packed_window(0, 0)
    first_batch = take(DataPipeline(config()), 1)[0][0]
    n = min(4, len(window["tokens"]))
    assert all(np.array_equal(first_batch[k][:n], window[k][:n]) for k in first_batch)


def test_a_subset_keeps_the_seeds_members_in_file_order(files, new_command):
    """{A: 15, B: all}: the 15 of A are the ones the seed draws with shuffling on, in file order, then B whole;
    every epoch the same; and so again when the examples come back from the on-disk cache."""
    on, off = DataPipeline(config("shuf_sub", shuffle=True)), DataPipeline(config("shuf_sub"))

    def marks(pipe, epoch):
        return [MARK.search(json.loads(pipe.stream.examples[t][i]["conversation"])["messages"][0]["content"]).group(1)
                for t, i in (ex["origin"] for ex in pipe.stream.epoch_examples(epoch))]  # fmt: skip

    drawn = set(marks(on, 0)) - set(file_order(files, "B"))
    assert len(drawn) == 15
    in_file_order = [m for m in file_order(files, "A") if m in drawn] + file_order(files, "B")
    assert marks(off, 0) == marks(off, 1) == in_file_order
    new_command()  # the next pipeline reads the tasks back from the cache
    assert marks(DataPipeline(config("shuf_sub")), 0) == in_file_order


def test_rate_mode_takes_each_tasks_examples_in_file_order(files):
    """Rates still choose the task of each draw (the same choices as with shuffling); each task then gives
    its examples in file order, cycling."""
    off, on = DataPipeline(config("shuf_rate")), DataPipeline(config("shuf_rate", shuffle=True))
    drawn = [ex for w in range(8) for ex in off.stream.window_examples(0, w)]
    assert [ex["source"] for ex in drawn] == [ex["source"] for w in range(8) for ex in on.stream.window_examples(0, w)]
    for t, task in enumerate(off.task_names):
        order = [i for s, i in (ex["origin"] for ex in drawn) if s == t]
        n = SIZES[task[-1]]
        assert order == [k % n for k in range(len(order))]
    assert sum(ex["source"] == 1 for ex in drawn) > SIZES["B"]  # B cycles


def test_mosaics_join_consecutive_examples_in_order(files):
    pipe = DataPipeline(config("shuf_ab", mosaic=MosaicSection(k_max=3, max_length=256)))
    mosaics = pipe.stream.mosaic_conversations(0)
    sources = [i for m in mosaics for i in (m.meta.get("mosaic") or {}).get("source_ids", [m.id])]
    ids = [json.loads(ex["conversation"])["id"] for task in pipe.stream.examples for ex in task]
    assert sources == ids and len(mosaics) < len(ids)


def test_mosaic_pass_without_shuffling_keeps_passed_through_conversations_in_place():
    def conv(i, turns):
        msgs = [m for k in range(turns) for m in ({"role": "user", "content": f"q{i}.{k}"},
                                                 {"role": "assistant", "content": f"a{i}.{k}"})]  # fmt: skip
        return Conversation(msgs, "t", f"c{i}")

    data = [conv(i, 2 if i in (3, 4, 9) else 1) for i in range(12)]
    out, _ = mosaic_epoch(data, MosaicSection(k_max=3), seed=1, epoch=0, shuffle=False,
                          count_tokens=lambda c: sum(len(m["content"].split()) for m in c.messages))
    flat = [i for c in out for i in (c.meta.get("mosaic") or {}).get("source_ids", [c.id])]
    firsts = [((c.meta.get("mosaic") or {}).get("source_ids") or [c.id])[0] for c in out]
    assert sorted(flat, key=lambda s: int(s[1:])) == [f"c{i}" for i in range(12)]
    assert [int(s[1:]) for s in firsts] == sorted(int(s[1:]) for s in firsts)
    assert {"c3", "c4", "c9"} <= set(firsts)


CASES = {"packed": {}, "one_a_row": {"pack": False}, "rate": {"mixture": "shuf_rate"},
         "mosaic": {"mosaic": MosaicSection(k_max=3, max_length=256)}}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_resume_without_shuffling_gives_the_same_batches(files, case):
    cfg = config(**CASES[case])
    straight = take(DataPipeline(cfg), 18)
    for k in (1, 7, 13):
        resumed = DataPipeline(cfg)
        resumed.restore(straight[k - 1][1].to_array())
        for (a, _), (b, _) in zip(straight[k:], take(resumed, 18 - k), strict=True):
            assert same(a, b)


@pytest.mark.parametrize("case", ["packed", "one_a_row", "rate"])
def test_two_hosts_take_slices_of_the_unshuffled_plan(files, case):
    cfg = config(**CASES[case], global_batch=8)
    single = DataPipeline(cfg)
    hosts = [DataPipeline(cfg, process_index=i, process_count=2) for i in range(2)]
    steps = single.plan_epoch(0).steps + 2  # across the epoch boundary
    assert {h.plan_epoch(0).steps for h in hosts} == {steps - 2}
    reference, parts = take(single, steps), [take(h, steps) for h in hosts]
    for s, (batch, state) in enumerate(reference):
        assert same({k: np.concatenate([p[s][0][k] for p in parts]) for k in batch}, batch)
        assert all(p[s][1] == state for p in parts)


def test_rows_in_input_order_renumbers_rows_only():
    lengths = np.random.default_rng(3).integers(1, 60, size=50)
    place = best_fit_decreasing(lengths, 64)
    ordered = rows_in_input_order(place)
    assert np.array_equal(ordered.offset, place.offset) and np.array_equal(ordered.segment, place.segment)
    renumbered = dict(zip(place.row.tolist(), ordered.row.tolist(), strict=True))  # old row -> new row
    assert all(renumbered[r] == r2 for r, r2 in zip(place.row.tolist(), ordered.row.tolist(), strict=True))
    assert sorted(renumbered.values()) == list(range(place.n_rows))
    firsts = [int(np.flatnonzero(ordered.row == r)[0]) for r in range(ordered.n_rows)]
    assert firsts == sorted(firsts) and firsts[0] == 0
