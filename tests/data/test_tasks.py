"""seqio Tasks: registration, get_dataset round trip, user tasks, and Tulu Table 1 on the built-in data."""

import json

import numpy as np
import pytest
import seqio

from instructjax.cli.data import task_stats
from instructjax.core.errors import ConfigError, DataError
from instructjax.data.blends import specs
from instructjax.data.blends.specs import define as define_data
from instructjax.data.encoding.templates import render
from instructjax.data.encoding.tokenizer import Tokenizer
from instructjax.data.seqio import mixtures
from instructjax.data.sources import registry, synthetic
from instructjax.data.tokenized import examples as examples_lib
from instructjax.data.tokenized.stream import read_conversations


@pytest.fixture(autouse=True)
def seqio_face():
    """The seqio face registers the tasks and the papers' mixtures on demand (importing it registers nothing)."""
    mixtures.register_paper_mixtures()


def test_every_source_is_a_task_twice():
    mixtures.register_paper_mixtures()  # a second call registers nothing, and breaks nothing
    names = seqio.TaskRegistry.names()
    for source in registry.SOURCES:
        assert source in names and source + "_builtin" in names
        assert specs.task(source).data_files is None  # the hub, for users
        assert specs.task(source + "_builtin").data_files == ("builtin",)


def test_get_dataset_round_trip_through_seqio_vocabulary():
    """What seqio serves decodes (through the task's own seqio vocabulary) to the rendered text."""
    task = seqio.get_mixture_or_task("dolly_builtin")
    examples = list(task.get_dataset(sequence_length=None, split="train", shuffle=False).as_numpy_iterator())
    conversations = list(read_conversations(specs.task("dolly_builtin")))
    assert len(examples) == len(conversations) > 100
    vocab = task.output_features["tokens"].vocabulary
    tokenizer = Tokenizer.load(None)
    for ex, conv in list(zip(examples, conversations, strict=True))[:25]:
        assert ex["id"].decode() == conv.id
        text = render(conv, "tulu", eos_token=tokenizer.eos_token).text
        decoded = vocab.decode(ex["tokens"].tolist())
        assert decoded.replace(" ", "") == text.replace(tokenizer.eos_token, "").replace(" ", "")
        # The trained tokens decode to exactly the assistant turns.
        trained = vocab.decode(ex["tokens"][ex["loss_mask"] == 1].tolist())
        answer = " ".join(m["content"].strip() for m in conv.messages if m["role"] == "assistant")
        assert trained.replace(" ", "") == answer.replace(" ", "")
        assert ex["tokens"][0] == tokenizer.bos_id and ex["loss_mask"][0] == 0


def test_user_task_from_local_files_and_config_define(tmp_path):
    rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i} it is."} for i in range(5)]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    define_data(
        {
            "tasks": {"my_alpaca": {"source": "alpaca", "data_files": [str(path)], "max_length": 64}},
            "mixtures": {"my_blend": {"mode": "epoch", "counts": {"my_alpaca": 3, "dolly_builtin": 2}}},
        }
    )
    got = examples_lib.encoded_examples("my_alpaca")
    assert [json.loads(e["conversation"])["messages"][1]["content"] for e in got] == [r["output"] for r in rows]
    assert all(len(e["tokens"]) <= 64 for e in got)
    assert specs.lookup_mixture("my_blend").counts == (("my_alpaca", 3), ("dolly_builtin", 2))


