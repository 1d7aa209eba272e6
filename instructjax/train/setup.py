"""What a run is bound to, resolved from its config before any data is read or anything compiles.

- **The model**: the preset with the config's overrides, or the config saved with `model.init_from`.
- **The tokenizer**: the config's top-level `tokenizer:`, else the one saved with `model.init_from`
  (an imported HF model keeps its own), else the built-in default (from-scratch presets only).
- **The model's word on it**: a tokenizer with more ids than the model has embeddings, or whose EOS
  (or, where it adds one, BOS) id is not the model's, is a one-line ConfigError. A from-scratch preset
  takes its special ids from the tokenizer instead (it has no pretrained convention to keep).
- **The data**: every task of the mixture bound to that tokenizer, the run's chat template
  (`template:`, else the tasks' own, else tulu) and the run's row length (`instructjax.data.binding`).
- **What the checkpoint carries**: the tokenizer files with the chat template the run trains with.

Two steps, each made once and without side effects: `bind_run` (the tokenizer, the model fitted to it, the data
bound to both: cheap; what `train.resolution.resolve` binds for every command) and `resolve_run` (the data pipeline,
the epoch's steps, the mesh `mesh: auto` takes for the devices at hand, the step shapes and the schedule's length:
the trainer's and `plan --compile --real-data`'s). Anchor: MaxText's `setup_train_loop`.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from instructjax.core.config import DataSection, RunConfig
from instructjax.core.errors import ConfigError
from instructjax.data.blends.specs import default_registry
from instructjax.data.encoding.templates import jinja_template
from instructjax.model.config import DecoderConfig, with_overrides
from instructjax.model.presets import preset

if TYPE_CHECKING:
    from instructjax.data.batches.pipeline import DataPipeline, EpochPlan
    from instructjax.data.binding import Resolved
    from instructjax.data.blends.specs import Registry
    from instructjax.data.encoding.tokenizer import Tokenizer


def resolve_model_config(config: RunConfig) -> DecoderConfig:
    """The preset with overrides, or the config stored with `model.init_from`'s params (plus overrides)."""
    if config.model.init_from:
        from instructjax.core.checkpoint import read_meta

        stored = read_meta(config.model.init_from, contents=False)[0]  # its config alone: the weights are read later
        model = with_overrides(DecoderConfig.from_dict(stored), config.model.overrides)
        if stored.get("lora") is None or model.lora == stored["lora"]:
            return model
        if config.objective.reference_model == "base":  # its adapters merged into the base: fresh ones of any shape
            if model.lora is None:
                raise ConfigError(f"objective.{config.objective.loss}.reference_model=base trains fresh LoRA "
                                  f"adapters on model.init_from="
                                  f"{config.model.init_from} with its adapters merged: set model.lora (or leave it "
                                  "out to take init_from's)")
            return model
        raise ConfigError(f"model.init_from={config.model.init_from} holds the LoRA adapters of "
                          f"{stored['lora']}, not model.lora={model.lora}: leave model.lora out to continue them"
                          + (f", set objective.{config.objective.loss}.reference_model=base to train fresh ones on "
                             f"them merged"
                             if config.objective.needs_reference else "") + ", or import the base without --adapter")
    return preset(config.model.preset, **config.model.overrides)


def init_from_error(init_from: str, error: Exception) -> str:
    """What to do about a model.init_from that is no instructjax checkpoint: a Hugging Face directory is imported into
    another directory (never into itself), a missing one written by `import`."""
    from instructjax.core import storage

    if (storage.path(init_from) / "config.json").is_file():
        return (f"model.init_from={init_from} is a Hugging Face model directory, not an instructjax checkpoint: import "
                f"it into another directory, `instructjax import --hf {init_from} --out CHECKPOINT_DIR`, and set "
                "model.init_from=CHECKPOINT_DIR")
    return f"model.init_from={init_from}: {error}; write it with `instructjax import --hf HF_DIR --out {init_from}`"


def tokenizer_path(config: RunConfig) -> str | None:
    """The run's tokenizer path (None: the built-in default, for a from-scratch preset)."""
    if config.tokenizer:
        return config.tokenizer
    if not config.model.init_from:
        return None
    from instructjax.core.checkpoint import read_tokenizer
    from instructjax.data.encoding.tokenizer import materialize

    try:
        item = read_tokenizer(config.model.init_from)
    except ConfigError as e:
        raise ConfigError(init_from_error(config.model.init_from, e)) from None
    path = materialize(item["files"], named=f"the tokenizer of model.init_from={config.model.init_from}") if item else None
    if path is None:
        raise ConfigError(f"model.init_from={config.model.init_from} carries no tokenizer (its HF directory had "
                          "none): set `tokenizer:` in the config to the model's tokenizer")
    return path


