"""The model a run starts from (`starting_params`: fresh, init_from's, or a LoRA's base with its adapters) and a
preference run's reference: that model, frozen (`start_base`, `starting_adapters`: a LoRA run on a LoRA init_from
goes on training its adapters, their starting values the reference, or with `reference_model: base` trains
fresh ones on them merged), and its log-probs; `prepare` makes ready what the objective's kind of reference hands to
the steps (core/objectives.py `ReadyReference`).

With `reference: cached` (`objective.dpo.reference`) (open-instruct's DPO precomputes them), before the first step every example of the run's tasks goes once through the starting model, one example a
row, and each token's log-prob of its target is kept (0 where nothing is trained). They are stored under
RUN_DIR/reference_logps/ (a file per task: the values end to end and each example's length), read back on resume,
and handed to the step with the tokens (the pipeline's `reference_logps`), so the reference holds no memory while
the run trains and a resumed run compares with the very numbers it started with.
"""

from __future__ import annotations

import io
import json

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from instructjax.convert.saved import load_base, load_params_as
from instructjax.core import sharding, storage
from instructjax.core.config import RunConfig
from instructjax.core.errors import ConfigError
from instructjax.core.objectives import LiveParams, ReadyReference, RolloutLogProbs, StoredLogProbs
from instructjax.data.batches.packing import SequencePacker, empty_rows
from instructjax.data.blends import specs
from instructjax.model.config import DecoderConfig
from instructjax.model.decoder import Decoder
from instructjax.train.step import StepBuild, token_logps

REFERENCE_DIR = "reference_logps"


def _path(run_dir, task: int, name: str) -> str:
    """A task's file, by its place in the mixture and the name it was registered under (not the run's variant)."""
    return storage.join(run_dir, REFERENCE_DIR, f"{task:03d}-{specs.base_name(name).replace('/', '_')}.npz")


def _lengths(examples) -> np.ndarray:
    return np.asarray([len(examples[i]["tokens"]) for i in range(len(examples))], np.int64)


def load(run_dir, stream, identity: dict, *, resuming: bool) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The stored log-probs of `stream`'s tasks, per task (values end to end, offsets per example); None where one
    is missing or was made for other examples. `identity`: the reference's (`identity`); log-probs stored for
    another are one line when `resuming` (the run would compare with another model than it started with), else
    made again (None)."""
    out = []
    for t, (name, examples) in enumerate(zip(stream.task_names, stream.examples, strict=True)):
        path = storage.path(_path(run_dir, t, name))
        if not path.is_file():
            return None
        stored = np.load(io.BytesIO(path.read_bytes()))
        made_with = json.loads(str(stored["identity"])) if "identity" in stored else None
        if made_with != identity:
            if not resuming:
                return None
            raise ConfigError(f"{path} holds the log-probs of the reference {made_with}, not of this run's starting "
                              f"model {identity}: resume with the model.init_from it started from")
        if not np.array_equal(stored["lengths"], _lengths(examples)):
            return None
        out.append((stored["values"], np.concatenate([[0], np.cumsum(stored["lengths"])])))
    return out


def start_base(config, model) -> dict | None:
    """The base a LoRA run on `model.init_from` is layered on (`core.checkpoint.base_reference`), None without one:
    init_from's newest step, whose adapters (if it holds some) the run goes on training, their starting values the
    reference (`reference_model: start`); with `base`, that model with its adapters merged (`merged`), fresh
    adapters trained on it, the reference that merged model."""
    from instructjax.core import checkpoint

    init_from = config.model.init_from
    if model.lora is None or not init_from:
        return None
    base = checkpoint.base_reference(init_from)
    if config.objective.reference_model == "base" and checkpoint.read_meta(init_from)[0].get("lora") is not None:
        base["merged"] = True
    return base


def starting_adapters(base: dict | None, model, build: StepBuild, params):
    """A LoRA's adapters as its run started (placed as `build` places them): init_from's, read again, where it holds
    some and the run goes on training them (`start_base`), else zeros (a fresh adapter's B is zero: it adds
    nothing)."""
    adapters = None
    if base is not None and not base.get("merged"):
        adapters = load_base(base, model, build.param_shardings)[1]
    if adapters is None:  # the adapters zeroed, placed as they are
        trained = build.partition.trainable
        adapters = jax.jit(lambda a: jax.tree.map(jnp.zeros_like, a),
                           out_shardings=trained(build.param_shardings))(trained(params))
    return adapters


def identity(init_from: str | None, seed: int) -> dict:
    """What names a reference: init_from's newest intact step and its manifest digest, or the seed of a fresh
    model."""
    from instructjax.core import checkpoint

    return checkpoint.base_reference(init_from) if init_from else {"seed": seed}


def compute(build: StepBuild, params, stream, rows: int, seq_len: int, chunk: int
            ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each task's examples through the model `params`, `rows` examples a batch (one a row, padded to `seq_len`):
    per task, every token's target log-prob end to end and the offsets of each example. Every host runs every batch
    (its share of the rows) and gets every value."""
    score = jax.jit(lambda p, b: token_logps(build.graphdef, p, b, chunk) * (b["loss_weights"] > 0),
                    in_shardings=(build.param_shardings, build.batch_sharding), out_shardings=build.batch_sharding)
    packer, out = SequencePacker(seq_len, pack=False), []
    with jax.set_mesh(build.batch_sharding.mesh):
        for examples in stream.examples:
            values = []
            for start in range(0, len(examples), rows):
                part = [examples[i] for i in range(start, min(start + rows, len(examples)))]
                batch, _ = packer.pack_window(part)
                pad = empty_rows(rows - len(batch["tokens"]), seq_len)
                batch = {k: np.concatenate([v, pad[k]]) for k, v in batch.items()}
                on_mesh = sharding.place(batch, build.batch_sharding, whole=True)  # each host feeds its share
                logps = np.asarray(multihost_utils.process_allgather(score(params, on_mesh), tiled=True))
                values += [logps[i, : len(ex["tokens"])] for i, ex in enumerate(part)]
            lengths = np.asarray([len(v) for v in values], np.int64)
            out.append((np.concatenate(values).astype(np.float32), np.concatenate([[0], np.cumsum(lengths)])))
    return out


