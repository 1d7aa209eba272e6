"""Bad input in a mixture of several sources (alpaca jsonl, dolly JSON array, sharegpt jsonl), defined by
a run config's `define:` block, through the Python API (config -> DataPipeline / Trainer) and the CLI
(`data stats`, `train`):

- each bad-row kind, alone in one file of the mixture: the error names source, file and row, as a
  DataError and as one CLI line (exit 2), and `train` stops on it before compiling anything; a row the
  dataset's reference pipeline drops (an empty response, turns out of order) is counted, not fatal;
- every kind at once with `on_bad_row: skip` / `--on-bad-row skip`: counts per task and reason, and the
  batches trained are bit-identical to those of the same mixture over files holding only the good rows;
- the global data order does not depend on the number of hosts (1 vs 2 processes).
"""

import json

import numpy as np
import pytest
import yaml

from instructjax import cli
from instructjax.core.config import DataSection, load_config
from instructjax.core.errors import DataError
from instructjax.data.batches.pipeline import BATCH_KEYS, DataPipeline
from instructjax.data.blends.specs import define as define_data
from instructjax.data.tokenized import examples as examples_lib

SOURCES = ("alpaca", "dolly", "sharegpt")
SUFFIX = {"alpaca": "jsonl", "dolly": "json", "sharegpt": "jsonl"}  # dolly as a JSON array


def good(source: str, i: int) -> dict:
    if source == "alpaca":
        return {"instruction": f"Write a word about topic {i}.", "input": "", "output": f"Word {i} is fine."}
    if source == "dolly":
        return {"instruction": f"Name fruit number {i}.", "context": "", "response": f"Fruit {i}: apple.",
                "category": "open_qa"}  # fmt: skip
    return {"id": f"g{i}", "conversations": [{"from": "human", "value": f"Question {i}?"},
                                             {"from": "gpt", "value": f"Answer {i}."}]}  # fmt: skip


# (id, source, the bad row (raw bytes or an object), reason)
BAD = [
    ("malformed_json", "alpaca", b'{"instruction": "x", "output": ', "malformed_json"),
    ("invalid_utf8", "alpaca", b'{"instruction": "caf\xe9", "input": "", "output": "y"}', "invalid_utf8"),
    ("missing_field", "alpaca", {"instruction": "x", "input": ""}, "missing_field"),
    ("mistyped_field", "dolly", {"instruction": "x", "context": "", "response": 7, "category": "qa"}, "wrong_type"),
    ("turn_without_value", "sharegpt", {"id": "b0", "conversations": [{"from": "human", "value": "q"},
                                                                      {"from": "gpt"}]}, "missing_field"),
]  # fmt: skip
QUIRKS = [  # well formed, dropped by the reference pipelines: counted under any policy
    ("empty_response", "dolly", {"instruction": "x", "context": "", "response": "  ", "category": "qa"},
     "empty_response"),
    ("roles_out_of_order", "sharegpt", {"id": "b1", "conversations": [{"from": "human", "value": "a"},
                                                                      {"from": "human", "value": "q"},
                                                                      {"from": "gpt", "value": "r"}]}, "role_order"),
]  # fmt: skip


def write(path, rows: list) -> str:
    """jsonl (rows numbered from 1) or a JSON array (elements numbered from 0); bytes rows go in raw."""
    encoded = [r if isinstance(r, bytes) else json.dumps(r).encode() for r in rows]
    if path.suffix == ".json":
        path.write_bytes(b"[" + b",\n".join(encoded) + b"]")
    else:
        path.write_bytes(b"\n".join(encoded) + b"\n")
    return str(path)


def make_config(tmp_path, files: dict[str, list], on_bad_row="error", name="cfg") -> tuple[str, dict[str, str]]:
    """A run config whose `define:` registers one task per source over `files` and mixture fx_mix."""
    paths = {s: write(tmp_path / f"{name}_{s}.{SUFFIX[s]}", rows) for s, rows in files.items()}
    config = {
        "run_dir": str(tmp_path / f"{name}_run"),
        "model": {"preset": "tiny", "dtype": "float32"},
        "data": {"mixture": "fx_mix", "seq_len": 128, "global_batch": 8, "pack_window": 64},
        "define": {
            "tasks": {f"fx_{s}": {"source": s, "data_files": [p], "on_bad_row": on_bad_row} for s, p in paths.items()},
            "mixtures": {"fx_mix": {"mode": "epoch", "counts": {f"fx_{s}": None for s in paths}}},
        },
    }  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path), paths


def pipeline(config_path: str) -> DataPipeline:
    config = load_config(config_path)
    define_data(config.define)
    return DataPipeline(config.data)


def one_epoch(p: DataPipeline) -> list[dict]:
    it = iter(p)
    return [next(it) for _ in range(p.plan_epoch(0).steps)]


@pytest.mark.parametrize("kind,source,bad,reason", BAD, ids=[b[0] for b in BAD])
def test_each_bad_kind_names_source_file_and_row(tmp_path, capsys, kind, source, bad, reason):
    files = {s: [good(s, i) for i in range(3)] for s in SOURCES}
    files[source].insert(1, bad)  # jsonl line 2 / JSON array element 1
    config, paths = make_config(tmp_path, files)
    row = 1 if SUFFIX[source] == "json" else 2

    with pytest.raises(DataError) as info:  # Python API
        pipeline(config)
    err = info.value
    assert (err.source, err.file, err.row, err.reason) == (source, paths[source], row, reason)
    assert str(err).startswith(f"source {source}, file {paths[source]}, row {row}: ")

    assert cli.main(["data", "stats", "--config", config]) == 2  # CLI
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and f"source {source}, file {paths[source]}, row {row}: " in line


