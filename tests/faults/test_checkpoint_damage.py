"""A damaged newest checkpoint step, every way, on real Orbax checkpoints.

- every file of the newest step (whatever Orbax wrote: commit markers, JSON items, array data, Orbax's
  metadata, our manifest) emptied, cut, one byte flipped or deleted: the readers find it (against the
  step's manifest, not a list of files) and fall back to the step before with one warning line; the
  step named explicitly is a one-line ConfigError;
- a seeded draw of one (file, way) per kind of file: resume restores exactly the previous step's values,
  sets the damaged step aside (kept) and can save that step again;
- export, generate (its model and tokenizer) and `model.init_from` of such a run use the previous step,
  with one warning; naming the damaged step in the CLI is one line, exit 2;
- a step committed without its manifest (the process died in between) is not used, and keep-N rotation
  never deletes the last sealed step for it; steps written before manifests existed are trusted as then.

`FAULT_SEED=N` replays a draw.
"""

import dataclasses
import os
import random
import shutil
import time
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from helpers.damage import KINDS, WAYS, applies, damage, draw, files, kind

from instructjax import cli
from instructjax.core import checkpoint as ckpt
from instructjax.core import integrity
from instructjax.core.errors import ConfigError
from instructjax.model.decoder import Decoder
from instructjax.model.presets import preset

TOKENIZER = {"files": {"tokenizer.json": "{}" * 300}, "template": "tulu"}


def seed() -> int:
    return int(os.environ.get("FAULT_SEED", time.time_ns() % 10**6))


