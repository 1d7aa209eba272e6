"""Preference losses on chosen and rejected completions (`objective:`, their options in core/objectives.py).

A step's rows hold the two completions of each pair, packed like SFT rows: every trained token carries its pair's
index in the step and its side (0 chosen, 1 rejected), so `completion_logps` sums the token log-probs of each
completion whatever the packing. With c, r the policy's summed log-probs of a pair's chosen and rejected
completion, c_ref, r_ref the reference's (the starting model, frozen), n_c, n_r their trained tokens:

- `dpo` (Rafailov et al.; TRL's DPOTrainer `loss_type="sigmoid"`): -log sigmoid(beta ((c - c_ref) - (r - r_ref)));
- `dpo_norm` (open-instruct's; TRL's `sigmoid_norm`): the same on per-token means, c / n_c and so on;
- `simpo` (Meng et al.; TRL's CPOTrainer `loss_type="simpo"`, `cpo_alpha=0`): -log sigmoid(beta (c / n_c - r / n_r)
  - gamma), no reference.

The step's loss is the mean over its pairs. The rewards are logged with TRL's names: rewards/chosen and
rewards/rejected (beta times the log-ratio to the reference: summed for dpo, per token for dpo_norm as open-instruct
logs them; beta times the mean log-prob for simpo, as CPOTrainer), rewards/accuracies (chosen above rejected) and
rewards/margins.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from instructjax.core.objectives import NoReference, Options

Array = jax.Array
CHOSEN, REJECTED = 0, 1


def pair_slots(segment_ids: Array) -> tuple[Array, Array, int]:
    """(each token's pair slot, its side, the slots) of rows of preference pairs (data/batches/packing.py: a pair's
    sides are segments 2k - 1 and 2k of a row): row r's k-th pair is slot r * (L // 2) + k - 1."""
    rows, length = segment_ids.shape
    inside = jnp.maximum(segment_ids - 1, 0)
    pair = jnp.arange(rows)[:, None] * (length // 2) + inside // 2
    return pair, inside % 2, rows * (length // 2)


def completion_logps(token_logps: Array, weights: Array, pair: Array, side: Array, pairs: int) -> tuple[Array, Array]:
    """(summed log-probs, trained tokens) of each pair's completions, each [pairs, 2] (column 0 chosen, 1
    rejected), from per-token log-probs and loss weights [B, L] and each token's pair index and side [B, L] (a
    token of no pair: weight 0)."""
    index = jnp.where(weights > 0, pair * 2 + side, 2 * pairs).reshape(-1)  # untrained tokens: a bin past the end
    sums = jax.ops.segment_sum((token_logps * weights).reshape(-1), index, num_segments=2 * pairs + 1)
    counts = jax.ops.segment_sum(weights.reshape(-1), index, num_segments=2 * pairs + 1)
    return sums[:-1].reshape(pairs, 2), counts[:-1].reshape(pairs, 2)


def pair_losses(objective: Options, policy: Array, counts: Array,
                reference: Array | None = None) -> tuple[Array, Array]:
    """Each pair's loss [pairs] and rewards [pairs, 2] (see the module doc), from the policy's and the reference's
    summed completion log-probs and the completions' trained tokens, each [pairs, 2]; `objective` the loss's options
    (`config.objective.options`: core/objectives.py)."""
    beta = objective.beta
    if objective.reference_kind is not NoReference and reference is None:
        raise ValueError(f"objective.loss={objective.loss} needs the reference's log-probs")
    tokens = jnp.maximum(counts, 1.0)
    if objective.loss == "dpo":
        scores = policy - reference
    elif objective.loss == "dpo_norm":
        scores = (policy - reference) / tokens
    elif objective.loss == "simpo":
        scores = policy / tokens
    else:
        raise ValueError(f"objective.loss={objective.loss!r} is not a preference loss")
    margin = scores[:, CHOSEN] - scores[:, REJECTED]
    logits = beta * margin - (objective.gamma if objective.loss == "simpo" else 0.0)
    losses = -jax.nn.log_sigmoid(logits)
    return losses, beta * jax.lax.stop_gradient(scores)


def reward_sums(rewards: Array, real: Array) -> dict[str, Array]:
    """The rewards TRL logs, summed over the `real` pairs (a mask [pairs]): divided by their number, TRL's means."""
    chosen, rejected = rewards[:, CHOSEN], rewards[:, REJECTED]
    total = lambda x: jnp.sum(jnp.where(real, x, 0.0))  # noqa: E731
    return {"rewards/chosen": total(chosen), "rewards/rejected": total(rejected),
            "rewards/accuracies": total((chosen > rejected).astype(jnp.float32)),
            "rewards/margins": total(chosen - rejected)}