@pytest.mark.parametrize("kind,source,quirk,reason", QUIRKS, ids=[q[0] for q in QUIRKS])
def test_each_quirk_is_counted_under_the_default_policy(tmp_path, capsys, kind, source, quirk, reason):
    files = {s: [good(s, i) for i in range(3)] for s in SOURCES}
    files[source].insert(1, quirk)
    config, paths = make_config(tmp_path, files)
    assert cli.main(["data", "stats", "--config", config, "--json"]) == 0
    by_source = {t["source"]: t for t in json.loads(capsys.readouterr().out)["tasks"]}
    assert by_source[source]["rows"]["skipped"] == {reason: 1}
    assert (by_source[source]["rows"]["read"], by_source[source]["instances"]) == (4, 3)


def test_train_stops_on_a_bad_row_before_compiling(tmp_path, capsys, monkeypatch):
    import jax

    import instructjax.train.trainer  # noqa: F401  (its imports jit at import time; the run must not)

    files = {s: [good(s, i) for i in range(3)] for s in SOURCES}
    files["sharegpt"].insert(2, BAD[-1][2])
    config, paths = make_config(tmp_path, files)
    monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before the data error"))
    assert cli.main(["train", "--config", config, "max_steps=1"]) == 2
    line = capsys.readouterr().err
    assert line.count("\n") == 1 and f"source sharegpt, file {paths['sharegpt']}, row 3: " in line
    assert "missing field 'from'" in line or "missing field 'value'" in line


def skip_fixture(tmp_path):
    """Every bad kind at once, spread over the sources, between good rows; and the good rows alone."""
    goods = {s: [good(s, i) for i in range(6)] for s in SOURCES}
    mixed = {s: list(rows) for s, rows in goods.items()}
    expected = {f"fx_{s}": {} for s in SOURCES}
    for n, (_, source, bad, reason) in enumerate(BAD + QUIRKS):
        mixed[source].insert(1 + 2 * n % len(mixed[source]), bad)
        counts = expected[f"fx_{source}"]
        counts[reason] = counts.get(reason, 0) + 1
    mixed["alpaca"].append(BAD[0][2])  # a second malformed row: counts add up per reason
    expected["fx_alpaca"]["malformed_json"] += 1
    return goods, mixed, expected


def test_skip_counts_per_reason_and_trains_exactly_the_good_rows(tmp_path):
    goods, mixed, expected = skip_fixture(tmp_path)
    clean_config, _ = make_config(tmp_path, goods, name="clean")
    clean = one_epoch(pipeline(clean_config))
    clean_examples = {t: examples_lib.encoded_examples(t) for t in expected}

    config, _ = make_config(tmp_path, mixed, on_bad_row="skip", name="mixed")
    skipping = pipeline(config)
    for task, counts in expected.items():
        report = examples_lib.task_report(task)
        assert dict(report.skipped) == counts, task
        assert report.examples == 6 and report.rows == 6
        kept = examples_lib.encoded_examples(task)
        assert [json.loads(e["conversation"])["messages"] for e in kept] == \
            [json.loads(e["conversation"])["messages"] for e in clean_examples[task]]  # fmt: skip
    batches = one_epoch(skipping)
    assert len(batches) == len(clean) > 0
    for got, want in zip(batches, clean, strict=True):
        for key in BATCH_KEYS:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_cli_on_bad_row_skip_reports_counts_per_reason(tmp_path, capsys):
    _, mixed, expected = skip_fixture(tmp_path)
    config, _ = make_config(tmp_path, mixed)  # the tasks say error; the flag says skip
    assert cli.main(["data", "stats", "--config", config]) == 2
    capsys.readouterr()
    assert cli.main(["data", "stats", "--config", config, "--on-bad-row", "skip", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    by_source = {t["source"]: t for t in result["tasks"]}
    for source in SOURCES:
        counts = expected[f"fx_{source}"]
        notes = [n for n in by_source[source]["notes"] if n.startswith("skipped")]
        assert sorted(notes) == sorted(f"skipped {n} row(s): {r}" for r, n in counts.items())
        assert by_source[source]["instances"] == 6
    # every command that reads the run's data takes it too, and the config's data.on_bad_row says the same
    assert cli.main(["train", "--config", config, "max_steps=1", "--on-bad-row", "skip"]) == 0
    out = capsys.readouterr().out
    assert "data: fx_alpaca" in out and "skipped 2 row(s): malformed_json" in out
    assert cli.main(["data", "prepare", "--config", config, "data.on_bad_row=skip"]) == 0
    assert cli.main(["plan", "--config", config, "--on-bad-row", "skip", "--gpus", "1", "--real-data"]) == 0


def test_data_order_is_the_same_on_one_and_two_hosts():
    """The hosts' slices of every step, joined, are the 1-host global batch (so a restart on another host
    count trains the same rows in the same order)."""
    config = DataSection(mixture="acp_ACP_builtin", seq_len=128, global_batch=8, pack_window=64, prefetch=0)
    one = iter(DataPipeline(config))
    hosts = [iter(DataPipeline(config, process_index=i, process_count=2)) for i in range(2)]
    for _ in range(DataPipeline(config).plan_epoch(0).steps + 2):
        parts, batch = [next(h) for h in hosts], next(one)
        assert all(np.array_equal(np.concatenate([p[k] for p in parts]), batch[k]) for k in batch)