def tokenizer_words(config: RunConfig) -> str:
    """The run's tokenizer as the user named it (not the temporary copy a checkpoint's tokenizer is read from)."""
    if config.tokenizer:
        return f"tokenizer {config.tokenizer}"
    if config.model.init_from:
        return f"the tokenizer of model.init_from={config.model.init_from}"
    return "the built-in tokenizer"


def fit_model_to_tokenizer(model: DecoderConfig, tokenizer, *, pretrained: bool, where: str = "") -> DecoderConfig:
    """`model` checked against `tokenizer` (one-line ConfigErrors naming it as `where`, else by its path); a
    from-scratch model takes its BOS/EOS/PAD ids from the tokenizer."""
    where = where or tokenizer.words
    if tokenizer.vocab_size > model.vocab_size:
        raise ConfigError(f"{where} has {tokenizer.vocab_size} ids but the model's embedding has "
                          f"{model.vocab_size} rows (model.vocab_size)")
    if not pretrained:
        return model.replace(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, extra_eos_ids=(), pad_id=tokenizer.pad_id)
    if tokenizer.eos_id not in model.eos_ids:
        raise ConfigError(f"{where} ends turns with id {tokenizer.eos_id} ({tokenizer.eos_token!r}) but the model's "
                          f"eos_token_id is {model.eos_id if not model.extra_eos_ids else list(model.eos_ids)}")
    if tokenizer.adds_bos and tokenizer.bos_id != model.bos_id:
        raise ConfigError(f"{where} starts with BOS id {tokenizer.bos_id} ({tokenizer.bos_token!r}) but the model's "
                          f"bos_token_id is {model.bos_id}")
    return model


@dataclass(frozen=True)
class RunData:
    """The run's data bound to its tokenizer: `config` (a DataSection over the bound mixture), the task
    names as the user wrote them (`sources`), the chat template, the tokenizer path and the bound mixture
    resolved once (`binding.Resolved`: what the pipeline reads) and the registry its names are looked up in
    (`data.blends.specs.Registry`: what the config's `imports:` and `define:` registered)."""

    config: DataSection
    sources: list[str]
    template: str | None
    tokenizer: str | None
    resolved: Resolved | None = None
    registry: Registry | None = None


def run_registry(config: RunConfig, registry: Registry | None = None) -> Registry:
    """The registry `config`'s names resolve in, the one place that makes it: `registry` (None: the command's,
    `specs.default_registry()`, made per command by `core.context`, where the config's `imports:` registered theirs)
    with the config's own tasks and mixtures (`define:`) registered in it. What the trainer, `plan`, `plan --compile`
    and the `data` commands look the config's mixture up in; calling it again registers the same specs."""
    registry = registry or default_registry()
    registry.define(config.define)
    return registry


def bind_data(config: RunConfig, tokenizer: str | None, registry: Registry | None = None) -> RunData:
    """`config`'s mixture looked up in `run_registry(config, registry)` and bound to the run (see the module doc)."""
    from instructjax.data.binding import bind

    registry = run_registry(config, registry)
    resolved = checked_mixture(config, registry)  # once: bind and the pipeline take it from here
    if resolved is None:
        raise registry.unknown(config.data.mixture)
    bound = bind(resolved, tokenizer=tokenizer, template=config.template, max_length=config.data.seq_len,
                 model=config.model.init_from, on_bad_row=config.data.on_bad_row, system_turn=config.data.system_turn,
                 registry=registry)
    return RunData(dataclasses.replace(config.data, mixture=bound.name), bound.sources,
                   config.template or bound.template, tokenizer, bound.resolved, registry)


def tokenizer_item(tokenizer, template: str | None) -> dict:
    """The checkpoint's `tokenizer` item: the files with the run's chat template, and its name."""
    chat_template = jinja_template(template, bos=tokenizer.adds_bos, own=tokenizer.chat_template) if template else None
    return {"files": tokenizer.files(chat_template), "template": template}


@dataclass(frozen=True)
class BoundRun:
    """A run's config bound to its tokenizer, model and data (cheap: nothing is read beyond the tokenizer and
    `init_from`'s metadata): `config` with the chat template written in (what config.yaml records)."""

    config: RunConfig
    tokenizer: Tokenizer
    model: DecoderConfig  # fitted to the tokenizer
    data: RunData


