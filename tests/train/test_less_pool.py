"""LESS's feature pass over a pool (instructjax/train/less.py) on a real LoRA warm-up run: a saved step's Adam
moments as the trainer restores them, flattened in the gradients' order, and its learning rate as the run logged it;
the pool's features made a batch at a time (the last batch padded) equal to each example's made alone."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from helpers.host_devices import one_device

from instructjax.core.config import load_config
from instructjax.data.tokenized.examples import encoded_examples
from instructjax.train import less
from instructjax.train.trainer import Trainer

WARMUP = ["model.preset=tiny", "model.dtype=float32", "model.lora.rank=4", "model.lora.alpha=8",
          "model.lora.targets=[q_proj,v_proj]", "data.mixture=alpaca_builtin", "data.seq_len=128",
          "data.global_batch=8", "optim.lr=1e-3", "max_steps=2", "checkpoint.every=1", "checkpoint.keep=5",
          "log_every=1"]  # fmt: skip


@pytest.fixture(scope="module")
def warmup(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("less") / "warmup"
    with one_device():
        Trainer(load_config(None, [*WARMUP, f"run_dir={run_dir}"])).run()
    return str(run_dir)


def test_a_saved_steps_moments_and_learning_rate_are_the_trainers(warmup):
    assert less.warmup_steps(warmup) == [1, 2]
    warm = less.warmup_step(warmup, 1)
    with one_device():
        trainer = Trainer(load_config(None, [*WARMUP, f"run_dir={warmup}", "max_steps=2"]), resume=True)
        restored = trainer.checkpointer.restore(1, trainer.build.params, trainer.build.opt_state)[1]  # no base
        trainer.lock.release()
    for mine, name in ((warm.first, "mu"), (warm.second, "nu")):
        tree = optax.tree_utils.tree_get(restored, name)
        np.testing.assert_array_equal(mine, np.concatenate([np.asarray(x).reshape(-1) for x in jax.tree.leaves(tree)]))
    assert np.abs(warm.first).max() > 0 and (warm.second >= 0).all()
    assert warm.lr == pytest.approx(float(trainer.schedule(0)))  # step 1 trained at the schedule's first rate


def test_the_pools_features_a_batch_at_a_time_are_each_examples_alone(warmup, monkeypatch):
    """Batches sorted by length, padded to one of four widths an octave, the output head once over a batch's (or each
    of two groups of rows') trained tokens end to end, the projection kept whole or drawn a block at a time: each
    example's features as made alone with the head at every position (LESS's loss), unprojected then projected by the
    whole matrix."""
    from jax.sharding import Mesh

    from instructjax.train import less_features as store

    warm = less.warmup_step(warmup, 2)
    examples = [encoded_examples("alpaca_builtin")[i] for i in range(5)]
    dim = warm.first.shape[0]  # what trains, flattened
    with one_device():
        mesh = Mesh(np.asarray(jax.devices()), ("data",))
        fn = store.feature_fn(warm.model, "adam", less.Projection(16, seed=0), mesh)
        batched = store.compute(examples, lambda rows: fn(warm, rows), 3, dim=16)
        plain = store.feature_fn(warm.model, "adam", lambda feats: feats, mesh)
        everywhere = lambda rows: {k: v for k, v in rows.items() if k not in less.HEAD_ROWS}  # noqa: E731
        alone = np.concatenate([plain(warm, everywhere(store.rows_of([ex], 1))) for ex in examples])
        grouped = store.compute(examples, lambda rows: fn(warm, rows), 4, dim=16, groups=2)
        monkeypatch.setattr(store, "MATRIX_BYTES", 0)  # the matrix drawn a block at a time in every batch
        fn = store.feature_fn(warm.model, "adam", less.Projection(16, seed=0), mesh)
        streamed = store.compute(examples, lambda rows: fn(warm, rows), 3, dim=16)
    assert batched.shape == (5, 16)
    np.testing.assert_allclose(batched, less.project(alone, less.rademacher(dim, 16, seed=0)), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(streamed, batched, atol=1e-5)
    np.testing.assert_allclose(grouped, batched, atol=1e-5)


@pytest.mark.parametrize("kind", ["adam", "sgd", "sign"])
def test_features_projected_a_block_at_a_time_are_the_whole_features_projected(kind):
    """Features made and projected a block of values at a time (a remainder block short) are the features made
    whole and projected by the whole matrix."""
    rng = np.random.default_rng(1)
    grads = rng.normal(size=(3, 100)).astype(np.float32)
    m, v = rng.normal(0, 1e-3, 100).astype(np.float32), rng.uniform(1e-8, 1e-5, 100).astype(np.float32)
    for block in (32, 25):  # 3 blocks and a remainder of 4 values; 4 blocks that divide the values
        blocked = less.features_projected(grads, kind, m, v, 8, seed=2, block=block)
        whole = less.project(less.features(grads, kind, m, v), less.rademacher(100, 8, seed=2, block=block))
        np.testing.assert_allclose(blocked, whole, atol=1e-6)


def test_the_streamed_projection_is_the_whole_matrix():
    feats = np.random.default_rng(0).normal(size=(3, 100)).astype(np.float32)
    streamed = less.project_streamed(feats, 8, seed=2, block=32)  # 4 blocks, the last one short
    np.testing.assert_allclose(streamed, less.project(feats, less.rademacher(100, 8, seed=2, block=32)), atol=1e-6)
    assert not np.allclose(streamed, less.project(feats, less.rademacher(100, 8, seed=3, block=32)), atol=1e-2)
