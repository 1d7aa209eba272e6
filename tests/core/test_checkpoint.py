"""Checkpoint layout and the params-only contract (save_params / load_params), on real Orbax."""

import dataclasses

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from instructjax.core import checkpoint as ckpt
from instructjax.core import sharding
from instructjax.core.errors import ConfigError
from instructjax.model.config import DecoderConfig
from instructjax.model.decoder import Decoder
from instructjax.model.presets import preset


@pytest.fixture(scope="module")
def tiny():
    config = preset("tiny", dtype="float32")
    params = nnx.to_pure_dict(nnx.state(Decoder(config, rngs=nnx.Rngs(3))))
    return config, jax.device_get(params)


def _assert_same(a, b):
    flat_a, flat_b = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
    assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
    for (path, x), (_, y) in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def test_save_load_params_roundtrip(tmp_path, tiny):
    config, params = tiny
    out = ckpt.save_params(tmp_path / "run", params, dataclasses.asdict(config), run_config={"name": "x"}, step=7)
    assert out == (tmp_path / "run" / "checkpoints").absolute()
    assert {"meta", "params"} <= {p.name for p in (out / "7").iterdir()}
    for where in (tmp_path / "run", out):  # a run dir or its checkpoints dir
        loaded, loaded_config, run_config, step = ckpt.load_params(where)
        assert (DecoderConfig.from_dict(loaded_config), run_config, step) == (config, {"name": "x"}, 7)
        assert isinstance(loaded["layers"]["self_attn"]["q_proj"]["kernel"], np.ndarray)
        _assert_same(loaded, params)
    # the loaded dict is what the model takes back
    model = Decoder(config, rngs=nnx.Rngs(0))
    state = nnx.state(model)
    nnx.replace_by_pure_dict(state, loaded)
    nnx.update(model, state)
    _assert_same(nnx.to_pure_dict(nnx.state(model)), params)


def test_load_params_sharded_and_latest_step(tmp_path, tiny):
    config, params = tiny
    ckpt.save_params(tmp_path, params, dataclasses.asdict(config), step=1)
    bumped = jax.tree.map(lambda x: x + 1, params)
    ckpt.save_params(tmp_path, bumped, dataclasses.asdict(config), step=5)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, jax.devices()[:8])
    abstract = nnx.state(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0))))
    shardings = nnx.to_pure_dict(sharding.state_shardings(abstract, mesh))
    loaded, _, _, step = ckpt.load_params(tmp_path, shardings=shardings)
    assert step == 5
    _assert_same(loaded, bumped)
    q = loaded["layers"]["self_attn"]["q_proj"]["kernel"]  # stacked layers: [layers, embed, heads, head_dim]
    assert q.sharding == shardings["layers"]["self_attn"]["q_proj"]["kernel"]
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (config.num_layers, 32, 2, 16)
    _assert_same(ckpt.load_params(tmp_path, step=1)[0], params)
    with pytest.raises(ConfigError, match="step 3"):
        ckpt.load_params(tmp_path, step=3)


def test_load_params_missing(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoint"):
        ckpt.load_params(tmp_path / "nothing")


def test_checkpointer_keeps_n_and_restores_everything(tmp_path, tiny):
    config, params = tiny
    tx = optax.adamw(1e-3)
    opt_state = tx.init(params)
    saver = ckpt.Checkpointer(tmp_path, keep=2, async_save=True)
    for step in (10, 20, 30):
        params = jax.tree.map(lambda x: x * 0.5, params)
        opt_state = tx.update(params, opt_state, params)[1]
        data = np.array([[1, 2, step]], np.int64)
        saver.save(step, params, opt_state, data, {"run_config": {"seed": step}, "model_config": {}})
    saver.wait()
    assert sorted(int(p.name) for p in saver.directory.iterdir() if p.name.isdigit()) == [20, 30]
    assert saver.latest_step() == 30
    as_target = lambda t: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), t)  # noqa: E731
    restored_params, restored_opt, data, meta = saver.restore(30, as_target(params), as_target(opt_state))
    _assert_same(restored_params, params)
    _assert_same(restored_opt, opt_state)
    assert type(restored_opt[0]) is type(opt_state[0])  # optax namedtuples come back as such
    assert data.dtype == np.int64 and data.tolist() == [[1, 2, 30]]
    assert meta["step"] == 30 and meta["run_config"] == {"seed": 30}
    saver.close()
    # a params-only checkpoint (HF import) cannot be resumed from
    ckpt.save_params(tmp_path / "imported", params, dataclasses.asdict(config))
    with pytest.raises(ConfigError, match="optimizer state"):
        ckpt.Checkpointer(tmp_path / "imported").restore(0, as_target(params), as_target(opt_state))


def test_gather_data_state_single_host():
    out = ckpt.gather_data_state(np.array([3, 4, 5], np.int64))
    assert out.dtype == np.int64 and out.tolist() == [[3, 4, 5]]


@pytest.mark.parametrize("saved_scanned", [True, False])
def test_params_load_in_either_layer_layout(tmp_path, saved_scanned):
    """A checkpoint saved with scanned (stacked) or looped (listed) layers says so in its meta, and loads into
    a model of the other layout with the same logits, on a mesh too."""
    from instructjax.convert.saved import load_params_as
    from instructjax.model.decoder import with_params

    saved = preset("tiny", dtype="float32", scan_layers=saved_scanned)
    params = jax.device_get(nnx.to_pure_dict(nnx.state(Decoder(saved, rngs=nnx.Rngs(4)))))
    ckpt.save_params(tmp_path, params, dataclasses.asdict(saved), step=1)
    assert ckpt.read_meta(tmp_path)[0]["scan_layers"] is saved_scanned
    older = {k: v for k, v in dataclasses.asdict(saved).items() if k != "scan_layers"}  # before the option existed
    ckpt.save_params(tmp_path / "older", params, older, step=1)
    assert ckpt.read_meta(tmp_path / "older")[0]["scan_layers"] is saved_scanned  # read from the stored tree
    other = saved.replace(scan_layers=not saved_scanned)
    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 2}, jax.devices()[:4])
    abstract = nnx.state(nnx.eval_shape(lambda: Decoder(other, rngs=nnx.Rngs(0))))
    shardings = nnx.to_pure_dict(sharding.state_shardings(abstract, mesh))
    loaded = load_params_as(str(tmp_path), other, shardings=shardings)
    tokens = np.random.default_rng(0).integers(0, saved.vocab_size, (2, 12))
    positions, segments = np.broadcast_to(np.arange(12), (2, 12)), np.ones((2, 12), np.int32)
    expected = with_params(saved, params)(tokens, positions, segments)
    np.testing.assert_allclose(np.asarray(with_params(other, loaded)(tokens, positions, segments)),
                               np.asarray(expected), atol=1e-5, rtol=0)
