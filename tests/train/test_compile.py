"""`plan --compile`: the run's train step built by XLA:TPU for a slice that is not here (libtpu's topology
descriptions on this CPU machine), checked against libtpu's own description of each slice and the compiled
program itself (its Mosaic kernels and collectives)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO

from instructjax.cli import main
from instructjax.core import libtpu
from instructjax.model.presets import preset
from instructjax.train.compile import slice_devices
from instructjax.train.topology import SLICE_SHAPES, TPU_CHIPS, tpu_topology

QUICKSTART = REPO / "configs" / "quickstart.yaml"
pytestmark = pytest.mark.skipif(not libtpu.installed(), reason="libtpu (the tpu extra) is part of the set-up")


def test_every_slice_name_is_libtpus_slice():
    """Every slice name plan accepts: libtpu describes its physical shape with as many devices as plan counts,
    on as many hosts (distinct process indices) as plan counts."""
    for generation, shapes in SLICE_SHAPES.items():
        per_chip = TPU_CHIPS[generation][1]
        for chips in shapes:
            if chips > 512:  # the largest shapes alike, only slower to describe
                continue
            topology = tpu_topology(f"{generation}-{chips * per_chip}")
            devices = slice_devices(topology)
            assert len(devices) == topology.devices == chips
            assert len({d.process_index for d in devices}) == topology.hosts, topology
            assert {d.device_kind for d in devices} != {""}


def compile_json(capsys, topology: str, *overrides: str) -> tuple[int, dict]:
    capsys.readouterr()
    code = main(["plan", "--config", str(QUICKSTART), "--topology", topology, "--compile", "--json", *overrides])
    return code, json.loads(capsys.readouterr().out)


# 16 examples: the loss's 4096-token chunk of logits (float32, 125 MiB a v4-8 chip) is larger than half the v4's
# CMEM and sits in HBM, as plan counts it; on a v5e-8 and a v4-16 it fits on chip. (At 8 examples a v4-8's step is
# 1.17x plan: XLA moved its embedding's and head's float32 gradients into CMEM, which it does not on a v4-16.)
SLICE_OVERRIDES = ("model.dtype=bfloat16", "data.global_batch=16", "mesh.data=1", "mesh.fsdp=-1")


@pytest.mark.parametrize("topology", ["v4-8", "v4-16"])  # a v5e-8: the imported checkpoint's test below
def test_tiny_config_compiles_for_a_slice(capsys, topology):
    """The quickstart's step in bfloat16 built for a v4-8 (one host) and a v4-16 (8 chips on two hosts), and
    for a v5e-8 by the imported-checkpoint test below: see `check_slice_report`."""
    check_slice_report(*compile_json(capsys, topology, *SLICE_OVERRIDES), topology)


def check_slice_report(code: int, report: dict, topology: str) -> None:
    """Splash attention compiled as Mosaic kernels under the slice's mesh (forward, and the backward's dq and
    dkv), the step's rows a multiple of the slice's hosts, the compiler's memory per device within 10% of plan's,
    its peak reported, and no all-reduce as large as the output head's float32 gradient over fsdp (the loss head is
    sliced over the devices) or a loss chunk's gathered hidden states."""
    slice_ = tpu_topology(topology)
    assert code == 0 and report["fits"] is True
    assert (report["topology"], report["devices"], report["hosts"]) == (topology, slice_.devices, slice_.hosts)
    assert report["attention"] == "splash" and report["shapes_from"] == "estimate"  # plan's shapes, said so
    mesh = report["mesh"]
    assert mesh["data"] * mesh["fsdp"] * mesh["tensor"] == slice_.devices
    model = preset("tiny")
    head_bytes = model.hidden_size * model.vocab_size * 4
    for shape in report["shapes"]:
        assert shape["mosaic_kernels"] >= 3
        assert shape["rows"] % slice_.hosts == 0
        assert 0 < shape["xla_bytes"] < shape["hbm_bytes"]
        assert shape["plan_bytes"] == pytest.approx(shape["xla_bytes"], rel=0.10), shape
        assert shape["peak_bytes"] > 0
        assert shape["compile_s"] > 0
        assert shape["largest_all_reduce_bytes"] < head_bytes / mesh["fsdp"], shape
        # a loss chunk's hidden states (bf16), gathered from the batch devices: their gradient returns by an
        # all-to-all (XLA:TPU emits a reduce-scatter as an all-reduce of the whole chunk)
        chunk_bytes = min(shape["rows"] * shape["length"], 4096) * model.hidden_size * 2
        assert shape["largest_all_reduce_bytes"] < chunk_bytes, shape


