"""Synthetic native-schema data: loads through the real adapters, is labelled, deterministic, and has
Tulu Table 1's mean rounds and token lengths under the real LLaMA SentencePiece tokenizer."""

import json
import os

import mistral_common
import numpy as np
import pytest
import sentencepiece as spm

from instructjax.data.binding import bind
from instructjax.data.blends import specs
from instructjax.data.schema import Conversation
from instructjax.data.sources import synthetic
from instructjax.data.sources.load import load_conversations
from instructjax.data.sources.registry import PREFERENCE_SOURCES, SOURCES
from instructjax.data.sources.synthetic import LENGTH_STATS, TULU_TABLE1, ensure_synthetic, write_synthetic
from instructjax.data.tokenized import examples as examples_lib

ALL = {**SOURCES, **PREFERENCE_SOURCES}  # the SFT sources and the preference pairs: each has built-in rows
TOKENIZER = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """name -> (raw rows, conversations) for every source, default sizes, seed 0."""
    directory = tmp_path_factory.mktemp("synthetic")
    out = {}
    for name in ALL:
        [path] = write_synthetic(name, str(directory))
        with open(path) as f:
            rows = [json.loads(line) for line in f]
        if ALL[name].split_long:  # ShareGPT is split into blocks when encoded for a 2048-token row
            specs.add_task(f"synthetic_{name}", specs.TaskSpec(source=name, data_files=(path,)))
            bound = bind(f"synthetic_{name}", tokenizer=None, max_length=2048)
            convs = [Conversation.from_json(e["conversation"]) for e in examples_lib.encoded_examples(bound.name)]
        else:
            convs = list(load_conversations(name, [path], cache_dir=str(directory / "cache")))
        out[name] = rows, convs
    return out


def test_table1_has_the_twelve_tulu_datasets():
    assert len(TULU_TABLE1) == 12 and set(LENGTH_STATS) == set(ALL)
    assert TULU_TABLE1["sharegpt"] == (168_864, 3.2, 71.0, 357.8)


@pytest.mark.parametrize("name", sorted(ALL))
def test_rows_load_and_are_labelled(loaded, name):
    rows, convs = loaded[name]
    assert len(rows) >= 200 and len(convs) >= 150
    for row in rows:
        assert row["synthetic"] is True
        own_id = row.get("id", row.get("message_id", row.get("conversation_id", row.get("uuid", row.get("prompt_id")))))
        assert own_id.startswith("synthetic-")
        assert set(ALL[name].columns) - {"inputs", "targets", "task_name", "category", "deleted"} <= set(row)
    assert len({c.id for c in convs}) == len(convs)
    assert all(c.meta.get("synthetic") is True for c in convs)


def test_mean_lengths_match_table1(loaded):
    sp = spm.SentencePieceProcessor(model_file=TOKENIZER)
    report = {}
    for name, (_, convs) in loaded.items():
        stats = LENGTH_STATS[name]
        users = [m["content"] for c in convs for m in c.messages if m["role"] == "user"]
        replies = [m["content"] for c in convs for m in c.messages if m["role"] == "assistant"]
        measured = (np.mean([c.rounds for c in convs]), np.mean([len(t) for t in sp.encode(users)]),
                    np.mean([len(t) for t in sp.encode(replies)]))
        report[name] = measured
        for got, want in zip(measured, stats[1:], strict=True):
            assert abs(got / want - 1) < 0.15, (name, measured, stats)
    print({k: tuple(round(float(x), 1) for x in v) for k, v in report.items()})


def test_structures_that_need_real_adapter_work(loaded):
    oasst_rows, oasst_convs = loaded["oasst1"]
    # trees: several ranked replies to one prompt, and paths sharing a prefix
    replies = {}
    for r in oasst_rows:
        if r["role"] == "assistant":
            replies.setdefault(r["parent_id"], []).append(r["rank"])
    assert sum(len(v) >= 2 for v in replies.values()) >= 50
    assert all(sorted(v) == list(range(len(v))) for v in replies.values())
    assert any(r["deleted"] for r in oasst_rows)
    assert max(c.rounds for c in oasst_convs) >= 3
    # ShareGPT: long chats are split into several blocks
    _, share = loaded["sharegpt"]
    assert sum(c.id.endswith("-b1") for c in share) >= 30
    # Baize: multi-turn transcripts
    _, baize = loaded["baize"]
    assert np.mean([c.rounds >= 3 for c in baize]) > 0.4


def test_deterministic_in_the_seed(tmp_path):
    [a] = write_synthetic("oasst1", str(tmp_path / "a"), n_rows=20, seed=3)
    [b] = write_synthetic("oasst1", str(tmp_path / "b"), n_rows=20, seed=3)
    [c] = write_synthetic("oasst1", str(tmp_path / "c"), n_rows=20, seed=4)
    assert open(a).read() == open(b).read() != open(c).read()


def test_ensure_synthetic_writes_once(tmp_path, monkeypatch):
    monkeypatch.setenv("INSTRUCTJAX_CACHE", str(tmp_path))
    assert synthetic.builtin_dir() == str(tmp_path)
    [path] = ensure_synthetic("alpaca", n_rows=30)
    assert path.startswith(str(tmp_path)) and sum(1 for _ in open(path)) == 30
    os.utime(path, (1, 1))
    assert ensure_synthetic("alpaca", n_rows=30) == [path]
    assert os.stat(path).st_mtime == 1  # reused, not rewritten
    assert [f for f in os.listdir(os.path.dirname(path)) if f.startswith(".tmp")] == []
