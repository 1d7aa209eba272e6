"""DoReMi's online domain weights (instructjax/train/doremi.py) against DoReMi's own `update_domain_weights`, pinned in
tests/assets/doremi (run in torch on the same excess losses, step after step), and its reweighted loss against the
training step's lines transcribed in float64 numpy."""

from __future__ import annotations

import types

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import pinned

from instructjax.train import doremi

DOMAINS = 4


@pytest.fixture(scope="module")
def theirs():
    """DoReMi's trainer (the extract), its weights state as its model keeps it, wandb's log off."""
    import wandb

    with pinned("doremi"):
        from doremi.trainer_update import DoReMiTrainer
    run = wandb.init(mode="disabled")
    trainer = DoReMiTrainer()
    trainer.args = types.SimpleNamespace(doremi_optimizer="doremiv1", reweight_eta=doremi.ETA, reweight_eps=doremi.EPS)
    trainer.domain_list = [f"d{i}" for i in range(DOMAINS)]
    yield trainer
    run.finish()  # no W&B run left active for the tests after these


def step(rng: np.random.Generator, rows: int, width: int, absent: int | None):
    """A step's per-token excess losses, masks and each row's domain (`absent`: a domain no row has)."""
    excess = rng.normal(0.3, 1.0, (rows, width)).astype(np.float32)
    mask = rng.random((rows, width)) < 0.7
    mask[:, 0] = True  # every row trains a token
    choices = [d for d in range(DOMAINS) if d != absent]
    return excess, mask, rng.choice(choices, rows)


def test_the_weights_follow_doremis_update_step_after_step(theirs):
    rng = np.random.default_rng(0)
    start = rng.dirichlet(np.ones(DOMAINS)).astype(np.float32)
    theirs.model = types.SimpleNamespace(train_domain_weights=torch.tensor(start), avg_domain_weights=torch.zeros(DOMAINS),
                                         perdomain_scores=torch.zeros(DOMAINS), update_counter=0)
    ours = doremi.DomainWeights.start(start)
    for i in range(12):
        excess, mask, row_domain = step(rng, 8, 32, absent=i % DOMAINS if i % 3 else None)
        theirs.update_domain_weights(torch.tensor(excess), torch.tensor(mask), torch.tensor(row_domain))
        tokens = np.broadcast_to(row_domain[:, None], excess.shape)  # here a domain per token
        ours = doremi.update(ours, jnp.asarray(excess), jnp.asarray(mask), jnp.asarray(tokens))
        for mine, upstream in ((ours.weights, theirs.model.train_domain_weights),
                               (ours.average, theirs.model.avg_domain_weights),
                               (ours.scores, theirs.model.perdomain_scores)):
            np.testing.assert_allclose(np.asarray(mine), upstream.numpy(), rtol=0, atol=1e-6)
    assert int(ours.updates) == theirs.model.update_counter == 12
    assert abs(float(ours.weights.sum()) - 1) < 1e-6 and float(ours.weights.min()) >= doremi.EPS / DOMAINS - 1e-9


@pytest.mark.parametrize("sampled", [False, True])
def test_the_proxys_loss_is_doremis_reweighted_loss(sampled):
    """DoReMi's training step, one process: the weights over the sampling rates, renormalised, at each token of the
    row's domain times its mask, over their sum (clipped at 1e-10)."""
    rng = np.random.default_rng(1)
    loss, mask, row_domain = step(rng, 6, 20, absent=None)
    weights = rng.dirichlet(np.ones(DOMAINS))
    sampling = rng.dirichlet(np.ones(DOMAINS)) if sampled else np.full(DOMAINS, 1 / DOMAINS)
    w = weights / sampling
    w = w / w.sum()
    per_token = np.broadcast_to(w[row_domain][:, None], loss.shape) * mask
    expected = (loss.astype(np.float64) * per_token).sum() / max(per_token.sum(), 1e-10)
    tokens = np.broadcast_to(row_domain[:, None], loss.shape)
    got = doremi.weighted_loss(jnp.asarray(loss), jnp.asarray(mask), jnp.asarray(tokens), jnp.asarray(weights, jnp.float32),
                               jnp.asarray(sampling, jnp.float32) if sampled else None)
    assert float(got) == pytest.approx(expected, rel=1e-6)
