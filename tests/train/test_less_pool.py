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
from instructjax.data.batches.packing import SequencePacker
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


def test_the_pools_features_a_batch_at_a_time_are_each_examples_alone(warmup):
    warm = less.warmup_step(warmup, 2)
    examples = [encoded_examples("alpaca_builtin")[i] for i in range(5)]
    rows, _ = SequencePacker(128, pack=False).pack_window(examples)
    rows = {k: v for k, v in rows.items() if k != "source_ids"}
    dim = warm.first.shape[0]  # what trains, flattened
    matrix = less.rademacher(dim, 16, seed=0)
    with one_device():
        batched = less.pool_features(warm, rows, "adam", matrix, batch=3)
        alone = np.concatenate([less.pool_features(warm, {k: v[i : i + 1] for k, v in rows.items()}, "adam", matrix,
                                                   batch=1) for i in range(5)])
    assert batched.shape == (5, 16)
    np.testing.assert_allclose(batched, alone, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)

