# Derived from open-instruct (https://github.com/allenai/open-instruct), Copyright 2024 AllenAI, Apache-2.0.
# Modified for instructjax. See NOTICE.

"""GRPO (`objective.loss: grpo`): RL with verifiable rewards on rollouts the run generates (train/rollout.py), as
open-instruct's grpo_fast trains it (`grpo_utils.compute_grpo_loss`, its loop in `PolicyTrainerRayProcess.step`).

A rollout's completions are packed into rows as SFT's examples are, each response token a trained target carrying
its completion's advantage (`advantages`, the group-normalised reward: `group_advantages`). With n the new
log-prob of a target (the logits divided by the sampling temperature), o the old one (the policy that sampled:
one update a rollout, so the same weights, stopped gradient: open-instruct's `num_mini_batches: 1`), r = e^(n - o)
and A the advantage, a token's loss is

    dapo:  max(-A r, -A clip(r, 1 - clip_lower, 1 + clip_higher))
    cispo: -A min(sg(r), 1 + clip_higher) n
    plus beta * KL, KL open-instruct's `estimate_kl`[kl_estimator] of d = clamp(n - ref, -40, 40)

summed over the step's response tokens and divided by their number (open-instruct's `loss_denominator: token`).
Logged under open-instruct's names, each a mean over the step's response tokens: loss/policy_avg, loss/kl_avg (beta
times the estimator's), objective/kl{0..3}_avg, policy/clipfrac_avg, val/ratio.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from instructjax.core.objectives import GRPOOptions, LiveParams, NoReference, RolloutLogProbs
from instructjax.data.batches.packing import REFERENCE
from instructjax.model import batching_memory
from instructjax.model.batching_shapes import bucket, widest_fill
from instructjax.train import loss
from instructjax.train.objectives.base import Array, Objective

ADVANTAGES = "advantages"  # the batch feature: each trained target's advantage [B, L] float32
SAMPLER = "sampler_logps"  # with objective.grpo.use_rho_correction: each trained target's log-prob as drawn
ROLLOUT_SLOTS = 64  # completions a rollout decodes at once, at most (a multiple of the data-parallel devices)


def group_advantages(scores: np.ndarray, samples: int, normalization: str) -> np.ndarray:
    """Each completion's advantage from its reward and its prompt's group of `samples` (consecutive) completions:
    `standard` (r - mean) / (std + 1e-8), `centered` r - mean (population std: numpy's, as open-instruct)."""
    scores = np.asarray(scores, np.float64)
    groups = scores.reshape(-1, samples)
    mean = np.repeat(groups.mean(-1), samples)
    if normalization == "centered":
        return scores - mean
    return (scores - mean) / (np.repeat(groups.std(-1), samples) + 1e-8)


def kl_estimates(diff: Array, ratio: Array) -> Array:
    """open-instruct's four KL estimators [4, ...] of d = new - reference log-probs: d, d^2 / 2, e^-d - 1 + d, r d."""
    return jnp.stack([diff, diff ** 2 / 2, jnp.expm1(-diff) + diff, ratio * diff])


def token_terms(new: Array, old: Array, ref: Array | None, advantages: Array, *, loss_fn: str, clip_lower: float,
                clip_higher: float, kl_estimator: int) -> tuple[Array, Array, Array, Array]:
    """Per token: (policy loss, clipped or not (0/1), every KL estimate [4, ...] (zeros without a reference),
    ratio), from the new, old and reference log-probs and the advantages (open-instruct's `compute_grpo_loss`)."""
    ratio = jnp.exp(new - old)
    if loss_fn == "dapo":
        unclipped = -advantages * ratio
        clipped = -advantages * jnp.clip(ratio, 1.0 - clip_lower, 1.0 + clip_higher)
        clipfrac = (clipped > unclipped).astype(jnp.float32)
        policy = jnp.maximum(unclipped, clipped)
    else:  # cispo: the ratio clipped from above and frozen, REINFORCE on the new log-prob
        clipfrac = (ratio > 1.0 + clip_higher).astype(jnp.float32)
        policy = -advantages * jnp.minimum(jax.lax.stop_gradient(ratio), 1.0 + clip_higher) * new
    if ref is None:
        kl = jnp.zeros((4, *new.shape), jnp.float32)
    else:
        kl = kl_estimates(jnp.clip(new - ref, -40.0, 40.0), ratio)
    return policy, clipfrac, kl, ratio


def segment_mean(values: Array, mask: Array, segments: Array) -> Array:
    """Each token's completion's masked mean of `values` [B, L] (a completion: a row's segment id; its tokens with
    `mask` counted, an empty one 0), broadcast back to its tokens: open-instruct's `_sequence_level_mean` of a row
    that holds one completion."""
    rows, length = values.shape
    ids = (jnp.arange(rows)[:, None] * (length + 1) + segments).reshape(-1)
    mask = mask.astype(jnp.float32).reshape(-1)
    total = jax.ops.segment_sum(values.reshape(-1) * mask, ids, num_segments=rows * (length + 1))
    count = jax.ops.segment_sum(mask, ids, num_segments=rows * (length + 1))
    return (total / jnp.maximum(count, 1.0))[ids].reshape(rows, length)


def rho_correction(old: Array, sampler: Array, mask: Array, advantages: Array, segments: Array, section
                   ) -> tuple[Array, dict[str, Array]]:
    """open-instruct's `compute_rho_correction`: per token, the weight of its policy loss from rho = pi_old /
    pi_sampler (the log ratio clamped to +-10): 0 where rho (or its completion's: `rho_mask_sequence_level`; or, with
    `rho_mask_tv_divergence`, where the completion's mean |rho - 1| is out of bounds and the token moves it further)
    falls outside the mask bounds, else rho clamped to the clamp bounds (a bound of 0: none). Also the 0/1 (or
    weight) per token of its metrics: val/rho_drop_frac, _low_frac, _high_frac, val/rho_weight, val/rho_clipfrac."""
    mask = mask > 0
    diff = jnp.where(mask, jnp.clip(old - sampler, -10.0, 10.0), 0.0)
    rho = jnp.exp(diff)
    effective = jnp.exp(segment_mean(diff, mask, segments)) if section.rho_mask_sequence_level else rho

    def out_of(values, lower, upper):
        low = (values < lower) & mask if lower > 0 else jnp.zeros_like(mask)
        high = (values > upper) & mask if upper > 0 else jnp.zeros_like(mask)
        return low, high

    if section.rho_mask_tv_divergence:
        low, high = out_of(segment_mean(jnp.abs(rho - 1.0), mask, segments), section.rho_mask_lower_bound,
                           section.rho_mask_upper_bound)
        further = jnp.sign(diff) * advantages > 0  # tokens that increase the divergence
        low, high = low & further, high & further
    else:
        low, high = out_of(effective, section.rho_mask_lower_bound, section.rho_mask_upper_bound)
    clamped = effective
    if section.rho_clamp_lower_bound > 0:
        clamped = jnp.maximum(clamped, section.rho_clamp_lower_bound)
    if section.rho_clamp_upper_bound > 0:
        clamped = jnp.minimum(clamped, section.rho_clamp_upper_bound)
    weights = jnp.where(mask & ~low & ~high, clamped, 0.0)
    f32 = lambda x: x.astype(jnp.float32)  # noqa: E731
    return weights, {"val/rho_drop_frac": f32(low | high), "val/rho_drop_low_frac": f32(low),
                     "val/rho_drop_high_frac": f32(high), "val/rho_weight": weights,
                     "val/rho_clipfrac": f32(clamped != effective)}


class GRPO(Objective):
    options = GRPOOptions

    @property
    def temperature(self) -> float:
        return float(self.options.temperature)

    def features(self) -> dict:
        return {**super().features(), ADVANTAGES: jnp.float32,
                **({SAMPLER: jnp.float32} if self.options.use_rho_correction else {})}

    def weights(self, micro_batches: dict[str, Array]) -> dict[str, Array]:
        tokens = jnp.sum(micro_batches["loss_weights"].astype(jnp.float32))
        return {"tokens": tokens, "scale": loss.reduce_loss(jnp.float32(1.0), tokens, "mean")}

    def loss(self, nll: Array, mb: dict[str, Array], weights: dict[str, Array]):
        s = self.options
        mask = mb["loss_weights"].astype(jnp.float32)
        new = -nll
        ref = mb[REFERENCE] if self.reference is not NoReference else None
        policy, clipfrac, kl, ratio = token_terms(new, jax.lax.stop_gradient(new), ref, mb[ADVANTAGES],
                                                  loss_fn=s.loss_fn, clip_lower=s.clip_lower,
                                                  clip_higher=s.clip_higher, kl_estimator=s.kl_estimator)
        total = lambda x: jax.lax.stop_gradient(jnp.sum(x * mask))  # noqa: E731
        sums = {}
        if s.use_rho_correction:  # the sampler's drift from the learner, as open-instruct weighs it
            rho, rho_sums = rho_correction(jax.lax.stop_gradient(new), mb[SAMPLER], mask, mb[ADVANTAGES],
                                           mb["segment_ids"], s)
            policy, clipfrac = policy * rho, clipfrac * (rho != 0)
            sums = {k: total(v) for k, v in rho_sums.items()}
        per_token = policy + s.beta * kl[s.kl_estimator]
        loss_sum = jnp.sum(per_token * mask)
        sums |= {"loss/policy_avg": total(policy), "policy/clipfrac_avg": total(clipfrac), "val/ratio": total(ratio)}
        if ref is not None:
            sums |= {f"objective/kl{j}_avg": total(kl[j]) for j in range(4)}
            sums["loss/kl_avg"] = s.beta * sums[f"objective/kl{s.kl_estimator}_avg"]
        return loss_sum * weights["scale"], (loss_sum, sums)

    def metrics(self, sums, weights: dict[str, Array]) -> dict[str, Array]:
        loss_sum, token_sums = sums
        zeros = jnp.zeros(self.num_sources)
        return {"loss_sum": loss_sum, "loss_weight": weights["tokens"], "trained_tokens": weights["tokens"],
                **token_sums, "source_sums": zeros, "source_weights": zeros}

    def slots(self, shards: int) -> int:
        """The engine's slots for a rollout over `shards` data-parallel devices."""
        samples = self.options.prompts_per_rollout * self.options.samples_per_prompt
        return -(-min(samples, ROLLOUT_SLOTS) // shards) * shards

    def reference_bytes(self, memory: dict[str, int]) -> int:
        """The reference's parameters, held beside the policy whether its log-probs come in the step or with the
        rollout (a LoRA's: its starting adapters); a full fine-tune's cached reference in the compute dtype."""
        if self.reference is NoReference:
            return 0
        floats = memory.get("float_bytes", 0)
        if self.reference is RolloutLogProbs and memory["trained_bytes"] == memory["param_bytes"] and floats:
            return memory["param_bytes"] - floats + (memory.get("copy_bytes") or floats)  # its floats cast
        return memory["trained_bytes"]

    def rollout_terms(self, model, sizes: dict[str, int], seq_len: int, memory: dict[str, int]) -> dict[str, int]:
        """A rollout's buffers a device, between two steps: `cache`, its share of the slots' KV cache (slots over
        data x fsdp, kv heads over tensor, rows the engine's length bucket of `seq_len`); `layers`, the parameters
        again where the layers are stacked (decoding reads them sliced into a list; the embeddings, shared, are
        counted too: an estimate from above); `steps`, the larger of the engine's fill and decode steps' own buffers
        (model/batching_memory.py, as the evaluation's plan counts them)."""
        shards = sizes["data"] * sizes["fsdp"]
        slots, length = self.slots(shards), bucket(seq_len, 64)
        rows, width = widest_fill(length, slots=slots, shards=shards)
        steps = batching_memory.step_bytes(model, sizes, slots=slots, length=length, fill_rows=rows, width=width)
        return {"cache": self.engine_cache_bytes(model, sizes, seq_len),
                "layers": memory["param_bytes"] if model.scan_layers else 0, "steps": max(steps.values())}

    def rollout_bytes(self, model, sizes: dict[str, int], seq_len: int, memory: dict[str, int]) -> int:
        return sum(self.rollout_terms(model, sizes, seq_len, memory).values())

    def engine_mesh_bytes(self, model, sizes: dict[str, int], seq_len: int, params: int) -> int:
        """A device's bytes on the engine's own mesh of `sizes` (`objective.grpo.rollout_devices`): its parameters
        (`params` bytes a device; twice with `async_steps`: the next update's arrive while it decodes) and a rollout's
        buffers."""
        copies = 2 if self.options.async_steps else 1
        return copies * params + self.rollout_bytes(model, sizes, seq_len, {"param_bytes": params})

    def engine_cache_bytes(self, model, sizes: dict[str, int], seq_len: int) -> int:
        shards = sizes["data"] * sizes["fsdp"]
        return batching_memory.cache_bytes_per_device(model, sizes, self.slots(shards), bucket(seq_len, 64))

    def words(self) -> str:
        s = self.options
        words = (f"grpo ({s.loss_fn}, clip {s.clip_lower:g}/{s.clip_higher:g}), beta {s.beta:g}: "
                 f"{s.prompts_per_rollout} prompts x {s.samples_per_prompt} samples a rollout, temperature "
                 f"{s.temperature:g}, up to {s.response_length} new tokens")
        if self.reference is NoReference:
            return f"{words}; no reference model (beta 0)"
        where = "in the update step" if self.reference is LiveParams else "with each rollout, before the update step"
        return f"{words}; reference: a frozen copy of the starting model, its log-probs computed {where}"