def bind_run(config: RunConfig, registry: Registry | None = None) -> BoundRun:
    """The tokenizer, the model fitted to it and the data bound to both (see the module doc), the data's names looked
    up in `run_registry(config, registry)`."""
    from instructjax.data.encoding.tokenizer import Tokenizer

    path = tokenizer_path(config)
    tokenizer = Tokenizer.load(path)
    model = fit_model_to_tokenizer(resolve_model_config(config), tokenizer, pretrained=bool(config.model.init_from),
                                   where=tokenizer_words(config))
    data = bind_data(config, path, registry)
    return BoundRun(dataclasses.replace(config, template=data.template), tokenizer, model, data)


def open_pipeline(bound: BoundRun, process_index: int = 0, process_count: int = 1):
    """The run's data pipeline, this host's share of the steps (tokenizes what the cache does not hold yet)."""
    from instructjax.data.batches.pipeline import DataPipeline

    return DataPipeline(bound.data.config, process_index=process_index, process_count=process_count,
                        vocab_size=bound.model.vocab_size, resolved=bound.data.resolved)


@dataclass(frozen=True)
class ResolvedRun:
    """A run resolved once for the devices it trains on, before anything is written or compiled: what the trainer
    and `plan --compile --real-data` build their step from. `config` has the template and the mesh written in."""

    config: RunConfig
    tokenizer: Tokenizer
    model: DecoderConfig
    sources: list[str]  # the mixture's task names, as the per-source losses name them
    pipeline: DataPipeline  # (or a stand-in with its interface)
    epoch: EpochPlan  # the pipeline's plan of epoch 0 (examples, rows, tokens, steps)
    total_steps: int
    mesh: dict[str, int]
    step_shapes: tuple[tuple[int, int], ...]  # (rows, length) of every step the run compiles
    processed: int  # pack: per_step: the tokens (padding too) of all the run's steps; 0 otherwise

    @property
    def largest_step(self) -> tuple[int, int]:
        return max(self.step_shapes, key=lambda shape: shape[0] * shape[1])


def report_data(pipeline, *, own: bool) -> None:
    """What the data did not train as given (skipped rows, truncations: never silent) and, for the run's `own`
    pipeline, what its data side read and tokenized here, one `data:` line each on standard output."""
    from instructjax.data.tokenized.examples import cache_report

    for line in pipeline.report():
        print(f"data: {line}", flush=True)
    if own:
        print(f"data: {cache_report(list(pipeline.task_names), pipeline.stats)}", flush=True)


def check_trainable(config: RunConfig, devices: int, hosts: int) -> None:
    """One ConfigError line where `config` cannot train on `devices` devices over `hosts` hosts whatever its data:
    an evaluation-only config, or a mesh the batch does not divide over (`mesh: auto` is chosen later)."""
    from instructjax.core import sharding

    if config.mesh != "auto":
        sharding.resolve_mesh(config, devices, hosts)
    if config.max_steps == 0:
        raise ConfigError("max_steps must be >= 1 to train (0 marks an evaluation-only config)")


def checked_mixture(config: RunConfig, registry):
    """`data.mixture` as `registry` resolves it (`binding.specs_of`; None where it names nothing), checked against
    the objective (`check_objective`): what the trainer binds and `plan` estimates from."""
    from instructjax.data.binding import specs_of

    resolved = specs_of(config.data.mixture, registry)
    if resolved is not None:
        check_objective(config, resolved)
    return resolved


def check_objective(config: RunConfig, resolved) -> None:
    """One ConfigError line where the objective and the mixture's tasks disagree: a preference loss trains on pairs
    alone (every task a `preference` source's), SFT on no pair (SFT on a pair would train its rejected answer), grpo
    on verifiable prompts alone (two samples of each at least: a group of one has no spread), and nothing else on
    them (a prompt has no answer to train)."""
    tasks = list(zip(resolved.tasks, resolved.specs, strict=True))
    loss = config.objective.loss
    if config.objective.rollouts and config.objective.options.samples_per_prompt < 2:
        raise ConfigError(f"objective.grpo.samples_per_prompt={config.objective.options.samples_per_prompt}: grpo's "
                          "advantage is a "
                          "completion's reward against its prompt's other samples, and one sample has none (its "
                          "advantage is always 0): set it to 2 or more (open-instruct's default: 4)")
    prompts = [t for t, s in tasks if s is not None and s.verifiable]
    if config.objective.rollouts and len(prompts) < len(tasks):
        other = next(t for t, s in tasks if s is None or not s.verifiable)
        raise ConfigError(f"objective.loss={loss} rolls out verifiable prompts, but data.mixture={config.data.mixture} "
                          + ("has no verifiable task" if not prompts else f"holds {other!r}, which is not one")
                          + " (a task of the `verifiable` source)")
    if not config.objective.rollouts and prompts:
        raise ConfigError(f"task {prompts[0]!r} of data.mixture={config.data.mixture} holds verifiable prompts (no "
                          f"answer to train on): set objective.loss=grpo")
    if config.objective.rollouts and config.data.pack == "per_step":
        raise ConfigError("data.pack: per_step plans a run's steps from its examples; a grpo run packs each rollout "
                          "into data.global_batch rows of data.seq_len: leave data.pack out")
    pairs = [t for t, s in tasks if s is not None and s.preference]
    if config.objective.preference and len(pairs) < len(tasks):
        other = next(t for t, s in tasks if s is None or not s.preference)
        raise ConfigError(f"objective.loss={loss} trains on preference pairs, but data.mixture={config.data.mixture} "
                          + ("has no preference task" if not pairs else f"holds {other!r}, which is not one")
                          + " (a task of the `preference` source)")
    if not config.objective.preference and pairs:
        raise ConfigError(f"task {pairs[0]!r} of data.mixture={config.data.mixture} holds preference pairs: set "
                          "objective.loss to dpo, dpo_norm or simpo (objective.loss=sft would train the rejected answers)")
    if pairs and config.data.mosaic is not None:
        raise ConfigError("data.mosaic augments SFT conversations; it has no meaning for preference pairs: remove it")


