"""The tokenized-task cache: the batches are those of a run without it, whether the cache is cold, warm,
corrupted or written by several processes at once; its key follows the data files, tokenizer, template
and max length."""

import subprocess
import sys
import threading

import numpy as np
import pytest

from instructjax.core.config import DataSection
from instructjax.data import cache, examples
from instructjax.data.pipeline import DataPipeline

MIX = "acp_ACP_n10000_builtin"


def batches(monkeypatch, where, n=4):
    monkeypatch.setenv("INSTRUCTJAX_CACHE_DIR", str(where))
    examples._STREAMS.clear()  # what a new process starts with
    config = DataSection(mixture=MIX, seq_len=128, global_batch=8, pack_window=64, prefetch=0)
    it = iter(DataPipeline(config))
    return [next(it) for _ in range(n)]


def same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_cold_warm_and_corrupted_cache_give_the_batches_of_no_cache(monkeypatch, tmp_path, capfd):
    reference = batches(monkeypatch, "off")
    where = tmp_path / "cache"
    assert same(batches(monkeypatch, where), reference)  # cold: written
    files = sorted(where.glob("*.npz"))
    assert len(files) == 3  # one per task of the mixture
    stamps = [f.stat().st_mtime_ns for f in files]
    assert same(batches(monkeypatch, where), reference)  # warm: read back, nothing rewritten
    assert [f.stat().st_mtime_ns for f in files] == stamps
    capfd.readouterr()

    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    files[0].write_bytes(bytes(data))
    files[1].write_bytes(files[1].read_bytes()[:100])  # a torn write
    assert same(batches(monkeypatch, where), reference)
    warnings = [line for line in capfd.readouterr().err.splitlines() if "tokenized cache" in line]
    assert len(warnings) == 2 and all("unreadable" in w and "rebuilding" in w for w in warnings)
    assert all(cache.load(f) is not None for f in files)  # rebuilt


def test_the_key_follows_content_tokenizer_template_and_length(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"instruction": "a", "input": "", "output": "b"}\n')
    base = dict(files=[str(data)], spec_repr="spec", tokenizer_fingerprint="t", template_repr="tulu", max_length=512,
                count=None, seed=None)
    k = cache.key(**base)
    assert cache.key(**base) == k
    for change in (dict(tokenizer_fingerprint="u"), dict(template_repr="chatml"), dict(max_length=1024),
                   dict(count=10), dict(seed=1)):
        assert cache.key(**{**base, **change}) != k, change
    data.write_text('{"instruction": "a", "input": "", "output": "c"}\n')
    assert cache.key(**base) != k  # the same file name, another content


def test_concurrent_writers_leave_one_whole_file(tmp_path):
    path = tmp_path / "task-x.npz"
    exs = [{"tokens": np.arange(n, dtype=np.int32), "loss_mask": np.ones(n, np.int32), "conversation": "{}",
            "id": str(n)} for n in range(1, 200)]  # fmt: skip
    threads = [threading.Thread(target=cache.save, args=(path, exs, {"read": 1})) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loaded, report = cache.load(path)
    assert report == {"read": 1} and [e["id"] for e in loaded] == [e["id"] for e in exs]
    assert all(np.array_equal(a["tokens"], b["tokens"]) for a, b in zip(loaded, exs, strict=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task-x.npz"]  # no temporary file left


@pytest.mark.slow
def test_two_processes_filling_one_cache_at_once_agree(tmp_path):
    """Two hosts on one disk tokenize the same tasks at the same time: both finish, the files are whole."""
    code = ("from instructjax.core.config import DataSection; from instructjax.data.pipeline import DataPipeline; "
            f"p = DataPipeline(DataSection(mixture={MIX!r}, seq_len=128, global_batch=8, pack_window=64)); "
            "print(p.plan_epoch(0).rows)")
    env = {"INSTRUCTJAX_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    rows = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and rows[0] == rows[1]
    files = sorted(tmp_path.glob("*.npz"))
    assert len(files) == 3 and all(cache.load(f) is not None for f in files)
    assert not list(tmp_path.glob("*.tmp"))
