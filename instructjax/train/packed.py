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

import jax
import jax.numpy as jnp
import numpy as np

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
               "compiled: (a saved step is one run's)" if config.compiled else "")
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
        lanes = self.trainers
        contexts = self.contexts
        states = []
        for trainer, context in zip(lanes, contexts, strict=True):
            with context:
                states.append(trainer.init_state())
        starts = {s[2] for s in states}
        if len(starts) != 1:
            raise ConfigError("--packed: the runs saved different steps ("
                              + ", ".join(f"{t.run_dir}: {s[2]}" for t, s in zip(lanes, states, strict=True))
                              + "): resume them apart")
        start = starts.pop()
        stack = jax.jit(lambda *trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees))
        params, opt_state = stack(*(s[0] for s in states)), stack(*(s[1] for s in states))
        tokens = [s[3] for s in states]
        results = [TrainResult(t.run_dir, start) for t in lanes]
        windows, loggers = [], []
        for trainer, state in zip(lanes, states, strict=True):
            storage.write_text(trainer.run_dir / "config.yaml", _yaml(trainer.config))
            loggers.append(MetricsLogger(trainer.run_dir, resume_step=start if trainer.resume else None))
            window = MetricsWindow(len(trainer.sources), trainer.config.optim.loss_reduction)
            if start and state[4]:
                window.load(state[4])
            windows.append(window)
        iterators = []
        for trainer, context in zip(lanes, contexts, strict=True):
            with context:
                iterators.append(iter(trainer.pipeline))
        last = min(stop_at or self.total_steps, self.total_steps)
        bar = progress.bar(total=self.total_steps, initial=start, desc=f"train {len(lanes)} packed", unit="step")
        preemption = PreemptionWatch(lanes[0].process)

        def next_batch():
            rows = []
            for it, context in zip(iterators, contexts, strict=True):
                with context:
                    rows.append(next(it))
            host = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
            return jax.device_put(host, self.batch_sharding), [t.pipeline.state for t in lanes]

        stopped = False
        try:
            with preemption.listening(), jax.set_mesh(lanes[0].mesh):
                if start < last:
                    batch, positions = next_batch()
                clock = time.perf_counter()
                for step in range(start + 1, last + 1):
                    params, opt_state, metrics = self.step(params, opt_state, batch)
                    if step < last:
                        batch, following = next_batch()
                    metrics = jax.device_get(metrics)
                    now = time.perf_counter()
                    seconds, clock = now - clock, now
                    for k, trainer in enumerate(lanes):
                        m = {key: value[k] for key, value in metrics.items()}
                        n = len(trainer.sources)
                        m["source_sums"], m["source_weights"] = m["source_sums"][:n], m["source_weights"][:n]
                        stop_if_non_finite(m["loss"], step, trainer.checkpointer)
                        results[k].losses[step], results[k].step = float(m["loss"]), step
                        tokens[k] += int(m["tokens"])
                        m["lr"] = float(trainer.schedule(step - 1))
                        windows[k].add(m, seconds / len(lanes))
                        if step % trainer.config.log_every == 0 or step == self.total_steps:
                            loggers[k].log(step, windows[k].flush(m, tokens[k], trainer.sources))
                    bar.set_postfix(progress_figures(m, seconds))
                    bar.update(1)
                    stopped = preemption.should_stop(step)
                    if step % lanes[0].config.checkpoint.every == 0 or step == last or stopped:
                        for k, trainer in enumerate(lanes):
                            loggers[k].sync()
                            with contexts[k]:
                                trainer.save(step, _lane(params, k), _lane(opt_state, k), tokens[k], positions[k],
                                             windows[k])
                    if stopped:
                        break
                    if step < last:
                        positions = following
        finally:
            bar.close()
            for trainer, logger in zip(lanes, loggers, strict=True):
                trainer.checkpointer.wait()
                logger.close()
        for trainer, result in zip(lanes, results, strict=True):
            trainer.checkpointer.close()
            result.preempted = stopped
            wrap_up(result, self.total_steps, trainer.training_digest)
        return results


def _yaml(config: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(to_dict(config), sort_keys=False)


def train_packed(configs: list[RunConfig], *, resume: bool = False, **kwargs) -> list[TrainResult]:
    """Train `configs` stacked (`PackedTrainer`); kwargs go to it."""
    return PackedTrainer(configs, resume=resume, **kwargs).run()
