"""Proxies stacked in one step (`mix swarm --packed K`, `mix train SWARM_DIR --packed K`): K runs that share one
architecture and differ only in data train side by side, their parameters, optimizer states and batches stacked on
a leading axis and the one train step `vmap`ped over it (on a TPU slice a 20M-parameter proxy leaves most of a chip
idle; K of them fill it).

Each run stays its own: its `Trainer` (train/trainer.py), in a context of its own (`core.context`: proxies define
one mixture name at their own rates), resolves it, reads its own mixture's pipeline, takes its run
directory's lock, starts or resumes from its own checkpoint, logs its own metrics.jsonl, saves its own Orbax steps
(a proxy trained packed resumes alone, and the other way round) and writes its own DONE. Only the step is shared:
`vmap` of the step `make_step` builds for the first run (the objective sized for the largest mixture; each run reads
its own tasks' losses), jitted once with the shardings of the state and the batch gaining a leading unsharded axis.

What stacks: the runs' model, optimizer, batch shape (`data.global_batch` x `data.seq_len`, packed or one example a
row: not `pack: per_step`), step count and mesh must be alike, SFT without a reference, one process; they start at
the same step (fresh, or resumed together). Anything else is one line naming the runs that differ.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import yaml

from instructjax.core import progress, storage
from instructjax.core.config import RunConfig, to_dict
from instructjax.core.context import Context, current
from instructjax.core.errors import ConfigError
from instructjax.train.metrics import MetricsLogger, MetricsWindow, progress_figures
from instructjax.train.preemption import PreemptionWatch
from instructjax.train.step import stacked_sharding, stacked_step
from instructjax.train.trainer import Trainer, TrainResult, stop_if_non_finite, wrap_up

ALIKE = ("model", "optim", "objective", "mesh", "seed", "max_steps", "log_every", "checkpoint")
ALIKE_DATA = ("seq_len", "global_batch", "pack", "pack_window")


def check_stackable(configs: list[RunConfig]) -> None:
    """One line where the runs cannot share a step: a key that differs, or one that stacking does not support."""
    if jax.process_count() > 1:
        raise ConfigError("--packed trains its proxies in one process; on several hosts train them apart (`sweep`)")
    first = to_dict(configs[0])
    for config in configs:
        mine = to_dict(config)
        for key in ALIKE:
            if mine[key] != first[key]:
                raise ConfigError(f"--packed: {config.run_dir} and {configs[0].run_dir} differ in {key}: the proxies "
                                  "of a pack share everything but their data")
        for key in ALIKE_DATA:
            if mine["data"][key] != first["data"][key]:
                raise ConfigError(f"--packed: {config.run_dir} and {configs[0].run_dir} differ in data.{key}")
        why = ("data.pack: per_step (its step shapes are each run's own)" if config.data.pack == "per_step" else
               f"objective.loss {config.objective.loss} (a pack trains sft)" if config.objective.loss != "sft" else
               "data.reweighting" if config.data.reweighting is not None else
               "compiled: (a saved step is one run's)" if config.compiled else
               "wandb: (a W&B run a process; metrics.jsonl and TensorBoard are each run's)" if config.wandb else "")
        if why:
            raise ConfigError(f"--packed: {config.run_dir}: {why} cannot be stacked")


def _lane(tree, k: int):
    return jax.tree.map(lambda x: x[k], tree)


class PackedTrainer:
    """K runs (`configs`) trained side by side by one vmapped step (see the module doc); `resume`: each from its
    latest checkpoint (all at one step)."""

    def __init__(self, configs: list[RunConfig], *, resume: bool = False, devices=None):
        if not configs:
            raise ConfigError("--packed: no runs to train")
        check_stackable(configs)
        self.trainers: list[Trainer] = []
        self.contexts = [Context(parent=current()) for _ in configs]  # each run's registry its own
        try:
            for config, context in zip(configs, self.contexts, strict=True):
                with context:
                    self.trainers.append(Trainer(config, resume=resume, devices=devices))
        except BaseException:
            for trainer in self.trainers:
                trainer.lock.release()
            raise
        first = self.trainers[0]
        self.total_steps = first.total_steps
        for trainer in self.trainers:
            if trainer.total_steps != self.total_steps or trainer.mesh.shape != first.mesh.shape:
                self._release()
                raise ConfigError(f"--packed: {trainer.run_dir} has {trainer.total_steps} steps on mesh "
                                  f"{dict(trainer.mesh.shape)}, {first.run_dir} {self.total_steps} on "
                                  f"{dict(first.mesh.shape)}: set max_steps (and the mesh) alike")
        self.sources = max(len(t.sources) for t in self.trainers)  # the objective sized for the largest mixture
        build = first.build
        if len(first.sources) != self.sources:
            from instructjax.train.step import build_step

            build = build_step(first.model_config, first.tx, first.config, self.sources, first.mesh, first.config.seed)
        self.build, self.step = build, stacked_step(build, first.config)
        self.batch_sharding = stacked_sharding(build.batch_sharding)

    def _release(self) -> None:
        for trainer in self.trainers:
            trainer.lock.release()

    def run(self, stop_at: int | None = None) -> list[TrainResult]:
        """Train every run to the last step (or stop after `stop_at`, saved); each run's lock given back at the end."""
        try:
            return self._train(stop_at)
        finally:
            self._release()

    def _train(self, stop_at: int | None) -> list[TrainResult]:
        lanes = [_Lane(trainer, context) for trainer, context in zip(self.trainers, self.contexts, strict=True)]
        states = [lane.start() for lane in lanes]
        if len({lane.result.step for lane in lanes}) != 1:
            raise ConfigError("--packed: the runs saved different steps ("
                              + ", ".join(f"{lane.trainer.run_dir}: {lane.result.step}" for lane in lanes)
                              + "): resume them apart")
        start = lanes[0].result.step
        stack = jax.jit(lambda *trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees))
        params, opt_state = stack(*(s[0] for s in states)), stack(*(s[1] for s in states))
        last = min(stop_at or self.total_steps, self.total_steps)
        bar = progress.bar(total=self.total_steps, initial=start, desc=f"train {len(lanes)} packed", unit="step")
        preemption = PreemptionWatch(self.trainers[0].process)

        def next_batch():  # (the lanes' batches stacked on the mesh, each lane's data position after its batch)
            rows = [lane.next_batch() for lane in lanes]
            host = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
            return jax.device_put(host, self.batch_sharding), [lane.trainer.pipeline.state for lane in lanes]

        stopped = False
        try:
            with preemption.listening(), jax.set_mesh(self.trainers[0].mesh):
                if start < last:
                    batch, positions = next_batch()
                clock = time.perf_counter()
                for step in range(start + 1, last + 1):
                    params, opt_state, metrics = self.step(params, opt_state, batch)
                    if step < last:  # the next batches are made while this step runs
                        batch, following = next_batch()
                    metrics = jax.device_get(metrics)
                    now = time.perf_counter()
                    seconds, clock = now - clock, now
                    for k, lane in enumerate(lanes):
                        m = lane.record(step, {key: value[k] for key, value in metrics.items()}, seconds / len(lanes),
                                        self.total_steps)
                    bar.set_postfix(progress_figures(m, seconds))
                    bar.update(1)
                    stopped = preemption.should_stop(step)
                    if step % self.trainers[0].config.checkpoint.every == 0 or step == last or stopped:
                        for k, lane in enumerate(lanes):
                            lane.save(step, _lane(params, k), _lane(opt_state, k), positions[k])
                    if stopped:
                        break
                    if step < last:
                        positions = following
        finally:
            bar.close()
            for lane in lanes:
                lane.close()
        for lane in lanes:
            lane.result.preempted = stopped
            wrap_up(lane.result, self.total_steps, lane.trainer.training_digest)
        return [lane.result for lane in lanes]


