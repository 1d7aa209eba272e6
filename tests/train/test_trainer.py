"""The trainer on the built-in A/C/P blend with a tiny LLaMA: losses against an independent reference,
the same losses on 1 device and on 8 in several mesh shapes, gradient accumulation, exact resume through
real Orbax checkpoints, the non-finite stop, run outputs and config errors through the CLI."""

import json
import re
import shutil
import sys

import jax
import numpy as np
import pytest
from flax import nnx
from helpers.host_devices import one_device

from instructjax import cli
from instructjax.core import checkpoint as ckpt
from instructjax.core.config import load_config
from instructjax.core.errors import ConfigError
from instructjax.data.batches.pipeline import DataPipeline
from instructjax.model.decoder import Decoder
from instructjax.model.presets import preset
from instructjax.train import setup as run_setup
from instructjax.train.trainer import NonFiniteLoss, Trainer

BASE = [
    "model.preset=tiny", "model.dtype=float32", "data.mixture=acp_ACP_n10000_builtin", "data.seq_len=128",
    "data.global_batch=8", "data.pack_window=64", "optim.lr=3e-3", "optim.epochs=1", "log_every=1",
]  # fmt: skip


def make_config(tmp_path, *overrides, name="run"):
    return load_config(None, [*BASE, f"run_dir={tmp_path / name}", *overrides])


def run(tmp_path, *overrides, name="run", devices=None, stop_at=None, resume=False):
    trainer = Trainer(make_config(tmp_path, *overrides, name=name), resume=resume, devices=devices)
    return trainer.run(stop_at=stop_at)


def losses(result):
    return np.array([result.losses[s] for s in sorted(result.losses)])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """4 steps on one device."""
    return run(tmp_path_factory.mktemp("ref"), "max_steps=4", devices=jax.devices()[:1])


