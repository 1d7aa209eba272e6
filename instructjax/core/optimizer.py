"""The optimizer a run's `optim:` section builds (`OptimSection.build`, as levanter's `optim/config.py`): AdamW with
the papers' schedule, linear warmup over 3% of the steps, then linear (or cosine) decay to 0, global-norm gradient
clipping, weight decay on matrices only (HF Trainer's defaults otherwise).

Only optax and jax: the train step (`train.step`, over what trains: `model.partition`) consumes it; the
loss and micro-batch accumulation live in `train.loss`. core/config.py imports this module only inside `build`, so
reading a config never imports jax.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from instructjax.core.errors import ConfigError


def warmup_linear_decay(peak_lr: float, total_steps: int, warmup_ratio: float = 0.03) -> optax.Schedule:
    """HF `get_linear_schedule_with_warmup`: 0 -> peak over ceil(ratio * total) steps, then linear to 0 at total."""
    if total_steps <= 0 or not 0 <= warmup_ratio < 1:
        raise ConfigError(f"need total_steps > 0 and 0 <= warmup_ratio < 1, got {total_steps}, {warmup_ratio}")
    warmup_steps = math.ceil(warmup_ratio * total_steps)
    decay = optax.linear_schedule(peak_lr, 0.0, total_steps - warmup_steps)
    if warmup_steps == 0:
        return decay
    warmup = optax.linear_schedule(0.0, peak_lr, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def lr_schedule(peak_lr: float, total_steps: int, warmup_ratio: float = 0.03, schedule: str = "linear") -> optax.Schedule:
    """Warmup over ceil(ratio * total) steps, then "linear" decay to 0 (seeds 000, 002, 004), "cosine" decay to 0
    (seed 003; HF `get_cosine_schedule_with_warmup`) or "constant" (open-instruct's GRPO recipes; HF
    `get_constant_schedule_with_warmup`)."""
    if schedule == "linear":
        return warmup_linear_decay(peak_lr, total_steps, warmup_ratio)
    if schedule not in ("cosine", "constant"):
        raise ConfigError(f"optim.schedule must be 'linear', 'cosine' or 'constant', got {schedule!r}")
    if total_steps <= 0 or not 0 <= warmup_ratio < 1:
        raise ConfigError(f"need total_steps > 0 and 0 <= warmup_ratio < 1, got {total_steps}, {warmup_ratio}")
    warmup_steps = math.ceil(warmup_ratio * total_steps)
    if schedule == "constant":
        if warmup_steps == 0:
            return optax.constant_schedule(peak_lr)
        return optax.join_schedules([optax.linear_schedule(0.0, peak_lr, warmup_steps),
                                     optax.constant_schedule(peak_lr)], [warmup_steps])
    return optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup_steps, total_steps, end_value=0.0)


def _decay_mask(params: Any) -> Any:
    """Weight decay on matrices only (not on RMSNorm scales), like HF Trainer."""
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def adamw(learning_rate: float | optax.Schedule, *, weight_decay: float = 0.0, max_grad_norm: float | None = 1.0,
          b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """Global-norm clipping (unless `max_grad_norm` is None), then AdamW at `learning_rate`."""
    tx = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_decay_mask)
    return tx if max_grad_norm is None else optax.chain(optax.clip_by_global_norm(max_grad_norm), tx)


def build(section: Any, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`section` (a `core.config.OptimSection`)'s optimizer over `total_steps` steps and its learning-rate schedule
    (for logging)."""
    schedule = lr_schedule(section.lr, total_steps, section.warmup_ratio, section.schedule)
    tx = adamw(schedule, weight_decay=section.weight_decay, max_grad_norm=section.grad_clip, b1=section.b1,
               b2=section.b2, eps=section.eps)
    return tx, schedule
