"""`instructjax data ...` through the real CLI entry point: output, one-line errors, exit codes."""

import json

import pytest
from helpers import ASSETS, REPO

from instructjax.cli import main
from instructjax.data.schema import Conversation


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_stats_json_has_table1_columns_and_packing(capsys):
    code, out, _ = run(capsys, "data", "stats", "code_alpaca_builtin", "--json", "--seq-len", "512",
                       "--global-batch", "8")  # fmt: skip
    assert code == 0
    result = json.loads(out)
    (task,) = result["tasks"]
    assert task["instances"] == 200 and task["mean_rounds"] == 1.0
    assert task["paper"]["completion"] == pytest.approx(67.8)
    epoch = result["epoch"]
    assert epoch["rows"] * 512 * epoch["efficiency"] == pytest.approx(epoch["tokens"])
    assert epoch["steps"] == -(-epoch["rows"] // 8)


def test_stats_json_names_each_tasks_subset_by_the_sha256_of_its_ids(capsys):
    """Seed 000 draws one random subset per dataset, shared by every setting: `data stats --json` prints the
    sha256 of each task's sorted selected ids - the same for P3 in acp_P and acp_ACP, and the digest of the
    ids the training pipeline holds (hashed here independently)."""
    import hashlib

    from instructjax.core.config import DataSection
    from instructjax.data.batches.pipeline import DataPipeline
    from instructjax.data.blends import specs

    digests = {}
    for mixture in ("acp_P_builtin", "acp_ACP_builtin"):
        code, out, _ = run(capsys, "data", "stats", mixture, "--json")
        assert code == 0
        digests[mixture] = {t["task"]: t["subset_sha256"] for t in json.loads(out)["tasks"]}
    assert digests["acp_P_builtin"]["p3_builtin"] == digests["acp_ACP_builtin"]["p3_builtin"]
    pipe = DataPipeline(DataSection(mixture="acp_ACP_builtin", prefetch=0))
    assert len(pipe.task_names) == 3
    for task, examples in zip(pipe.task_names, pipe.stream.examples, strict=True):
        ids = "\n".join(sorted(json.loads(e["conversation"])["id"] for e in examples))
        assert digests["acp_ACP_builtin"][specs.base_name(task)] == hashlib.sha256(ids.encode()).hexdigest()
    assert len(set(digests["acp_ACP_builtin"].values())) == 3


def test_preview_json_round_trips_tokens_and_mask(capsys):
    code, out, _ = run(capsys, "data", "preview", "alpaca_builtin", "-n", "2", "--json")
    assert code == 0
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert len(lines) == 2
    for row in lines:
        assert len(row["tokens"]) == len(row["loss_mask"]) and sum(row["loss_mask"]) > 0
        assert "<|assistant|>" in row["text"] and row["meta"]["instruction"]


def test_bad_file_is_one_line_naming_file_and_row_and_exits_nonzero(capsys, tmp_path):
    path = tmp_path / "dolly.jsonl"
    good = {"instruction": "Name a fruit.", "context": "", "response": "Apple.", "category": "open_qa"}
    mistyped = {**good, "response": 3}
    empty = {**good, "response": "   "}  # a quirk: counted, not fatal
    path.write_text("\n".join(json.dumps(r) for r in [good, mistyped, good, empty]) + "\n")
    code, out, err = run(capsys, "data", "stats", "dolly", "--data-files", str(path))
    assert code == 2
    assert err.count("\n") == 1 and "dolly.jsonl" in err and "row 2" in err and "'response' is int" in err

    code, out, err = run(capsys, "data", "stats", "dolly", "--data-files", str(path), "--on-bad-row", "skip")
    assert code == 0
    assert "skipped 1 row(s): wrong_type" in out and "skipped 1 row(s): empty_response" in out
    assert "read 4, kept 2 example(s)" in out


def test_malformed_json_row_is_one_stderr_line_from_the_real_command(tmp_path):
    """In a real process (library loggers write to the original stderr, out of capsys' reach): `datasets`
    fails to parse the file and would log it; only our line naming the row is printed."""
    import subprocess
    import sys

    path = tmp_path / "alpaca.jsonl"
    path.write_text(json.dumps({"instruction": "a", "input": "", "output": "b"}) + "\n{oops\n")
    proc = subprocess.run([sys.executable, "-m", "instructjax.cli", "data", "stats", "alpaca", "--data-files",
                           str(path)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "row 2: malformed JSON" in proc.stderr, proc.stderr


def test_select_writes_the_longest_responses(capsys, tmp_path):
    out_path = tmp_path / "longest.jsonl"
    code, out, _ = run(capsys, "data", "select", "alpaca_builtin", "--method", "longest", "-k", "5",
                       "--out", str(out_path))  # fmt: skip
    assert code == 0
    chosen = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert len(chosen) == 5
    scores = [c["selection"]["score"] for c in chosen]
    assert scores == sorted(scores, reverse=True)
    assert all(Conversation.from_json(json.dumps(c)).messages for c in chosen)


def test_unknown_name_is_a_one_line_error(capsys):
    code, _, err = run(capsys, "data", "stats", "no_such_blend")
    assert code == 2 and "no_such_blend" in err and err.count("\n") == 1


def _builtin_configs() -> list[str]:
    """Every config under configs/ whose data is the built-in rows (the others read hub datasets)."""

    import yaml

    root = REPO / "configs"
    out = []
    for path in sorted(root.rglob("*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        mixture = (config.get("data") or {}).get("mixture", "")
        tasks = ((config.get("define") or {}).get("tasks") or {}).values()
        if mixture.endswith("_builtin") or any(t.get("data_files") == ["builtin"] for t in tasks):
            out.append(str(path))
    return out


@pytest.mark.parametrize("path", _builtin_configs(), ids=lambda p: p.rsplit("configs/", 1)[-1])
def test_preview_every_builtin_config(capsys, path):
    """Previews render, including a mosaic with nothing left to train (it used to crash on one)."""
    code, out, err = run(capsys, "data", "preview", "--config", path, "-n", "40")
    assert code == 0, err
    assert out.count("=== ") == 40


def test_quickstart_mosaics_fit_its_rows():
    """The Mosaic-IT budget follows data.seq_len: no mosaic of the quickstart's epochs loses every trained
    token to truncation, and every mosaic of an epoch is trained on (the default budget of 2048 tokens at
    seq_len 256 made 93 of epoch 0's mosaics untrainable)."""
    from instructjax.cli.quickstart import QUICKSTART_CONFIG
    from instructjax.core.config import load_config
    from instructjax.data.batches.pipeline import DataPipeline
    from instructjax.train import setup as run_setup

    config = load_config(QUICKSTART_CONFIG)
    pipeline = DataPipeline(run_setup.bind_data(config, None).config)
    steps_per_epoch = pipeline.plan_epoch(0).steps
    for epoch in range(-(-config.max_steps // steps_per_epoch)):
        examples = pipeline.stream.epoch_examples(epoch)
        assert len(examples) == len(pipeline.stream.mosaic_conversations(epoch))
        assert all(len(e["tokens"]) <= config.data.seq_len and e["loss_mask"].sum() > 0 for e in examples)
    assert pipeline.stream.untrainable == {}


def test_mosaic_budget_above_the_row_length_is_a_config_error(capsys, tmp_path):
    from instructjax.cli.quickstart import QUICKSTART_CONFIG

    code, _, err = run(capsys, "train", "--config", str(QUICKSTART_CONFIG), "data.mosaic.max_length=512", "data.global_batch=8",
                       f"run_dir={tmp_path}")
    assert code == 2 and err.count("\n") == 1 and "data.mosaic.max_length=512 is above data.seq_len=256" in err


def test_preview_shows_a_mosaic_with_nothing_to_train(capsys, tmp_path):
    """A mosaic budget far below the prompts leaves mosaics with no trained token: preview shows and labels
    them (it used to crash on one with a TypeError) and exits 0."""
    import yaml

    from instructjax.cli.quickstart import QUICKSTART_CONFIG

    config = yaml.safe_load(QUICKSTART_CONFIG.read_text())
    config["data"]["mosaic"]["max_length"] = 48
    path = tmp_path / "tight_mosaic.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, err = run(capsys, "data", "preview", "--config", str(path), "-n", "60")
    assert code == 0, err
    assert out.count("=== ") == 60
    assert ", 0 trained ===" in out and "(no trained token within the first 48 tokens" in out


def test_stats_reports_rows_read_kept_repaired_skipped_per_source(capsys, tmp_path):
    """`data stats --config` over the hand-written hub rows of all fourteen sources: per source, the rows read,
    the examples kept, the repairs (how) and the skips (why) that each reference pipeline implies
    (tests/data/test_sources.py states them row by row)."""
    from pathlib import Path

    import yaml
    from helpers.hub_rows import EXPECTED

    from instructjax.data.sources.registry import SOURCES

    hub = ASSETS / "hub"
    files = {s: str(next(p for p in hub.iterdir() if p.stem == s)) for s in SOURCES}
    config = {
        "run_dir": str(tmp_path / "run"), "model": {"preset": "tiny", "dtype": "float32"},
        "data": {"mixture": "hubstats_mix", "seq_len": 2048, "global_batch": 8},
        "define": {"tasks": {f"hubstats_{s}": {"source": s, "data_files": [f]} for s, f in files.items()},
                   "mixtures": {"hubstats_mix": {"mode": "epoch", "counts": {f"hubstats_{s}": None for s in files}}}},
    }
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(config))
    code, out, err = run(capsys, "data", "stats", "--config", str(path), "--json")
    assert code == 0, err
    by_source = {t["source"]: t["rows"] for t in json.loads(out)["tasks"]}
    expected = {s: (len(kept), skipped, repaired) for s, (kept, skipped, repaired) in EXPECTED.items()}
    expected["oasst1"] = (2, {"failed_review": 1, "deleted": 1}, {})  # test_oasst1_real_rows_leave_out_...
    for source, file in files.items():
        rows = (len(json.loads(Path(file).read_text())) if file.endswith(".json")
                else len(Path(file).read_text().splitlines()))
        kept, skipped, repaired = expected[source]
        assert by_source[source] == {"read": rows, "kept": kept, "repaired": repaired, "skipped": skipped,
                                     "split": 0, "truncated": 0, "untrainable": 0}, source

    code, out, _ = run(capsys, "data", "stats", "--config", str(path))
    assert code == 0
    assert "  rows: read 9, kept 4 example(s)" in out  # sharegpt
    assert "  note: repaired 1 row(s): dropped the unpaired last turn" in out
    assert "  note: skipped 1 row(s): incorrect_choice" in out  # p3


def test_own_preference_pairs_are_counted_previewed_by_prompt_id_and_refused_with_reasons(capsys, tmp_path):
    """A user's own pairs (TRL's schema with UltraFeedback's `prompt_id`, no `id`): `data stats` counts them (no
    UltraFeedback figures beside them), `data preview` titles each pair by its prompt_id and shows both sides, and a
    file of which no pair is usable is one line with what was read and why each was skipped, nothing written."""
    import yaml

    def pair(pid, chosen, rejected):
        return {"prompt_id": pid, "prompt": [{"role": "user", "content": f"Question {pid}?"}],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}]}

    bad = [pair("same", "Yes.", " Yes. "), pair("empty", " ", "No.")]  # skipped: identical, empty completion
    for name, rows in (("good", [pair("q7", "Seven.", "Six."), *bad]), ("bad", bad)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({
            "run_dir": str(tmp_path / f"run_{name}"), "model": {"preset": "tiny", "dtype": "float32"},
            "objective": {"loss": "dpo"}, "data": {"mixture": f"pairs_{name}", "seq_len": 128, "global_batch": 8},
            "define": {"tasks": {f"pairs_{name}": {"source": "preference",
                                                   "data_files": [str(tmp_path / f"{name}.jsonl")]}}}}))
    code, out, _ = run(capsys, "data", "stats", "--config", str(tmp_path / "good.yaml"), "--json")
    (task,) = json.loads(out)["tasks"]
    assert code == 0 and task["paper"] is None and (task["instances"], task["unit"]) == (1, "pairs")
    assert task["rows"]["read"] == 3 and task["rows"]["skipped"] == {"identical_completions": 1, "empty_completion": 1}
    code, out, _ = run(capsys, "data", "preview", "--config", str(tmp_path / "good.yaml"))
    assert code == 0 and out.startswith("=== pair preference-q7 (preference)"), out
    chosen, rejected = out.split("--- chosen")[1].split("--- rejected")
    assert "[[Seven.</s>]]" in chosen and "[[Six.</s>]]" in rejected and "Six" not in chosen
    code, _, err = run(capsys, "train", "--config", str(tmp_path / "bad.yaml"))
    assert code == 2 and err.count("\n") == 1, err
    assert ("task 'pairs_bad' has no usable examples: 2 row(s) read, none kept (skipped 1 row(s): empty_completion; "
            "skipped 1 row(s): identical_completions)") in err
    assert not (tmp_path / "run_bad").exists()
