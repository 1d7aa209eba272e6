"""Preference losses (train/preference.py): completion sums against a brute-force walk over packed rows, DPO and
dpo_norm against float64 numpy from their papers' formulas, SimPO against TRL's CPOTrainer.cpo_loss."""

from __future__ import annotations

from types import SimpleNamespace

import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.core.config import ObjectiveSection, load_config
from instructjax.core.errors import ConfigError
from instructjax.core.objectives import OPTIONS, SimPOOptions
from instructjax.train import preference

PAIRS = 6


def packed_rows(seed: int = 0):
    """Rows [4, 32] holding both completions of PAIRS pairs in random order and lengths, packed back to back, each
    completion after a few untrained (prompt) tokens, the rows' tails padding."""
    rng = np.random.default_rng(seed)
    logps = -rng.random((4, 32)) * 3
    weights, pair, side = np.zeros((4, 32)), np.zeros((4, 32), np.int32), np.zeros((4, 32), np.int32)
    pieces = [(p, s) for p in range(PAIRS) for s in (0, 1)]
    rng.shuffle(pieces)
    row, at = 0, 0
    for p, s in pieces:
        prompt, completion = rng.integers(1, 4), rng.integers(1, 6)
        if at + prompt + completion > 32:
            row, at = row + 1, 0
        pair[row, at:at + prompt + completion], side[row, at:at + prompt + completion] = p, s
        weights[row, at + prompt:at + prompt + completion] = 1.0
        at += prompt + completion
    return logps, weights, pair, side


def test_completion_sums_follow_each_token_to_its_pair_and_side_whatever_the_packing():
    logps, weights, pair, side = packed_rows()
    sums, counts = preference.completion_logps(jnp.asarray(logps, jnp.float32), jnp.asarray(weights, jnp.float32),
                                               jnp.asarray(pair), jnp.asarray(side), PAIRS)
    want, n = np.zeros((PAIRS, 2)), np.zeros((PAIRS, 2))
    for b in range(4):  # brute force: walk every token
        for t in range(32):
            if weights[b, t]:
                want[pair[b, t], side[b, t]] += logps[b, t]
                n[pair[b, t], side[b, t]] += 1
    np.testing.assert_allclose(np.asarray(sums), want, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(counts), n)
    assert n.min() >= 1


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _inputs(seed: int = 1):
    rng = np.random.default_rng(seed)
    policy, reference = -rng.random((PAIRS, 2)) * 40, -rng.random((PAIRS, 2)) * 40
    counts = rng.integers(1, 30, (PAIRS, 2)).astype(np.float64)
    return policy, reference, counts


def means(rewards) -> dict[str, float]:
    """The logged rewards: `reward_sums` over every pair, over their number."""
    return {k: float(v) / len(rewards) for k, v in preference.reward_sums(rewards, jnp.ones(len(rewards), bool)).items()}


@pytest.mark.parametrize("loss", ["dpo", "dpo_norm"])
def test_dpo_and_dpo_norm_equal_their_formulas_in_float64(loss):
    """DPO: -log sigmoid(beta ((c - c_ref) - (r - r_ref))) on summed log-probs; dpo_norm (open-instruct's
    `dpo_norm`, TRL's `sigmoid_norm`) the same on per-token means; rewards beta x the log-ratio."""
    policy, reference, counts = _inputs()
    objective = OPTIONS[loss](beta=0.3)
    losses, rewards = preference.pair_losses(objective, jnp.asarray(policy, jnp.float32), jnp.asarray(counts, jnp.float32),
                                             jnp.asarray(reference, jnp.float32))
    metrics = means(rewards)
    per = counts if loss == "dpo_norm" else np.ones_like(counts)
    ratio_c = (policy[:, 0] - reference[:, 0]) / per[:, 0]
    ratio_r = (policy[:, 1] - reference[:, 1]) / per[:, 1]
    np.testing.assert_allclose(np.asarray(losses), -_log_sigmoid(0.3 * (ratio_c - ratio_r)), rtol=2e-5)
    np.testing.assert_allclose(float(metrics["rewards/chosen"]), np.mean(0.3 * ratio_c), rtol=2e-5)
    np.testing.assert_allclose(float(metrics["rewards/margins"]), np.mean(0.3 * (ratio_c - ratio_r)), rtol=2e-4, atol=1e-6)
    assert float(metrics["rewards/accuracies"]) == pytest.approx(np.mean(ratio_c > ratio_r))


def test_simpo_equals_trls_cpo_loss_with_the_simpo_loss_type():
    """SimPO: TRL's CPOTrainer.cpo_loss (loss_type simpo, label smoothing 0, AlphaPO off) on per-token mean
    log-probs, its rewards beta x those means; no reference."""
    torch = pytest.importorskip("torch")
    cpo = pytest.importorskip("trl.experimental.cpo.cpo_trainer")
    policy, _, counts = _inputs(2)
    objective = SimPOOptions(beta=2.0, gamma=1.2)
    losses, rewards = preference.pair_losses(objective, jnp.asarray(policy, jnp.float32), jnp.asarray(counts, jnp.float32))
    metrics = means(rewards)
    trainer = SimpleNamespace(alpha=0.0, beta=2.0, loss_type="simpo", simpo_gamma=1.2, label_smoothing=0.0,
                              accelerator=SimpleNamespace(device="cpu"))
    per_token = torch.tensor(policy / counts)
    theirs, chosen, rejected = cpo.CPOTrainer.cpo_loss(trainer, per_token[:, 0], per_token[:, 1])
    np.testing.assert_allclose(np.asarray(losses), theirs.numpy(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["rewards/chosen"]), chosen.mean().item(), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["rewards/rejected"]), rejected.mean().item(), rtol=1e-5)


def test_the_objective_section_refuses_bad_values_in_one_line():
    for bad, words in ((["objective.loss=dpo2"], "objective.loss"), (["objective.loss=dpo", "objective.dpo.beta=0"],
                       "objective.dpo.beta"), (["objective.loss=dpo", "objective.dpo.reference=disk"],
                       "objective.dpo.reference"), (["objective.loss=simpo", "objective.simpo.gamma=-1"],
                       "objective.simpo.gamma")):
        with pytest.raises(ConfigError, match=words) as err:
            load_config(None, bad)
        assert "\n" not in str(err.value)
    assert ObjectiveSection().loss == "sft" and not ObjectiveSection().preference
    assert ObjectiveSection(loss="dpo").needs_reference and not ObjectiveSection(loss="simpo").needs_reference
