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
    project    the features times a random projection matrix (`rademacher`: entries +-1, a seed's, drawn a block of
               rows at a time: `project_streamed` never holds it whole), each row then normalised to unit length
               (`merge_and_normalize_info`);
    influence  per checkpoint, every train x target inner product, weighted by the checkpoints' weights (normalised
               to sum to 1: LESS takes the learning rates), summed; then each train example's mean over every
               subtask's target examples, and the best subtask's (`less/data_selection/matching.py`).

A warm-up run (a LoRA run that saved a step per epoch) gives the checkpoints: `warmup_step` reads a step's parameters,
its Adam moments and its epoch's mean learning rate; `train/less_features.py` makes and keeps a pool's features,
`train/less_select.py` is the selection method.

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
    if HEAD_ROWS[0] in rows:
        if not head_trains(partition):
            return _gradients_one_head(graphdef, partition, trained, frozen, rows, chunk)
        rows = {k: v for k, v in rows.items() if k not in HEAD_ROWS}

    def one(row):
        return jax.grad(lambda t: example_loss(graphdef, partition.combine(t, frozen), row, chunk))(trained)

    return jax.vmap(one)(rows)


HEAD_ROWS = ("head_rows", "head_positions")  # a batch's trained tokens, end to end (`_gradients_one_head`)


def head_trains(partition) -> bool:
    """Whether the output head (`lm_head`, or the embedding table tied to it) is among what trains."""
    return not partition.adapters or any(path[0] in ("lm_head", "embed_tokens") for path in partition.trained)


def _gradients_one_head(graphdef, partition, trained, frozen, rows: dict[str, jax.Array], chunk: int):
    """`gradients` with the output head run once over the batch's trained tokens, end to end (`rows["head_rows"]`,
    `rows["head_positions"]` [S, M]: each of S groups of rows' trained tokens, as its row in the group and position,
    then -1s; a group is a device's rows): each row's hidden states by its own copy of what trains (`vmap`), the
    gradient of the sum of the rows' losses by the hidden states taken once, pulled back to each row's copy (the head
    does not train: a row's hidden states carry its own loss's gradient alone). LESS's loop runs the head at every
    position of an example, a prompt's weighing 0: the same gradients."""
    from flax import nnx

    from instructjax.train.loss import model_nll

    size = rows["tokens"].shape[0]
    copies = jax.tree.map(lambda x: jnp.broadcast_to(x, (size, *x.shape)), trained)  # each row's own

    def hidden_of(copies):
        def one(copy, row):
            model = nnx.merge(graphdef, partition.combine(copy, frozen))
            inputs = (row["tokens"][None], row["positions"][None], row["segment_ids"][None])
            return model.routed_hidden_states(*inputs)[0][0]

        return jax.vmap(one)(copies, {k: v for k, v in rows.items() if k not in HEAD_ROWS})

    hidden, pullback = jax.vjp(hidden_of, copies)
    model = nnx.merge(graphdef, partition.combine(trained, frozen))
    groups, _ = rows["head_rows"].shape
    counts = jnp.sum(rows["loss_weights"] > 0, axis=1).astype(jnp.float32).reshape(groups, -1)
    at, positions = jnp.maximum(rows["head_rows"], 0), jnp.maximum(rows["head_positions"], 0)
    targets = rows["targets"].reshape(groups, -1, rows["targets"].shape[1])
    gather = jax.vmap(lambda x, r, p: x[r, p])

    def head_loss(hidden):
        grouped = hidden.reshape(groups, -1, *hidden.shape[1:])
        nll = model_nll(model, gather(grouped, at, positions), gather(targets, at, positions), chunk)
        weights = (rows["head_rows"] >= 0) / jnp.maximum(jax.vmap(lambda c, r: c[r])(counts, at), 1.0)
        return jnp.sum(nll * weights)

    (grads,) = pullback(jax.grad(head_loss)(hidden))
    return grads


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


BLOCK = 4096  # rows of the projection drawn at a time: a 7B LoRA's matrix (~1e8 x 8192) is never held whole


PROJECTION = "rademacher-bits-1"  # how `rademacher_block` draws: features made by another are not comparable


