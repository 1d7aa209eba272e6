"""The trainer: one readable loop from a RunConfig to checkpoints and metrics.

init:        the run resolved (`train.setup`: tokenizer, model, bound data, pipeline, steps, mesh, step shapes:
             the same resolution `plan --compile --real-data` builds its step from) -> model + AdamW state,
             created directly in their sharded layout (or restored from the latest checkpoint with `resume`, or
             params from `model.init_from`)
train step:  jit with explicit shardings, state donated; the global batch is split into
             `optim.micro_batches` micro-batches whose gradients are summed (lax.scan), the loss
             normalized by the trained-token weight of the whole global batch (all hosts). With
             `data.pack: per_step` the pipeline plans the run's few step shapes (rows x row length, rows a
             multiple of `sharding.row_multiple`); each is compiled before step 1
loop:        host batch -> global jax.Array -> step (a grpo run's batch: the rollout of the previous step's
             parameters, train/rollout.py); metrics to RUN_DIR/metrics.jsonl + TensorBoard;
             Orbax saves every `checkpoint.every` steps and at the end; a non-finite loss stops the run
             before anything broken is saved; SIGTERM or SIGINT saves the step in flight and stops (preemption.py).
             A run that reached its last step writes RUN_DIR/DONE: {step, config: `training_digest`}
             (what `sweep` and the TPU launcher read). RUN_DIR may be local or in a bucket.
hosts:       every host plans the same global steps (data.batches.pipeline); a host whose plan differs
             stops the run at once with one line, and a checkpoint resumes on any number of hosts.
owners:      what a step's checkpoint holds, saved and resumed (`train.resume`), the model a run starts from and a preference run's reference
             (`train.reference`), steps saved by `plan --compile` (`train.compile`), the memory check
             (`train.memory`), the Mosaic-IT record (`train.metrics`): this module is the loop over them.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field

import jax
import numpy as np
import yaml
from jax.sharding import NamedSharding

from instructjax.core import hosts, progress, runlock, sharding, stopping, storage, tracking
from instructjax.core.config import RunConfig, to_dict
from instructjax.core.errors import ConfigError, InstructJaxError
from instructjax.core.run_identity import training_digest
from instructjax.model.config import runs_only_keys
from instructjax.train import memory, optim, reweighting
from instructjax.train import setup as run_setup
from instructjax.train.batch_sources import open_batches
from instructjax.train.compile import compile_steps, saved_steps
from instructjax.train.metrics import (
    MetricsLogger,
    MetricsWindow,
    plot_losses,
    progress_figures,
    record_mosaics,
)
from instructjax.train.preemption import PreemptionWatch
from instructjax.train.reference import prepare, start_base, starting_params
from instructjax.train.resolution import PIPELINE, resolve
from instructjax.train.resume import read_resume, restore, save_step
from instructjax.train.rollout_devices import engine_mesh, split_devices
from instructjax.train.step import build_step


class NonFiniteLoss(InstructJaxError):
    """The loss became NaN/inf: the run stopped; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    run_dir: storage.Path
    step: int  # the last completed step
    losses: dict[int, float] = field(default_factory=dict)  # every step this run trained
    preempted: bool = False  # stopped by SIGTERM or SIGINT after saving `step`


def on_mesh(host_batch: dict[str, np.ndarray], batch_sharding: NamedSharding) -> dict[str, jax.Array]:
    """This host's rows as its part of global `jax.Array`s laid out by `batch_sharding` (batch axis first)."""
    return sharding.place(host_batch, batch_sharding, whole=False)


