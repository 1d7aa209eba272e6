"""`plan` counts what it can (issue 64): a user's local and bucket files are read as `train` reads them, a hub
dataset is the papers' estimate until the tokenized cache holds it, every task's line says where its figures come
from and what was skipped, and the run's steps are the ones `train` runs. The counts are checked against the rows
written by hand (tests/data/test_messages.py's and below), the steps against a real run."""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import ASSETS, REPO
from helpers.host_devices import one_device

from instructjax.cli import main

CHATS = ASSETS / "messages" / "chats.jsonl"  # 17 rows: 10 kept, the others skipped as these (by hand)
CHAT_SKIPS = {"no_answered_round": 2, "unknown_role": 1, "system_not_first": 1, "too_short": 3}
DOLLY = ASSETS / "hub" / "dolly.jsonl"  # 3 rows: 2 kept, one with an empty response (tests/helpers/hub_rows.py)


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


# TRL's conversational pairs with UltraFeedback's `prompt_id` and no `id`: 4 usable, then one whose completions are
# the same once stripped and one with an empty chosen answer (both skipped and counted)
PAIRS = [{"prompt_id": f"q{i}", "prompt": [u(f"Capital of country {i}?")], "chosen": [a(f"City {i}.")],
          "rejected": [a("No idea.")]} for i in range(4)]
PAIRS += [{"prompt_id": "same", "prompt": [u("Hi?")], "chosen": [a("Hello.")], "rejected": [a(" Hello. ")]},
          {"prompt_id": "empty", "prompt": [u("Hi?")], "chosen": [a("  ")], "rejected": [a("Go away.")]}]


def write_config(tmp_path, name: str, task: dict, data: dict | None = None, **top) -> str:
    config = {"run_dir": str(tmp_path / "run"), "model": {"preset": "tiny", "dtype": "float32"},
              "data": {"mixture": name, "seq_len": 256, "global_batch": 8, "pack": False, **(data or {})},
              "define": {"tasks": {name: task}}, **top}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def plan(capsys, path: str, *args: str) -> tuple[dict, str]:
    """`instructjax plan` of `path`: its data as JSON, and the text it prints."""
    assert main(["plan", "--config", path, "--json", *args]) == 0
    data = json.loads(capsys.readouterr().out)["data"]
    assert main(["plan", "--config", path, *args]) == 0
    return data, capsys.readouterr().out


@pytest.mark.slow
def test_local_chats_and_pairs_are_counted_then_read_from_the_cache(capsys, tmp_path, monkeypatch):
    """10 local chats (17 rows) and 6 local pairs: counted, then read back from the tokenized cache, each with the
    rows read and the ones skipped by reason; the epoch is the real one (one example a row, 8 a step: 2 steps) and
    the run `optim.epochs` of them or `max_steps` (with --real-data too)."""
    monkeypatch.setenv("INSTRUCTJAX_CACHE_DIR", str(tmp_path / "cache"))  # empty: the first plan counts
    chats = write_config(tmp_path, "plan_chats", {"source": "messages", "data_files": [str(CHATS)]})
    for origin in ("counted", "cache"):
        data, out = plan(capsys, chats)  # --json, then the text: the cache holds the task by then
        (task,) = data["tasks"]
        assert (task["task"], task["origin"], task["examples"], task["read"]) == ("plan_chats", origin, 10, 17)
        assert task["skipped"] == CHAT_SKIPS and data["examples"] == 10 and data["steps"] == 2
        assert data["run_steps"] == 2 * 2 and "run         2 epoch(s): 4 steps" in out
        assert f"data        plan_chats: 10 example(s), {task['tokens']:,} tokens (cache: tokenized earlier" in out
    data, out = plan(capsys, chats, "max_steps=3")
    assert data["run_steps"] == 3 and "run         max_steps 3: 3 steps, 1.5 epoch(s) of 2 steps" in out

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(row) + "\n" for row in PAIRS))
    prefs = write_config(tmp_path, "plan_pairs", {"source": "preference", "data_files": [str(pairs)]},
                         objective={"loss": "dpo"}, max_steps=4)
    for args in ((), ("--real-data",)):
        data, out = plan(capsys, prefs, *args)
        (task,) = data["tasks"]
        assert (task["examples"], task["read"], task["pairs"]) == (4, 6, True)
        assert task["skipped"] == {"identical_completions": 1, "empty_completion": 1}
        assert data["run_steps"] == 4 and "run         max_steps 4: 4 steps" in out
        assert "plan_pairs: 4 pair(s)" in out and "skipped 1 row(s): identical_completions" in out, out
        assert "skipped 1 row(s): empty_completion" in out


