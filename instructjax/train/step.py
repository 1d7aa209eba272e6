"""The train step and the state it updates, built in one place for the trainer, `plan --compile` and the
benchmarks.

`make_step(objective, ...)` is the one step: the global batch split into `optim.micro_batches` micro-batches (a
preference pair, one row, stays whole), NEFTune's noise on the token embeddings (`optim.neftune_alpha`: `neftune_noise`
from the step's key, `neftune_keys`) and the LoRA branches' dropout (`model.lora.dropout`: `lora_keys`, model/lora.py),
the forward pass, the reference's forward where the objective compares with it live, the gradients of what trains
(the model's `Partition`, model/partition.py: a LoRA's adapters, else every parameter) summed over the micro-batches
(`loss.accumulate`), then the optimizer over them; the rest of the model rides along unchanged, parameters and
optimizer state are donated. What it minimises is the objective's (train/objectives/: SFT's cross-entropy, the
preference losses; each says its loss over a micro-batch, its normalisers, metrics, batch features and reference).
NEFTune's and LoRA dropout's keys reach the model here and nowhere else.

`build_step(model, tx, config, num_sources, mesh)` gives the state as abstract arrays (parameters and AdamW state
as `jax.ShapeDtypeStruct`s carrying their `NamedSharding`s: nothing is allocated), those shardings, the partition and
the jitted step. The trainer fills the state (fresh, from `init_from`, or from a checkpoint) and runs the step; `plan
--compile` lowers the same step for a TPU slice's devices from the abstract state alone (`train.compile`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import AbstractMesh, Mesh, NamedSharding, PartitionSpec

from instructjax.core import sharding
from instructjax.core.config import RunConfig
from instructjax.core.errors import ConfigError
from instructjax.data.batches.packing import REFERENCE, empty_rows
from instructjax.model import context, lora, moe
from instructjax.model.config import DecoderConfig
from instructjax.model.decoder import Decoder
from instructjax.model.partition import Partition
from instructjax.train import loss
from instructjax.train.objectives import Objective, objective_for
from instructjax.train.objectives.base import STATE

NEFTUNE_STREAM = 0x4E454654  # "NEFT": the noise's own stream under the run's seed
LORA_DROPOUT_STREAM = 0x4C4F5241  # "LORA": the LoRA dropout masks' own stream


def neftune_noise(alpha: float, key: jax.Array) -> Callable[[jax.Array], jax.Array]:
    """NEFTune (transformers' `neftune_post_forward_hook`): token embeddings x [B, L, H] plus uniform noise in
    [-a, a], a = alpha / sqrt(L * H), drawn from `key` (added in float32, cast back to x's dtype). L is the row
    length the batch was padded to (`data.seq_len` for packed and unpacked rows, the step's padded length under
    `pack: per_step`), as transformers uses its padded batch's length, not each example's."""

    def add(x: jax.Array) -> jax.Array:
        a = alpha / math.sqrt(x.shape[1] * x.shape[2])
        return (x.astype(jnp.float32) + jax.random.uniform(key, x.shape, jnp.float32, -a, a)).astype(x.dtype)

    return add


def neftune_keys(seed: int, opt_state: Any, micro: int, stream: int = NEFTUNE_STREAM,
                 what: str = "optim.neftune_alpha") -> jax.Array:
    """One key a micro-batch from the step's key: the run's seed folded with `stream` and the updates applied so
    far (the optimizer's `count`), so a resumed run, whose optimizer state is restored, draws the same noise."""
    counts = optax.tree_utils.tree_get_all_with_path(opt_state, "count")
    if not counts:
        raise ConfigError(f"{what} needs an optimizer that counts its updates (AdamW does)")
    step_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream), counts[0][1])
    return jax.random.split(step_key, micro)


def lora_keys(seed: int, opt_state: Any, micro: int) -> jax.Array:
    """The LoRA dropout keys of a step, one a micro-batch (`neftune_keys` on their own stream)."""
    return neftune_keys(seed, opt_state, micro, LORA_DROPOUT_STREAM, "model.lora.dropout")


def micro_split(micro: int, mesh) -> Callable[[jax.Array], jax.Array]:
    """[B, L] -> [micro, B / micro, L]: row r goes to micro-batch r % micro (each micro-batch keeps the batch's
    layout over the mesh; a preference pair, one row, stays whole)."""
    spec = NamedSharding(mesh, sharding.logical_to_spec((None, "batch", "length"), mesh))

    def split(x):
        x = x.reshape(x.shape[0] // micro, micro, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, spec)

    return split


def forward(graphdef, params, batch, chunk: int, embed_noise=None, lora_key=None,
            temperature: float = 1.0) -> tuple[jax.Array, moe.RouterStats | None]:
    """Each token's negative log-likelihood of its target [B, L] (float32) under the model `params` (its logits
    divided by `temperature`), and a mixture of experts' router stats over the batch's real tokens (None for a dense
    model): the forward pass of every objective."""
    model = nnx.merge(graphdef, params)
    parts = context.context_size()
    if parts > 1:  # rows split over the mesh's context axis, dealt out first (model/context.py)
        return split_forward(model, batch, chunk, parts, embed_noise, lora_key, temperature)
    hidden, stats = model.routed_hidden_states(batch["tokens"], batch["positions"], batch["segment_ids"],
                                               embed_noise=embed_noise, lora_key=lora_key)
    return loss.model_nll(model, hidden, batch["targets"], chunk, temperature), stats


def split_forward(model: Decoder, batch, chunk: int, parts: int, embed_noise=None, lora_key=None,
                  temperature: float = 1.0) -> tuple[jax.Array, moe.RouterStats | None]:
    """`forward` of rows split over a `context` axis of `parts` devices: each row's tokens (and their positions,
    segments and targets) dealt out in `model.context_reorder`'s order, each token's nll put back in its place, so
    the objective sees the row as it is. NEFTune's noise is drawn for the row as it is, then dealt out with it."""
    order = context.order_of(batch["tokens"].shape[1], parts, model.config.context_reorder)
    back = np.argsort(order)

    def deal(x):
        return sharding.with_logical_constraint(jnp.take(x, order, axis=1), ("batch", "length", *[None] * (x.ndim - 2)))

    noise = None if embed_noise is None else (lambda x: deal(embed_noise(jnp.take(x, back, axis=1))))
    hidden, stats = model.routed_hidden_states(deal(batch["tokens"]), deal(batch["positions"]),
                                               deal(batch["segment_ids"]), embed_noise=noise, lora_key=lora_key,
                                               order=jnp.asarray(order))
    nll = loss.model_nll(model, hidden, deal(batch["targets"]), chunk, temperature)
    return sharding.with_logical_constraint(jnp.take(nll, back, axis=1), ("batch", "length")), stats


def forward_nll(graphdef, params, batch, chunk: int, embed_noise=None, lora_key=None,
                temperature: float = 1.0) -> jax.Array:
    """`forward`'s nll alone (negated: the log-probs a reference stores)."""
    return forward(graphdef, params, batch, chunk, embed_noise, lora_key, temperature)[0]


def router_terms(stats: moe.RouterStats, model: DecoderConfig, segment_ids: jax.Array) -> tuple[jax.Array, dict]:
    """A micro-batch's router penalty (`model.router_aux_loss` * the load-balancing loss + `model.router_z_loss` *
    the z-loss, both over its real tokens alone) and its sums for the metrics (`train.metrics`: `moe/...`)."""
    tokens = jnp.sum(segment_ids > 0)
    aux, z = moe.aux_loss(stats, model.num_experts, tokens), moe.z_loss(stats, tokens)
    return model.router_aux_loss * aux + model.router_z_loss * z, {"moe/aux_loss": aux, "moe/z_loss": z,
                                                                   "moe/counts": stats.counts}


def token_logps(graphdef, params, batch, chunk: int, embed_noise=None, lora_key=None,
                temperature: float = 1.0) -> jax.Array:
    """Each token's log-prob of its target [B, L] (float32) under the model `params` (the next-token loss, negated:
    what the preference losses sum per completion, and the cached reference stores)."""
    return -forward_nll(graphdef, params, batch, chunk, embed_noise, lora_key, temperature)


def make_step(objective: Objective, graphdef, tx, config: RunConfig, mesh, partition: Partition | None = None):
    """step(params, opt_state, batch[, reference]) -> (params, opt_state, metrics), not yet jitted (the module doc);
    `reference` (the starting model's parameters, or a LoRA's starting adapters, frozen) where the objective's
    reference is live. `partition`: what trains (`model.partition`; by default the model's own, from its variables'
    types); `tx` updates it alone, its state made over it (`StepBuild.init_optimizer`)."""
    micro, alpha, chunk = config.optim.micro_batches, config.optim.neftune_alpha, config.optim.loss_chunk
    split, temperature = micro_split(micro, mesh), objective.temperature

    def step(params, opt_state, batch, reference=None):
        model = nnx.merge(graphdef, params)  # its config: a resumed run's stored lora
        part = partition or Partition.of_state(nnx.state(model, nnx.Param))
        spec = lora.spec(model.config)
        dropout = spec is not None and spec.dropout > 0
        trained, frozen = part.trainable(params), part.frozen(params)
        if reference is not None:  # a LoRA's starting adapters, on its frozen base
            reference = part.combine(reference, frozen)
        micro_batches = jax.tree.map(split, batch)
        if alpha:
            micro_batches["neftune_key"] = neftune_keys(config.seed, opt_state, micro)
        if dropout:
            micro_batches["lora_key"] = lora_keys(config.seed, opt_state, micro)
        weights = objective.weights(micro_batches)
        if objective.stateful:  # its state from the optimizer's (DoReMi's weights), to the loss among the normalisers
            weights = {**weights, STATE: objective.state_of(opt_state)}

        def micro_loss(p, mb):
            noise = neftune_noise(alpha, mb["neftune_key"]) if alpha else None
            nll, stats = forward(graphdef, part.combine(p, frozen), mb, chunk, noise,
                                 mb["lora_key"] if dropout else None, temperature)
            if reference is not None:
                mb = {**mb, REFERENCE: jax.lax.stop_gradient(token_logps(graphdef, reference, mb, chunk,
                                                                         temperature=temperature))}
            share, sums = objective.loss(nll, mb, weights)
            if stats is None:
                return share, (sums, {})
            penalty, router = router_terms(stats, model.config, mb["segment_ids"])
            return share + penalty / micro, (sums, router)  # the router's: the mean over the micro-batches

        result, grads, (sums, router) = loss.accumulate(micro_loss, trained, micro_batches)
        updates, opt_state = tx.update(grads, opt_state, trained)
        if objective.stateful:
            opt_state = objective.next_state(opt_state, sums)
        router = {k: v if k == "moe/counts" else v / micro for k, v in router.items()}
        if router:  # the objective's loss, as metrics.jsonl logs it: the router's penalty trains but is logged apart
            result = result - (model.config.router_aux_loss * router["moe/aux_loss"]
                               + model.config.router_z_loss * router["moe/z_loss"])
        metrics = {"loss": result, "grad_norm": optax.global_norm(grads), "tokens": (batch["segment_ids"] > 0).sum(),
                   **objective.metrics(sums, weights), **router}
        return part.combine(optax.apply_updates(trained, updates), frozen), opt_state, metrics

    return step


@dataclass(frozen=True)
class StepBuild:
    """A run's step on a mesh: the model's graph, the state as abstract arrays with their shardings, the jitted
    step (`step(params, opt_state, batch)`, state donated), the batch's sharding, what trains (`partition`) and the
    objective."""

    graphdef: Any
    params: Any  # ShapeDtypeStructs, each with its NamedSharding
    opt_state: Any
    param_shardings: Any
    opt_shardings: Any
    batch_sharding: NamedSharding
    step: Any
    takes_reference: bool = False  # the step's fourth argument: the reference's parameters (objective's `live`)
    cached_reference: bool = False  # the batch carries the reference's log-probs (objective's `cached`)
    partition: Partition | None = None
    objective: Objective | None = None
    tx: Any = None

    def init_optimizer(self, params):
        """The optimizer's state for `params` (the whole model), made over what trains, placed as `opt_shardings`."""
        return jax.jit(lambda p: self.tx.init(self.partition.trainable(p)), out_shardings=self.opt_shardings)(params)

    def batch(self, rows: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The global batch of `rows` rows of `seq_len` as the step receives it, to lower and compile for."""
        features = {**{k: v.dtype for k, v in empty_rows(1, seq_len).items()}, **self.objective.features()}
        return {k: jax.ShapeDtypeStruct((rows, seq_len), v, sharding=self.batch_sharding) for k, v in features.items()}

    def lower(self, rows: int, seq_len: int):
        """The step lowered for a batch of `rows` x `seq_len` (under the mesh: kernels follow its devices)."""
        reference = (self.partition.trainable(self.params),) if self.takes_reference else ()
        with jax.set_mesh(self.batch_sharding.mesh):
            return self.step.lower(self.params, self.opt_state, self.batch(rows, seq_len), *reference)


@dataclass(frozen=True)
class AbstractState:
    """A model's state before any mesh, nothing allocated: its graph, its variables (`state`: each with its logical
    axes), the parameters as `jax.ShapeDtypeStruct`s (`params`), what trains (`partition`) and `tx`'s state over it
    (`opt`). What the step build places on a mesh and the memory estimate counts (train/memory.py)."""

    graphdef: Any
    state: nnx.State
    params: Any
    partition: Partition
    tx: optax.GradientTransformation
    opt: Any

    def shardings(self, mesh: Mesh | AbstractMesh) -> tuple[Any, Any]:
        """(the parameters', AdamW state's) NamedShardings on `mesh`: parameters by the logical rules, AdamW's moments
        like the parameters that train, its counters replicated."""
        params = nnx.to_pure_dict(sharding.state_shardings(self.state, mesh))
        opt = optax.tree_utils.tree_map_params(self.tx, lambda _, s: s, self.opt, self.partition.trainable(params),
                                               transform_non_params=lambda _: NamedSharding(mesh, PartitionSpec()))
        return params, opt


def abstract_state(model: DecoderConfig, tx: optax.GradientTransformation, seed: int = 0) -> AbstractState:
    """`model`'s `AbstractState` with `tx`'s state (`nnx.eval_shape` of the Decoder, `jax.eval_shape` of `tx.init`)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(model, rngs=nnx.Rngs(seed))))
    partition = Partition.of_state(state)
    params = nnx.to_pure_dict(state)
    return AbstractState(graphdef, state, params, partition, tx, jax.eval_shape(tx.init, partition.trainable(params)))