def rademacher_block(seed: int, index, dim_out: int, block: int = BLOCK) -> jax.Array:
    """Rows [index * block, (index + 1) * block) of the seed's projection: +-1, each sign a bit of 32-bit words drawn
    from the seed's key folded with `index` (a 32nd of the random numbers one draw a sign would take)."""
    key = jax.random.fold_in(jax.random.key(seed), index)
    words = jax.random.bits(key, (block, -(-dim_out // 32)), jnp.uint32)
    bits = (words[..., None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
    return bits.reshape(block, -1)[:, :dim_out].astype(jnp.float32) * 2 - 1


def rademacher(dim_in: int, dim_out: int, seed: int = 0, block: int = BLOCK) -> jax.Array:
    """The seed's [dim_in, dim_out] projection of +-1, whole (the blocks of `rademacher_block`, end to end)."""
    blocks = [rademacher_block(seed, i, dim_out, block) for i in range(-(-dim_in // block))]
    return jnp.concatenate(blocks)[:dim_in]


def normalise(projected: jax.Array) -> jax.Array:
    """Each row at unit length (torch's `normalize`, eps 1e-12)."""
    return projected / jnp.maximum(jnp.linalg.norm(projected, axis=1, keepdims=True), 1e-12)


def project(feats: jax.Array, matrix: jax.Array) -> jax.Array:
    """`feats` [rows, D] times `matrix` [D, k], each row normalised to unit length."""
    return normalise(feats.astype(jnp.float32) @ matrix.astype(jnp.float32))


def project_streamed(feats: jax.Array, dim_out: int, seed: int = 0, block: int = BLOCK) -> jax.Array:
    """`project(feats, rademacher(D, dim_out, seed, block))`, the matrix drawn a block of rows at a time inside the
    loop (what trak's projector does on a GPU): memory of one block, whatever D."""
    rows, dim_in = feats.shape
    blocks = -(-dim_in // block)
    padded = jnp.pad(feats.astype(jnp.float32), ((0, 0), (0, blocks * block - dim_in)))

    def add(i, total):
        part = jax.lax.dynamic_slice_in_dim(padded, i * block, block, axis=1)
        return total + part @ rademacher_block(seed, i, dim_out, block)

    return normalise(jax.lax.fori_loop(0, blocks, add, jnp.zeros((rows, dim_out), jnp.float32)))


def features_projected(grads: jax.Array, kind: str, m: jax.Array | None, v: jax.Array | None, dim_out: int,
                       seed: int = 0, block: int = BLOCK) -> jax.Array:
    """`project_streamed(features(grads, kind, m, v), dim_out, seed, block)` with the features never whole: each block
    of `block` values made into features and projected in turn (a 7B LoRA's features, 4 bytes a value an example,
    would be one more copy of its gradients; the Adam moments' updated copies two more)."""
    rows, dim_in = grads.shape
    full, rest = divmod(dim_in, block)

    def part(start, size: int, index) -> jax.Array:
        def cut(x):
            return None if x is None else jax.lax.dynamic_slice_in_dim(x, start, size, axis=x.ndim - 1)

        feats = features(cut(grads), kind, cut(m), cut(v)).astype(jnp.float32)
        return feats @ rademacher_block(seed, index, dim_out, block)[:size]

    total = jnp.zeros((rows, dim_out), jnp.float32)
    if full:  # (a loop over no whole block would still trace one)
        total = jax.lax.fori_loop(0, full, lambda i, t: t + part(i * block, block, i), total)
    return normalise(total + part(full * block, rest, full) if rest else total)


@dataclass(frozen=True)
class Projection:
    """LESS's projection: to `dim` dimensions (8192 in its scripts) by the `seed`'s +-1 matrix, then normalised."""

    dim: int = 8192
    seed: int = 0

    def __call__(self, feats: jax.Array) -> jax.Array:
        return project_streamed(feats, self.dim, self.seed)


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
    trained tree's order, as `flatten` lays out gradients) and its weight: the mean learning rate of the steps since the
    checkpoint before (metrics.jsonl; LESS's "average lr of the epoch")."""

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


def warmup_step(run_dir: str, step: int, since: int = 0) -> WarmupStep:
    """`run_dir`'s `step` (see `WarmupStep`), its learning rate the mean of those logged after step `since` (the
    checkpoint before: LESS weighs a checkpoint by its epoch's average rate); one line where it trains no LoRA or
    logged no learning rate."""
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
    logged = [r for r in read_metrics(run_dir) if since < r.get("step", 0) <= step and "lr" in r]
    if not logged:
        raise ConfigError(f"{run_dir}: no learning rate logged by step {step} (metrics.jsonl): LESS weighs each "
                          "checkpoint by it")
    first, second = (np.concatenate([np.asarray(x).reshape(-1) for x in jax.tree.leaves(m)]) for m in moments)
    rate = float(np.mean([r["lr"] for r in {r["step"]: r for r in logged}.values()]))  # a resumed step logged once
    return WarmupStep(step, model, load_params_as(run_dir, model, step=step), first, second, rate)


def model_parts(model) -> tuple[Any, Any]:
    """(graph, what trains: `Partition`) of a `DecoderConfig`, nothing allocated: what `gradients` takes."""
    from flax import nnx

    from instructjax.model.decoder import Decoder
    from instructjax.model.partition import Partition

    abstract = nnx.eval_shape(lambda: Decoder(model, rngs=nnx.Rngs(0)))
    return nnx.graphdef(abstract), Partition.of_state(nnx.state(abstract, nnx.Param))
