"""The `messages` source (a user's own chats, `{messages: [{role, content}]}`): its rules row by row, written by
hand; `data stats`, `data preview` and a one-step `train` from a config's `define:` block alone; the Tulu
rendering of a system turn against open-instruct's own `encode_with_messages_format` (tests/helpers/upstream_code.py)."""

import json
import types
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import ASSETS

from instructjax.cli import main
from instructjax.core.errors import BadRowPolicy, DataError
from instructjax.data.sources.load import load_conversations

CHATS = ASSETS / "messages" / "chats.jsonl"
ROWS = [json.loads(line) for line in CHATS.read_text().splitlines()]
MERGED, EMPTY_SYSTEM = "merged consecutive same-role turns", "dropped an empty system turn"
LEADING, TRAILING = "dropped a leading assistant turn", "dropped a trailing unanswered user turn"
EMPTY_TURN = "cut at an empty turn"


def s(text):
    return {"role": "system", "content": text}


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


# What the rules make of tests/assets/messages/chats.jsonl, row by row (the adapter's docstring states them).
KEPT = [
    ("messages-sys-multi", [s("You are a patient maths tutor. Explain each step."), u("What is 12 times 12?"),
                            a("12 times 12 is 144: ten twelves are 120, two more are 24, and 120 + 24 = 144."),
                            u("And 13 times 13?"), a("13 times 13 is 169.")]),
    ("messages-plain", [u("Name a primary colour."), a("Red.")]),  # stripped
    ("messages-lead", [u("Spell 'cat' backwards."), a("tac")]),
    ("messages-trail", [u("Is 7 a prime number?"), a("Yes, 7 is prime.")]),
    ("messages-merge-user", [u("Here is my list: apples, pears.\n\nSort it."), a("apples, pears")]),
    ("messages-merge-assistant", [u("Say two things."), a("First thing.\n\nSecond thing.")]),
    ("messages-merge-system", [s("You are terse.\n\nAnswer in English."), u("Capital of Japan?"), a("Tokyo.")]),
    ("messages-empty-system", [u("Capital of Italy?"), a("Rome.")]),
    ("messages-empty-reply", [u("Capital of Spain?"), a("Madrid.")]),
    ("messages-16", [u("Two plus two?"), a("Four.")]),  # no id: the row's index
]
REPAIRED = {LEADING: 1, TRAILING: 1, MERGED: 3, EMPTY_SYSTEM: 1, EMPTY_TURN: 1}
# empty-user and first-reply-empty: no round before the empty turn; tool: a tool role; late-system; lone,
# empty-list and system-and-user: fewer than two user/assistant turns
SKIPPED = {"no_answered_round": 2, "unknown_role": 1, "system_not_first": 1, "too_short": 3}


def load(files, tmp_path, policy=None):
    return list(load_conversations("messages", [str(f) for f in files], policy=policy,
                                   cache_dir=str(tmp_path / "c")))


def test_rules_row_by_row(tmp_path):
    policy = BadRowPolicy()
    got = load([CHATS], tmp_path, policy)
    assert [(c.id, c.messages) for c in got] == KEPT
    assert policy.read == len(ROWS) == 17
    assert dict(policy.skipped) == SKIPPED and dict(policy.repaired) == REPAIRED
    assert got[0].meta == {"dataset": "lima"} and got[2].meta["repairs"] == [LEADING]


def test_json_array_and_parquet_read_the_same(tmp_path):
    clean = [r for r in ROWS if r.get("id") in ("sys-multi", "plain", "merge-system")]
    (tmp_path / "rows.json").write_text(json.dumps(clean))
    pd.DataFrame(clean).to_parquet(tmp_path / "rows.parquet")
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in clean))
    by_format = [[(c.id, c.messages) for c in load([tmp_path / f"rows.{ext}"], tmp_path)]
                 for ext in ("json", "parquet", "jsonl")]
    assert by_format[0] == by_format[1] == by_format[2] == [KEPT[0], KEPT[1], KEPT[6]]


GOOD = {"id": "g", "messages": [u("Hi."), a("Hello.")]}