def build_step(model: DecoderConfig, tx: optax.GradientTransformation, config: RunConfig, num_sources: int,
               mesh: Mesh, seed: int = 0, sampling=None) -> StepBuild:
    """The run's step and its `abstract_state` on `mesh` (see the module doc); an objective that carries a state
    chains its carrier after `tx` (DoReMi's: its weights start at `sampling`, the rates the data is drawn at)."""
    objective = objective_for(config, num_sources)
    if objective.stateful:
        tx = objective.wrap(tx, sampling)
    state = abstract_state(model, tx, seed)
    param_shardings, opt_shardings = state.shardings(mesh)
    partition = state.partition
    replicated = NamedSharding(mesh, PartitionSpec())
    with_sharding = lambda tree, shards: jax.tree.map(  # noqa: E731
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shards)
    batch_sharding = sharding.batch_sharding(mesh)
    reference = (partition.trainable(param_shardings),) if objective.reference.step_argument else ()  # the adapters'
    step = jax.jit(make_step(objective, state.graphdef, tx, config, mesh, partition),
                   in_shardings=(param_shardings, opt_shardings, batch_sharding, *reference),
                   out_shardings=(param_shardings, opt_shardings, replicated), donate_argnums=(0, 1))
    return StepBuild(state.graphdef, with_sharding(state.params, param_shardings), with_sharding(state.opt, opt_shardings),
                     param_shardings, opt_shardings, batch_sharding, step, bool(reference),
                     objective.reference.in_batch, partition, objective, tx)


