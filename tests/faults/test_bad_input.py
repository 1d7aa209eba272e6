"""Bad rows: one DataError naming file, row and problem; or skipped and counted per reason. Rows that are
well formed but that the dataset's reference pipeline drops (an empty response, a ShareGPT conversation
with nothing answered) are skipped and counted under any policy, the first one named."""

import gzip
import json

import pytest

from instructjax.core.errors import BadRowPolicy, ConfigError, DataError
from instructjax.data.sources.load import load_conversations

GOOD = {"instruction": "Say hi.", "input": "", "output": "hi"}


def write_lines(tmp_path, lines: list[bytes | str | dict], name="rows.jsonl") -> str:
    encoded = [x if isinstance(x, bytes) else (json.dumps(x) if isinstance(x, dict) else x).encode()
               for x in lines]
    path = tmp_path / name
    path.write_bytes(b"\n".join(encoded) + b"\n")
    return str(path)


def first_error(name, path, **options) -> DataError:
    with pytest.raises(DataError) as info:
        list(load_conversations(name, [path], cache_dir=None, **options))
    return info.value


def skipped(name, path, **options):
    policy = BadRowPolicy(on_bad_row="skip")
    convs = list(load_conversations(name, [path], policy=policy, **options))
    return convs, dict(policy.skipped), policy


# (source, bad row, reason, words the message must contain): rows that break the schema
CASES = [
    ("alpaca", b'{"instruction": "x", "output": ', "malformed_json", "malformed JSON"),
    ("alpaca", b'{"instruction": "caf\xe9", "input": "", "output": "y"}', "invalid_utf8", "UTF-8"),
    ("alpaca", {"instruction": "x", "input": ""}, "missing_field", "'output'"),
    ("alpaca", {"instruction": "x", "input": "", "output": 7}, "wrong_type", "'output' is int"),
    ("alpaca", b'["not", "an", "object"]', "wrong_type", "expected an object"),
    ("sharegpt", {"id": "s", "conversations": [{"from": "human", "value": "a"}, {"value": "b"}]}, "missing_field",
     "'from'"),
]
# well-formed rows the reference pipelines drop: skipped and counted, never fatal
QUIRKS = [
    ("alpaca", {"instruction": "x", "input": "", "output": "   "}, "empty_response", "empty"),
    ("dolly", {"instruction": "x", "context": "", "response": ""}, "empty_response", "empty"),
    ("sharegpt", {"id": "s", "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "yo"}]},
     "role_order", "'gpt' where 'human' is due"),
    ("sharegpt", {"id": "s", "conversations": [{"from": "human", "value": "a"}, {"from": "bard", "value": "b"}]},
     "other_speaker", "'bard'"),
    ("baize", {"input": "[|Human|] hi\n[|AI|] hello [|AI|] again\n[|Human|] "}, "role_order", "two [|AI|]"),
]


def good_rows_for(source):
    return {"alpaca": GOOD, "dolly": {"instruction": "q", "context": "", "response": "r"},
            "sharegpt": {"id": "g", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "r"}]},
            "baize": {"input": "[|Human|] q\n[|AI|] r\n[|Human|] "}}[source]


