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

A warm-up run (a LoRA run that saved a step per epoch) gives the checkpoints: `warmup_step` reads a step's parameters,
its Adam moments and the learning rate it trained at; `pool_features` makes a pool's projected features a batch of
rows at a time.

LESS projects with trak's projector; `rademacher` draws its own matrix (JAX's generator), so features differ from
trak's stream, while the scores under one matrix are LESS's (tests/train/test_less.py runs LESS's code on the
same model, examples, moments and matrix).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


# ---- a warm-up run's checkpoints and a pool's features --------------------------------------------------------------


@dataclass(frozen=True)
class WarmupStep:
    """A LoRA warm-up run's saved step: its model, parameters, the Adam moments of what trains (each flattened in the
    trained tree's order, as `flatten` lays out gradients) and the learning rate the step trained at (metrics.jsonl)."""

    step: int
    model: Any
    params: Any
    first: np.ndarray  # [D] Adam's first moment (optax `mu`)
    second: np.ndarray  # [D] its second (optax `nu`)
    lr: float


def warmup_steps(run_dir: str) -> list[int]:
    """The warm-up run's saved steps, oldest first (LESS takes a checkpoint per epoch: the run keeps them)."""
    from instructjax.core.checkpoint import checkpoints_dir
    from instructjax.core.integrity import steps_on_disk

    return sorted(steps_on_disk(checkpoints_dir(run_dir)))


def warmup_step(run_dir: str, step: int) -> WarmupStep:
    """`run_dir`'s `step` (see `WarmupStep`); one line where it trains no LoRA or logged no learning rate."""
    import optax

    from instructjax.convert.saved import load_params_as
    from instructjax.core.checkpoint import read_meta, read_opt_state
    from instructjax.core.coerce import build_section
    from instructjax.core.config import OptimSection
    from instructjax.core.errors import ConfigError
    from instructjax.model.config import DecoderConfig
    from instructjax.train.metrics import read_metrics
    from instructjax.train.step import abstract_state

    stored, run_config, step = read_meta(run_dir, step)
    model = DecoderConfig.from_dict(stored)
    if model.lora is None:
        raise ConfigError(f"{run_dir}: LESS's warm-up trains a LoRA; its model has none (model.lora)")
    tx, _ = build_section(OptimSection, (run_config or {}).get("optim", {}), "optim").build(1)
    opt_state = read_opt_state(run_dir, step, abstract_state(model, tx).opt)
    moments = [optax.tree_utils.tree_get(opt_state, name) for name in ("mu", "nu")]
    logged = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step and "lr" in r]
    if not logged:
        raise ConfigError(f"{run_dir}: no learning rate logged by step {step} (metrics.jsonl): LESS weighs each "
                          "checkpoint by it")
    first, second = (np.concatenate([np.asarray(x).reshape(-1) for x in jax.tree.leaves(m)]) for m in moments)
    return WarmupStep(step, model, load_params_as(run_dir, model, step=step), first, second, float(logged[-1]["lr"]))


def model_parts(model) -> tuple[Any, Any]:
    """(graph, what trains: `Partition`) of a `DecoderConfig`, nothing allocated: what `gradients` takes."""
    from flax import nnx

    from instructjax.model.decoder import Decoder
    from instructjax.model.partition import Partition

    abstract = nnx.eval_shape(lambda: Decoder(model, rngs=nnx.Rngs(0)))
    return nnx.graphdef(abstract), Partition.of_state(nnx.state(abstract, nnx.Param))


def pool_features(warm: WarmupStep, rows: dict[str, np.ndarray], kind: str, matrix: jax.Array, batch: int = 8
                  ) -> np.ndarray:
    """[rows, k]: each row's (one example a row) `kind` features under `warm`, projected by `matrix` and normalised,
    `batch` rows at a time (never more than a batch's full gradients at once)."""
    graphdef, partition = model_parts(warm.model)

    @jax.jit
    def one_batch(params, part):
        return project(features(flatten(gradients(graphdef, partition, params, part)), kind, warm.first,
                                warm.second), matrix)

    n = len(rows["tokens"])
    out = []
    for start in range(0, n, batch):
        part = {k: v[start : start + batch] for k, v in rows.items()}
        short = batch - len(part["tokens"])  # the last batch padded to the compiled shape, its padding dropped
        part = {k: np.concatenate([v, np.zeros((short, *v.shape[1:]), v.dtype)]) for k, v in part.items()}
        out.append(np.asarray(one_batch(warm.params, part))[: batch - short])
    return np.concatenate(out) if out else np.zeros((0, matrix.shape[1]), np.float32)