class Trainer:
    """Everything a run needs, set up (and checked) before any compilation; `run()` trains."""

    def __init__(self, config: RunConfig, *, resume: bool = False, accept_changes: bool = False, devices=None,
                 pipeline=None, process: stopping.ProcessHandles = stopping.PROCESS):
        """`accept_changes`: resume although the config changes what the run trains (`resume.check_unchanged`);
        `devices`: the mesh's devices (default all); `pipeline`: a stand-in for the config's DataPipeline (iteration,
        state, restore, task_names, report, use_reference, stream, plan_epoch, `batch_source` (data/batches/source.py);
        plan_steps for per_step; a grpo run's: train/rollout.py); `process`: the process's signal listener and
        stderr relay (`core.stopping.ProcessHandles`), held here and passed to the hosts and the preemption watch."""
        self.process = process
        hosts.initialize(config.distributed, f"train:{config.run_dir}", process)  # the hosts tokenize together
        self.resume = resume
        self.run_dir = storage.path(config.run_dir)
        devices, self.engine_devices = split_devices(list(jax.devices() if devices is None else devices), config)
        run_setup.check_trainable(config, len(devices), jax.process_count())  # before anything is read
        bound = resolve(config, sizes=PIPELINE).bound  # the tokenizer, the model and the data bound: nothing read yet
        storage.check_bucket(config.run_dir, "run_dir")
        self.lock = runlock.take(config.run_dir)  # one writer per run dir: nothing is written before this
        try:
            self._set_up(config, bound, devices, resume=resume, accept_changes=accept_changes, pipeline=pipeline)
        except BaseException:
            self.lock.release()
            raise

    def _set_up(self, config: RunConfig, bound, devices, *, resume: bool, accept_changes: bool, pipeline) -> None:
        """The rest of `__init__`, under the run's lock: the run directory read (and resumed), the run resolved, the
        step built."""
        self.training_digest = training_digest(config, not_training=runs_only_keys())  # what a sweep compares
        self.resume_from, saved_config = None, None  # the newest intact step: damaged newer ones set aside first
        if resume:
            self.resume_from, saved_config, bound = read_resume(self.run_dir, config, bound,
                                                                accept_changes=accept_changes)
        if pipeline is None:  # the objective's own batches where it makes them (grpo's rollouts), else its data's
            pipeline = open_batches(bound, jax.process_index(), jax.process_count())
        run = self.resolved = run_setup.resolve_run(bound, devices=len(devices), hosts=jax.process_count(),
                                                    process_index=jax.process_index(), pipeline=pipeline,
                                                    saved_mesh=(saved_config or {}).get("mesh"))
        self.config = run.config  # what config.yaml records: the bound config, its mesh written in
        self.tokenizer, self.model_config = run.tokenizer, run.model
        self.pipeline, self.sources, self.total_steps = run.pipeline, run.sources, run.total_steps
        self.mesh = sharding.make_mesh(run.mesh, devices)
        self.step_shapes = run.step_shapes if config.data.pack == "per_step" else ()  # each compiled before step 1
        _check_hosts_agree(run.epoch, config, run.processed)
        if config.data.reweighting is not None:  # DoReMi's reference: this run's model, tokenizer and tasks
            reweighting.check_reference(config, self.model_config, self.tokenizer, self.sources)
        self.out_of_memory = memory.check_fits(run.model, run.config, run.mesh, run.step_shapes)  # before compiling
        tokenizer = run_setup.tokenizer_item(run.tokenizer, run.config.template)  # what a checkpoint carries
        self.checkpointer = config.checkpoint.build(self.run_dir, tokenizer)
        self.base = start_base(self.config, self.model_config)  # a LoRA on init_from: the base it saves with
        if not resume and self.checkpointer.latest_step() is not None:
            raise ConfigError(f"{self.run_dir} already has checkpoints: pass --resume, or choose another run_dir")
        if jax.process_index() == 0:
            run_setup.report_data(self.pipeline, own=pipeline is None)
        self.tx, self.schedule = optim.make_optimizer(config.optim, self.total_steps)  # over what trains: the build's
        # DoReMi: its weights start at the rates the data is drawn at
        sampling = reweighting.sampling(self.pipeline.stream) if config.data.reweighting is not None else None
        self.build = build_step(self.model_config, self.tx, self.config, len(self.sources), self.mesh, config.seed,
                                sampling)
        self.pipeline.attach(self.build, self.mesh, engine_mesh(self.engine_devices, self.config, self.model_config))
        self.precompiled = saved_steps(config.compiled, devices=devices, hosts=jax.process_count(), mesh=run.mesh,
                                       build=self.build, shapes=run.step_shapes)  # (rows, length) -> a loaded step

    def init_state(self):
        """(params, opt_state, start step, tokens so far, the metrics window open at that step or None): fresh, from
        init_from, or from the latest checkpoint."""
        if self.resume_from is not None:
            return restore(self.checkpointer, self.run_dir, self.model_config, self.build, self.base, self.pipeline)
        params = starting_params(self.config, self.model_config, self.build, self.base)
        return params, self.build.init_optimizer(params), 0, 0, None

    def save(self, step: int, params, opt_state, tokens: int, position, window: MetricsWindow | None = None) -> None:
        """Save `step` with the data `position` after its batch and the metrics `window` open at it (unless another
        process took the run's lock over meanwhile: then one line, and nothing is saved)."""
        self.lock.check()
        save_step(self.checkpointer, step, self.config, self.model_config, self.build, self.base, params, opt_state,
                  tokens, position, window)
        if jax.process_index() == 0 and self.pipeline.stream is not None:  # the Mosaic-IT passes made so far, by k
            record_mosaics(str(self.run_dir), self.pipeline.stream.mosaic_k)  # (RUN_DIR/mosaic_k.json)

    def run(self, stop_at: int | None = None) -> TrainResult:
        """Train to the last step, or stop after `stop_at` (as a preempted run would, after saving it); the run's
        lock is given back at the end, whatever the end."""
        try:
            return self._train(stop_at)
        finally:
            self.lock.release()

    def _train(self, stop_at: int | None) -> TrainResult:
        primary = jax.process_index() == 0
        params, opt_state, start, tokens, saved_window = self.init_state()
        result = TrainResult(self.run_dir, start)
        if primary:
            storage.write_text(self.run_dir / "config.yaml", yaml.safe_dump(to_dict(self.config), sort_keys=False))
        logger = MetricsLogger(self.run_dir, enabled=primary, resume_step=start if self.resume else None,
                               tracker=tracking.start(self.config, "train") if primary else None)
        reference = prepare(self.run_dir, self.config, self.model_config, self.build, self.base,
                            self.pipeline.stream, params, start)  # before the pipeline's first batch
        self.pipeline.use_reference(reference)  # stored log-probs the batches carry, or a rollout's reference

        def step_fn(params, opt_state, batch):  # a step loaded from `compiled:` where its shape is this batch's
            return self.precompiled.get(batch["tokens"].shape, self.build.step)(params, opt_state, batch,
                                                                                 *reference.step_args)

        window = MetricsWindow(len(self.sources), self.config.optim.loss_reduction)
        if start and saved_window:  # a preempted run's half-filled log window, as the checkpoint saved it
            window.load(saved_window)
        last = min(stop_at or self.total_steps, self.total_steps)
        bar = progress.bar(total=self.total_steps, initial=start, disable=not primary, desc="train", unit="step")
        source = self.pipeline.batch_source(self.run_dir, self.total_steps,  # data.batches.source
                                            lambda rows: on_mesh(rows, self.build.batch_sharding))

        def finish(step, metrics, seconds, rollout):
            nonlocal tokens
            m = jax.device_get(metrics)
            stop_if_non_finite(m["loss"], step, self.checkpointer)
            result.losses[step], result.step = float(m["loss"]), step
            tokens += int(m["tokens"])
            m["lr"] = float(self.schedule(step - 1))
            window.add(m, seconds, rollout)
            bar.set_postfix(progress_figures(m, seconds))
            bar.update(1)
            if step % self.config.log_every == 0 or step == self.total_steps:
                logger.log(step, window.flush(m, tokens, self.sources))

        preemption = PreemptionWatch(self.process)
        try:
            with preemption.listening(), jax.set_mesh(self.mesh), memory.memory_errors(self.out_of_memory):
                self.schedule(start)  # its ops compiled here, not in the wall time of the second step
                compile_steps(self.build, self.step_shapes, self.precompiled, params, opt_state,
                              reference.step_args)
                if start < last:
                    source.begin(start, last, params)
                clock = time.perf_counter()  # a step's wall time ends when its outputs are ready
                for step in range(start + 1, last + 1):
                    made = source.take(step, params)
                    params, opt_state, metrics = step_fn(params, opt_state, made.rows)
                    source.after(step, params)  # the next batch made while this step runs
                    jax.block_until_ready(metrics)
                    now = time.perf_counter()
                    finish(step, metrics, now - clock, made.metrics)
                    clock = now
                    result.preempted = preemption.should_stop(step)
                    if step % self.config.checkpoint.every == 0 or step == last or result.preempted:
                        logger.sync()  # the metrics kept never lag behind a saved step
                        source.save(step, self.checkpointer.manager.all_steps())  # before the checkpoint
                        self.save(step, params, opt_state, tokens, source.position(step), window)
                    if result.preempted:
                        break
        finally:
            bar.close()
            self.checkpointer.wait()  # committed and sealed
            logger.close()
        self.checkpointer.close()
        if primary and self.config.data.reweighting is not None and result.step > start:  # DoReMi's mixture so far
            reweighting.write_outputs(self.run_dir, self.config, self.sources, reweighting.carried_state(opt_state))
        if primary:
            wrap_up(result, self.total_steps, self.training_digest)
        return result


