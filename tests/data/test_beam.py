"""The tokenized cache on Apache Beam: `data prepare --runner beam` on the FnApiRunner's local worker processes writes
the in-process cache byte for byte (built-in tasks, a seeded subset, a user's `messages` file with a bad row
counted), a worker killed mid-shard costs a run of the pipeline and not the cache, a second prepare writes nothing;
bad input is one line and exit 2; seqio's own `cache_tasks_main` caches one of our tasks and seqio reads back the
pipeline's examples. Beam's start-up is the cost of each run: few runs, each checked for several things."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import ASSETS

from instructjax.cli import main

ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _config(tmp_path: Path, counts: dict, on_bad_row: str | None = "skip") -> Path:
    """A run over `counts` (built-in tasks, and `chats`: tests/assets/messages/chats.jsonl with a malformed row)."""
    chats = tmp_path / "chats.jsonl"
    chats.write_text((ASSETS / "messages" / "chats.jsonl").read_text() + '{"messages": [\n')
    task = {"source": "messages", "data_files": [str(chats)], **({"on_bad_row": on_bad_row} if on_bad_row else {})}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "define": {"tasks": {"chats": task}, "mixtures": {"beam_mix": {"mode": "epoch", "counts": counts}}},
        "model": {"preset": "tiny"}, "data": {"mixture": "beam_mix", "seq_len": 256, "global_batch": 4}}))  # fmt: skip
    return config


def _prepare(config: Path, cache: Path, *flags: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "instructjax.cli", "data", "prepare", "--config", str(config), *flags],
                            env={**ENV, "INSTRUCTJAX_CACHE_DIR": str(cache)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)  # fmt: skip


def _files(cache: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in cache.glob("*.tok")}


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every process below `pid`."""
    children = []
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
            cmdline = (status.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append((int(status.parent.name), cmdline))
    return children + [d for child, _ in children for d in _descendants(child)]


@pytest.mark.slow
def test_beam_writes_the_in_process_cache_and_a_killed_worker_costs_a_rerun(tmp_path):
    """The FnApiRunner with 2 worker processes, shards of 30 rows (a seeded subset of 100 examples, a tree source's
    conversations, a user's chats): one worker is killed once the first piece is
    written (the other shards still to make); the pipeline runs again, keeping the pieces written, and the cache
    files are the in-process `data prepare`'s bytes (names: the same cache keys). The bad row is counted, as in
    process; a second prepare finds every file and writes nothing."""
    config = _config(tmp_path, {"dolly_builtin": 100, "oasst1_builtin": None, "chats": None})
    inproc = _prepare(config, tmp_path / "inproc")
    out, err = inproc.communicate(timeout=600)
    assert inproc.returncode == 0, err[-3000:]

    cache = tmp_path / "beam"
    beam = _prepare(config, cache, "--runner", "beam", "--shard-rows", "30", "--beam-args", "--direct_num_workers=2")
    killed = None
    while beam.poll() is None and killed is None:
        if any(cache.glob("*.pieces/*")):
            workers = [p for p, cmd in _descendants(beam.pid) if "sdk_worker_main" in cmd and not cmd.startswith("/bin/sh")]
            if workers:
                os.kill(workers[0], signal.SIGKILL)
                killed, at = workers[0], time.monotonic()
        time.sleep(0.05)
    out, err = beam.communicate(timeout=600)
    after_kill = time.monotonic() - at if killed else 0.0
    assert beam.returncode == 0, err[-3000:]
    assert killed is not None and "a Beam worker process was lost" in err and "running the pipeline again (2 of 3)" in err
    assert "beam: 3 task(s) to tokenize in" in out and "3 written now, 0 there already" in out
    # one timing line, the whole prepare's: it covers the pipeline's second run (after the kill)
    assert "beam: 3 cache file(s) written\n" in out and out.count(" s:") == 1
    took = float(re.search(r"^prepared 3 task\(s\) of beam_mix in ([0-9.]+) s:", out, re.M).group(1))
    assert took + 2.0 >= after_kill, (took, after_kill)
    files = _files(cache)
    assert len(files) == 3 and files == _files(tmp_path / "inproc")
    assert not list(cache.glob("*.pieces"))

    from instructjax.data import cache as cache_lib

    chats = next(p for p in cache.glob("chats.*.tok"))
    assert cache_lib.load(chats)[1]["skipped"]["malformed_json"] == 1

    mtimes = {p: p.stat().st_mtime_ns for p in cache.glob("*.tok")}
    again = _prepare(config, cache, "--runner", "beam", "--beam-args", "--direct_num_workers=2")
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:]
    assert "beam:" not in out and "0 written now, 3 there already" in out
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.tok")} == mtimes