def warnings(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return [line for line in err.splitlines() if line.startswith("instructjax: warning:")]


def one_fallback(capsys, damaged: int, to: int) -> str:
    lines = warnings(capsys)
    assert len(lines) == 1 and f"checkpoint step {damaged} " in lines[0], lines
    assert f"falling back to step {to}" in lines[0], lines
    return lines[0]


def assert_same(a, b):
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [jax.tree_util.keystr(p) for p, _ in flat_a] == [jax.tree_util.keystr(p) for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def as_target(tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Steps 1 and 2 of a small train state, saved as the trainer saves them (async), and what each holds."""
    directory = tmp_path_factory.mktemp("damage") / "checkpoints"
    rng = np.random.default_rng(0)
    params = {"embed": rng.standard_normal((64, 96)).astype(np.float32),
              "layers": {"w": rng.standard_normal((2, 96, 48)).astype(np.float32)}}  # fmt: skip
    tx = optax.adam(1e-2)
    opt_state, saved = tx.init(params), {}
    saver = ckpt.Checkpointer(directory, keep=None, tokenizer=TOKENIZER)
    for step in (1, 2):
        params = jax.tree.map(lambda x: x * 0.5 + 1, params)
        opt_state = jax.device_get(tx.update(params, opt_state, params)[1])
        saver.save(step, params, opt_state, np.array([[0, 1, step]]), {"run_config": {}, "model_config": {}})
        saved[step] = (params, opt_state)
    saver.close()
    return directory, saved


def copy(directory: Path, to: Path) -> Path:
    """A copy of a run to damage, its files hard links (`damage` replaces a file, never writes into it)."""
    shutil.copytree(directory, to, copy_function=os.link)
    return to


def test_every_file_damaged_every_way_is_found(tmp_path, run, capsys):
    directory, _ = run
    draws = seed()  # where a cut ends and which bits a flip turns
    rng = random.Random(draws)
    cases = [(name, way) for name in files(directory / "2") for way in WAYS
             if applies(way, (directory / "2" / name).stat().st_size)]  # fmt: skip
    damaged = copy(directory, tmp_path / "run")
    for i, (name, way) in enumerate(cases):
        damaged = damaged.rename(tmp_path / f"run{i}")  # another run for each case (each warns once)
        damage(damaged / "2" / name, way, rng)
        assert integrity.intact_step(damaged) == 1, f"seed {draws}: {name} {way}"
        one_fallback(capsys, 2, 1)
        with pytest.raises(ConfigError, match="checkpoint step 2 in .* is damaged"):
            integrity.intact_step(damaged, 2)
        (damaged / "2" / name).unlink(missing_ok=True)  # whole again
        os.link(directory / "2" / name, damaged / "2" / name)
    assert len(cases) > 4 * 20 and {kind(name) for name, _ in cases} == set(KINDS)
    assert integrity.intact_step(directory) == 2 and not warnings(capsys)  # the undamaged run


def test_resume_falls_back_to_the_previous_step_exactly(tmp_path, run, capsys):
    directory, saved = run
    draws = seed()
    rng = random.Random(draws)
    for i, (name, way) in enumerate(draw(directory / "2", rng)):
        case = f"seed {draws}: {name} {way}"
        damaged = copy(directory, tmp_path / str(i))
        damage(damaged / "2" / name, way, rng)
        saver = ckpt.Checkpointer(damaged, keep=None, tokenizer=TOKENIZER)
        step, params, opt_state, data, meta = saver.restore_latest(*map(as_target, saved[1]))
        assert step == 1 and meta["step"] == 1 and data.tolist() == [[0, 1, 1]], case
        assert_same(params, saved[1][0])
        assert_same(opt_state, saved[1][1])
        assert "kept as 2.unreadable" in one_fallback(capsys, 2, 1), case
        assert (damaged / "2.unreadable").is_dir() and integrity.steps_on_disk(damaged) == [1], case
        saver.save(2, *saved[2], np.array([[0, 1, 2]]), {"run_config": {}, "model_config": {}})  # saved again
        saver.close()
        assert integrity.intact_step(damaged) == 2 and not warnings(capsys), case


def test_a_step_committed_without_its_manifest_is_not_used_nor_rotated_over(tmp_path, run, monkeypatch,
                                                                             capsys):
    """The manifest is written as soon as Orbax commits a step (not at the next save); a process that dies in
    between leaves a committed step without one: it is skipped, and keep=1 still keeps the step before it."""
    _, saved = run
    meta = {"run_config": {}, "model_config": {}}
    saver = ckpt.Checkpointer(tmp_path, keep=1)
    saver.save(1, *saved[1], np.zeros((1, 3)), meta)
    deadline = time.monotonic() + 60
    while not integrity.has_manifest(saver.directory / "1"):  # sealed in the background, with no wait or save
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with monkeypatch.context() as m:
        m.setattr(integrity, "write_manifest", lambda step_dir, files: None)  # "dies" before step 2's manifest
        saver.save(2, *saved[2], np.zeros((1, 3)), meta)
        saver.wait()
    assert integrity.steps_on_disk(saver.directory) == [1, 2]  # keep=1, yet step 1 stays: 2 is not sealed
    assert integrity.intact_step(saver.directory) == 1
    assert f"no {integrity.MANIFEST}" in one_fallback(capsys, 2, 1)
    saver.save(3, *saved[2], np.zeros((1, 3)), meta)
    saver.close()
    assert integrity.steps_on_disk(saver.directory) == [3]  # sealed: now the older ones rotate out


def test_a_sound_step_that_does_not_fit_the_model_is_an_error_not_a_fallback(tmp_path, run):
    directory, saved = run
    mine = copy(directory, tmp_path / "run")
    other = {**as_target(saved[1][0]), "extra": jax.ShapeDtypeStruct((2,), np.float32)}  # another model
    saver = ckpt.Checkpointer(mine)
    with pytest.raises(ConfigError, match="step 2 .* matches its manifest but does not restore"):
        saver.restore_latest(other, as_target(saved[1][1]))
    saver.close()
    assert integrity.steps_on_disk(mine) == [1, 2] and not list(mine.glob("*.unreadable"))


def test_steps_written_before_manifests_are_trusted_as_then(tmp_path, run, capsys):
    """No manifest anywhere (an older version's run): read as before; damage shows only where Orbax fails."""
    directory, saved = run
    old = copy(directory, tmp_path / "old")
    for step in (1, 2):
        (old / str(step) / integrity.MANIFEST).unlink()
    assert ckpt.read_meta(old)[2] == 2 and not warnings(capsys)
    damage(old / "2" / "meta" / "metadata", "empty", random.Random(0))  # the report's emptied JSON: read
    assert ckpt.read_meta(old)[2] == 1
    one_fallback(capsys, 2, 1)
    older = copy(directory, tmp_path / "older")
    for step in (1, 2):
        (older / str(step) / integrity.MANIFEST).unlink()
    arrays = [p for p in (older / "2" / "params").rglob("*") if p.is_file()]
    data = max(arrays, key=lambda p: p.stat().st_size)
    damage(data, "cut", random.Random(0))  # the largest array file: found by Orbax's restore
    saver = ckpt.Checkpointer(older)
    step, params, *_ = saver.restore_latest(*map(as_target, saved[1]))
    saver.close()
    assert step == 1 and (older / "2.unreadable").is_dir()
    assert_same(params, saved[1][0])
    one_fallback(capsys, 2, 1)


@pytest.fixture(scope="module")
def model_run(tmp_path_factory):
    """A params-only run of a tiny Decoder (as `import` writes one) at steps 1 and 2, with its tokenizer."""
    from instructjax.data.encoding.tokenizer import Tokenizer, default_tokenizer_path

    config = preset("tiny", dtype="float32")
    shapes = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))))
    rng = np.random.default_rng(5)
    first = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(a.dtype), shapes)
    tokenizer = {"files": Tokenizer.load(default_tokenizer_path()).files(), "template": "tulu"}
    run_dir = tmp_path_factory.mktemp("model") / "run"
    for step, params in ((1, first), (2, jax.tree.map(lambda x: x + 1, first))):
        ckpt.save_params(run_dir, params, dataclasses.asdict(config), step=step, tokenizer=tokenizer)
    return run_dir, config, first