def stop_if_non_finite(loss, step: int, checkpointer) -> None:
    """A NaN/inf `loss` at `step` stops the run before anything broken is saved, naming the last good checkpoint."""
    if not np.isfinite(loss):
        checkpointer.wait()
        last_saved = checkpointer.latest_step()
        raise NonFiniteLoss(f"non-finite loss ({loss}) at step {step}; stopped, the last good "
                            f"checkpoint is {'step ' + str(last_saved) if last_saved else 'none'}")


def wrap_up(result: TrainResult, total_steps: int, digest: str) -> None:
    """The first host's end of a run: a preempted run says so; the loss plot; RUN_DIR/DONE where it reached its last
    step ({step, config: `training_digest`}: what `sweep` and the TPU launcher read)."""
    if result.preempted:
        print(f"instructjax: preempted: saved step {result.step} in {result.run_dir}; `--resume` continues from it",
              file=sys.stderr, flush=True)
    plot_losses(result.run_dir)
    if not result.preempted and result.step == total_steps:
        storage.write_text(result.run_dir / "DONE", json.dumps({"step": result.step, "config": digest}) + "\n")


def _check_hosts_agree(plan, config: RunConfig, processed: int = 0) -> None:
    """Stop at once, with one line, when another host planned a different epoch (a changed data file on
    one host, a different package version): hosts that disagree would otherwise hang or drift apart.
    `processed`: the tokens (padding too) of all the run's steps under `pack: per_step` (0 otherwise)."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    hosts.enter("plan", "planning the run")  # a host that skipped a data collective stops here, named
    mine = np.array([plan.examples, plan.rows, plan.tokens, plan.trained_tokens, config.max_steps or 0, processed],
                    np.int64)
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(jax.process_count(), -1)
    differing = [h for h in range(len(every)) if not np.array_equal(every[h], every[0])]
    if differing:
        names = ("examples", "rows", "tokens", "trained tokens", "max_steps", "per_step tokens processed")
        mismatch = ", ".join(f"{n} {every[0][i]} vs {every[differing[0]][i]}" for i, n in enumerate(names)
                             if every[0][i] != every[differing[0]][i])  # fmt: skip
        raise ConfigError(f"host {differing[0]} planned a different epoch than host 0 ({mismatch}); "
                          "check that every host reads the same data files and config")


def train(config: RunConfig, *, resume: bool = False, **kwargs) -> TrainResult:
    """Train `config` (resuming from its latest checkpoint with `resume`); kwargs go to `Trainer`."""
    return Trainer(config, resume=resume, **kwargs).run()