@pytest.mark.slow
def test_a_bad_row_under_on_bad_row_error_is_the_readers_line(tmp_path):
    """`--on-bad-row error`: the worker meets the malformed row; the run stops with the reader's own line (file and
    row: what the in-process prepare prints), exit 2, and writes no cache file."""
    from instructjax.core.errors import DataError
    from instructjax.data.sources.load import load_conversations

    config = _config(tmp_path, {"chats": None}, on_bad_row=None)
    with pytest.raises(DataError) as read:
        list(load_conversations("messages", [str(tmp_path / "chats.jsonl")]))
    proc = _prepare(config, tmp_path / "cache", "--on-bad-row", "error", "--runner", "beam", "--beam-args",
                    "--direct_num_workers=1")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 2 and not _files(tmp_path / "cache"), err[-3000:]
    assert err.strip().splitlines()[-1] == f"instructjax: error: {read.value}" and "row 18: malformed JSON" in err


@pytest.mark.parametrize("flags, line", [
    (["--runner", "spark"], "--runner 'spark': use in-process (the default) or beam"),
    (["--beam-args", "--direct_num_workers=2"], "--beam-args go with --runner beam"),
    (["--runner", "beam", "--beam-args", "--direct_num_workers=two"],
     "--beam-args: argument --direct_num_workers: invalid int value: 'two'"),
    (["--runner", "beam", "--beam-args", "--no_such_option=1"], "--beam-args: Beam has no option '--no_such_option=1'"),
    (["--runner", "beam", "--beam-args", "--runner=DataflowRunner", "--project=p"],
     "--beam-args: DataflowRunner refuses them: Pipeline has validations errors: Missing GCS path option: "
     "temp_location."),
])  # fmt: skip
def test_a_runner_or_options_that_cannot_run_are_one_line(tmp_path, capsys, flags, line):
    """Checked before the config is read: nothing is tokenized or written."""
    assert main(["data", "prepare", "--config", str(tmp_path / "absent.yaml"), *flags]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"instructjax: error: {line}") and err.count("\n") == 1, err


def test_without_beam_the_error_names_the_install(tmp_path, capsys, monkeypatch):
    import instructjax.data.tokenized as tokenized

    monkeypatch.setitem(sys.modules, "apache_beam", None)  # not installed: importing it fails
    monkeypatch.delitem(sys.modules, "instructjax.data.tokenized.beam_prepare", raising=False)
    monkeypatch.delattr(tokenized, "beam_prepare", raising=False)
    assert main(["data", "prepare", "--config", str(tmp_path / "absent.yaml"), "--runner", "beam"]) == 2
    assert capsys.readouterr().err == ("instructjax: error: --runner beam needs Apache Beam: pip install "
                                       "'instructjax[beam]' && pip install --no-deps apache-beam==2.77.0 (what `make "
                                       "setup` does)\n")


