"""A run that lives in a bucket, through the real CLI in real processes against a real GCS-API server
(fake-gcs-server, `gcs_server` in conftest.py), reached through the standard emulator variables alone:

- `import --out gs://`, a config file, `data_files`, `model.init_from`, the tokenized cache
  (`INSTRUCTJAX_CACHE_DIR=gs://...`) and every `run_dir` in the bucket; `data prepare`, then `train` tokenizes
  no conversation;
- SIGTERM at a logged step, then `--resume`: metrics.jsonl and the TensorBoard events in the bucket equal an
  uninterrupted run's;
- 2 processes train the same run from the bucket: the one-process losses;
- a torn newest step in the bucket: `export` to a local directory falls back to the step before with one
  warning, and transformers loads what it wrote: that step's weights;
- a `sweep` whose runs live in the bucket skips what is done there, and trains again when the config changed;
- with TensorFlow installed (epath's trap: TensorFlow's GCS filesystem ignores STORAGE_EMULATOR_HOST), an
  Orbax CheckpointManager on gs:// saves and restores on the server, metadata through gcsfs, arrays through
  TensorStore;
- no local `gs:` folder ever appears.

What is read back is read with gcsfs directly, not through instructjax's storage layer."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow

from helpers import WORKER  # noqa: E402
from helpers.host_devices import xla_flags  # noqa: E402

TIMINGS = {"tokens_per_sec", "step_seconds"}
STEPS = 4


def gcs():
    """gcsfs's plain GCS file system (the emulator has no Storage Control API for its extended one)."""
    from gcsfs.core import GCSFileSystem

    return GCSFileSystem(use_listings_cache=False)


def cli(cwd: Path, *argv: str, env: dict | None = None, hosts: int = 1) -> list[subprocess.CompletedProcess]:
    """`instructjax ARGV` (tests/helpers/fault_worker.py: the real CLI) in `hosts` processes started in `cwd`."""
    port = _free_port()
    procs = []
    for i in range(hosts):
        extra = {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(hosts),
                 "JAX_PROCESS_ID": str(i)} if hosts > 1 else {}  # fmt: skip
        procs.append(subprocess.Popen(
            [sys.executable, str(WORKER), *argv], cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(4 // hosts),
                 **(env or {}), **extra}))  # fmt: skip
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=900)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ok(results: list[subprocess.CompletedProcess]) -> list[subprocess.CompletedProcess]:
    assert all(r.returncode == 0 for r in results), [r.stderr[-3000:] for r in results]
    return results


def metrics(fs, run_dir: str) -> list[dict]:
    return [json.loads(line) for line in fs.cat(f"{run_dir}/metrics.jsonl").decode().splitlines()]


