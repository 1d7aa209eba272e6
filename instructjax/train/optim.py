"""The run's optimizer as the train step uses it: the `optim:` section's own (`OptimSection.build`,
core/optimizer.py). The step gives it what trains alone (its `Partition`, model/partition.py) and makes its state
over that (`StepBuild.init_optimizer`); `adapters_only` is the same over a whole params tree whose model is not at
hand, its adapters found by their names (`model.lora.trainable`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from instructjax.core.config import OptimSection
from instructjax.core.optimizer import adamw, lr_schedule, warmup_linear_decay  # noqa: F401  (their old home)
from instructjax.model import lora


def adapters_only(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """`tx` over the LoRA adapters of a params tree alone (model/lora.py): its state holds nothing for the frozen
    base, and the base's updates are zeros (the train step passes the adapters alone and skips those). optax's
    `multi_transform` would keep a state tree and updates as large as the whole model; the step never makes the
    base's gradients, so the optimizer is given the adapters' tree alone."""

    def init(params):
        return tx.init(lora.trainable(params))

    def update(updates, state, params=None):
        trained, state = tx.update(lora.trainable(updates), state, None if params is None else lora.trainable(params))
        rest = jax.tree.map(jnp.zeros_like, lora.frozen(updates))
        return lora.combine(trained, rest) if rest else trained, state

    return optax.GradientTransformation(init, update)


def make_optimizer(section: OptimSection, total_steps: int,
                   adapters: bool = False) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The run's optimizer over `total_steps` steps, and its learning-rate schedule (for logging); `adapters`: it takes
    whole params trees and keeps the LoRA adapters' alone (`adapters_only`: for a caller that inits it on the whole
    model itself; a `StepBuild` inits its optimizer on what trains)."""
    tx, schedule = section.build(total_steps)
    return (adapters_only(tx) if adapters else tx), schedule