def test_a_worker_that_sees_other_data_than_the_plan_stops_with_one_line(tmp_path, monkeypatch):
    """The plan keys each task by its data files' content (the cache key); a worker whose file differs (changed
    after the plan, another copy on a remote worker) refuses the shard: the line `run` raises."""
    from instructjax.core.errors import ConfigError
    from instructjax.data.blends.specs import TaskSpec
    from instructjax.data.tokenized import beam_prepare

    monkeypatch.setenv("INSTRUCTJAX_CACHE_DIR", str(tmp_path / "cache"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"instruction": f"Say {i}.", "input": "", "output": f"{i}."}) + "\n"
                            for i in range(30)))  # fmt: skip
    builds = beam_prepare.plan([("mine", TaskSpec("alpaca", (str(rows),)), None, None)], 10)
    assert [(s.lo, s.hi) for s in builds[0].shards] == [(0, 10), (10, 20), (20, 30)]
    rows.write_text(rows.read_text().replace("Say 3.", "Say three."))
    errors = str(tmp_path / "errors")
    encode = beam_prepare._Encode(builds, (), errors)
    encode.setup()
    with pytest.raises(ConfigError) as met:
        list(encode.process((0, 0, 10)))
    error = beam_prepare.recorded_error(errors)  # what `run` raises: the worker's record, read back
    assert isinstance(error, ConfigError) and str(error) == str(met.value) and str(error).startswith(
        "task 'mine': this Beam worker sees other data than the plan (its cache key ")
    assert not (tmp_path / "cache").exists()  # nothing written


def test_beam_is_used_through_its_public_api():
    """beam_prepare reaches no private name of Beam's (a `_name` of a Beam module, class or option class): options
    through PipelineOptions and its `get_all_options` hook, a lost worker by its exit status."""
    import ast

    from instructjax.data.tokenized import beam_prepare

    tree = ast.parse(Path(beam_prepare.__file__).read_text())
    private = sorted({f"{ast.unparse(n.value)}.{n.attr}" for n in ast.walk(tree) if isinstance(n, ast.Attribute)
                      and n.attr.startswith("_") and not n.attr.startswith("__")
                      and ast.unparse(n.value) not in ("self", "os")}  # our own state; os._exit is public
                     | {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0
                        and (n.module or "").startswith("apache_beam") for a in n.names if a.name.startswith("_")})
    assert private == []


def test_a_data_error_crosses_as_its_fields(tmp_path):
    """A worker's DataError is recorded as data (JSON) and read back as the same error: its file, row, reason."""
    from instructjax.core.errors import DataError
    from instructjax.data.tokenized import beam_prepare

    assert beam_prepare.recorded_error(str(tmp_path / "none")) is None
    met = DataError("malformed JSON: line 1", reason="malformed_json", file="/d/rows.jsonl", row=18, source="messages")
    beam_prepare.record(str(tmp_path), met)
    got = beam_prepare.recorded_error(str(tmp_path))
    assert type(got) is DataError and str(got) == str(met) and (got.reason, got.row, got.file) == ("malformed_json",
                                                                                                  18, "/d/rows.jsonl")


@pytest.mark.slow
def test_seqio_cache_tasks_main_caches_a_task_that_reads_back_as_the_pipelines_examples(tmp_path):
    """seqio's own Beam command, on the FnApiRunner, with our tasks registered by importing
    `instructjax.data.seqio.registered`: it splits the task by our shards, and seqio's cached dataset holds the
    pipeline's examples (ids, tokens, masks, conversations)."""
    import seqio

    import instructjax.data.seqio.registered  # noqa: F401 - registers the built-in tasks, as the command does
    from instructjax.data.tokenized import examples

    proc = subprocess.run([sys.executable, "-m", "seqio.scripts.cache_tasks_main",
                           "--module_import=instructjax.data.seqio.registered", "--tasks=dolly_builtin",
                           f"--output_cache_dir={tmp_path}", "--min_shards=1",
                           "--pipeline_options=--runner=FnApiRunner"], env=ENV, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Skipping task" not in proc.stderr and (tmp_path / "dolly_builtin" / "COMPLETED").exists()
    seqio.add_global_cache_dirs([str(tmp_path)])
    task = seqio.get_mixture_or_task("dolly_builtin")
    cached = {e["id"].decode(): e for e in task.get_dataset(sequence_length=None, split="train", use_cached=True,
                                                            shuffle=False).as_numpy_iterator()}  # fmt: skip
    want = examples.encoded_examples("dolly_builtin")
    assert len(cached) == len(want) == task.get_cached_stats("train")["examples"] == 200
    for ex in want:
        got = cached[ex["id"]]
        assert np.array_equal(got["tokens"], ex["tokens"]) and np.array_equal(got["loss_mask"], ex["loss_mask"])
        assert got["conversation"].decode() == ex["conversation"]