def test_bad_row_in_a_task_names_source_file_and_row(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "a", "input": ""\n')
    specs.add_task("bad_alpaca", specs.TaskSpec(source="alpaca", data_files=(str(path),)))
    with pytest.raises(DataError) as err:
        examples_lib.encoded_examples("bad_alpaca")
    assert "bad.jsonl" in str(err.value) and "row 2" in str(err.value)
    skip = specs.with_options("bad_alpaca", on_bad_row="skip")
    assert len(examples_lib.encoded_examples(skip)) == 1
    assert examples_lib.task_report(skip).skipped == {"malformed_json": 1}


def test_unknown_source_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown source"):
        specs.add_task("nope", specs.TaskSpec(source="not_a_dataset"))


@pytest.mark.slow
@pytest.mark.parametrize("source", sorted(registry.SOURCES))
def test_builtin_data_reproduces_tulu_table1_columns(source):
    """`data stats` columns on the built-in data land near the paper's Table 1 (our estimates for p3/wizardlm)."""
    expected = synthetic.LENGTH_STATS[source]
    stats = task_stats(source + "_builtin")
    assert stats["instances"] > 100
    assert stats["mean_rounds"] == pytest.approx(expected.rounds, rel=0.15)
    assert stats["mean_prompt_tokens"] == pytest.approx(expected.prompt, rel=0.2)
    assert stats["mean_completion_tokens"] == pytest.approx(expected.completion, rel=0.2)
    assert 0 < stats["trained_tokens"] < stats["tokens"]
    assert np.isfinite(stats["mean_prompt_tokens"])


# ---- Golden A/C/P subsets (see tests/data/test_pools.py, "Golden draws", for how the stored lists were made) --------

ALPACA_ROWS = [{"instruction": f"Name a fruit that is {c}.", "input": "" if i % 3 else f"Think of {i} shops.",
                "output": f"A {c} fruit, number {i}."} for i, c in enumerate(
                    "red green yellow orange purple blue pink brown black white gold silver cream".split())]
CODE_ALPACA_ROWS = [{"instruction": f"Write a function that returns {i} squared.", "input": "",
                     "output": "" if i == 4 else f"def f():\n    return {i} ** 2"} for i in range(11)]  # row 4: skipped


def test_golden_acp_mixture_subsets_and_epoch_order(tmp_path):
    """Seed 000's ACP setting scaled down (`acp_ACP_n6`: 6 examples each of Alpaca, CodeAlpaca and the P3 pool),
    on hand-written files bound to the papers' task names (so the subsets are drawn with the seeds a real run's
    are: `specs.subset_seed` of the data seed and the dataset), for data seeds 0 and 1: each task's subset in
    order, and the first two epochs' training order (`ExampleStream`: the subsets' concatenation shuffled per
    epoch). Compared with tests/assets/golden/acp_ACP_n6.json: a change there is a change of every A/C/P run."""
    from helpers.pools import P3_SUBTASKS, check_golden, pair_of, write_dir

    from instructjax.core.config import DataSection
    from instructjax.data.batches.example_order import ExampleStream

    (tmp_path / "alpaca_rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ALPACA_ROWS))
    (tmp_path / "code_alpaca_rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in CODE_ALPACA_ROWS))
    p3 = write_dir(tmp_path / "p3", P3_SUBTASKS)
    tasks = {"alpaca": specs.with_options("alpaca", data_files=(str(tmp_path / "alpaca_rows.jsonl"),)),
             "code_alpaca": specs.with_options("code_alpaca", data_files=(str(tmp_path / "code_alpaca_rows.jsonl"),)),
             "p3": specs.with_options("p3", data_files=(p3,), source_options=(("per_part", 3),))}
    mixture = specs.remix("acp_ACP_n6", tasks)
    assert dict(specs.lookup_mixture(mixture).counts) == {tasks[t]: 6 for t in tasks}
    # a row by the text it leaves in its conversation: the response (unique here), or P3's (input, target)
    names = {**{("alpaca", r["output"]): f"alpaca_rows:{i}" for i, r in enumerate(ALPACA_ROWS)},
             **{("code_alpaca", r["output"]): f"code_alpaca_rows:{i}" for i, r in enumerate(CODE_ALPACA_ROWS)},
             **{("p3", pair_of(r)): f"{stem}:{i}" for stem, rows in P3_SUBTASKS.items() for i, r in enumerate(rows)}}

    def name(task: str, example: dict) -> str:
        messages = json.loads(example["conversation"])["messages"]
        return names[(task, messages[-1]["content"] if task != "p3" else (messages[0]["content"], messages[1]["content"]))]

    got = {}
    for seed in (0, 1):
        stream = ExampleStream(DataSection(mixture=mixture, seq_len=256, global_batch=2, pack_window=8, prefetch=0,
                                           seed=seed))
        order = list(tasks)
        assert [specs.base_name(t) for t in stream.task_names] == order
        drawn = {t: [name(t, ex) for ex in examples] for t, examples in zip(order, stream.examples, strict=True)}
        epochs = {f"epoch{e}": [name(order[t], stream.examples[t][i]) for t, i in
                                (ex["origin"] for ex in stream.epoch_examples(e))] for e in (0, 1)}
        got[f"seed={seed}"] = {**drawn, **epochs}
    check_golden("acp_ACP_n6", got)


@pytest.mark.slow
def test_seqio_shards_run_alone_give_the_pipelines_examples(tmp_path):
    """A task's seqio source lists real shards (ranges of rows within each of its files; spans of a tree source's conversations)
    and each shard's dataset, run alone through seqio's `get_dataset(shard_info=...)`, gives in shard order exactly
    the pipeline's examples: ids, tokens, loss masks and conversations (a bad row skipped in its own shard; ShareGPT's
    long conversations split into blocks; a user's `messages` file repaired and skipped by its rules)."""
    import shutil

    from helpers import ASSETS

    from instructjax.data.seqio.tasks import register_task

    rows = [{"instruction": f"Say {i}.", "input": "", "output": f"{i} " * 9} for i in range(40)]
    rows[17] = {"instruction": "no output"}
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in rows[:25]))
    second.write_text("".join(json.dumps(r) + "\n" for r in rows[25:]))
    chats = tmp_path / "chats.jsonl"
    shutil.copy(ASSETS / "messages" / "chats.jsonl", chats)
    tasks = {
        "sharded_alpaca": specs.TaskSpec("alpaca", (str(first), str(second)), on_bad_row="skip"),
        "sharded_sharegpt": specs.TaskSpec("sharegpt", tuple(synthetic.write_synthetic("sharegpt", str(tmp_path), 30)),
                                           max_length=256),
        "sharded_trees": specs.task("oasst1_builtin"),
        "sharded_chats": specs.TaskSpec("messages", (str(chats),)),
    }
    for name, spec in tasks.items():
        task = register_task(name, spec, shard_units=150 if name == "sharded_trees" else 10)
        shards = task.source.list_shards("train")
        got = []
        for i in range(len(shards)):
            ds = task.get_dataset(sequence_length=None, split="train", shuffle=False,
                                  shard_info=seqio.ShardInfo(i, len(shards)))
            got += [(e["id"].decode(), e["tokens"].tolist(), e["loss_mask"].tolist(), e["conversation"].decode())
                    for e in ds.as_numpy_iterator()]
        want = [(e["id"], e["tokens"].tolist(), e["loss_mask"].tolist(), e["conversation"])
                for e in examples_lib.encoded_examples(name)]
        assert len(shards) > 1 and got == want, name
        if name == "sharded_alpaca":  # each file's rows, numbered within it, at most 10 a shard, end to end
            spans = [(label.split("[")[0], *map(int, label[:-1].split("[")[1].split(":"))) for label in shards]
            for path, n in ((str(first), 25), (str(second), 15)):
                mine = [(lo, hi) for file, lo, hi in spans if file == path]
                assert mine[0][0] == 0 and mine[-1][1] == n and all(hi - lo <= 10 for lo, hi in mine)
                assert all(a[1] == b[0] for a, b in zip(mine, mine[1:], strict=False))
            assert examples_lib.task_report(name).skipped == {"missing_field": 1}
        if name == "sharded_sharegpt":
            assert any("-b" in example_id for example_id, *_ in got)
        if name == "sharded_trees":
            assert shards[0].startswith("sharded_trees: conversations 0-")