def without_timings(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


@pytest.fixture(scope="module")
def run(tmp_path_factory, gcs_server):
    """A bucket holding a base model, data and a config; `data prepare`, an uninterrupted run and a run stopped
    by SIGTERM at step 2 then resumed, all in the bucket."""
    from helpers import pretrained_models as pm

    from instructjax.data.sources.synthetic import synthetic_rows

    root = tmp_path_factory.mktemp("buckets")
    fs, bucket = gcs(), gcs_server.bucket("instructjax-run")
    name = bucket.removeprefix("gs://")
    tok = pm.bpe_tokenizer(str(root / "tokenizer"), vocab_size=600)
    from tokenizers import Tokenizer as Raw

    eos = Raw.from_file(os.path.join(tok, "tokenizer.json")).token_to_id("<|endoftext|>")
    hf = pm.hf_model(str(root / "hf"), tok, vocab_size=608, bos=None, eos=eos)
    fs.pipe(f"{name}/data/rows.jsonl", "".join(json.dumps(r) + "\n" for r in synthetic_rows("alpaca", 240)).encode())
    config = {
        "max_steps": STEPS, "log_every": 2, "seed": 0, "checkpoint": {"every": 2, "keep": 3},
        "model": {"init_from": f"{bucket}/base/tiny", "dtype": "float32"},
        "data": {"mixture": "rows_mix", "seq_len": 128, "global_batch": 8, "prefetch": 0},
        "optim": {"lr": 1e-3, "epochs": 1},
        "define": {"tasks": {"rows": {"source": "alpaca", "data_files": [f"{bucket}/data/rows.jsonl"]}},
                   "mixtures": {"rows_mix": {"mode": "epoch", "counts": {"rows": None}}}},
    }
    fs.pipe(f"{name}/run.yaml", yaml.safe_dump(config).encode())
    work = root / "cwd"  # every process runs here: a `gs:` folder would appear in it
    work.mkdir()
    env = {"INSTRUCTJAX_CACHE_DIR": f"{bucket}/tokenized", "INSTRUCTJAX_STAGING_DIR": str(root / "staged")}
    counts = {k: root / f"{k}.count" for k in ("prepare", "reference", "stopped")}

    imported = ok(cli(work, "import", "--hf", hf, "--out", f"{bucket}/base/tiny", env=env))
    prepared = ok(cli(work, "data", "prepare", "--config", f"{bucket}/run.yaml",
                      env={**env, "FAULT_COUNT_ENCODED": str(counts["prepare"])}))  # fmt: skip
    reference = ok(cli(work, "train", "--config", f"{bucket}/run.yaml", f"run_dir={bucket}/runs/ref",
                       env={**env, "FAULT_COUNT_ENCODED": str(counts["reference"])}))  # fmt: skip
    stopped = cli(work, "train", "--config", f"{bucket}/run.yaml", f"run_dir={bucket}/runs/a",
                  env={**env, "FAULT_SIGTERM_AFTER_STEP": "2", "FAULT_COUNT_ENCODED": str(counts["stopped"])})
    resumed = ok(cli(work, "train", "--config", f"{bucket}/run.yaml", f"run_dir={bucket}/runs/a", "--resume", env=env))
    return {"root": root, "work": work, "fs": fs, "bucket": bucket, "env": env, "hf": hf, "config": config,
            "imported": imported, "prepared": prepared, "reference": reference, "stopped": stopped[0],
            "resumed": resumed, "counts": {k: int(p.read_text()) for k, p in counts.items()}}


def test_import_prepare_and_train_with_every_path_in_the_bucket(run):
    fs, name = run["fs"], run["bucket"].removeprefix("gs://")
    assert fs.exists(f"{name}/base/tiny/checkpoints/0/instructjax.manifest")
    assert "1 written now, 0 there already" in run["prepared"][0].stdout, run["prepared"][0].stdout
    assert fs.ls(f"{name}/tokenized") and run["counts"]["prepare"] > 0
    assert run["counts"]["reference"] == run["counts"]["stopped"] == 0  # train tokenized nothing: the cache
    records = metrics(fs, f"{name}/runs/ref")
    assert [r["step"] for r in records] == [2, 4] and all(np.isfinite(r["loss"]) for r in records)
    done = json.loads(fs.cat(f"{name}/runs/ref/DONE"))
    assert done["step"] == STEPS
    steps = sorted(int(p.rsplit("/", 1)[1]) for p in fs.ls(f"{name}/runs/ref/checkpoints") if p.rsplit("/", 1)[1].isdigit())
    assert steps == [2, 4]
    for step in steps:  # every step sealed by its manifest, with the store's checksums
        manifest = fs.cat(f"{name}/runs/ref/checkpoints/{step}/instructjax.manifest").decode()
        assert '"md5:' in manifest
    for leftover in ("gs:", "gs"):
        assert not (run["work"] / leftover).exists()


def test_sigterm_at_a_logged_step_then_resume_logs_what_an_uninterrupted_run_logs(run, tmp_path):
    from helpers.metrics import tensorboard_scalars

    fs, name = run["fs"], run["bucket"].removeprefix("gs://")
    assert run["stopped"].returncode == 75 and "preempted: saved step 2" in run["stopped"].stderr, \
        run["stopped"].stderr[-3000:]
    assert without_timings(metrics(fs, f"{name}/runs/a")) == without_timings(metrics(fs, f"{name}/runs/ref"))
    scalars = {}
    for which in ("a", "ref"):
        fs.get(f"{name}/runs/{which}/tensorboard/", str(tmp_path / which / "tensorboard") + "/", recursive=True)
        scalars[which] = tensorboard_scalars(tmp_path / which)
    assert scalars["a"] == scalars["ref"] and ("loss", 2) in scalars["a"]  # the step resumed from is kept


def test_two_processes_train_from_the_bucket_with_the_one_process_losses(run):
    fs, name = run["fs"], run["bucket"].removeprefix("gs://")
    ok(cli(run["work"], "train", "--config", f"{run['bucket']}/run.yaml", f"run_dir={run['bucket']}/runs/two",
           env=run["env"], hosts=2))  # fmt: skip
    got, want = metrics(fs, f"{name}/runs/two"), metrics(fs, f"{name}/runs/ref")
    assert [r["step"] for r in got] == [r["step"] for r in want]
    np.testing.assert_allclose([r["loss"] for r in got], [r["loss"] for r in want], rtol=2e-5)
    assert not (run["work"] / "gs:").exists()


def test_a_lora_on_a_base_in_the_bucket_saves_its_adapters_there_and_exports_a_peft_adapter(run, tmp_path):
    """A LoRA whose init_from is the bucket's base: its checkpoint in the bucket holds the adapters alone and the
    base's reference (the gs:// base, its step and digest); `export --adapter` reads both from the bucket and writes
    PEFT's files to a local directory."""
    from instructjax.core.checkpoint import load_params, read_base
    from instructjax.model import lora

    bucket = run["bucket"]
    ok(cli(run["work"], "train", "--config", f"{bucket}/run.yaml", f"run_dir={bucket}/runs/lora", "max_steps=2",
           "model.lora.rank=4", "model.lora.alpha=8", env=run["env"]))  # fmt: skip
    base = read_base(f"{bucket}/runs/lora")
    assert base["checkpoint"] == f"{bucket}/base/tiny" and base["step"] == 0 and base["digest"]
    saved = jax.tree_util.tree_flatten_with_path(load_params(f"{bucket}/runs/lora")[0])[0]
    assert saved and all(path[-1].key in lora.ADAPTERS for path, _ in saved)
    out = tmp_path / "adapter"
    ok(cli(run["work"], "export", "--checkpoint", f"{bucket}/runs/lora", "--out", str(out), "--adapter", env=run["env"]))
    config = json.loads((out / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"]) == ("LORA", 4) and (out / "adapter_model.safetensors").exists()


def test_a_torn_step_in_the_bucket_falls_back_and_exports_to_a_local_directory(run, tmp_path):
    import torch
    import transformers

    from instructjax.convert.hf import hf_state
    from instructjax.core.checkpoint import load_params
    from instructjax.model.config import DecoderConfig

    fs, name = run["fs"], run["bucket"].removeprefix("gs://")
    step_dir = f"{name}/runs/a/checkpoints/4"
    array = sorted(p for p in fs.find(step_dir) if "/params/" in p and "/d/" in p)[0]
    data = fs.cat(array)
    fs.pipe(array, data[: len(data) // 2])  # cut: a new object in its place
    out = tmp_path / "hf"
    (result,) = ok(cli(run["work"], "export", "--checkpoint", f"{run['bucket']}/runs/a", "--out", str(out), env=run["env"]))
    warnings = [line for line in result.stderr.splitlines() if line.startswith("instructjax: warning:")]
    assert len(warnings) == 1 and "checkpoint step 4" in warnings[0] and "falling back to step 2" in warnings[0]
    assert json.loads((out / "instructjax_export.json").read_text())["step"] == 2
    model = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    params, config, _, step = load_params(f"{run['bucket']}/runs/a", 2)
    want = hf_state(params, DecoderConfig.from_dict(config))
    got = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert step == 2 and set(want) <= set(got)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    fs.pipe(array, data)  # whole again (the sweep below reads this run too)


def test_a_sweep_of_runs_in_the_bucket_knows_what_is_done(run, tmp_path):
    fs, bucket = run["fs"], run["bucket"]
    name = bucket.removeprefix("gs://")
    configs = tmp_path / "configs"
    configs.mkdir()
    config = {**run["config"], "name": "ref", "run_dir": f"{bucket}/runs/ref"}
    (configs / "ref.yaml").write_text(yaml.safe_dump(config))
    first = ok(cli(run["work"], "sweep", str(configs), env=run["env"]))[0]
    rows = {r["stage"]: r for r in json.loads(fs.cat(f"{name}/runs/sweep.json"))["rows"]}
    assert rows["train"]["result"] == "complete (skipped)" and rows["train"]["steps"] == str(STEPS), first.stdout
    assert rows["export"]["result"] == "done" and rows["export"]["steps"] == str(STEPS)
    assert json.loads(fs.cat(f"{name}/runs/ref/hf/instructjax_export.json"))["step"] == STEPS

    again = ok(cli(run["work"], "sweep", str(configs), env=run["env"]))[0]
    rows = {r["stage"]: r for r in json.loads(fs.cat(f"{name}/runs/sweep.json"))["rows"]}
    assert [rows[s]["result"] for s in ("train", "export")] == ["complete (skipped)"] * 2, again.stdout

    (configs / "ref.yaml").write_text(yaml.safe_dump({**config, "max_steps": STEPS + 2}))  # a longer run now
    longer = ok(cli(run["work"], "sweep", str(configs), env=run["env"]))[0]
    rows = {r["stage"]: r for r in json.loads(fs.cat(f"{name}/runs/sweep.json"))["rows"]}
    assert rows["train"]["result"] == f"done (resumed at step {STEPS})", longer.stdout
    assert rows["export"]["result"] == "done" and rows["export"]["steps"] == str(STEPS + 2)
    assert not (run["work"] / "gs:").exists()


def test_orbax_saves_and_restores_on_the_server_with_tensorflow_installed(bucket):
    """The emulator variables alone (EPATH_USE_TF unset) with TensorFlow importable: the storage layer sends gs://
    through gcsfs, so Orbax's metadata and TensorStore's arrays both land on the server."""
    env = {k: v for k, v in os.environ.items() if k != "EPATH_USE_TF"}
    code = f"""
import numpy as np, orbax.checkpoint as ocp, tensorflow  # noqa
from instructjax.core import storage
manager = ocp.CheckpointManager(storage.path("{bucket}/ck"), options=ocp.CheckpointManagerOptions(create=True))
tree = {{"w": np.arange(12, dtype=np.float32).reshape(3, 4)}}
manager.save(1, args=ocp.args.Composite(params=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave({{"a": 1}})))
manager.wait_until_finished()
back = manager.restore(1, args=ocp.args.Composite(params=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
assert (back["params"]["w"] == tree["w"]).all() and back["meta"] == {{"a": 1}}
"""
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    names = gcs().find(f"{bucket.removeprefix('gs://')}/ck/1")
    assert any(n.endswith("meta/metadata") for n in names) and any("/params/" in n and "/d/" in n for n in names)


def test_a_damaged_step_in_a_bucket_is_set_aside_on_resume(bucket, capsys):
    """Resume's fallback in a bucket: the damaged newest step found from the store's checksums, renamed aside
    (kept), and the step before restored exactly."""
    from instructjax.core import checkpoint as ckpt

    saver = ckpt.Checkpointer(f"{bucket}/run", keep=None, tokenizer={"files": {"a": "b"}, "template": None})
    params = {"w": np.arange(24, dtype=np.float32).reshape(4, 6)}
    for step in (1, 2):
        saver.save(step, {"w": params["w"] * step}, {"m": params["w"] + step}, np.array([[0, 0, step]]),
                   {"run_config": {}, "model_config": {}})  # fmt: skip
    saver.close()
    fs, name = gcs(), bucket.removeprefix("gs://")
    item = sorted(p for p in fs.find(f"{name}/run/checkpoints/2") if "/opt_state/" in p and "/d/" in p)[0]
    fs.pipe(item, fs.cat(item)[:-1])  # one byte short: a new object, a new checksum
    again = ckpt.Checkpointer(f"{bucket}/run", keep=None)
    target = {"w": jax_struct(params["w"])}
    step, restored, opt_state, data, _ = again.restore_latest(target, {"m": jax_struct(params["w"])})
    again.close()
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("instructjax: warning:")]
    assert step == 1 and len(warning) == 1 and "falling back to step 1 (kept as 2.unreadable)" in warning[0]
    np.testing.assert_array_equal(np.asarray(restored["w"]), params["w"])
    np.testing.assert_array_equal(np.asarray(opt_state["m"]), params["w"] + 1)
    assert fs.exists(f"{name}/run/checkpoints/2.unreadable/instructjax.manifest")
    assert not fs.exists(f"{name}/run/checkpoints/2/instructjax.manifest")


def jax_struct(array):
    import jax

    return jax.ShapeDtypeStruct(array.shape, array.dtype)


def test_local_copies_follow_the_objects_versions(bucket, tmp_path, monkeypatch):
    """A bucket's directory read as a local one (what tokenizers, datasets and transformers are given): the same
    tree; a changed object gives a new copy and a new fingerprint, an unchanged one neither."""
    from instructjax.core import storage

    monkeypatch.setenv("INSTRUCTJAX_STAGING_DIR", str(tmp_path / "staged"))
    fs, name = gcs(), bucket.removeprefix("gs://")
    files = {"config.json": b'{"a": 1}', "sub/model.bin": bytes(range(256)) * 64, "sub/x.txt": b"x"}
    for rel, data in files.items():
        fs.pipe(f"{name}/hf/{rel}", data)
    local = storage.local_copy(f"{bucket}/hf")
    got = {p.relative_to(local).as_posix(): p.read_bytes() for p in Path(local).rglob("*") if p.is_file()}
    assert got == files
    assert storage.local_copy(f"{bucket}/hf") == local  # nothing changed: the same copy
    before = storage.fingerprint(f"{bucket}/hf/sub/x.txt")
    fs.pipe(f"{name}/hf/sub/x.txt", b"y")
    again = storage.local_copy(f"{bucket}/hf")
    assert again != local and (Path(again) / "sub" / "x.txt").read_bytes() == b"y" and not Path(local).exists()
    assert storage.fingerprint(f"{bucket}/hf/sub/x.txt") != before
    single = storage.local_copy(f"{bucket}/hf/config.json")
    assert Path(single).read_bytes() == files["config.json"]
    with pytest.raises(FileNotFoundError):
        storage.local_copy(f"{bucket}/missing.json")
