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
loop:        host batch -> global jax.Array -> step; metrics to RUN_DIR/metrics.jsonl + TensorBoard;
             Orbax saves every `checkpoint.every` steps and at the end; a non-finite loss stops the run
             before anything broken is saved; SIGTERM or SIGINT saves the step in flight and stops (preemption.py).
             A run that reached its last step writes RUN_DIR/DONE: {step, config: `training_digest`}
             (what `sweep` and the TPU launcher read). RUN_DIR may be local or in a bucket.
hosts:       every host plans the same global steps (data.batches.pipeline); a host whose plan differs
             stops the run at once with one line, and a checkpoint resumes on any number of hosts.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field

import jax
import numpy as np
import yaml
from flax import nnx
from jax.sharding import NamedSharding

from instructjax.convert.saved import load_base, load_params_as
from instructjax.core import checkpoint as ckpt
from instructjax.core import hosts, integrity, runlock, sharding, storage, tracking
from instructjax.core.config import RunConfig, to_dict, training_changes, training_digest
from instructjax.core.errors import ConfigError, InstructJaxError
from instructjax.model.config import runs_only_keys
from instructjax.model.decoder import Decoder
from instructjax.train import optim
from instructjax.train.metrics import MetricsLogger, MetricsWindow, plot_losses, progress_figures
from instructjax.train.reference import start_base, starting_adapters
from instructjax.train.resume_shapes import shape_change
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
    return {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in host_batch.items()}


