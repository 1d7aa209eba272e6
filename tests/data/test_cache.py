"""The tokenized-task cache: the batches are those of a run without it, whether the cache is cold, warm,
corrupted or written by several processes at once; its key follows the data files, tokenizer, template
and max length."""

import dataclasses
import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from instructjax.core.config import DataSection
from instructjax.core.errors import ConfigError
from instructjax.data import cache
from instructjax.data.batches.packing import PackStats
from instructjax.data.batches.pipeline import DataPipeline
from instructjax.data.tokenized import examples

MIX = "acp_ACP_n10000_builtin"


def as_a_new_process(monkeypatch, new_command, where) -> None:
    """The cache at `where` ("off": none) and no task read yet, as a new process starts."""
    monkeypatch.setenv("INSTRUCTJAX_CACHE_DIR", str(where))
    new_command()


def batches(monkeypatch, new_command, where, n=4):
    as_a_new_process(monkeypatch, new_command, where)
    config = DataSection(mixture=MIX, seq_len=128, global_batch=8, pack_window=64, prefetch=0)
    it = iter(DataPipeline(config))
    return [next(it) for _ in range(n)]


def same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def test_cold_warm_and_corrupted_cache_give_the_batches_of_no_cache(monkeypatch, tmp_path, capfd, new_command):
    reference = batches(monkeypatch, new_command, "off")
    where = tmp_path / "cache"
    assert same(batches(monkeypatch, new_command, where), reference)  # cold: written
    files = sorted(where.glob("*.tok"))
    assert len(files) == 3  # one per task of the mixture
    stamps = [f.stat().st_mtime_ns for f in files]
    assert same(batches(monkeypatch, new_command, where), reference)  # warm: read back, nothing rewritten
    assert [f.stat().st_mtime_ns for f in files] == stamps
    capfd.readouterr()

    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    files[0].write_bytes(bytes(data))
    files[1].write_bytes(files[1].read_bytes()[:100])  # a torn write
    assert same(batches(monkeypatch, new_command, where), reference)
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


def test_the_key_follows_a_selection_encoders_weights_not_its_path(monkeypatch, tmp_path):
    """k-means with the model encoder names its model by path (`checkpoints/base/<preset>` in the paper
    configs): other weights saved at that path give another key; the files unchanged, the same key."""
    import jax

    from instructjax.core.checkpoint import save_params
    from instructjax.data.blends import specs
    from instructjax.data.blends.specs import SelectionSpec
    from instructjax.model.decoder import Decoder
    from instructjax.model.presets import preset

    monkeypatch.setenv("INSTRUCTJAX_CACHE_DIR", str(tmp_path / "cache"))
    from flax import nnx

    config = preset("tiny")
    model_dir = tmp_path / "checkpoints" / "base" / "tiny"

    def save(seed):
        import shutil

        shutil.rmtree(model_dir, ignore_errors=True)
        params = jax.device_get(nnx.to_pure_dict(nnx.state(Decoder(config, rngs=nnx.Rngs(seed)), nnx.Param)))
        save_params(model_dir, params, dataclasses.asdict(config))

    spec = dataclasses.replace(specs.task("alpaca_builtin"), selection=SelectionSpec(
        method="kmeans", k=8, encoder="llama-mean", encoder_model=str(model_dir)))
    save(0)
    first = examples._cache_path("alpaca_builtin", spec, None, None)
    assert examples._cache_path("alpaca_builtin", spec, None, None) == first
    save(1)  # other weights, the same path
    assert examples._cache_path("alpaca_builtin", spec, None, None) != first


def test_concurrent_writers_leave_one_whole_file(tmp_path):
    path = tmp_path / "task-x.tok"
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["task-x.tok"]  # no temporary file left


def _examples():
    rng = np.random.default_rng(0)
    exs = [{"tokens": rng.integers(0, 70_000 if n % 7 == 0 else 300, n).astype(np.int32),
            "loss_mask": rng.integers(0, 2, n).astype(np.int32),
            "conversation": json.dumps({"id": f"c{n}", "text": "héllo ✓" * n}), "id": f"c{n}"}
           for n in range(40)]  # fmt: skip
    exs[3]["id"] = None
    return exs