@pytest.mark.parametrize("row, reason, problem", [
    ({"id": "x"}, "missing_field", "missing field 'messages'"),
    ({"messages": "Hi."}, "wrong_type", "field 'messages' is str, expected list"),
    ({"messages": [u("Hi."), "Hello."]}, "wrong_type", "messages[1] is str, expected object"),
    ({"messages": [u("Hi."), {"content": "Hello."}]}, "missing_field", "messages[1]: missing field 'role'"),
    ({"messages": [u("Hi."), {"role": "assistant"}]}, "missing_field", "messages[1]: missing field 'content'"),
    ({"messages": [u("Hi."), a(3)]}, "wrong_type", "messages[1]: field 'content' is int, expected str"),
    ({"messages": [{"role": 1, "content": "Hi."}, a("Hello.")]}, "wrong_type",
     "messages[0]: field 'role' is int, expected str"),
])
def test_a_schema_break_is_a_data_error_naming_file_row_and_problem(tmp_path, row, reason, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as err:
        load([path], tmp_path)
    assert err.value.reason == reason and err.value.row == 2 and problem in str(err.value)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    policy = BadRowPolicy(on_bad_row="skip")
    assert [c.id for c in load([path], tmp_path, policy)] == ["messages-g"]
    assert dict(policy.skipped) == {reason: 1}


# ---- from a config alone: define a task on the file, then data stats / preview / train ------------------------

def write_config(tmp_path, task: dict, name: str) -> Path:
    config = {
        "model": {"preset": "tiny", "dtype": "float32"},
        "data": {"mixture": name, "seq_len": 256, "global_batch": 8, "pack_window": 64},
        "max_steps": 1,
        "define": {"tasks": {name: task}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_data_stats_counts_every_repair_and_skip(capsys, tmp_path):
    config = write_config(tmp_path, {"source": "messages", "data_files": [str(CHATS)]}, "mine_stats")
    code, out, err = run(capsys, "data", "stats", "--config", str(config), "--json")
    assert code == 0, err
    (task,) = json.loads(out)["tasks"]
    assert task["source"] == "messages" and task["instances"] == len(KEPT)
    assert task["paper"] is None  # a user's own data: no published lengths to set beside it
    assert task["rows"] == {"read": 17, "kept": len(KEPT), "repaired": REPAIRED, "skipped": SKIPPED, "split": 0,
                            "truncated": 0, "untrainable": 0}
    # rounds: 2 in sys-multi, 1 in the nine others
    assert task["mean_rounds"] == pytest.approx(11 / 10)
    code, out, _ = run(capsys, "data", "stats", "--config", str(config))
    assert code == 0
    assert "  rows: read 17, kept 10 example(s)" in out
    assert "  note: repaired 3 row(s): merged consecutive same-role turns" in out
    assert "  note: skipped 1 row(s): unknown_role" in out and "  note: skipped 3 row(s): too_short" in out


def test_data_preview_renders_the_system_turn_and_trains_only_replies(capsys, tmp_path):
    from instructjax.data.encoding.tokenizer import Tokenizer

    config = write_config(tmp_path, {"source": "messages", "data_files": [str(CHATS)]}, "mine_preview")
    code, out, err = run(capsys, "data", "preview", "--config", str(config), "-n", "20", "--json")
    assert code == 0, err
    shown = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["id"] for r in shown] == [i for i, _ in KEPT]
    first = shown[0]
    assert "<|system|>\nYou are a patient maths tutor. Explain each step.\n<|user|>\nWhat is 12 times 12?" in first["text"]
    assert first["meta"] == {"dataset": "lima"}
    tokenizer = Tokenizer.load(None)
    trained = tokenizer.decode([t for t, m in zip(first["tokens"], first["loss_mask"], strict=True) if m])
    assert "tutor" not in trained and "12 times 12 is 144" in trained and "13 times 13 is 169." in trained
    code, out, _ = run(capsys, "data", "preview", "--config", str(config), "-n", "1")
    assert code == 0 and out.startswith("=== messages-sys-multi (messages)")


def test_one_step_train_from_a_config_alone(capsys, tmp_path):
    from instructjax.core import checkpoint as ckpt

    config = write_config(tmp_path, {"source": "messages", "data_files": [str(CHATS)]}, "mine_train")
    code, out, err = run(capsys, "train", "--config", str(config), f"run_dir={tmp_path / 'run'}")
    assert code == 0, err
    assert ckpt.read_meta(tmp_path / "run")[2] == 1
    (record,) = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert record["step"] == 1 and "loss/mine_train" in record


def test_without_data_files_is_a_one_line_error(capsys, tmp_path):
    config = write_config(tmp_path, {"source": "messages"}, "mine_nofiles")
    code, _, err = run(capsys, "data", "stats", "--config", str(config))
    assert code == 2 and err.count("\n") == 1
    assert "source 'messages' has no hub dataset: set data_files" in err
    config = write_config(tmp_path, {"source": "messages"}, "mine_nofiles_train")  # a task of its own: not read yet
    code, _, err = run(capsys, "train", "--config", str(config), f"run_dir={tmp_path / 'run'}")
    assert code == 2 and err.count("\n") == 1 and "set data_files" in err


def test_a_bad_row_stops_the_run_with_one_line_or_is_counted(capsys, tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps({"messages": [u("Hi."), {"role": "assistant"}]}) + "\n")
    config = write_config(tmp_path, {"source": "messages", "data_files": [str(path)]}, "mine_bad")
    code, _, err = run(capsys, "data", "stats", "--config", str(config))
    assert code == 2 and err.count("\n") == 1
    assert "mine.jsonl" in err and "row 2" in err and "messages[1]: missing field 'content'" in err
    config = write_config(tmp_path, {"source": "messages", "data_files": [str(path)], "on_bad_row": "skip"},
                          "mine_bad_skip")
    code, out, err = run(capsys, "data", "stats", "--config", str(config))
    assert code == 0, err
    assert "rows: read 2, kept 1 example(s)" in out and "skipped 1 row(s): missing_field" in out


# ---- the Tulu rendering of a system turn, against open-instruct's own code -------------------------------------

class CharTokenizer:
    """One id per character (its code point), called as open-instruct calls an HF tokenizer: its
    `encode_with_messages_format` then gives the exact text it trains on and the trained characters."""

    eos_token = "</s>"

    def __call__(self, text, return_tensors="pt", max_length=None, truncation=False):
        import torch

        ids = [ord(c) for c in text][: max_length if truncation else None]
        return types.SimpleNamespace(input_ids=torch.tensor([ids], dtype=torch.long))


def open_instruct_text(messages) -> tuple[str, str]:
    """(text, its trained characters) by open-instruct's `encode_with_messages_format`, verbatim."""
    from helpers.upstream_code import encode_with_messages_format

    out = encode_with_messages_format({"messages": messages}, CharTokenizer(), 1 << 20)
    text = "".join(map(chr, out["input_ids"].tolist()))
    trained = "".join(c for c, label in zip(text, out["labels"].tolist(), strict=True) if label != -100)
    return text, trained


@pytest.mark.parametrize("row_id", ["sys-multi", "merge-system"])
def test_tulu_system_turn_is_open_instructs_text_and_mask(tmp_path, row_id):
    """Our rendering of the row as the messages source reads it = open-instruct's on the raw row: the text
    (`<|system|>\\n...\\n` before the first user turn) and the trained characters. merge-system: two system turns
    merged into one, rendered as open-instruct renders one system turn holding both."""
    pytest.importorskip("torch")
    from instructjax.data.encoding.templates import render

    conv = next(c for c in load([CHATS], tmp_path) if c.id == f"messages-{row_id}")
    raw = next(r for r in ROWS if r.get("id") == row_id)["messages"]
    reference = raw if row_id == "sys-multi" else [s("You are terse.\n\nAnswer in English."), *raw[2:]]
    text, trained = open_instruct_text(reference)
    assert text.startswith("<|system|>\n" + reference[0]["content"] + "\n<|user|>\n")
    ours = render(conv, "tulu", eos_token="</s>")
    assert ours.text == text
    assert "".join(ours.text[b:e] for b, e in ours.trained_spans) == trained


def test_tulu_ids_and_mask_with_a_system_turn_are_open_instructs(tmp_path):
    """Through the task's encoded examples (the pipeline's ids and loss mask under the built-in tokenizer) =
    open-instruct's `encode_with_messages_format` over the tokenizer library, on the raw row."""
    pytest.importorskip("torch")
    from helpers.pretrained_models import open_instruct_example

    from instructjax.data.binding import bind
    from instructjax.data.blends import specs
    from instructjax.data.encoding.tokenizer import default_tokenizer_path
    from instructjax.data.tokenized import examples as examples_lib

    specs.define({"tasks": {"mine_ids": {"source": "messages", "data_files": [str(CHATS)]}}})
    bound = bind("mine_ids", tokenizer=None, max_length=2048)
    (example,) = [e for e in examples_lib.encoded_examples(bound.name) if e["id"] == "messages-sys-multi"]
    ids, mask = open_instruct_example(default_tokenizer_path(), ROWS[0]["messages"], bos="<s>", eos="</s>")
    assert example["tokens"].tolist() == ids
    assert example["loss_mask"].tolist() == mask.tolist()