def test_first_loss_matches_numpy_cross_entropy(reference):
    """Step 1's loss is the token-weighted mean cross-entropy of the initial model on the first batch."""
    config = preset("tiny", dtype="float32")
    model = Decoder(config, rngs=nnx.Rngs(0))  # the trainer's seed
    data = run_setup.bind_data(load_config(None, BASE), None).config  # as the trainer binds it
    batch = next(iter(DataPipeline(data)))
    logits = np.asarray(model(batch["tokens"], batch["positions"], batch["segment_ids"]), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
    w = batch["loss_weights"]
    assert w.sum() > 0
    np.testing.assert_allclose(reference.losses[1], (nll * w).sum() / w.sum(), rtol=2e-5)
    assert losses(reference)[-1] < losses(reference)[0]  # it learns


@pytest.mark.parametrize(
    "mesh",
    # data8, fsdp8 and 2x2x2 are covered at the loss/gradient level by tests/core/test_sharding.py; here the trainer on
    # every axis at once (fsdp4 x tensor2 showed nothing more, 31 s of CI)
    [{"data": 2, "fsdp": 2, "tensor": 2}],
    ids=lambda m: "-".join(f"{k}{v}" for k, v in m.items()),
)
def test_mesh_shapes_give_the_same_losses(tmp_path, reference, mesh):
    mesh_overrides = [f"mesh.{axis}={size}" for axis, size in {"data": 1, "fsdp": 1, "tensor": 1, **mesh}.items()]
    result = run(tmp_path, "max_steps=4", *mesh_overrides, devices=jax.devices()[:8])
    np.testing.assert_allclose(losses(result), losses(reference), rtol=2e-5)


def test_mesh_auto_takes_the_mesh_that_keeps_the_most_tokens_real_and_resume_keeps_it(tmp_path):
    """`mesh: auto` with per-step packing on 8 devices: config.yaml records a mesh of 8 devices that the tiny model
    divides over and whose steps keep at least as many tokens real as every other fsdp x tensor split (counted here
    by brute force over the pipeline's own step plans); it trains on it. A run saved with another mesh resumes on it
    under `mesh: auto`. (Per-step packing makes each step its own program: each run trains the fewest steps that show
    it, the 4-step plan the mesh is chosen by unchanged.)"""
    import dataclasses

    import yaml

    from instructjax.core import sharding

    per_step = ["max_steps=4", "data.pack=per_step", "data.global_batch=16", "checkpoint.every=1000"]
    result = run(tmp_path, *per_step, "mesh=auto", name="auto", devices=jax.devices()[:8], stop_at=1)
    chosen = yaml.safe_load((tmp_path / "auto" / "config.yaml").read_text())["mesh"]
    assert isinstance(chosen, dict) and chosen["data"] * chosen["fsdp"] * chosen["tensor"] == 8
    config = make_config(tmp_path, *per_step)
    pipeline = DataPipeline(run_setup.bind_data(config, None).config)
    share = {}
    for tensor in (1, 2, 4, 8):
        if preset("tiny").num_kv_heads % tensor:  # the model's kv heads do not split
            continue
        sizes = {"data": 1, "fsdp": 8 // tensor, "tensor": tensor}
        multiple = sharding.row_multiple(dataclasses.replace(config, mesh=sizes), sizes)
        share[tensor] = pipeline.plan_steps(4, multiple).efficiency
    assert share[chosen["tensor"]] >= max(share.values()) - 0.02, (chosen, share)
    assert sorted(result.losses) == [1] and np.isfinite(result.losses[1])
    first = run(tmp_path, *per_step, "mesh.data=1", "mesh.fsdp=2", "mesh.tensor=2", name="kept",
                devices=jax.devices()[:4], stop_at=1)
    assert sorted(first.losses) == [1]
    resumed = run(tmp_path, *per_step, "mesh=auto", name="kept", devices=jax.devices()[:4], resume=True, stop_at=2)
    assert sorted(resumed.losses) == [2]
    kept = yaml.safe_load((tmp_path / "kept" / "config.yaml").read_text())["mesh"]
    assert kept == {"data": 1, "fsdp": 2, "tensor": 2}


def test_gradient_accumulation_matches_one_big_batch(tmp_path, reference):
    """4 micro-batches of 2 rows, the loss normalized by the whole batch's tokens: the same steps."""
    result = run(tmp_path, "max_steps=4", "optim.micro_batches=4", "mesh.data=2", devices=jax.devices()[:2])
    np.testing.assert_allclose(losses(result), losses(reference), rtol=2e-5)


def test_sum_reduction_scales_the_gradient_by_the_token_count(tmp_path):
    """`sum` trains on the summed token losses: its gradient is the `mean` gradient times the batch weight."""
    import optax

    from instructjax.train.objectives import objective_for
    from instructjax.train.step import make_step

    config = preset("tiny", dtype="float32")
    graphdef, state = nnx.split(Decoder(config, rngs=nnx.Rngs(1)))
    params = nnx.to_pure_dict(state)
    batch = next(iter(DataPipeline(load_config(None, BASE).data)))
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    norms, objectives = {}, {}
    for reduction in ("mean", "sum"):
        run_config = load_config(None, [*BASE, f"optim.loss_reduction={reduction}", "optim.micro_batches=2"])
        step = jax.jit(make_step(objective_for(run_config, 3), graphdef, optax.sgd(0.0), run_config, mesh))
        metrics = step(params, optax.sgd(0.0).init(params), batch)[2]
        norms[reduction], objectives[reduction] = float(metrics["grad_norm"]), float(metrics["loss"])
        np.testing.assert_allclose(float(metrics["loss_sum"]), objectives["mean"] * batch["loss_weights"].sum(),
                                   rtol=1e-5)  # the same token losses under both
    np.testing.assert_allclose(norms["sum"], norms["mean"] * batch["loss_weights"].sum(), rtol=1e-4)
    # the step's `loss` is the objective it optimised: the summed token loss under "sum", not a mean
    np.testing.assert_allclose(objectives["sum"], objectives["mean"] * batch["loss_weights"].sum(), rtol=1e-5)


@pytest.mark.parametrize("reduction, expected", [("mean", (10.0 + 20.0) / (4 + 6)), ("sum", (10.0 + 20.0) / 2)])
def test_logged_loss_is_the_optimised_objective_and_says_which(reduction, expected):
    """metrics.jsonl's `loss` over a log window: the trained tokens' mean under "mean" (total loss / total
    weight), the mean per step of the summed loss under "sum"; `loss_reduction` names it (hand-computed)."""
    from instructjax.train.metrics import MetricsWindow

    window = MetricsWindow(1, reduction)
    for loss_sum, weight in ((10.0, 4.0), (20.0, 6.0)):
        window.add({"loss_sum": loss_sum, "trained_tokens": weight, "tokens": 16, "source_sums": np.array([loss_sum]),
                    "source_weights": np.array([weight])}, 0.25)  # fmt: skip
    record = window.flush({"lr": 0.1, "grad_norm": 1.0}, 32, ["src"])
    assert record["tokens_per_sec"] == pytest.approx(32 / 0.5) and record["step_seconds"] == pytest.approx(0.25)
    assert record["loss_reduction"] == reduction
    assert record["loss"] == pytest.approx(expected)
    assert record["loss/src"] == pytest.approx(3.0)  # per-source losses stay token means


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
    """8 steps straight, checkpoints every 2 (keep 2: steps 6 and 8 stay); the last removed, the run resumed from the
    Orbax checkpoint of step 6 gives steps 7-8 their losses again, bit for bit, and logs every step once."""
    common = ["max_steps=8", "checkpoint.every=2", "checkpoint.keep=2", "mesh.data=2"]
    straight = run(tmp_path, *common, devices=jax.devices()[:2])
    saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert sorted(straight.losses) == list(range(1, 9)) and saved == [6, 8]  # keep-2
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "8")  # as a run that stopped after saving step 6
    resumed = run(tmp_path, *common, devices=jax.devices()[:2], resume=True)
    assert sorted(resumed.losses) == [7, 8]
    assert [resumed.losses[s] for s in (7, 8)] == [straight.losses[s] for s in (7, 8)]
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_resume_continues_in_the_layer_layout_it_was_saved_in(tmp_path):
    """A run saved with looped layers resumes under a config that now scans them (the default): it continues
    in the saved layout, with the losses the run had going straight on."""
    common = ["max_steps=4", "checkpoint.every=2"]
    straight = run(tmp_path, *common, "model.scan_layers=false", devices=jax.devices()[:1])
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "4")  # as a run that stopped after saving step 2
    resumed = run(tmp_path, *common, devices=jax.devices()[:1], resume=True)
    assert sorted(resumed.losses) == [3, 4]
    np.testing.assert_allclose(losses(resumed), losses(straight)[2:], rtol=2e-5)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    """An absurd learning rate blows the weights up after step 1: the run stops naming the step."""
    with pytest.raises(NonFiniteLoss, match=r"non-finite loss \(\w+\) at step (\d+)") as info:
        run(tmp_path, "max_steps=6", "checkpoint.every=1", "optim.lr=1e30", "optim.warmup_ratio=0",
            devices=jax.devices()[:1])  # fmt: skip
    bad_step = int(re.search(r"at step (\d+)", str(info.value)).group(1))
    saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) == bad_step - 1  # nothing at or after the broken step
    assert f"last good checkpoint is step {bad_step - 1}" in str(info.value)
    params = ckpt.load_params(tmp_path / "run")[0]
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_cli_run_writes_metrics_tensorboard_plot_and_checkpoints(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("\n".join(o.replace("=", ": ", 1) for o in BASE if "." not in o.split("=")[0]))
    args = ["train", "--config", str(config), *[o for o in BASE if "." in o.split("=")[0]],
            f"run_dir={tmp_path / 'cli'}", "max_steps=4", "checkpoint.every=2", "log_every=2", "mesh.data=8"]  # fmt: skip
    assert cli.main(args) == 0
    run_dir = tmp_path / "cli"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert {"loss", "lr", "grad_norm", "tokens", "tokens_per_sec"} <= set(r)
        assert r["tokens_per_sec"] > 0 and np.isfinite(r["loss"])
        sources = [k for k in r if k.startswith("loss/")]
        assert sources and set(sources) <= {"loss/alpaca_builtin", "loss/code_alpaca_builtin", "loss/p3_builtin"}
    assert records[1]["tokens"] > records[0]["tokens"] > 0
    assert (run_dir / "loss.png").stat().st_size > 1000
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert load_config(run_dir / "config.yaml").max_steps == 4  # the resolved config reads back
    assert ckpt.read_meta(run_dir)[2] == 4
    assert "trained to step 4" in capsys.readouterr().out
    # the same run dir again without --resume is refused rather than overwritten
    assert cli.main(args) == 2
    assert "--resume" in capsys.readouterr().err
    # a resume that would change what the run trains stops with one line naming the changes...
    longer = [*args, "--resume", "max_steps=6", "optim.lr=1e-3"]
    assert cli.main(longer) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "was trained to step 4 with another config" in err
    assert "max_steps: 4 -> 6" in err and "optim.lr: 0.003 -> 0.001" in err and "--accept-changes" in err
    # ...unless accepted: then they are noted and recorded in the run directory
    assert cli.main([*longer, "--accept-changes"]) == 0
    assert "resuming" in capsys.readouterr().err
    recorded = [json.loads(line) for line in (run_dir / "changes.jsonl").read_text().splitlines()]
    assert recorded == [{"step": 4, "changes": ["max_steps: 4 -> 6", "optim.lr: 0.003 -> 0.001"]}]
    # what does not change the run (the mesh, the log interval) resumes as it is
    assert cli.main([*longer, "mesh.data=2", "mesh.fsdp=4", "log_every=1"]) == 0
    assert ckpt.read_meta(run_dir)[2] == 6


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.learning_rate=1", "optim.learning_rate: unknown key; known: b1, b2"),
        # a misspelt key of every section: one line naming the key and its section, before any compilation
        ("max_stepz=3", "max_stepz: unknown key; did you mean max_steps?"),
        ("model.dtyp=float32", "model.dtyp: unknown key; did you mean dtype?"),
        ("model.num_layers=two", "model.num_layers: expected int, got 'two'"),
        ("data.seq_length=64", "data.seq_length: unknown key; did you mean seq_len?"),
        ("data.mosaic.kmax=3", "data.mosaic.kmax: unknown key; did you mean k_max?"),
        ("optim.warmup=0.1", "optim.warmup: unknown key; did you mean warmup_ratio?"),
        ("checkpoint.evry=2", "checkpoint.evry: unknown key; did you mean every?"),
        ("eval.tsks=[a]", "eval.tsks: unknown key; did you mean tasks?"),
        ("define.tasks.mine.sorce=alpaca", "define.tasks.mine.sorce: unknown key; did you mean source?"),
        ("mesh.dta=2", "unknown mesh axes ['dta']"),
        ("mesh.data=3", "mesh shape"),
        ("data.global_batch=6", "does not divide over the mesh"),
        ("optim.micro_batches=3", "not divisible by optim.micro_batches=3"),
        ("optim.loss_reduction=avg", "loss_reduction"),
    ],
)
def test_config_errors_are_one_line(tmp_path, capsys, override, message):
    args = ["train", "--config", "/dev/null", *BASE, f"run_dir={tmp_path}", "mesh.data=-1", override]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("entry", ["user_tasks", "user_tasks.py"])