def damaged_model_run(model_run, to: Path, case: tuple[str, str] | None = None) -> Path:
    """A copy of the run with one file of its step 2 damaged: `case` (file, way), else one drawn."""
    run_dir = copy(model_run[0], to)
    rng = random.Random(seed())
    name, way = case or rng.choice(draw(run_dir / "checkpoints" / "2", rng))
    damage(run_dir / "checkpoints" / "2" / name, way, rng)
    return run_dir


def test_export_generate_and_init_from_fall_back_with_one_warning(tmp_path, model_run, capsys):
    from instructjax.convert.hf import hf_to_params
    from instructjax.convert.saved import load_params_as, relayout_layers
    from instructjax.core.config import load_config
    from instructjax.eval.generate import load_generator
    from instructjax.train import setup

    _, config, first = model_run
    run_dir = damaged_model_run(model_run, tmp_path / "export")
    assert cli.main(["export", "--checkpoint", str(run_dir), "--out", str(tmp_path / "hf")]) == 0
    one_fallback(capsys, 2, 1)
    assert_same(jax.device_get(hf_to_params(str(tmp_path / "hf"))[0]), first)

    run_dir = damaged_model_run(model_run, tmp_path / "generate")
    generator, _ = load_generator(str(run_dir), batch_size=1)  # what generate, score and codex open
    one_fallback(capsys, 2, 1)
    loaded = jax.device_get(nnx.to_pure_dict(nnx.state(generator.model)))  # evaluated with its layers as a list
    assert_same(relayout_layers(loaded, len(loaded["layers"]), stacked=True), first)

    for case in (None, ("tokenizer/metadata", "flip")):  # a flipped byte keeps the size a listing shows
        run_dir = damaged_model_run(model_run, tmp_path / f"init_from_{case is None}", case)
        run_config = load_config(None, [f"model.init_from={run_dir}"])
        model_config = setup.resolve_model_config(run_config)  # what Trainer.__init__ opens, in its order
        assert setup.tokenizer_path(run_config) is not None
        params = load_params_as(str(run_dir), model_config)
        one_fallback(capsys, 2, 1)
        assert model_config.hidden_size == config.hidden_size
        assert_same(jax.device_get(params), first)


def test_naming_the_damaged_step_is_one_line(tmp_path, model_run, capsys):
    run_dir = damaged_model_run(model_run, tmp_path / "run")
    step_dir = run_dir / "checkpoints" / "2"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": 0, "instruction": "Hi"}\n')
    export = ["export", "--checkpoint", str(step_dir), "--out", str(tmp_path / "hf")]
    generate = ["generate", "--model", str(step_dir), "--prompts", str(prompts), "--out", str(tmp_path / "o")]
    for argv in (export, generate):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("instructjax: error: checkpoint step 2 in "), err
        assert "is damaged" in err, err
    with pytest.raises(ConfigError, match="step 2 .* is damaged"):
        ckpt.load_params(run_dir, step=2)
    assert ckpt.load_params(run_dir, step=1)[3] == 1 and not warnings(capsys)
