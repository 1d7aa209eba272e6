"""What a run's training depends on: the run config less the keys that only say where and how it runs
(`NOT_TRAINING`), as dotted keys, their digest and the changes between two configs. A resume refuses changes in
them (unless accepted), a finished run's DONE marker records their digest, a sweep trains again when it moved."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

RunConfig = Any  # a core.config.RunConfig (not imported: config imports this module)


# where and how a run runs, is logged, saved and evaluated: none of it changes what it trains (dotted keys and
# everything below them). The model's own such fields are declared where they are defined (model.config.RUNS_ONLY)
# and passed in by the callers (`not_training`: model.config.runs_only_keys()).
NOT_TRAINING = ("name", "run_dir", "log_every", "mesh", "distributed", "checkpoint", "eval", "wandb", "data.prefetch",
                "compiled", "optim.loss_chunk", "experiment", "objective.rollout_devices")
# training keys added after runs were made, at the value that leaves training as it was: left out of the digest at
# that value, so a run finished before the key existed stays done (at any other value they are training keys)
ADDED_OFF = {"optim.neftune_alpha": 0.0, "objective.loss": "sft", "objective.beta": 0.1, "objective.gamma": 0.5,
             "objective.reference": "cached", "objective.reference_model": "start",
             # grpo's (issue 69): its rollouts, loss and rewards at open-instruct's values
             "objective.prompts_per_rollout": 16, "objective.samples_per_prompt": 4, "objective.temperature": 0.7,
             "objective.response_length": 256, "objective.loss_fn": "dapo", "objective.clip_lower": 0.2,
             "objective.clip_higher": 0.2, "objective.kl_estimator": 2, "objective.advantage_normalization": "standard",
             "objective.verification_reward": 10.0, "objective.filter_zero_std": True,
             "objective.verifier_errors": "zero", "objective.use_rho_correction": False,
             "objective.rho_clamp_lower_bound": 0.0, "objective.rho_clamp_upper_bound": 2.0,
             "objective.rho_mask_lower_bound": 0.0, "objective.rho_mask_upper_bound": 0.0,
             "objective.rho_mask_sequence_level": False, "objective.rho_mask_tv_divergence": False,
             "objective.async_steps": 0}  # issue 81's rollouts made ahead


def digest(values: Any) -> str:
    """sha256 (hex, 16 characters) of plain config data, independent of key order."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flat_objective(values: dict) -> dict:
    """`values` (a config as plain data) with the objective's own subsection (`objective.grpo.beta`) written as the
    flat keys its options had before the subsections (`objective.beta`): how a run's identity names them, so a run
    finished before stays done and a checkpoint saved before compares key for key."""
    objective = values.get("objective")
    if not isinstance(objective, dict):
        return values
    loss = objective.get("loss", "sft")
    own = objective.get("options", objective.get(loss))  # a RunConfig's fields, or as a config file writes it
    if not isinstance(own, dict):  # saved before the subsections: flat already
        return values
    return {**values, "objective": {"loss": loss, **own}}


def training_values(config: RunConfig | dict, *, not_training: tuple[str, ...]) -> dict[str, Any]:
    """What a run's training depends on: the config (or its `to_dict`) as dotted keys, but `NOT_TRAINING` and
    `not_training` (the model's runs-only keys)."""
    flat: dict[str, Any] = {}
    skip = (*NOT_TRAINING, *not_training)

    def walk(prefix: str, value: Any) -> None:
        if any(prefix == k or prefix.startswith(k + ".") for k in skip):
            return
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif not (prefix in ADDED_OFF and value == ADDED_OFF[prefix]):
            flat[prefix] = value

    walk("", flat_objective(config if isinstance(config, dict) else dataclasses.asdict(config)))
    return flat


def training_digest(config: RunConfig, *, not_training: tuple[str, ...]) -> str:
    """What a run's training depends on (`training_values`): a finished run's DONE marker records it, and a sweep
    trains again when it changed (more epochs, other data, another learning rate)."""
    return digest(training_values(config, not_training=not_training))


def training_changes(before: dict, after: RunConfig, *, not_training: tuple[str, ...],
                     ignore: tuple[str, ...] = ()) -> list[str]:
    """What `after` changes against the config `before` (a saved `to_dict`) in what the run trains, as
    "key: old -> new", the keys as typed (`typed_key`); keys only one side has, written before they existed, are left
    out, but `ADDED_OFF`'s, off where missing (`ignore`: more keys, as stored)."""
    old = training_values(before, not_training=not_training)
    new = training_values(json.loads(json.dumps(dataclasses.asdict(after), default=str)), not_training=not_training)
    for values in (old, new):  # a key added since was off in a config that lacks it
        values.update({k: off for k, off in ADDED_OFF.items() if k not in values})
    loss = after.objective.loss
    return [f"{typed_key(k, loss)}: {old[k]!r} -> {new[k]!r}" for k in sorted(set(old) & set(new))
            if old[k] != new[k] and k not in ignore]  # fmt: skip


def typed_key(key: str, loss: str = "sft") -> str:
    """A dotted key as a user types it: a model field is typed under `model:` (the config stores it under
    `model.overrides`), an objective's option under its subsection (`objective.grpo.beta` for loss `loss`)."""
    if key.startswith("model.overrides."):
        return "model." + key.removeprefix("model.overrides.")
    if key.startswith("objective.") and key != "objective.loss":
        return f"objective.{loss}." + key.removeprefix("objective.")
    return key
