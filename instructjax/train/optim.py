"""The run's optimizer as the train step uses it: the `optim:` section's own (`OptimSection.build`,
core/optimizer.py). The step gives it what trains alone (its `Partition`, model/partition.py) and makes its state
over that (`StepBuild.init_optimizer`)."""

from __future__ import annotations

import optax

from instructjax.core.config import OptimSection


def make_optimizer(section: OptimSection, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The run's optimizer over `total_steps` steps, and its learning-rate schedule (for logging); its state is made
    over what trains (`StepBuild.init_optimizer`, or `tx.init(partition.trainable(params))`)."""
    return section.build(total_steps)