@dataclass
class _Lane:
    """One run of a pack: its trainer and context, and what its loop keeps (metrics window and log, tokens, result)."""

    trainer: Trainer
    context: Context
    window: MetricsWindow | None = None
    logger: MetricsLogger | None = None
    batches: Iterator | None = None
    tokens: int = 0
    result: TrainResult | None = None

    def start(self):
        """The run's starting (params, opt_state), its log and window opened at its start step, its batches."""
        trainer = self.trainer
        with self.context:
            params, opt_state, start, self.tokens, saved_window = trainer.init_state()
            self.batches = iter(trainer.pipeline)
        self.result = TrainResult(trainer.run_dir, start)
        storage.write_text(trainer.run_dir / "config.yaml", yaml.safe_dump(to_dict(trainer.config), sort_keys=False))
        self.logger = MetricsLogger(trainer.run_dir, resume_step=start if trainer.resume else None)
        self.window = MetricsWindow(len(trainer.sources), trainer.config.optim.loss_reduction)
        if start and saved_window:
            self.window.load(saved_window)
        return params, opt_state

    def next_batch(self) -> dict:
        with self.context:
            return next(self.batches)

    def record(self, step: int, m: dict, seconds: float, total_steps: int) -> dict:
        """Step `step`'s device metrics `m` of this run (its own sources' sums), logged as its trainer logs them."""
        trainer, n = self.trainer, len(self.trainer.sources)
        m["source_sums"], m["source_weights"] = m["source_sums"][:n], m["source_weights"][:n]
        stop_if_non_finite(m["loss"], step, trainer.checkpointer)
        self.result.losses[step], self.result.step = float(m["loss"]), step
        self.tokens += int(m["tokens"])
        m["lr"] = float(trainer.schedule(step - 1))
        self.window.add(m, seconds)
        if step % trainer.config.log_every == 0 or step == total_steps:
            self.logger.log(step, self.window.flush(m, self.tokens, trainer.sources))
        return m

    def save(self, step: int, params, opt_state, position) -> None:
        self.logger.sync()  # the metrics kept never lag behind a saved step
        with self.context:
            self.trainer.save(step, params, opt_state, self.tokens, position, self.window)

    def close(self) -> None:
        self.trainer.checkpointer.wait()
        if self.logger is not None:
            self.logger.close()
        self.trainer.checkpointer.close()


def train_packed(configs: list[RunConfig], *, resume: bool = False, **kwargs) -> list[TrainResult]:
    """Train `configs` stacked (`PackedTrainer`); kwargs go to it."""
    return PackedTrainer(configs, resume=resume, **kwargs).run()