@pytest.mark.parametrize("reader", ["json", "datasets"])
@pytest.mark.parametrize("source,bad,reason,words", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_bad_row_is_named_then_skipped(tmp_path, monkeypatch, source, bad, reason, words, reader):
    """Whichever reads the file (`rows.SCAN_BYTES`: the json module, or `datasets` and its fallback)."""
    from instructjax.data.sources import rows as rows_lib

    if reader == "datasets":
        monkeypatch.setattr(rows_lib, "SCAN_BYTES", -1)
    good = good_rows_for(source)
    path = write_lines(tmp_path, [good, good, bad, good])  # the bad row is line 3
    err = first_error(source, path)
    assert err.reason == reason
    assert err.file == path and err.row == 3
    assert f"file {path}" in str(err) and "row 3" in str(err) and words in str(err)

    convs, counts, policy = skipped(source, path)
    assert len(convs) == 3 and counts == {reason: 1}
    assert policy.summary()[0].startswith(f"skipped 1 bad row(s): {reason}")


@pytest.mark.parametrize("source,quirk,reason,words", QUIRKS, ids=[f"{c[0]}-{c[2]}" for c in QUIRKS])
def test_quirk_is_counted_under_the_default_policy(tmp_path, source, quirk, reason, words):
    good = good_rows_for(source)
    path = write_lines(tmp_path, [good, good, quirk, good])
    policy = BadRowPolicy()  # error on a bad row
    convs = list(load_conversations(source, [path], policy=policy))
    assert len(convs) == 3 and dict(policy.skipped) == {reason: 1} and policy.read == 4
    first = policy.examples[reason]
    assert f"file {path}" in first and "row 3" in first and words in first


def test_line_numbers_survive_blank_lines(tmp_path):
    path = write_lines(tmp_path, [GOOD, "", GOOD, "   ", {"instruction": "x", "input": ""}])
    err = first_error("alpaca", path)
    assert (err.reason, err.row) == ("missing_field", 5)


def test_several_reasons_counted_separately(tmp_path):
    lines = [GOOD, b"{oops", {"instruction": "x"}, b"{also bad", GOOD, {"instruction": 3, "output": "y"}]
    convs, counts, _ = skipped("alpaca", write_lines(tmp_path, lines))
    assert len(convs) == 2
    assert counts == {"malformed_json": 2, "missing_field": 1, "wrong_type": 1}



@pytest.mark.parametrize("name", ["rows.jsonl", "rows.json"])
def test_gzipped_files_read_as_their_plain_twins(tmp_path, name):
    """A .gz copy (the hub's FLAN V2 files are .jsonl.gz) gives the plain file's conversations, and a bad row
    in it is named by the plain file's line number or index; an other suffix is a one-line ConfigError."""
    rows = [dict(GOOD, output=f"hi {i}") for i in range(5)]
    bad = dict(GOOD, output=7)
    if name.endswith(".jsonl"):
        lines = [json.dumps(r) for r in rows[:2]] + [""] + [json.dumps(r) for r in rows[2:] + [bad]]
        text, where = "\n".join(lines) + "\n", 7  # the blank line 3 is passed over, the bad row is line 7
    else:
        text, where = json.dumps(rows + [bad]), 5
    plain = tmp_path / name
    plain.write_text(text)
    packed = tmp_path / "gz" / (name + ".gz")
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(text.encode()))
    read = [skipped("alpaca", str(path))[0] for path in (plain, packed)]
    assert [c.messages for c in read[1]] == [c.messages for c in read[0]] and len(read[0]) == 5
    err = first_error("alpaca", str(packed))
    assert (err.reason, err.row, err.file) == ("wrong_type", where, str(packed))
    for broken in (text.encode(), gzip.compress(text.encode())[:-8]):  # not gzip at all; cut short
        packed.write_bytes(broken)
        with pytest.raises(DataError, match="cannot decompress gzip file") as info:
            list(load_conversations("alpaca", [str(packed)]))
        assert info.value.file == str(packed) and "\n" not in str(info.value)
    other = tmp_path / "rows.jsonl.zst"
    other.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"rows\.jsonl\.zst: unsupported file type"):
        list(load_conversations("alpaca", [str(other)]))