def test_a_lora_step_is_within_10_percent_of_plan(capsys):
    """The 7B Tulu config with a LoRA of every linear module, built for a v4-8 at a small batch (the frozen base and
    its compute copy are most of the step): plan counts gradients and AdamW state for the adapters alone, as the
    compiled step holds them (a full fine-tune's state would put plan near 3x the compiler)."""
    capsys.readouterr()
    code = main(["plan", "--config", str(QUICKSTART.parent / "seed004_tulu" / "tulu_human_gpt_llama2_7b.yaml"),
                 "--topology", "v4-8", "--compile", "--json", "data.global_batch=4", "data.seq_len=512", "mesh.data=1",
                 "mesh.fsdp=-1", "model.lora={rank: 8, targets: all-linear}"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    for shape in report["shapes"]:
        assert shape["plan_bytes"] == pytest.approx(shape["xla_bytes"], rel=0.10), shape


@pytest.mark.parametrize("reference", ["live", "cached"])
def test_a_dpo_step_compiles_within_10_percent_of_plan(capsys, reference):
    """The quickstart trained by DPO on preference pairs, built for a v4-8: with the reference live its frozen
    parameters are a fourth argument and its forward a second pass of splash kernels; cached, its log-probs come
    with the batch. Plan (which counts the live reference's copy) is within 10% of the compiler either way."""
    code, report = compile_json(capsys, "v4-8", "model.dtype=bfloat16", "data.global_batch=16", "mesh.data=1",
                                "mesh.fsdp=-1", "data.mixture=preference_builtin", "data.mosaic=null",
                                "objective.loss=dpo", f"objective.dpo.reference={reference}")
    assert code == 0 and report["fits"] is True
    for shape in report["shapes"]:
        assert shape["mosaic_kernels"] >= (4 if reference == "live" else 3)
        assert shape["plan_bytes"] == pytest.approx(shape["xla_bytes"], rel=0.10), shape


def test_the_step_is_built_for_the_slices_hosts(capsys):
    """A v4-16 is 8 chips on 2 hosts: with tensor parallelism over all 8 (one data-parallel device) and per_step
    packing, a step's rows must still split over the 2 hosts, so 2 examples make 2 rows of 256 where one host would
    pack them into 1 row longer than 256; the compiled step is the 2-host one (one step: one shape)."""
    import dataclasses

    from instructjax.core.config import load_config
    from instructjax.train.plan import make_plan

    overrides = ["model.dtype=bfloat16", "data.global_batch=2", "data.pack=per_step", "mesh.data=1", "mesh.fsdp=1",
                 "mesh.tensor=8", "model.overrides.num_heads=8", "model.overrides.num_kv_heads=8", "max_steps=1"]
    slice_ = tpu_topology("v4-16")
    one_host = make_plan(load_config(QUICKSTART, overrides), dataclasses.replace(slice_, hosts=1)).data.step_shapes
    code, report = compile_json(capsys, "v4-16", *overrides)
    assert code == 0 and report["hosts"] == slice_.hosts == 2
    shapes = [(s["rows"], s["length"]) for s in report["shapes"]]
    assert len(shapes) == len(one_host) == 1 and shapes[0][0] == 2 and shapes[0][1] <= 256, (shapes, one_host)
    assert one_host[0][0] == 1 and one_host[0][1] > 256, one_host
    assert all(s["mosaic_kernels"] >= 3 for s in report["shapes"])


def test_a_step_that_does_not_fit_exits_1(capsys):
    """A step the compiler puts over a v5e-1's 16 GiB: exit 1 and one line naming the shape and the keys."""
    code = main(["plan", "--config", str(QUICKSTART), "--topology", "v5e-1", "--compile", "data.global_batch=512",
                 "data.seq_len=2048", "model.remat=none", "optim.loss_chunk=0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "does not fit" in err[0] and "by the TPU compiler" in err[0], err
    assert "data.global_batch" in err[0]


def test_bad_input_is_one_line(capsys, monkeypatch):
    for args, words in ((["--topology", "v4-12"], "unknown TPU topology 'v4-12': v4 slices are v4-8, v4-16"),
                        (["--gpus", "8"], "not for --gpus")):
        assert main(["plan", "--config", str(QUICKSTART), "--compile", *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
    monkeypatch.setattr(libtpu, "installed", lambda: False)
    assert main(["plan", "--config", str(QUICKSTART), "--topology", "v5e-8", "--compile"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "libtpu is not installed" in err[0]


def test_a_saved_step_is_what_the_trainer_runs(tmp_path, capsys):
    """`plan --compile --save-executable` on this machine's 8 CPU devices, then `train` with `compiled: FILE`:
    the trainer never traces or compiles its own step (its jit cache stays empty), and the losses are those of a
    run that compiled it. Another optimizer setting, or a step built for a TPU slice, is refused with one line."""
    from instructjax.core.config import load_config
    from instructjax.train.trainer import Trainer

    saved = tmp_path / "step.bin"
    # no Mosaic-IT: each of the six resolutions below would count its whole augmented epoch again (the steps
    # saved and loaded are the same with or without it)
    common = ["max_steps=2", "data.global_batch=8", "log_every=1", "data.mosaic=null"]
    assert main(["plan", "--config", str(QUICKSTART), "--compile", "--save-executable", str(saved), *common]) == 0
    losses = {}
    for name, extra in (("saved", [f"compiled={saved}"]), ("compiled", [])):
        trainer = Trainer(load_config(QUICKSTART, [*common, f"run_dir={tmp_path / name}", *extra]))
        losses[name] = trainer.run().losses
        if extra:
            assert trainer.build.step._cache_size() == 0  # the loaded executable ran every step
            assert f"is {saved} (not compiled here)" in capsys.readouterr().err
    assert losses["saved"] == losses["compiled"] and len(losses["saved"]) == 2
    capsys.readouterr()
    assert main(["train", "--config", str(QUICKSTART), *common, f"run_dir={tmp_path / 'lr'}", "optim.lr=1e-4",
                 f"compiled={saved}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was built for another step" in err[0], err
    tpu = tmp_path / "tpu.bin"
    assert main(["plan", "--config", str(QUICKSTART), "--topology", "v5e-8", "--compile", "--save-executable", str(tpu),
                 *common]) == 0
    capsys.readouterr()
    assert main(["train", "--config", str(QUICKSTART), *common, f"run_dir={tmp_path / 'tpu'}", f"compiled={tpu}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was built for 8 x TPU v5 lite on 1 host(s)" in err[0] and "this run has 8 x cpu" in err[0]


def test_plan_compile_and_the_trainer_resolve_one_run(tmp_path, capsys):
    """`plan --compile --real-data` on this machine's 8 devices builds the steps the trainer will run: the same mesh
    (`mesh: auto`, chosen by the run's own per_step step plans), the same step shapes, each compiled."""
    from instructjax.core.config import load_config
    from instructjax.train.trainer import Trainer

    common = ["mesh=auto", "data.pack=per_step", "data.global_batch=16", "max_steps=2"]
    capsys.readouterr()
    assert main(["plan", "--config", str(QUICKSTART), "--compile", "--real-data", "--json", *common]) == 0
    report = json.loads(capsys.readouterr().out)
    resolved = Trainer(load_config(QUICKSTART, [*common, f"run_dir={tmp_path / 'run'}"])).resolved
    assert report["mesh"] == resolved.mesh and resolved.mesh["data"] * resolved.mesh["fsdp"] > 1
    assert report["shapes_from"] == "run"
    assert sorted((s["rows"], s["length"]) for s in report["shapes"]) == sorted(set(resolved.step_shapes))
    assert len(resolved.step_shapes) > 1  # per_step: several shapes, every one compiled


def test_compile_from_an_imported_checkpoint_reads_its_metadata_only(tmp_path, capsys, monkeypatch):
    """`plan` and `plan --compile` of a config whose model.init_from is an imported checkpoint whose weight arrays
    were overwritten after the import (zeros, each file its size: read or hashed, they fail its manifest): the model
    is the stored one (not the config's preset), the step compiles, each command opens the checkpoint's metadata
    once, and nothing is written: no run_dir, no file added or changed in the checkpoint. The imported model is the
    quickstart's tiny one, so its step is also the quickstart's step built for a v5e-8 (`check_slice_report`)."""
    from helpers.models import make_hf_dir

    from instructjax.core import checkpoint
    from instructjax.data.encoding.tokenizer import default_tokenizer_path

    opened, read = [], checkpoint._read  # every Orbax read of a step's items, counted and carried out

    def counted(step_dir, **items):
        opened.extend(items)
        return read(step_dir, **items)

    monkeypatch.setattr(checkpoint, "_read", counted)

    ckpt = tmp_path / "ckpt"
    assert main(["import", "--hf", make_hf_dir(tmp_path / "hf"), "--out", str(ckpt)]) == 0
    arrays = [p for p in ckpt.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert arrays
    for p in arrays:
        p.write_bytes(bytes(p.stat().st_size))
    before = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    overrides = [f"model.init_from={ckpt}", "model.preset=small-100m", f"run_dir={tmp_path / 'run'}",
                 *SLICE_OVERRIDES, f"tokenizer={default_tokenizer_path()}"]  # the import has none; plan counts
    capsys.readouterr()
    assert main(["plan", "--config", str(QUICKSTART), "--topology", "v5e-8", "--json", *overrides]) in (0, 1)
    assert json.loads(capsys.readouterr().out)["memory"]["params"] == 4_170_048  # the imported tiny model's
    assert opened == ["meta"]  # the model's shapes for the plan, the evaluation's and the resolution's: one read
    opened.clear()
    code, report = compile_json(capsys, "v5e-8", *overrides)
    assert opened == ["meta"]
    assert report["shapes"]
    check_slice_report(code, report, "v5e-8")  # the imported model is the quickstart's tiny one: its v5e-8 step
    assert sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before
    assert not (tmp_path / "run").exists()


def test_the_cli_stays_quiet_without_a_tpu(tmp_path):
    """libtpu installed, no TPU chips, JAX_PLATFORMS unset: `instructjax --help` and `plan` print nothing of libtpu's
    on stderr, and JAX's default backend stays this machine's (`quiet_without_tpu`, called by the CLI first)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS" and not k.startswith("TPU_")}
    noise = ("TPU", "libtpu", "InitGoogle", "E0000")
    run = subprocess.run([sys.executable, "-m", "instructjax.cli", "--help"], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert not any(word in run.stderr for word in noise), run.stderr[-2000:]
    # `plan`: through `main`, as `python -m instructjax.cli plan` runs it (`main` quiets libtpu first)
    code = (f"from instructjax.cli import main; main(['plan', '--config', {str(QUICKSTART)!r}]); import jax; "
            "print(jax.default_backend())")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)
    assert run.stdout.split()[-1] in ("cpu", "gpu"), run.stdout[-500:] + run.stderr[-2000:]
    assert not any(word in run.stderr for word in noise), run.stderr[-2000:]