def stacked_sharding(sharding: NamedSharding) -> NamedSharding:
    """`sharding` with a leading unsharded axis (proxies stacked: train/packed.py)."""
    return NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))


def stacked_step(build, config: RunConfig):
    """`build`'s step `vmap`ped over a leading axis of proxies, jitted with the shardings of the state and the batch
    gaining that axis, unsharded (each proxy laid out as alone); the state donated."""
    stacked = lambda tree: jax.tree.map(stacked_sharding, tree)  # noqa: E731
    mesh = build.batch_sharding.mesh
    step = make_step(build.objective, build.graphdef, build.tx, config, mesh, build.partition)
    return jax.jit(jax.vmap(step), in_shardings=(stacked(build.param_shardings), stacked(build.opt_shardings),
                                                 stacked_sharding(build.batch_sharding)),
                   out_shardings=(stacked(build.param_shardings), stacked(build.opt_shardings),
                                  NamedSharding(mesh, PartitionSpec())),
                   donate_argnums=(0, 1))


def lower_stacked(build, config: RunConfig, proxies: int, rows: int, length: int):
    """The stacked step of `proxies` runs lowered for batches of `rows` x `length` each (`plan --compile --packed`)."""
    def grow(a):
        return jax.ShapeDtypeStruct((proxies, *a.shape), a.dtype, sharding=stacked_sharding(a.sharding))

    params, opt_state = jax.tree.map(grow, build.params), jax.tree.map(grow, build.opt_state)
    batch = {name: grow(a) for name, a in build.batch(rows, length).items()}
    with jax.set_mesh(build.batch_sharding.mesh):
        return stacked_step(build, config).lower(params, opt_state, batch)