@pytest.mark.parametrize("name", ["rows.jsonl", "rows.json"])
def test_without_datasets_the_same_rows_and_errors(tmp_path, monkeypatch, name):
    """Where `datasets` is not installed (a bare accelerator image), or the file is small (`rows.SCAN_BYTES`), json
    and jsonl are read here: the same conversations and the same bad-row report as through `datasets`; parquet is a
    one-line ConfigError."""
    from instructjax.data.sources import rows as rows_lib

    rows = [dict(GOOD, output=f"hi {i}") for i in range(4)] + [dict(GOOD, output=7)]
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) if name.endswith(".jsonl") else json.dumps(rows))
    with monkeypatch.context() as through_datasets:
        through_datasets.setattr(rows_lib, "SCAN_BYTES", -1)
        with_datasets = skipped("alpaca", str(path))

    def missing():
        raise ImportError("No module named 'datasets'")

    monkeypatch.setattr(rows_lib, "datasets_quietly", missing)
    without = skipped("alpaca", str(path))
    assert [c.messages for c in without[0]] == [c.messages for c in with_datasets[0]] and len(without[0]) == 4
    assert without[1] == with_datasets[1] == {"wrong_type": 1}
    assert first_error("alpaca", str(path)).row == (5 if name.endswith(".jsonl") else 4)
    parquet = tmp_path / "rows.parquet"
    parquet.write_bytes(b"PAR1")
    with pytest.raises(ConfigError, match="reading parquet needs the `datasets` package"):
        list(load_conversations("alpaca", [str(parquet)]))


def test_json_array_names_the_element_index(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([GOOD, GOOD, {"instruction": "x", "input": "", "output": 3}, GOOD]))
    err = first_error("alpaca", str(path))
    assert (err.reason, err.row, err.file) == ("wrong_type", 2, str(path))


def test_json_array_bad_utf8_is_confined_to_its_element(tmp_path):
    path = tmp_path / "rows.json"
    path.write_bytes(b"[" + json.dumps(GOOD).encode() + b",\n" +
                     b'{"instruction": "caf\xe9", "input": "", "output": "y"},\n' + json.dumps(GOOD).encode() + b"]")
    err = first_error("alpaca", str(path))
    assert (err.reason, err.row) == ("invalid_utf8", 1)
    convs, counts, _ = skipped("alpaca", str(path))
    assert len(convs) == 2 and counts == {"invalid_utf8": 1}


def test_json_array_malformed_always_raises(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text("[" + json.dumps(GOOD) + ", " + json.dumps(GOOD) + ', {"instruction": }]')
    policy = BadRowPolicy(on_bad_row="skip")
    with pytest.raises(DataError) as info:
        list(load_conversations("alpaca", [str(path)], policy=policy))
    assert (info.value.reason, info.value.row) == ("malformed_json", 2)
    assert "cannot be read" in str(info.value)


def test_oasst1_orphans_and_their_subtrees_are_reported(tmp_path):
    rows = [
        {"message_id": "p1", "parent_id": None, "role": "prompter", "text": "q", "rank": None},
        {"message_id": "a1", "parent_id": "p1", "role": "assistant", "text": "r", "rank": 0},
        {"message_id": "a9", "parent_id": "gone", "role": "assistant", "text": "r", "rank": 0},
        {"message_id": "p9", "parent_id": "a9", "role": "prompter", "text": "q", "rank": 0},
        {"message_id": "x1", "parent_id": "p1", "role": "moderator", "text": "r", "rank": 1},
    ]
    path = write_lines(tmp_path, rows)
    err = first_error("oasst1", path)
    assert (err.reason, err.row) == ("role_order", 5) and "moderator" in str(err)
    convs, counts, _ = skipped("oasst1", path)
    assert [c.id for c in convs] == ["oasst1-a1"]
    assert counts == {"role_order": 1, "broken_tree": 2}


def test_oasst1_empty_reply_is_counted_naming_its_row(tmp_path):
    rows = [{"message_id": "p1", "parent_id": None, "role": "prompter", "text": "q"},
            {"message_id": "a1", "parent_id": "p1", "role": "assistant", "text": " "},
            {"message_id": "a2", "parent_id": "p1", "role": "assistant", "text": "r"}]
    policy = BadRowPolicy()
    convs = list(load_conversations("oasst1", [write_lines(tmp_path, rows)], policy=policy))
    assert [c.id for c in convs] == ["oasst1-a2"] and dict(policy.skipped) == {"empty_response": 1}
    assert "row 2" in policy.examples["empty_response"]