def test_a_cache_file_gives_back_every_example_exactly(tmp_path):
    """Tokens (narrowed on disk to what holds them) and masks come back int32; conversations, ids, slices,
    sizes and the token range agree with the examples written."""
    exs = _examples()
    path = tmp_path / "task-x.tok"
    cache.save(path, exs, {"read": 40})
    loaded, report = cache.load(path)
    assert report == {"read": 40} and len(loaded) == 40
    for got, want in zip(loaded, exs, strict=True):
        assert got.keys() == want.keys()
        assert got["tokens"].dtype == got["loss_mask"].dtype == np.int32
        assert all(np.array_equal(got[k], want[k]) for k in ("tokens", "loss_mask"))
        assert (got["conversation"], got["id"]) == (want["conversation"], want["id"])
    assert loaded[-1]["id"] == exs[-1]["id"] and loaded[3]["id"] is None
    part = loaded[10:20]
    assert len(part) == 10 and [e["id"] for e in part] == [e["id"] for e in exs[10:20]]
    lengths, trained = part.sizes()
    assert lengths.tolist() == list(range(10, 20))
    assert trained.tolist() == [int(np.count_nonzero(e["loss_mask"][1:])) for e in exs[10:20]]
    assert part.token_range() == (min(int(e["tokens"].min()) for e in exs[10:20]),
                                  max(int(e["tokens"].max()) for e in exs[10:20]))  # fmt: skip
    assert loaded[:1].token_range() is None  # the empty example holds no token


def test_every_damaged_byte_and_every_wrong_length_is_detected(tmp_path, capfd):
    """A flipped byte anywhere (magic, each array, header, trailer), a cut or a longer file: reported in one
    line and not used (None: the caller rebuilds)."""
    path = tmp_path / "task-x.tok"
    cache.save(path, _examples(), {"read": 40})
    good = path.read_bytes()
    damaged = [bytes(good[:i]) + bytes([good[i] ^ 0x01]) + bytes(good[i + 1 :])
               for i in range(0, len(good), max(1, len(good) // 300))]  # fmt: skip
    damaged += [good[:-1], good[:-40], good[: len(good) // 2], good[:10], b"", good + b"\0"]
    capfd.readouterr()
    for data in damaged:
        path.write_bytes(data)
        assert cache.load(path) is None
    warnings = capfd.readouterr().err.splitlines()
    assert len(warnings) == len(damaged)
    assert all(w.startswith("instructjax: warning: tokenized cache") and w.endswith("rebuilding it") for w in warnings)


def test_a_warm_cache_plans_the_epoch_that_packing_every_window_gives(monkeypatch, tmp_path, new_command):
    """The plan from the cached sizes (no example made) equals packing every window, and the no-cache plan."""
    config = DataSection(mixture=MIX, seq_len=128, global_batch=8, pack_window=64, prefetch=0)
    plans = []
    for where in ("off", tmp_path, tmp_path):  # no cache, cold, warm
        as_a_new_process(monkeypatch, new_command, where)
        pipeline = DataPipeline(config)
        plans.append(pipeline.plan_epoch(0))
    assert all(isinstance(e, cache.CachedExamples) for e in pipeline.stream.examples)
    assert plans[0] == plans[1] == plans[2]
    stats, trained, w = PackStats(), 0, 0
    while (window := pipeline.stream.window_examples(0, w)) is not None:
        rows, window_stats = pipeline.packer.pack_window(window)
        stats += window_stats
        trained += int((rows["loss_weights"] > 0).sum())
        w += 1
    assert plans[2].packing == dataclasses.asdict(stats) and plans[2].trained_tokens == trained
    assert (plans[2].examples, plans[2].rows, plans[2].tokens) == (stats.examples, stats.rows, stats.tokens)


def test_a_token_outside_the_vocabulary_is_named_from_the_cache_as_without_it(monkeypatch, tmp_path, new_command):
    """The cached token range stands for a scan of the tokens: the same one-line error names the same example."""
    config = DataSection(mixture=MIX, seq_len=128, global_batch=8, pack_window=64, prefetch=0)
    errors = []
    for where in ("off", tmp_path, tmp_path):  # no cache, cold, warm
        as_a_new_process(monkeypatch, new_command, where)
        with pytest.raises(ConfigError) as error:
            DataPipeline(config, vocab_size=300)
        errors.append(str(error.value))
    assert errors[0] == errors[1] == errors[2] and "outside the model's vocabulary [0, 300)" in errors[0]
    span = max(e.token_range()[1] for e in DataPipeline(config).stream.examples)
    DataPipeline(config, vocab_size=span + 1)  # the largest id fits: no error
    with pytest.raises(ConfigError, match=f"token id {span} is outside"):
        DataPipeline(config, vocab_size=span)


@pytest.mark.slow
def test_two_processes_filling_one_cache_at_once_agree(tmp_path):
    """Two hosts on one disk tokenize the same tasks at the same time: both finish, the files are whole."""
    code = ("from instructjax.core.config import DataSection; from instructjax.data.batches.pipeline import DataPipeline; "
            f"p = DataPipeline(DataSection(mixture={MIX!r}, seq_len=128, global_batch=8, pack_window=64)); "
            "print(p.plan_epoch(0).rows)")
    env = {"INSTRUCTJAX_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    rows = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and rows[0] == rows[1]
    files = sorted(tmp_path.glob("*.tok"))
    assert len(files) == 3 and all(cache.load(f) is not None for f in files)
    assert not list(tmp_path.glob("*.tmp"))