@pytest.mark.slow
def test_a_hub_task_is_the_papers_estimate_until_the_cache_holds_it(capsys, tmp_path, monkeypatch):
    """Dolly from the hub (stood in for by its hand-written rows): the paper's 15,011 without reaching the hub; with
    --real-data its rows read (2 kept, 1 skipped) and cached; then the cache's figures, the hub not read again."""
    from instructjax.data.sources import hub
    from instructjax.data.sources.rows import RowFile
    from instructjax.data.tokenized import examples
    from instructjax.train import plan_data

    monkeypatch.setenv("INSTRUCTJAX_CACHE_DIR", str(tmp_path / "cache"))
    asked = []
    monkeypatch.setattr(hub, "hub_table", lambda *args: asked.append(args[0]) or RowFile(str(DOLLY),
                                                                                          str(tmp_path / "hf")))
    monkeypatch.setattr(examples, "hub_identity", lambda source: asked.append(f"identity {source}") or [source])
    config = str(tmp_path / "dolly.yaml")
    (tmp_path / "dolly.yaml").write_text(yaml.safe_dump({"model": {"preset": "tiny"}, "data": {"mixture": "dolly"}}))
    data, out = plan(capsys, config)
    assert [(t["origin"], t["examples"]) for t in data["tasks"]] == [("paper estimate", 15_011)] and asked == []
    assert "dolly: 15,011 example(s)" in out and "(paper estimate: Tulu Table 1" in out
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "dolly.0123abcd-0123.tok").write_text("another run's")  # a file of its name, in the cache
    data, _ = plan(capsys, config, f"model.init_from={tmp_path / 'not_imported_yet'}")  # no tokenizer to key it by
    assert [t["origin"] for t in data["tasks"]] == ["paper estimate"] and asked == []
    data, _ = plan(capsys, config, "--real-data")
    assert [(t["origin"], t["examples"], t["skipped"]) for t in data["tasks"]] == [("counted", 2, {"empty_response": 1})]
    assert "databricks/databricks-dolly-15k" in asked
    asked.clear()
    data, out = plan(capsys, config)
    assert [(t["origin"], t["examples"], t["read"]) for t in data["tasks"]] == [("cache", 2, 3)]
    assert set(asked) == {"identity dolly"} and data["examples"] == 2  # its cache key looked up, no row read
    # a local copy of a dataset the papers sized, larger than plan reads: the paper's figures, unless --real-data
    monkeypatch.setattr(plan_data, "COUNT_BYTES", DOLLY.stat().st_size - 1)
    local = write_config(tmp_path, "local_dolly", {"source": "dolly", "data_files": [str(DOLLY)]})
    for args, origin, kept in (((), "paper estimate", 15_011), (("--real-data",), "counted", 2)):
        data, out = plan(capsys, local, *args)
        assert [(t["origin"], t["examples"]) for t in data["tasks"]] == [(origin, kept)]
        assert ("more than plan reads (0.0 MiB): --real-data counts them" in out) == (origin == "paper estimate")


def test_bucket_data_files_are_counted(capsys, tmp_path, bucket, monkeypatch):
    from instructjax.core import storage

    monkeypatch.setenv("INSTRUCTJAX_CACHE_DIR", str(tmp_path / "cache"))
    storage.write_text(f"{bucket}/chats.jsonl", CHATS.read_text())
    path = write_config(tmp_path, "plan_bucket", {"source": "messages", "data_files": [f"{bucket}/chats.jsonl"]})
    data, _ = plan(capsys, path)
    assert [(t["origin"], t["examples"], t["read"], t["skipped"]) for t in data["tasks"]] == \
        [("counted", 10, 17, CHAT_SKIPS)]


@pytest.mark.slow
def test_the_run_is_the_steps_train_runs(capsys, tmp_path):
    """The run line's steps against `train`'s: 2 epochs of the chats' 2 steps trained to the end (DONE's step); the
    shipped quickstart's `max_steps: 200`, not its 8 epochs. (Rows of 128 tokens: the chats' longest fits whole.)
    `train` runs on one of the suite's 8 CPU devices (the same steps; its program not sharded 8 ways)."""
    chats = write_config(tmp_path, "plan_run", {"source": "messages", "data_files": [str(CHATS)]},
                         data={"seq_len": 128}, optim={"epochs": 2}, checkpoint={"every": 100})
    data, out = plan(capsys, chats)
    assert data["examples"] == 10 and "run         2 epoch(s): 4 steps" in out
    with one_device():
        assert main(["train", "--config", chats]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "run" / "DONE").read_text())["step"] == data["run_steps"] == 2 * 2
    quickstart = REPO / "configs" / "quickstart.yaml"
    data, out = plan(capsys, str(quickstart), "--topology", "v5e-1")
    assert data["run_steps"] == yaml.safe_load(quickstart.read_text())["max_steps"] == 200
    assert "run         max_steps 200: 200 steps" in out
