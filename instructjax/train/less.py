# Derived from LESS (https://github.com/princeton-nlp/LESS: less/data_selection/collect_grad_reps.py,
# obtain_gradients, obtain_sign_gradients, obtain_gradients_with_adam, merge_and_normalize_info; less/data_selection/matching.py,
# calculate_influence_score and its checkpoint weighting and subtask mean/max), Copyright (c) 2021 Princeton Natural
# Language Processing, MIT License. Modified for instructjax (JAX: per-example gradients by vmap). See NOTICE.

"""LESS's gradient features and influence scores (Xia et al., ICML 2024), as pure functions over a model's
parameters, its partition (what trains: a LoRA's adapters) and rows of examples:

    gradients  each example's gradient of what trains, its loss the mean cross-entropy of its trained tokens (the HF
               loss LESS takes, one example a batch), every example of the rows at once (`vmap` of `grad`);
    flatten    each example's gradient as one vector, the tree's leaves in order;
    features   of a gradient vector g: `sgd` g itself, `sign` its sign, `adam` LESS's `obtain_gradients_with_adam`
               with the checkpoint's Adam moments m and v: one moment update with g, then m' / sqrt(v' + eps), no bias
               correction (beta1 0.9, beta2 0.999, eps 1e-8);
    project    the features times a random projection matrix (`rademacher`: entries +-1, a seed's), each row then
               normalised to unit length (`merge_and_normalize_info`);
    influence  per checkpoint, every train x target inner product, weighted by the checkpoints' weights (normalised
               to sum to 1: LESS takes the learning rates), summed; then each train example's mean over every
               subtask's target examples, and the best subtask's (`less/data_selection/matching.py`).

LESS projects with trak's projector; `rademacher` draws its own matrix (JAX's generator), so features differ from
trak's stream, while the scores under one matrix are LESS's (tests/train/test_less.py runs LESS's code on the
same model, examples, moments and matrix).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from instructjax.train.step import forward

GRADIENT_TYPES = ("adam", "sgd", "sign")
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # obtain_gradients_with_adam's


def example_loss(graphdef, params, row: dict[str, jax.Array], chunk: int = 0) -> jax.Array:
    """One example's loss (a row of one example, [L] each feature): the mean cross-entropy of its trained tokens."""
    nll, _ = forward(graphdef, params, {k: v[None] for k, v in row.items()}, chunk)
    trained = (row["loss_weights"] > 0).astype(jnp.float32)
    return jnp.sum(nll[0] * trained) / jnp.maximum(jnp.sum(trained), 1.0)


def gradients(graphdef, partition, params, rows: dict[str, jax.Array], chunk: int = 0):
    """Each row's gradient of `partition`'s trained parameters (a tree, each leaf with a leading axis of rows)."""
    trained, frozen = partition.trainable(params), partition.frozen(params)

    def one(row):
        return jax.grad(lambda t: example_loss(graphdef, partition.combine(t, frozen), row, chunk))(trained)

    return jax.vmap(one)(rows)


def flatten(tree) -> jax.Array:
    """[rows, D]: each row's leaves, flattened in the tree's order, end to end."""
    leaves = jax.tree.leaves(tree)
    return jnp.concatenate([leaf.reshape(leaf.shape[0], -1) for leaf in leaves], axis=1)


def features(grads: jax.Array, kind: str = "adam", m: jax.Array | None = None, v: jax.Array | None = None
             ) -> jax.Array:
    """The gradient features of `grads` [rows, D] (see the module doc); `m`, `v` [D]: the Adam moments (`adam`)."""
    if kind == "sgd":
        return grads
    if kind == "sign":
        return jnp.sign(grads)
    if kind != "adam":
        raise ValueError(f"gradient type {kind!r}: one of {', '.join(GRADIENT_TYPES)}")
    first = BETA1 * m + (1 - BETA1) * grads
    second = BETA2 * v + (1 - BETA2) * grads**2
    return first / jnp.sqrt(second + EPS)


def rademacher(dim_in: int, dim_out: int, seed: int = 0) -> jax.Array:
    """A [dim_in, dim_out] matrix of +-1, the seed's."""
    return jnp.where(jax.random.bernoulli(jax.random.key(seed), 0.5, (dim_in, dim_out)), 1.0, -1.0)


def project(feats: jax.Array, matrix: jax.Array) -> jax.Array:
    """`feats` [rows, D] times `matrix` [D, k], each row normalised to unit length (torch's `normalize`, eps 1e-12)."""
    projected = feats.astype(jnp.float32) @ matrix.astype(jnp.float32)
    return projected / jnp.maximum(jnp.linalg.norm(projected, axis=1, keepdims=True), 1e-12)


def influence(train: list[np.ndarray], target: list[np.ndarray], weights: list[float], subtasks: list
              ) -> tuple[np.ndarray, np.ndarray]:
    """(each train example's score, its best subtask's index): `train` [N, k] and `target` [M, k] per checkpoint,
    `weights` per checkpoint, `subtasks` [M] each target example's label (see the module doc)."""
    total = float(sum(weights))
    score = sum((w / total) * (np.asarray(a, np.float32) @ np.asarray(b, np.float32).T)
                for w, a, b in zip(weights, train, target, strict=True))
    labels = list(dict.fromkeys(subtasks))
    means = np.stack([score[:, [i for i, s in enumerate(subtasks) if s == label]].mean(axis=1) for label in labels],
                     axis=1)
    return means.max(axis=1), means.argmax(axis=1)


def top(scores: np.ndarray, k: int) -> np.ndarray:
    """The indices of the `k` highest scores, highest first (ties: the earlier example first)."""
    return np.argsort(-scores, kind="stable")[:k]