def test_config_imports_register_a_task_for_train_and_data_stats(tmp_path, capsys, monkeypatch, entry):
    """`imports:` names a module in the config's directory (by name, or as a .py path) that registers a
    task; `train` and `data stats --config` use it. `--import` does the same from the command line; a module
    that fails to import is one line."""
    name = f"user_alpaca_{entry.replace('.', '_')}"
    (tmp_path / "user_tasks.py").write_text(
        "from instructjax.data.seqio.tasks import TaskSpec, register_task\n"
        f"register_task({name!r}, TaskSpec(source='alpaca', data_files=('builtin',)))\n")
    monkeypatch.delitem(sys.modules, "user_tasks", raising=False)
    config = tmp_path / "run.yaml"
    config.write_text(f"imports: [{entry}]\ndata: {{mixture: {name}, seq_len: 128, global_batch: 8, pack_window: 64}}\n"
                      "model: {preset: tiny, dtype: float32}\nmax_steps: 1\n")
    monkeypatch.chdir(tmp_path.parent)  # not the config's directory: `imports` is found next to the config
    assert cli.main(["data", "stats", "--config", str(config)]) == 0
    assert name in capsys.readouterr().out
    with one_device():  # one of the 8 CPU devices: the same run, its step not sharded 8 ways
        assert cli.main(["train", "--config", str(config), f"run_dir={tmp_path / 'run'}"]) == 0
    assert ckpt.read_meta(tmp_path / "run")[2] == 1
    (tmp_path / "broken.py").write_text("raise RuntimeError('no GPU here')\n")
    capsys.readouterr()
    assert cli.main(["--import", str(tmp_path / "broken.py"), "data", "stats", "alpaca_builtin"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "instructjax: error: imports: cannot import " + repr(str(tmp_path / "broken.py")) + \
        ": RuntimeError: no GPU here"


def test_tokens_per_sec_is_each_steps_tokens_over_its_own_wall_time(tmp_path, monkeypatch):
    """Steps made alternately slow and fast (a host-side pause while each step runs); each step's duration
    is measured outside the trainer, from one metrics line being written to the next (log_every=1). Every
    step's `tokens_per_sec`, the first and the last included, is its own tokens over its own duration: a
    figure shifted by one step, or a last step timed over nothing, fails."""
    import time

    from instructjax.train import metrics, trainer

    pauses = iter([0.0] + [2.0, 0.0] * 10)  # batch k+1 is made while step k runs: step k gets pause k
    original_on_mesh, original_log = trainer.on_mesh, metrics.MetricsLogger.log
    stamps = []

    def on_mesh(host_batch, batch_sharding):
        time.sleep(next(pauses))
        placed = original_on_mesh(host_batch, batch_sharding)
        if not stamps:
            stamps.append(time.perf_counter())  # the first batch is placed just before step 1 starts
        return placed

    def log(self, step, values):
        stamps.append(time.perf_counter())
        return original_log(self, step, values)

    monkeypatch.setattr(trainer, "on_mesh", on_mesh)
    monkeypatch.setattr(metrics.MetricsLogger, "log", log)
    # the reference's run (its step program read back from the session's compilation cache), timed
    run(tmp_path, "max_steps=4", "checkpoint.every=1000", devices=jax.devices()[:1])
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    seconds = np.diff(stamps)
    tokens = np.diff([0] + [r["tokens"] for r in records])
    assert all(seconds[k] > 2.0 for k in (0, 2)) and all(seconds[k] < 1.9 for k in (1, 3))  # as paused
    np.testing.assert_allclose([r["step_seconds"] for r in records], seconds, rtol=0.1, atol=0.25)
    np.testing.assert_allclose([r["tokens_per_sec"] * r["step_seconds"] for r in records], tokens, rtol=1e-6)


def test_trainer_refuses_mesh_larger_than_devices(tmp_path):
    with pytest.raises(ConfigError, match="needs 8 devices"):
        Trainer(make_config(tmp_path, "mesh.data=8"), devices=jax.devices()[:2])
