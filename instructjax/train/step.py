"""The train step and the state it updates, built in one place for the trainer, `plan --compile` and the
benchmarks.

`build_step(model, tx, config, num_sources, mesh)` gives the state as abstract arrays (parameters and AdamW state
as `jax.ShapeDtypeStruct`s carrying their `NamedSharding`s: nothing is allocated), those shardings and the jitted
step. The trainer fills the state (fresh, from `init_from`, or from a checkpoint) and runs the step; `plan
--compile` lowers the same step for a TPU slice's devices from the abstract state alone (`train.compile`).

The step: the global batch split into `optim.micro_batches` micro-batches whose gradients are summed
(`loss.accumulate_gradients`), the loss normalised by the trained-token weight of the whole global batch, then
AdamW; parameters and optimizer state are donated. With `model.lora` the gradients and AdamW's state are the
adapters' alone (`optim.adapters_only`), the base is returned as it came. With `optim.neftune_alpha` > 0 the token embeddings get
NEFTune's noise (`neftune_noise`), from the step's key (`neftune_keys`), and with `model.lora.dropout` > 0 the LoRA
branches' inputs their dropout masks (`lora_keys`, model/lora.py): nowhere but here.

With a preference loss (`objective:`, train/preference.py) the step is `make_preference_step`: the same micro-batches
and update on the mean loss over the global batch's pairs (each a row's segments 2k - 1 and 2k), the reference's
log-probs from the batch (`reference: cached`, train/reference.py) or from a fourth argument, the reference's
parameters (`reference: live`: a full fine-tune's starting parameters, a LoRA's starting adapters on its frozen base).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from instructjax.core import sharding
from instructjax.core.config import RunConfig
from instructjax.core.errors import ConfigError
from instructjax.model import lora
from instructjax.model.config import DecoderConfig
from instructjax.model.decoder import Decoder
from instructjax.train import loss, preference

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


def reference_args(config: RunConfig, model: DecoderConfig) -> bool:
    """Whether the step takes the reference as a fourth argument: a DPO loss with `reference: live`. A full
    fine-tune's is the starting model's parameters; a LoRA's its starting adapters alone (on its own frozen base:
    init_from's adapters where the run goes on training them, fresh ones' otherwise)."""
    objective = config.objective
    return objective.needs_reference and objective.reference == "live"


def make_train_step(graphdef, tx, config: RunConfig, num_sources: int, mesh):
    """step(params, opt_state, batch[, reference]) -> (params, opt_state, metrics), not yet jitted; `reference`
    (the starting model's parameters, or a LoRA's starting adapters, frozen) where `reference_args` says so."""
    if config.objective.preference:
        return make_preference_step(graphdef, tx, config, num_sources, mesh)
    micro, alpha = config.optim.micro_batches, config.optim.neftune_alpha
    split = micro_split(micro, mesh)

    def step(params, opt_state, batch):
        spec = lora.spec(nnx.merge(graphdef, params).config)  # the model's own (a resumed run's stored lora)
        dropout = spec is not None and spec.dropout > 0

        def sums(p, mb):
            model = nnx.merge(graphdef, p)
            noise = neftune_noise(alpha, mb["neftune_key"]) if alpha else None
            hidden, _ = model.hidden_states(mb["tokens"], mb["positions"], mb["segment_ids"], embed_noise=noise,
                                            lora_key=mb["lora_key"] if dropout else None)
            nll = loss.model_nll(model, hidden, mb["targets"], config.optim.loss_chunk)
            weights = mb["loss_weights"].astype(jnp.float32)
            source_sums, source_weights = loss.per_source_sums(nll, weights, mb["source_ids"], num_sources)
            loss_sum = jnp.sum(nll * weights)
            return loss_sum, (loss_sum, source_sums, source_weights)

        micro_batches = jax.tree.map(split, batch)
        if alpha:
            micro_batches["neftune_key"] = neftune_keys(config.seed, opt_state, micro)
        if dropout:
            micro_batches["lora_key"] = lora_keys(config.seed, opt_state, micro)
        adapters, base = lora.trainable(params), lora.frozen(params)
        if adapters:  # LoRA: gradients of the adapters alone, the base rides along unchanged
            result = loss.accumulate_gradients(lambda p, mb: sums(lora.combine(p, base), mb), adapters, micro_batches,
                                               config.optim.loss_reduction)
        else:
            result = loss.accumulate_gradients(sums, params, micro_batches, config.optim.loss_reduction)
        loss_sum, source_sums, source_weights = result.aux
        updates, opt_state = tx.update(result.grads, opt_state, adapters or params)
        metrics = {
            "loss": result.loss,  # the objective: what is optimised (config.optim.loss_reduction)
            "loss_sum": loss_sum,
            "loss_weight": result.weight,
            "grad_norm": optax.global_norm(result.grads),
            "trained_tokens": result.weight,
            "tokens": (batch["segment_ids"] > 0).sum(),
            "source_sums": source_sums,
            "source_weights": source_weights,
        }
        if adapters:
            return lora.combine(optax.apply_updates(adapters, updates), base), opt_state, metrics
        return optax.apply_updates(params, updates), opt_state, metrics

    return step


def token_logps(graphdef, params, batch, chunk: int, embed_noise=None, lora_key=None) -> jax.Array:
    """Each token's log-prob of its target [B, L] (float32) under the model `params` (the next-token loss, negated:
    what the preference losses sum per completion, and the cached reference stores)."""
    model = nnx.merge(graphdef, params)
    hidden, _ = model.hidden_states(batch["tokens"], batch["positions"], batch["segment_ids"], embed_noise=embed_noise,
                                    lora_key=lora_key)
    return -loss.model_nll(model, hidden, batch["targets"], chunk)


def pair_slots(segment_ids: jax.Array) -> tuple[jax.Array, jax.Array, int]:
    """(each token's pair slot, its side, the slots) of rows of preference pairs (data/batches/packing.py: a pair's
    sides are segments 2k - 1 and 2k of a row): row r's k-th pair is slot r * (L // 2) + k - 1."""
    rows, length = segment_ids.shape
    inside = jnp.maximum(segment_ids - 1, 0)
    pair = jnp.arange(rows)[:, None] * (length // 2) + inside // 2
    return pair, inside % 2, rows * (length // 2)


def make_preference_step(graphdef, tx, config: RunConfig, num_sources: int, mesh):
    """The step of a preference loss (train/preference.py): the global batch's pairs' mean loss, micro-batches
    holding whole pairs (a pair is one row's two segments); the reference's log-probs from the batch
    (`reference_logps`, `objective.reference: cached`), or computed from `reference` (live: the starting parameters,
    for a LoRA its starting adapters on its frozen base)."""
    micro, alpha, objective = config.optim.micro_batches, config.optim.neftune_alpha, config.objective
    cached = objective.needs_reference and objective.reference == "cached"  # the batch carries reference_logps
    split = micro_split(micro, mesh)

    def step(params, opt_state, batch, reference=None):
        spec = lora.spec(nnx.merge(graphdef, params).config)
        dropout = spec is not None and spec.dropout > 0
        adapters, base = lora.trainable(params), lora.frozen(params)
        if reference is not None and adapters:  # a LoRA's starting adapters, on its frozen base
            reference = lora.combine(reference, base)

        def sums(p, mb):
            weights = mb["loss_weights"].astype(jnp.float32)
            pair, side, slots = pair_slots(mb["segment_ids"])
            logps = token_logps(graphdef, p, mb, config.optim.loss_chunk, neftune_noise(alpha, mb["neftune_key"])
                                if alpha else None, mb.get("lora_key"))
            policy, counts = preference.completion_logps(logps, weights, pair, side, slots)
            ref = None
            if cached:
                ref, _ = preference.completion_logps(mb["reference_logps"], weights, pair, side, slots)
            elif reference is not None:
                ref_logps = jax.lax.stop_gradient(token_logps(graphdef, reference, mb, config.optim.loss_chunk))
                ref, _ = preference.completion_logps(ref_logps, weights, pair, side, slots)
            losses, rewards = preference.pair_losses(objective, policy, counts, ref)
            real = jnp.all(counts > 0, axis=1)
            loss_sum = jnp.sum(jnp.where(real, losses, 0.0))
            return loss_sum, (loss_sum, preference.reward_sums(rewards, real), jnp.sum(weights))

        micro_batches = jax.tree.map(split, batch)
        if alpha:
            micro_batches["neftune_key"] = neftune_keys(config.seed, opt_state, micro)
        if dropout:
            micro_batches["lora_key"] = lora_keys(config.seed, opt_state, micro)
        pairs = jnp.sum(jnp.max(batch["segment_ids"], axis=1) // 2).astype(jnp.float32)
        if adapters:
            result = loss.accumulate_gradients(lambda p, mb: sums(lora.combine(p, base), mb), adapters, micro_batches,
                                               "mean", weight=pairs)
        else:
            result = loss.accumulate_gradients(sums, params, micro_batches, "mean", weight=pairs)
        loss_sum, rewards, trained = result.aux
        updates, opt_state = tx.update(result.grads, opt_state, adapters or params)
        metrics = {"loss": result.loss, "loss_sum": loss_sum, "loss_weight": pairs, "pairs": pairs,
                   "grad_norm": optax.global_norm(result.grads), "trained_tokens": trained,
                   "tokens": (batch["segment_ids"] > 0).sum(), **rewards,
                   "source_sums": jnp.zeros(num_sources), "source_weights": jnp.zeros(num_sources)}
        if adapters:
            return lora.combine(optax.apply_updates(adapters, updates), base), opt_state, metrics
        return optax.apply_updates(params, updates), opt_state, metrics

    return step


@dataclass(frozen=True)
class StepBuild:
    """A run's step on a mesh: the model's graph, the state as abstract arrays with their shardings, the jitted
    step (`step(params, opt_state, batch)`, state donated) and the batch's sharding."""

    graphdef: Any
    params: Any  # ShapeDtypeStructs, each with its NamedSharding
    opt_state: Any
    param_shardings: Any
    opt_shardings: Any
    batch_sharding: NamedSharding
    step: Any
    takes_reference: bool = False  # the step's fourth argument: the reference's parameters (`reference_args`)
    cached_reference: bool = False  # the batch carries the reference's log-probs (objective.reference: cached)

    def batch(self, rows: int, seq_len: int) -> dict[str, jax.ShapeDtypeStruct]:
        """The global batch of `rows` rows of `seq_len` as the step receives it, to lower and compile for."""
        from instructjax.data.batches.packing import REFERENCE, empty_rows

        features = {k: v.dtype for k, v in empty_rows(1, seq_len).items()}
        if self.cached_reference:
            features[REFERENCE] = jnp.float32
        return {k: jax.ShapeDtypeStruct((rows, seq_len), v, sharding=self.batch_sharding) for k, v in features.items()}

    def lower(self, rows: int, seq_len: int):
        """The step lowered for a batch of `rows` x `seq_len` (under the mesh: kernels follow its devices)."""
        reference = (lora.trainable(self.params) or self.params,) if self.takes_reference else ()
        with jax.set_mesh(self.batch_sharding.mesh):
            return self.step.lower(self.params, self.opt_state, self.batch(rows, seq_len), *reference)


def step_digest(config: RunConfig, model: DecoderConfig, mesh: dict[str, int], num_sources: int,
                total_steps: int) -> str:
    """What a compiled step depends on: the model's shapes and switches (not its special token ids), the optimizer
    and its schedule's length, the loss, the batch layout, the mesh and the number of sources: a step saved by `plan
    --compile --save-executable` serves a run only where this is the same."""
    import dataclasses as dc

    from instructjax.core.config import digest

    shapes = {k: v for k, v in dc.asdict(model).items() if k not in ("bos_id", "eos_id", "extra_eos_ids", "pad_id")}
    return digest({"model": shapes, "optim": dc.asdict(config.optim), "total_steps": total_steps, "mesh": mesh,
                   "sources": num_sources, "seed": config.seed})


def build_step(model: DecoderConfig, tx: optax.GradientTransformation, config: RunConfig, num_sources: int,
               mesh: Mesh, seed: int = 0) -> StepBuild:
    """The run's step and abstract state on `mesh` (see the module doc): parameters sharded by the logical rules,
    AdamW's moments like their parameters, its counters replicated."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Decoder(model, rngs=nnx.Rngs(seed))))
    param_shardings = nnx.to_pure_dict(sharding.state_shardings(state, mesh))
    params = nnx.to_pure_dict(state)
    replicated = NamedSharding(mesh, PartitionSpec())
    opt = jax.eval_shape(tx.init, params)
    trained_shardings = lora.trainable(param_shardings) if model.lora else param_shardings  # AdamW's moments' own
    opt_shardings = optax.tree_utils.tree_map_params(tx, lambda _, s: s, opt, trained_shardings,
                                                     transform_non_params=lambda _: replicated)
    with_sharding = lambda tree, shards: jax.tree.map(  # noqa: E731
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shards)
    batch_sharding = sharding.batch_sharding(mesh)
    reference = ((lora.trainable(param_shardings) if model.lora else param_shardings,)  # the start, sharded alike
                 if reference_args(config, model) else ())
    step = jax.jit(make_train_step(graphdef, tx, config, num_sources, mesh),
                   in_shardings=(param_shardings, opt_shardings, batch_sharding, *reference),
                   out_shardings=(param_shardings, opt_shardings, replicated), donate_argnums=(0, 1))
    return StepBuild(graphdef, with_sharding(params, param_shardings), with_sharding(opt, opt_shardings),
                     param_shardings, opt_shardings, batch_sharding, step, bool(reference),
                     config.objective.needs_reference and config.objective.reference == "cached")
