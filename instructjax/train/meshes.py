"""Which mesh a run takes on the devices at hand (`mesh: auto`): the fsdp x tensor split (fsdp x expert x tensor
for a mixture of experts) the batch and the model divide over, that fits, and that keeps the most of each step's
tokens real (by the run's own step plans); among near-equals the least tensor parallelism (then the most expert).
Where no such split fits a row, each row split over a `context` axis of 2, 4 or 8 (model/context.py), the least
that fits. The trainer, `plan` and `plan --compile` choose with it."""

from __future__ import annotations

import dataclasses

from instructjax.core import sharding
from instructjax.core.config import RunConfig
from instructjax.core.errors import ConfigError

MAX_TENSOR = 8  # tensor parallelism stays within a host's chips (or a GPU node)
REAL_SHARE_SLACK = 0.02  # a mesh within this of the best real-token share is as good: the least tensor wins
CONTEXT_SPLITS = (2, 4, 8)  # mesh.context sizes tried, least first, where no mesh holds a whole row on a device


def mesh_options(devices: int, experts: int = 0, context: int = 1) -> list[dict[str, int]]:
    """The meshes a proposal chooses from: no data axis, the devices split between fsdp and tensor (1 to
    MAX_TENSOR), least tensor parallelism first. For a mixture of `experts` experts, without tensor parallelism the
    splits of the devices between expert (each size dividing both the experts and the devices) and fsdp, the largest
    expert axis first: the experts' weights, most of such a model, are then never gathered across it (its devices exchange the
    tokens instead, a few KiB a token: model/moe.py), where fsdp would gather every expert's weights every step.
    `context` > 1: the same with each row split over that many of the devices (a `context` axis)."""
    if devices % context:
        return []
    split = {"context": context} if context > 1 else {}
    options, devices = [], devices // context
    for t in (1, 2, 4, 8):
        if t > MAX_TENSOR or devices % t:
            continue
        if not experts:
            options.append({"data": 1, "fsdp": devices // t, **split, "tensor": t})
            continue
        splits = [e for e in range(devices // t, 0, -1) if experts % e == 0 and (devices // t) % e == 0
                  and (e == 1 or t == 1)]  # the experts' dispatch runs without tensor parallelism
        options += [{"data": 1, "fsdp": devices // t // e, "expert": e, **split, "tensor": t} for e in splits]
    return options


def option_groups(devices: int, experts: int = 0) -> list[list[dict[str, int]]]:
    """The meshes `mesh: auto` tries, a group at a time: whole rows on a device first, then rows split over a
    `context` axis of each of CONTEXT_SPLITS; the first group with a mesh that fits is chosen from."""
    return [mesh_options(devices, experts), *(mesh_options(devices, experts, c) for c in CONTEXT_SPLITS)]


def best_mesh(candidates: list[tuple[dict[str, int], float]]) -> dict[str, int] | None:
    """Of (mesh, real-token share) pairs in `mesh_options` order (least tensor parallelism first), the first whose
    share is within REAL_SHARE_SLACK of the best; None for none."""
    if not candidates:
        return None
    best = max(share for _, share in candidates)
    return next(sizes for sizes, share in candidates if share >= best - REAL_SHARE_SLACK)


def choose_mesh(config: RunConfig, devices: int, hosts: int, real_share, fits, experts: int = 0,
                splits=None) -> dict[str, int]:
    """`mesh: auto` for a run on `devices` devices and `hosts` hosts of a model of `experts` experts (0: dense): of
    `mesh_options` that the batch divides over, those the model's weights divide over and that `fits(sizes)`, the
    one `best_mesh` takes by `real_share(sizes)` (the trainer's own step plan). Where none fits, the same over rows
    split by a `context` axis (`CONTEXT_SPLITS`, least first; `splits(sizes)` raises a ConfigError where the rows or
    heads do not split so); where none of those fits either, the best of the unsplit meshes (the trainer's memory
    check then names the figures)."""
    groups = option_groups(devices, experts) if splits is not None else [mesh_options(devices, experts)]
    unsplit, fitting = [], []
    for group in groups:
        for sizes in group:
            try:
                sharding.resolve_mesh(dataclasses.replace(config, mesh=sizes), devices, hosts, experts=experts)
                if "context" in sizes:
                    splits(sizes)
                fit = fits(sizes)  # raises where the model's heads do not divide over the tensor axis
            except ConfigError:
                continue
            if "context" not in sizes:
                unsplit.append(sizes)
            if fit:
                fitting.append(sizes)
        if fitting or not unsplit:
            break
    if not unsplit:
        raise ConfigError(f"mesh: auto: no mesh of {devices} devices on {hosts} host(s) serves data.global_batch="
                          f"{config.data.global_batch} (optim.micro_batches={config.optim.micro_batches}) and the "
                          "model's heads; change the batch or set mesh: explicitly")
    return best_mesh([(sizes, real_share(sizes)) for sizes in fitting or unsplit])