class Trainer:
    """Everything a run needs, set up (and checked) before any compilation; `run()` trains."""

    def __init__(self, config: RunConfig, *, resume: bool = False, accept_changes: bool = False, devices=None,
                 pipeline=None):
        """`accept_changes`: resume although the config changes what the run trains (`check_unchanged`);
        `devices`: the mesh's devices (default all); `pipeline`: a stand-in for the config's DataPipeline with the
        same interface (iteration, state, restore, task_names, report, stream.mosaic_k, plan_epoch; plan_steps for
        per_step)."""
        hosts.initialize(config.distributed, f"train:{config.run_dir}")  # the hosts tokenize together, each a share
        from instructjax.train import setup as run_setup

        self.resume = resume
        self.run_dir = storage.path(config.run_dir)
        devices = list(jax.devices() if devices is None else devices)
        run_setup.check_trainable(config, len(devices), jax.process_count())  # before anything is read
        bound = run_setup.bind_run(config)
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
        from instructjax.data.encoding.tokenizer import Tokenizer, materialize
        from instructjax.train import memory
        from instructjax.train import setup as run_setup
        from instructjax.train.topology import local_topology

        self.training_digest = training_digest(config, not_training=runs_only_keys())  # what a sweep compares
        self.tokenizer_item = run_setup.tokenizer_item(bound.tokenizer, bound.config.template)
        self.resume_from = None  # the newest intact step: damaged newer ones are reported and set aside first
        saved_config = None
        checkpoints = ckpt.checkpoints_dir(self.run_dir)  # read only: nothing is written before the checks pass
        if resume and integrity.steps_on_disk(checkpoints):
            self.resume_from = integrity.intact_step(checkpoints, set_aside=True)
            stored, saved_config, _ = ckpt.read_meta(self.run_dir, self.resume_from)
            if stored["scan_layers"] != bound.model.scan_layers:  # continue in the layout it was saved in
                bound = dataclasses.replace(bound, model=bound.model.replace(scan_layers=stored["scan_layers"]))
            if moved := shape_change(stored, bound.model, config.model.overrides, config.model.init_from):
                raise ConfigError(f"{self.run_dir}: {moved}")  # --accept-changes or not: nothing to restore into
            self.check_unchanged(saved_config or {}, bound.config, self.resume_from, accept_changes)
            saved = ckpt.read_tokenizer(self.run_dir, self.resume_from)
            if saved is not None and Tokenizer.load(materialize(saved["files"])) != bound.tokenizer:
                raise ConfigError(f"{self.run_dir} was trained with another tokenizer than "
                                  f"{run_setup.tokenizer_words(config).removeprefix('the ')}; "
                                  "resume with the run's own tokenizer (config `tokenizer:` / model.init_from)")
        self.resolved = run_setup.resolve_run(bound, devices=len(devices), hosts=jax.process_count(),
                                         process_index=jax.process_index(), pipeline=pipeline,
                                         saved_mesh=(saved_config or {}).get("mesh"))
        run = self.resolved
        self.config = run.config  # what config.yaml records: the bound config, its mesh written in
        self.tokenizer, self.model_config = run.tokenizer, run.model
        self.pipeline, self.sources, self.total_steps = run.pipeline, run.sources, run.total_steps
        self.mesh = sharding.make_mesh(run.mesh, devices)
        self.step_shapes = run.step_shapes if config.data.pack == "per_step" else ()  # each compiled before step 1
        _check_hosts_agree(run.epoch, config, run.processed)
        here = local_topology()
        needed, self.out_of_memory = memory.step_needed(run.model, run.config, run.mesh, run.step_shapes, here)
        if needed > memory.usable_bytes(here):  # before anything compiles
            raise ConfigError(self.out_of_memory)  # also said for XLA's own refusal
        self.checkpointer = config.checkpoint.build(self.run_dir, self.tokenizer_item)
        # a LoRA on init_from saves its adapters alone, with the base they were trained on (checked on resume)
        self.base = start_base(self.config, self.model_config)
        latest = self.checkpointer.latest_step()
        if not resume and latest is not None:
            raise ConfigError(f"{self.run_dir} already has checkpoints: pass --resume, or choose another run_dir")
        if jax.process_index() == 0:  # skipped rows and truncations are reported, never silent
            for line in self.pipeline.report():
                print(f"data: {line}", flush=True)
            if pipeline is None:  # the run's own pipeline: what its data side read and tokenized here
                from instructjax.data.tokenized.examples import cache_report

                print(f"data: {cache_report(list(self.pipeline.task_names), self.pipeline.stats)}", flush=True)
        self.tx, self.schedule = optim.make_optimizer(config.optim, self.total_steps)  # over what trains: the build's
        self.build = build_step(self.model_config, self.tx, self.config, len(self.sources), self.mesh, config.seed)
        self.precompiled = {}  # (rows, length) -> a step loaded from `compiled:` (plan --compile --save-executable)
        if config.compiled:
            from instructjax.train.compile import load_compiled, slice_identity

            shape, step = load_compiled(config.compiled, target=slice_identity(devices, jax.process_count(), run.mesh),
                                        build=self.build, shapes=run.step_shapes)
            self.precompiled[shape] = step

    def check_unchanged(self, saved: dict, config: RunConfig, step: int, accept: bool) -> None:
        """A run resumed at `step` continues exactly: a `config` that changes what it trains (schedule and length,
        optimizer, data, model, seed: `training_changes`) against the one its checkpoint was saved with (`saved`)
        stops with one line listing the changes, unless `accept` (then they are noted and appended to
        RUN_DIR/changes.jsonl)."""
        changes = training_changes(saved, config, not_training=runs_only_keys(),
                                   ignore=("model.init_from", "tokenizer"))
        if not changes:
            return
        if not accept:
            raise ConfigError(f"{self.run_dir} was trained to step {step} with another config ({'; '.join(changes)}); "
                              "resume with the run's own values, or add --accept-changes to continue with these")
        if jax.process_index() == 0:
            log = self.run_dir / "changes.jsonl"
            before = log.read_text() if log.is_file() else ""
            storage.write_text(log, before + json.dumps({"step": step, "changes": changes}) + "\n")
            print(f"instructjax: note: resuming {self.run_dir} at step {step} with changes ({'; '.join(changes)}); "
                  f"recorded in {log}", file=sys.stderr, flush=True)

    def init_state(self):
        """(params, opt_state, start step, tokens so far, the metrics window open at that step or None): fresh, from
        init_from, or from the latest checkpoint."""
        make_model = lambda: Decoder(self.model_config, rngs=nnx.Rngs(self.config.seed))  # noqa: E731
        build, part = self.build, self.build.partition
        if self.resume_from is not None:
            latest, params, opt_state, data, meta = self.checkpointer.restore_latest(  # skips a torn newest step
                part.trainable(build.params) if self.base else build.params, build.opt_state)
            if self.base:  # the adapters, on the base they were trained on
                base = meta.get("base")
                if base is None:
                    raise ConfigError(f"{self.run_dir} step {latest} holds the whole model, not LoRA adapters on "
                                      f"model.init_from: resume it with the version of instructjax that wrote it")
                ckpt.check_base(base, f"{self.run_dir} step {latest}")
                params = part.combine(params, load_base(base, self.model_config, build.param_shardings)[0])
            if not (data == data[0]).all():
                raise ConfigError(f"checkpoint step {latest} holds one data position per host (an older per-host "
                                  f"layout); it cannot resume with the global plan")  # fmt: skip
            self.pipeline.restore(data[0])  # the global position: any number of hosts continues from it
            return params, opt_state, latest, int(meta.get("tokens", 0)), meta.get("metrics_window")
        if self.base is not None:  # LoRA on init_from: its frozen base (quantized where asked) and adapters
            frozen, adapters = load_base(self.base, self.model_config, build.param_shardings)
            if adapters is None:  # fresh ones
                adapters = jax.jit(lambda: part.trainable(nnx.to_pure_dict(nnx.state(make_model()))),
                                   out_shardings=part.trainable(build.param_shardings))()
            params = part.combine(adapters, frozen)
        elif self.config.model.init_from:
            params = load_params_as(self.config.model.init_from, self.model_config, shardings=build.param_shardings)
        else:
            params = nnx.to_pure_dict(nnx.state(sharding.create_sharded_model(make_model, self.mesh)))
        return params, build.init_optimizer(params), 0, 0, None

    def reference_weights(self, params):
        """The reference of a preference loss: the model the run started from, frozen. A LoRA's is its frozen base
        with its starting adapters (init_from's where the run goes on training them; fresh ones add nothing); a full
        fine-tune's is init_from's parameters, or the seed's fresh ones (loaded again)."""
        part = self.build.partition
        if part.adapters:
            return part.combine(starting_adapters(self.base, self.model_config, self.build, params), part.frozen(params))
        if self.config.model.init_from:
            return load_params_as(self.config.model.init_from, self.model_config, shardings=self.build.param_shardings)
        make_model = lambda: Decoder(self.model_config, rngs=nnx.Rngs(self.config.seed))  # noqa: E731
        return nnx.to_pure_dict(nnx.state(sharding.create_sharded_model(make_model, self.mesh)))

    def prepare_reference(self, params, start: int) -> tuple:
        """The step's reference argument (the objective's reference live: a full fine-tune's starting parameters, a
        LoRA's starting adapters), or () where it takes none;
        with `objective.reference: cached`, the reference's log-probs handed to the pipeline first: read back from
        RUN_DIR, or computed (from `params` at step 0: the model the run starts from, a LoRA's starting adapters
        included; from the reference loaded again on resume) and stored."""
        from instructjax.train import reference

        if self.build.takes_reference:  # what trains, as it started (a LoRA's adapters: the step holds its base)
            return (self.build.partition.trainable(self.reference_weights(params)),)
        if self.build.cached_reference:
            stream, named = self.pipeline.stream, reference.identity(self.config.model.init_from, self.config.seed)
            found = reference.load(self.run_dir, stream, named, resuming=start > 0)
            if found is None:
                weights = params if start == 0 else self.reference_weights(params)  # the model the run starts from
                data = self.config.data
                found = reference.compute(self.build, weights, stream, data.global_batch, data.seq_len,
                                          self.config.optim.loss_chunk)
                if jax.process_index() == 0:
                    reference.save(self.run_dir, stream, found, named)
            stream.reference = found
        return ()

    def save(self, step: int, params, opt_state, tokens: int, position, window: MetricsWindow | None = None) -> None:
        """Save `step` with the data `position` after its batch and the metrics `window` open at it (unless another
        process took the run's lock over meanwhile: then one line, and nothing is saved)."""
        self.lock.check()
        meta = {"run_config": to_dict(self.config), "model_config": dataclasses.asdict(self.model_config),
                "tokens": tokens, "metrics_window": window.state() if window is not None else None}  # fmt: skip
        data = ckpt.gather_data_state(position.to_array())
        if self.base:  # what trains alone: the base is init_from's
            params, meta["base"] = self.build.partition.trainable(params), self.base
        self.checkpointer.save(step, params, opt_state, data, meta)
        if jax.process_index() == 0:
            self._record_mosaics()

    def _record_mosaics(self) -> None:
        """The Mosaic-IT passes made so far, by k, into RUN_DIR/mosaic_k.json (train.metrics.record_mosaics)."""
        from instructjax.train.metrics import record_mosaics

        if self.pipeline.stream.mosaic_k:
            record_mosaics(str(self.run_dir), self.pipeline.stream.mosaic_k)

    def run(self, stop_at: int | None = None) -> TrainResult:
        """Train to the last step, or stop after `stop_at` (as a preempted run would, after saving it); the run's
        lock is given back at the end, whatever the end."""
        try:
            return self._train(stop_at)
        finally:
            self.lock.release()

    def _train(self, stop_at: int | None) -> TrainResult:
        from instructjax.core import progress
        from instructjax.train.preemption import PreemptionWatch

        primary = jax.process_index() == 0
        params, opt_state, start, tokens, saved_window = self.init_state()
        result = TrainResult(self.run_dir, start)
        if primary:
            storage.write_text(self.run_dir / "config.yaml", yaml.safe_dump(to_dict(self.config), sort_keys=False))
        logger = MetricsLogger(self.run_dir, enabled=primary, resume_step=start if self.resume else None,
                               tracker=tracking.start(self.config, "train") if primary else None)
        batch_sharding = self.build.batch_sharding

        reference = self.prepare_reference(params, start)  # before the pipeline's first batch

        def step_fn(params, opt_state, batch):  # a step loaded from `compiled:` where its shape is this batch's
            return self.precompiled.get(batch["tokens"].shape, self.build.step)(params, opt_state, batch, *reference)

        if primary:
            for (rows, length) in self.precompiled:
                print(f"instructjax: the step of {rows} x {length} is {self.config.compiled} (not compiled here)",
                      file=sys.stderr, flush=True)
        window = MetricsWindow(len(self.sources), self.config.optim.loss_reduction)
        if start and saved_window:  # a preempted run's half-filled log window, as the checkpoint saved it
            window.load(saved_window)
        last = min(stop_at or self.total_steps, self.total_steps)
        bar = progress.bar(total=self.total_steps, initial=start, disable=not primary, desc="train", unit="step")
        batches = iter(self.pipeline)

        def finish(step, metrics, seconds):
            nonlocal tokens
            m = jax.device_get(metrics)
            if not np.isfinite(m["loss"]):
                self.checkpointer.wait()
                last_saved = self.checkpointer.latest_step()
                raise NonFiniteLoss(f"non-finite loss ({m['loss']}) at step {step}; stopped, the last good "
                                    f"checkpoint is {'step ' + str(last_saved) if last_saved else 'none'}")
            result.losses[step], result.step = float(m["loss"]), step
            tokens += int(m["tokens"])
            m["lr"] = float(self.schedule(step - 1))
            window.add(m, seconds)
            bar.set_postfix(progress_figures(m, seconds))
            bar.update(1)
            if step % self.config.log_every == 0 or step == self.total_steps:
                logger.log(step, window.flush(m, tokens, self.sources))

        preemption = PreemptionWatch()
        try:
            with preemption.listening(), jax.set_mesh(self.mesh), self._memory_errors():
                self.schedule(start)  # its ops compiled here, not in the wall time of the second step
                for rows, length in self.step_shapes:  # compiled now: a shape first used mid-run costs no step time
                    if (rows, length) not in self.precompiled:
                        self.build.step.lower(params, opt_state, self.build.batch(rows, length), *reference).compile()
                if start < last:
                    batch, position = on_mesh(next(batches), batch_sharding), self.pipeline.state
                clock = time.perf_counter()  # a step's wall time ends when its outputs are ready
                for step in range(start + 1, last + 1):
                    params, opt_state, metrics = step_fn(params, opt_state, batch)
                    if step < last:  # the next batch is made while this step runs
                        batch, following = on_mesh(next(batches), batch_sharding), self.pipeline.state
                    jax.block_until_ready(metrics)
                    now = time.perf_counter()
                    finish(step, metrics, now - clock)
                    clock = now
                    result.preempted = preemption.should_stop(step)
                    if step % self.config.checkpoint.every == 0 or step == last or result.preempted:
                        logger.sync()  # the metrics kept never lag behind a saved step
                        self.save(step, params, opt_state, tokens, position, window)
                    if result.preempted:
                        break
                    if step < last:
                        position = following
        finally:
            bar.close()
            self.checkpointer.wait()  # committed and sealed
            logger.close()
        if result.preempted and primary:
            print(f"instructjax: preempted: saved step {result.step} in {self.run_dir}; `--resume` continues from it",
                  file=sys.stderr, flush=True)
        self.checkpointer.close()
        if primary:
            plot_losses(self.run_dir)
            if not result.preempted and result.step == self.total_steps:
                storage.write_text(self.run_dir / "DONE", json.dumps({"step": result.step,
                                                                      "config": self.training_digest}) + "\n")
        return result


    def _memory_errors(self):
        """XLA refusing a buffer (RESOURCE_EXHAUSTED, where the estimate was off) as the same one line."""
        import contextlib

        @contextlib.contextmanager
        def guard():
            try:
                yield
            except Exception as exc:
                if "RESOURCE_EXHAUSTED" not in str(exc):
                    raise
                raise ConfigError(self.out_of_memory + f" [XLA: {' '.join(str(exc).split())[:160]}]") from None

        return guard()


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