def run_steps(config: RunConfig, epoch_steps: int) -> int:
    """The steps a run trains (the schedule's length, where the trainer stops): `max_steps` where the config sets it
    (fewer or more than its epochs hold: the data goes on into the next epoch), else `optim.epochs` epochs of
    `epoch_steps` (epoch 0's steps)."""
    return config.max_steps or config.optim.epochs * epoch_steps


def resolve_run(bound: BoundRun, *, devices: int, hosts: int, process_index: int = 0, pipeline=None,
                saved_mesh: dict | None = None, fits=None) -> ResolvedRun:
    """`bound` on `devices` devices over `hosts` hosts (this one `process_index`): the pipeline (`pipeline`: a
    stand-in with its interface), the epoch's steps, the mesh (`mesh: auto`: the one `train.meshes.choose_mesh`
    takes for these devices by the run's own step plans, or `saved_mesh` where a resumed run was saved with one that
    serves them), and the step shapes. `fits(mesh, shapes)`: whether a step of the largest shape fits a device
    (default: this machine's, `topology.local_topology`). Nothing is written."""
    from instructjax.core import sharding
    from instructjax.model import context, lora
    from instructjax.train import memory
    from instructjax.train.meshes import choose_mesh
    from instructjax.train.topology import local_topology

    config = bound.config
    check_trainable(config, devices, hosts)
    if process_index == 0 and (skipped := lora.unadapted(bound.model)) is not None:
        print(f"instructjax: warning: {skipped}", file=sys.stderr, flush=True)
    own = pipeline is None
    pipeline = open_pipeline(bound, process_index, hosts) if own else pipeline
    sources = bound.data.sources if own else list(pipeline.task_names)
    epoch = pipeline.plan_epoch(0)
    total_steps = run_steps(config, epoch.steps)

    def step_plan(sizes):
        return pipeline.plan_steps(total_steps, sharding.row_multiple(config, sizes, hosts))

    def shapes(sizes) -> tuple[tuple[int, int], ...]:
        if config.data.pack != "per_step":
            return ((config.data.global_batch, config.data.seq_len),)
        return step_plan(sizes).shapes

    if fits is None:
        here = local_topology()

        def fits(sizes, step_shapes) -> bool:
            return memory.step_needed(bound.model, config, sizes, step_shapes, here)[0] <= memory.usable_bytes(here)

    experts = bound.model.num_experts
    if config.mesh != "auto":
        sizes = sharding.resolve_mesh(config, devices, hosts, experts=experts)
    else:
        sizes = None
        if isinstance(saved_mesh, dict):
            try:
                sizes = sharding.resolve_mesh(dataclasses.replace(config, mesh=saved_mesh), devices, hosts,
                                              experts=experts)
            except ConfigError:  # another number of devices: chosen again
                pass
        if sizes is None:
            real_share = (lambda s: step_plan(s).efficiency) if config.data.pack == "per_step" else (lambda s: 1.0)
            sizes = choose_mesh(config, devices, hosts, real_share, lambda s: fits(s, shapes(s)), experts=experts,
                                splits=lambda s: context.check(bound.model, s, [length for _, length in shapes(s)]))
    context.check(bound.model, sizes, [length for _, length in shapes(sizes)])  # rows split over mesh.context
    processed = step_plan(sizes).processed if config.data.pack == "per_step" else 0
    return ResolvedRun(dataclasses.replace(config, mesh=sizes), bound.tokenizer, bound.model, sources, pipeline,
                       epoch, total_steps, sizes, shapes(sizes), processed)
