"""ORPO (`objective.loss: orpo`, train/objectives/orpo.py) on pairs packed several a row and split into two
micro-batches, against TRL's own `ORPOTrainer.odds_ratio_loss` on a brute-force walk over the pairs (each completion's
mean log-prob, the chosen sequences' NLL over their prompt and completion): the loss, its logged values and where its
gradient goes. The whole run against TRL's ORPOTrainer: benchmarks/trl_dpo.py --loss orpo."""

from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.core.config import load_config
from instructjax.core.objectives import NoReference, Pairs
from instructjax.data.batches.packing import SequencePacker
from instructjax.train.objectives import objective_for

SEQ, BETA = 48, 0.25


def packed_pairs(n: int = 7) -> dict[str, np.ndarray]:
    """Rows of `n` random pairs (a shared prompt, untrained, then each side's completion) packed several a row, an even
    number of rows."""
    rng = np.random.default_rng(4)
    examples = []
    for _ in range(n):
        prompt = rng.integers(3, 120, rng.integers(2, 7))
        sides = [np.concatenate([prompt, rng.integers(3, 120, rng.integers(2, 8))]) for _ in range(2)]
        masks = [np.concatenate([np.zeros(len(prompt)), np.ones(len(s) - len(prompt))]) for s in sides]
        examples.append({"tokens": np.concatenate(sides).astype(np.int32),
                         "loss_mask": np.concatenate(masks).astype(np.int32), "rejected_at": len(sides[0])})
    rows, _ = SequencePacker(SEQ, pack=True).pack_window(examples)
    rows = {k: np.concatenate([v, np.zeros((-len(v) % 2, SEQ), v.dtype)]) for k, v in rows.items()}
    assert rows["segment_ids"].max() >= 4  # several pairs share a row
    return rows


def brute_force(rows: dict[str, np.ndarray], nll: np.ndarray):
    """Per pair (chosen, rejected) mean log-prob of the completion, and the chosen sequences' summed NLL and count of
    predicted tokens, walking each row's segments (2k - 1 chosen, 2k rejected) in float64."""
    means, nll_sum, nll_count = [], 0.0, 0
    for r, segments in enumerate(rows["segment_ids"]):
        for k in range(1, segments.max() // 2 + 1):
            pair = []
            for segment in (2 * k - 1, 2 * k):
                at = np.flatnonzero(segments == segment)
                trained = at[rows["loss_weights"][r, at] > 0]
                pair.append(-nll[r, trained].astype(np.float64).mean())
                if segment % 2:  # TRL: labels = the chosen input ids, shifted: every token but the first is predicted
                    nll_sum += nll[r, at[:-1]].astype(np.float64).sum()
                    nll_count += len(at) - 1
            means.append(pair)
    return np.asarray(means), nll_sum, nll_count


@pytest.mark.slow  # TRL's import
def test_orpo_is_trls_odds_ratio_loss_on_packed_pairs():
    torch = pytest.importorskip("torch")
    pytest.importorskip("trl")
    from trl.experimental.orpo import ORPOTrainer

    rows = packed_pairs()
    nll = np.random.default_rng(5).uniform(0.2, 4.0, rows["tokens"].shape).astype(np.float32)
    means, nll_sum, nll_count = brute_force(rows, nll)
    trl = SimpleNamespace(beta=BETA, accelerator=SimpleNamespace(device="cpu"))
    losses, chosen, rejected, ratio, log_odds = (
        x.double().numpy() for x in ORPOTrainer.odds_ratio_loss(trl, torch.tensor(means[:, 0]),
                                                                torch.tensor(means[:, 1])))
    want = nll_sum / nll_count - losses.mean()  # ORPOTrainer.get_batch_loss_metrics: policy_nll_loss - losses.mean()

    objective = objective_for(load_config(None, ["objective.loss=orpo", f"objective.orpo.beta={BETA}"]))
    assert objective.reference is NoReference and objective.options.data is Pairs
    split = lambda x: x.reshape(len(x) // 2, 2, *x.shape[1:]).swapaxes(0, 1)  # noqa: E731  (train/step.py's split)
    micro = {k: jnp.asarray(split(v)) for k, v in rows.items()}
    weights = objective.weights(micro)

    def total(nll_rows):
        shares = [objective.loss(split(nll_rows)[m], {k: v[m] for k, v in micro.items()}, weights) for m in range(2)]
        return sum(s for s, _ in shares), jax.tree.map(lambda *xs: sum(xs), *[aux for _, aux in shares])

    (loss, sums), grad = jax.jit(jax.value_and_grad(total, has_aux=True))(jnp.asarray(nll))
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    metrics = objective.metrics(sums, weights)
    pairs = float(metrics["pairs"])
    assert pairs == len(means)
    np.testing.assert_allclose(float(metrics["loss_sum"]) / pairs, want, rtol=1e-5)
    for key, value in (("log_odds_ratio", ratio), ("log_odds_chosen", log_odds), ("rewards/chosen", chosen.mean()),
                       ("rewards/rejected", rejected.mean()), ("rewards/margins", (chosen - rejected).mean()),
                       ("rewards/accuracies", (chosen > rejected).mean()), ("nll_loss", nll_sum / nll_count)):
        np.testing.assert_allclose(float(metrics[key]) / pairs, value, rtol=1e-5, atol=1e-7, err_msg=key)
    # every slot of no pair stays out of it (finite gradients), the NLL reaches a chosen side's prompt tokens and no
    # rejected side's
    grad = np.asarray(grad)
    assert np.isfinite(grad).all()
    prompt = (rows["loss_weights"] == 0) & (rows["segment_ids"] > 0)
    following = np.concatenate([rows["segment_ids"][:, 1:], np.zeros((len(nll), 1), np.int32)], axis=1)
    predicted = following == rows["segment_ids"]
    chosen_prompt = prompt & predicted & (rows["segment_ids"] % 2 == 1)
    np.testing.assert_allclose(grad[chosen_prompt], 1.0 / nll_count, rtol=1e-5)
    assert not grad[prompt & (rows["segment_ids"] % 2 == 0)].any()