def save(run_dir, stream, reference: list[tuple[np.ndarray, np.ndarray]], identity: dict) -> None:
    """Store `reference` (what `compute` gave for `stream`, from the reference named by `identity`) under
    RUN_DIR/reference_logps/."""
    for t, (name, (values, offsets)) in enumerate(zip(stream.task_names, reference, strict=True)):
        buffer = io.BytesIO()
        np.savez(buffer, values=values, lengths=np.diff(offsets), identity=np.asarray(json.dumps(identity)))
        storage.write_bytes(_path(run_dir, t, name), buffer.getvalue())


def _fresh_model(config: RunConfig, model: DecoderConfig):
    return lambda: Decoder(model, rngs=nnx.Rngs(config.seed))


def starting_params(config: RunConfig, model: DecoderConfig, build: StepBuild, base: dict | None):
    """The parameters a run starts from, placed as `build` places them: a LoRA's frozen base on init_from (`base`,
    `start_base`: quantized where asked) with init_from's adapters or fresh ones, else init_from's parameters, else
    the seed's fresh model."""
    part = build.partition
    if base is not None:
        frozen, adapters = load_base(base, model, build.param_shardings)
        if adapters is None:  # fresh ones
            adapters = jax.jit(lambda: part.trainable(nnx.to_pure_dict(nnx.state(_fresh_model(config, model)()))),
                               out_shardings=part.trainable(build.param_shardings))()
        return part.combine(adapters, frozen)
    if config.model.init_from:
        return load_params_as(config.model.init_from, model, shardings=build.param_shardings)
    mesh = build.batch_sharding.mesh
    return nnx.to_pure_dict(nnx.state(sharding.create_sharded_model(_fresh_model(config, model), mesh)))


def reference_weights(config: RunConfig, model: DecoderConfig, build: StepBuild, base: dict | None, params):
    """The reference of a preference loss: the model the run started from, frozen. A LoRA's is its frozen base with
    its starting adapters (init_from's where the run goes on training them; fresh ones add nothing); a full
    fine-tune's is init_from's parameters, or the seed's fresh ones (made again)."""
    part = build.partition
    if part.adapters:
        return part.combine(starting_adapters(base, model, build, params), part.frozen(params))
    return starting_params(config, model, build, None)


def prepare(run_dir, config: RunConfig, model: DecoderConfig, build: StepBuild, base: dict | None, stream, params,
            start: int) -> ReadyReference:
    """The objective's reference made ready for the steps, by its kind (`build.objective.reference`): `LiveParams`,
    what trains as it started (a full fine-tune's starting parameters, a LoRA's starting adapters: the step holds its
    base); `StoredLogProbs`, `stream`'s log-probs read back from RUN_DIR, or computed (from `params` at step 0: the
    model the run starts from, a LoRA's starting adapters included; from the reference made again on resume) and
    stored; `RolloutLogProbs`, the reference model's parameters, whose log-probs each rollout computes as it is made
    (train/rollout.py)."""
    kind = build.objective.reference
    if kind is LiveParams:
        return ReadyReference(kind, build.partition.trainable(reference_weights(config, model, build, base, params)))
    if kind is RolloutLogProbs:
        weights = reference_weights(config, model, build, base, params)
        if build.partition.adapters:  # a LoRA's: its frozen base shared with the policy, its adapters apart
            return ReadyReference(kind, weights)
        return ReadyReference(kind, jax.tree.map(  # held in the compute dtype, as the forward casts its matrices anyway
            lambda x: x.astype(model.dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, weights))
    if kind is not StoredLogProbs:
        return ReadyReference(kind)
    if config.data.reweighting is not None:  # DoReMi's proxy: the reference run's model (train/reweighting.py)
        from instructjax.train import reweighting

        named = reweighting.identity(config)
        weights = lambda: reweighting.reference_params(config, model, build)  # noqa: E731
    else:
        named = identity(config.model.init_from, config.seed)
        weights = lambda: params if start == 0 else reference_weights(config, model, build, base, params)  # noqa: E731
    found = load(run_dir, stream, named, resuming=start > 0)
    if found is None:
        found = compute(build, weights(), stream, config.data.global_batch, config.data.seq_len,
                        config.optim.loss_chunk)
        if jax.process_index() == 0:
            save(run_dir, stream, found, named)
    return ReadyReference(kind, found)
