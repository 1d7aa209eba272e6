"""LESS as a selection method (Xia et al., ICML 2024; `data select --method less`): the pool's examples whose
gradients align best with a target's, the steps of its code (princeton-nlp/LESS) kept:

    1. warm-up   a LoRA SFT run on a random share of the pool (its scripts: 5%, 4 epochs, rank 128, alpha 512, dropout
                 0.1 on q/k/v/o, lr 2e-5 linear after 3% warm-up, 32 examples a step, one example a row), a step saved
                 every epoch: DIR/warmup (its rows DIR/warmup.jsonl), resumed where it stopped;
    2. features  per saved step, the pool's Adam-preconditioned gradients and the target's plain ones, projected to
                 `dim` dimensions and normalised (`train/less.py`), kept under DIR/features (`train/less_features.py`);
    3. scores    the steps' influence, each weighted by its epoch's mean learning rate, averaged over each target
                 subtask's examples and maxed over the subtasks; the top examples are the selection, and
                 DIR/scores.jsonl holds every pool example's id, score and best subtask.

DIR is the selection's directory (`data select`: the --out file's). The target: a task or mixture (its tasks, or
its rows' `subtask`, label the subtasks) or a file of `messages` rows (each with or without a `subtask` field, all
alike).

On several hosts (JAX's distributed runtime, as `train`), DIR is one directory for all of them (a bucket on a pod):
the warm-up trains on every host's devices, each batch of the feature pass is split over them all, every host ends
with every score, and host 0 writes what they share; whether a file is there yet (a step to resume, features to
reuse) is host 0's view, so the hosts never take different paths.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np

from instructjax.core import hosts, storage
from instructjax.core.errors import ConfigError

GRADIENT_TYPES = ("adam", "sgd", "sign")


@dataclass(frozen=True)
class LessSettings:
    """LESS's knobs, its scripts' values by default (see the module doc); `warmup_overrides`: dotted keys the
    warm-up run takes beside them (`model.dtype=float32`, `mesh.data=4`)."""

    warmup_fraction: float = 0.05
    warmup_epochs: int = 4
    warmup_batch: int = 32
    lr: float = 2e-5
    lora_rank: int = 128
    lora_alpha: float = 512.0
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    dim: int = 8192
    projection_seed: int = 0
    gradient_type: str = "adam"
    max_length: int = 2048
    batch: int = 16  # examples a feature batch (rounded up to the devices)
    seed: int = 0  # the warm-up's share and run
    template: str | None = None
    warmup_overrides: tuple[str, ...] = ()

    def __post_init__(self):
        if not 0 < self.warmup_fraction <= 1:
            raise ConfigError(f"less: the warm-up fraction must be in (0, 1], got {self.warmup_fraction}")
        if self.gradient_type not in GRADIENT_TYPES:
            raise ConfigError(f"less: gradient type {self.gradient_type!r}: one of {', '.join(GRADIENT_TYPES)}")
        if not self.lora_targets or self.lora_rank < 1:
            raise ConfigError("less: the warm-up trains a LoRA: give it a rank >= 1 and at least one target module")
        for name in ("warmup_epochs", "warmup_batch", "dim", "max_length", "batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"less: {name} must be >= 1, got {getattr(self, name)}")


def settings_of(less, **fixed) -> LessSettings:
    """A task's `selection.less` keys over LESS's defaults, with `fixed` (the run's template, length and seed: not
    its keys); one line naming a key it does not know."""
    known = {f.name for f in dataclasses.fields(LessSettings)} - {"template", "max_length", "seed"}
    if unknown := sorted(set(dict(less or {})) - known):
        raise ConfigError(f"selection.less: unknown {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return LessSettings(**{**dict(less or {}), **fixed})


@dataclass(frozen=True)
class Scored:
    """A pool example's score and its best subtask (NaN and None: it has no trained token)."""

    index: int
    id: str
    score: float
    subtask: str | None


def base_checkpoint(model: str, directory: str) -> str:
    """An instructjax checkpoint of `model`: itself, or an HF directory imported once as DIR/base (DIR/base.json
    names the directory and the digest of its files: another model's import there is refused, never reused)."""
    from instructjax.convert.saved import import_hf, is_hf_dir
    from instructjax.data.cache import model_digest

    if not is_hf_dir(model):
        return model
    base, record = storage.join(directory, "base"), storage.join(directory, "base.json")
    source = {"model": str(model), "digest": model_digest(model)}
    found = hosts.agree(f"less/{record}", storage.path(record).exists() and json.loads(storage.path(record).read_text()),
                        "reading the selection's base")
    if found:
        if found != source:
            raise ConfigError(f"{record}: {base} was imported from {found['model']} (files {found['digest'][:12]}), "
                              f"not {model} (files {source['digest'][:12]}): pick another directory, or remove {base} "
                              "and what was made from it")
        return base
    if hosts.agree(f"less/{base}", storage.path(base).exists(), "reading the selection's base"):
        raise ConfigError(f"{base} is there already and is not an import of {model}: pick another --out directory")
    import_hf(model, base, mesh=_hosts_mesh())  # with several hosts, each saves its share (Orbax's multi-host save)
    if hosts.is_first():
        storage.write_text(record, json.dumps(source) + "\n")
    return base


def _hosts_mesh():
    """None with one host; with several, every host's devices on the fsdp axis (what a multi-host save takes)."""
    if hosts.process()[1] == 1:
        return None
    from instructjax.core.sharding import make_mesh

    return make_mesh({"data": 1, "fsdp": -1})


def warmup_config(settings: LessSettings, base: str, rows_file: str, run_dir: str, epoch_steps: int,
                  template: str | None):
    """The warm-up's RunConfig (see the module doc): a LoRA on `base`, one example a row, a step saved an epoch."""
    from instructjax.core.coerce import build_section
    from instructjax.core.config import RunConfig, _merge, parse_overrides

    raw = {
        "name": "less_warmup", "run_dir": run_dir, "seed": settings.seed, "template": template, "log_every": 1,
        "model": {"init_from": base, "lora": {"rank": settings.lora_rank, "alpha": settings.lora_alpha,
                                              "dropout": settings.lora_dropout, "targets": list(settings.lora_targets)}},
        "data": {"mixture": "less_warmup", "seq_len": settings.max_length, "global_batch": settings.warmup_batch,
                 "pack": False, "seed": settings.seed},
        "optim": {"lr": settings.lr, "warmup_ratio": 0.03, "schedule": "linear", "weight_decay": 0.0,
                  "epochs": settings.warmup_epochs},
        "checkpoint": {"every": epoch_steps, "keep": None},
        "define": {"tasks": {"less_warmup": {"source": "messages", "data_files": [rows_file]}}},
    }  # fmt: skip
    return build_section(RunConfig, _merge(raw, parse_overrides(list(settings.warmup_overrides))), "")


def warmup(pool: list[dict], settings: LessSettings, base: str, directory: str, template: str | None) -> str:
    """DIR/warmup trained (or resumed, or found done) on the seed's share of the pool's trainable examples."""
    from instructjax.core.context import Context, current
    from instructjax.train.trainer import Trainer

    trainable = [i for i, ex in enumerate(pool) if np.asarray(ex["loss_mask"])[1:].any()]
    share = max(1, round(settings.warmup_fraction * len(trainable)))
    chosen = sorted(np.random.default_rng(settings.seed).permutation(trainable)[:share].tolist())
    rows_file, run_dir = storage.join(directory, "warmup.jsonl"), storage.join(directory, "warmup")
    rows = "".join(json.dumps(_messages_row(pool[i]), ensure_ascii=False) + "\n" for i in chosen)
    if storage.path(rows_file).exists() and storage.path(rows_file).read_text() != rows:
        raise ConfigError(f"{rows_file}: another pool's or seed's warm-up share is there: pick another directory, or "
                          f"remove {rows_file} and {run_dir}")
    if hosts.is_first():
        storage.write_text(rows_file, rows)
    hosts.agree(f"less/{rows_file}", True, "writing the warm-up's share")  # the others read it once it is written
    epoch_steps = math.ceil(share / settings.warmup_batch)
    config = warmup_config(settings, base, rows_file, run_dir, epoch_steps, template)
    if hosts.agree(f"less/{run_dir}", storage.path(storage.join(run_dir, "DONE")).exists(), "reading the warm-up"):
        return run_dir
    with Context(parent=current()):
        trainer = Trainer(config, resume=storage.path(storage.join(run_dir, "checkpoints")).exists())
        if trainer.total_steps != settings.warmup_epochs * epoch_steps:
            trainer.lock.release()
            raise ConfigError(f"{run_dir}: the warm-up plans {trainer.total_steps} steps, not {settings.warmup_epochs} "
                              f"epochs of {epoch_steps}: leave data and optim out of the warm-up overrides")
        trainer.run()
    return run_dir


def _messages_row(example: dict) -> dict:
    conversation = json.loads(example["conversation"])
    return {"id": conversation["id"], "messages": conversation["messages"]}


def examples_of(tasks: list[str]) -> tuple[list[dict], list[str]]:
    """Every example of the bound tasks, in order, and each one's task (as the user named it)."""
    from instructjax.data.blends import specs
    from instructjax.data.tokenized.examples import encoded_examples

    examples, names = [], []
    for task in tasks:
        found = encoded_examples(task)
        examples += found
        names += [specs.base_name(task)] * len(found)
    return examples, names


def target_of(target: str, source: str, tokenizer: str | None, template: str | None, max_length: int
              ) -> tuple[list[dict], list[str]]:
    """The target's examples (a task or mixture, or a file of `source` rows), bound to the pool's tokenizer,
    template and length, and each one's subtask (`target_labels`)."""
    from instructjax.data.binding import bind
    from instructjax.data.blends import specs

    name = target
    if storage.path(target).is_file():  # a task of its own name: never a user's task's
        name = f"less_target.{hashlib.sha256(str(target).encode()).hexdigest()[:8]}"
        specs.add_task(name, specs.TaskSpec(source=source, data_files=(target,)))
    elif specs.lookup_mixture(name) is None and specs.lookup_task(name) is None:
        raise ConfigError(f"less target {target}: neither a file nor a registered task or mixture")
    bound = bind(name, tokenizer=tokenizer, template=template, max_length=max_length)
    examples, tasks = examples_of(bound.tasks)
    if name != target:  # a file: its rows' subtask, else the file's name
        tasks = [storage.path(target).name] * len(examples)
    if not examples:
        raise ConfigError(f"less target {target}: no examples")
    return examples, target_labels(examples, tasks, target)


def target_labels(examples: list[dict], tasks: list[str], where: str) -> list[str]:
    """Each target example's subtask: its row's `subtask` where every row has one, else its task's name; one line
    where some rows have one and others not."""
    labels = [json.loads(ex["conversation"]).get("meta", {}).get("subtask") for ex in examples]
    missing = [i for i, label in enumerate(labels) if label is None]
    if missing and len(missing) < len(labels):
        raise ConfigError(f"{where}: example {missing[0]} has no subtask while others have one: label every row or "
                          "none")
    if not missing:
        return [str(label) for label in labels]
    return [task for task, ex in zip(tasks, examples, strict=True)]


def scores(pool_features: list[np.ndarray], target_features: list[np.ndarray], weights: list[float],
           labels: list[str], pool: list[dict]) -> list[Scored]:
    """Every pool example's score and best subtask (`less.influence`); one with no trained token: NaN, None."""
    from instructjax.train import less

    best, which = less.influence(pool_features, target_features, weights, labels)
    names = list(dict.fromkeys(labels))
    out = []
    for i, ex in enumerate(pool):
        trainable = bool(np.asarray(ex["loss_mask"])[1:].any())
        out.append(Scored(i, json.loads(ex["conversation"])["id"], float(best[i]) if trainable else math.nan,
                          names[which[i]] if trainable else None))
    return out


def top(scored: list[Scored], k: int) -> list[Scored]:
    """The `k` best scored (ties: the earlier example); one line when fewer than `k` can be chosen."""
    ranked = [s for s in scored if not math.isnan(s.score)]
    if k > len(ranked):
        raise ConfigError(f"less: {k} examples asked for, but only {len(ranked)} of the pool's {len(scored)} have a "
                          "trained token")
    return sorted(ranked, key=lambda s: (-s.score, s.index))[:k]


def write_scores(path: str, scored: list[Scored]) -> None:
    """scores.jsonl: every pool example's id, score (null: no trained token) and best subtask, in pool order."""
    lines = [json.dumps({"id": s.id, "score": None if math.isnan(s.score) else s.score, "subtask": s.subtask})
             for s in scored]
    storage.write_text(path, "\n".join(lines) + "\n")


WARMUP_FIELDS = ("warmup_fraction", "warmup_epochs", "warmup_batch", "lr", "lora_rank", "lora_alpha", "lora_dropout",
                 "lora_targets", "max_length", "seed", "template", "warmup_overrides")


def run(pool: list[dict], target: list[dict], labels: list[str], settings: LessSettings, model: str,
        directory: str) -> list[Scored]:
    """Steps 1-3 of the module doc on encoded `pool` and `target` examples (the base's tokenizer, the run's
    template): every pool example scored."""
    import jax

    from instructjax.core.checkpoint import base_reference
    from instructjax.train import less
    from instructjax.train import less_features as store

    if not any(np.asarray(ex["loss_mask"])[1:].any() for ex in target):
        raise ConfigError("less: the target has no example with a trained token")
    base = base_checkpoint(model, directory)
    store.check_manifest(directory, {  # the pool's and warm-up's: features of other ones are never reused
        "pool": store.digest_examples(pool), "base": base_reference(base)["digest"],
        "projection": less.PROJECTION,
        "warmup": {name: getattr(settings, name) for name in WARMUP_FIELDS} | {"lora_targets": list(settings.lora_targets),
                                                                              "warmup_overrides": list(settings.warmup_overrides)},
    })
    run_dir = warmup(pool, settings, base, directory, settings.template)
    projection = less.Projection(settings.dim, settings.projection_seed)
    devices = jax.devices()
    mesh = store.feature_mesh(devices)
    batch = -(-settings.batch // len(devices)) * len(devices)
    tag = f"d{settings.dim}-s{settings.projection_seed}"
    names = (f"pool-{settings.gradient_type}-{tag}", f"target-{store.digest_examples(target, labels)[:16]}-{tag}")
    pool_features, target_features, weights, since, programs = [], [], [], 0, None
    for step in less.warmup_steps(run_dir):
        warm = less.warmup_step(run_dir, step, since)
        programs = programs or [store.feature_fn(warm.model, kind, projection, mesh)  # one per kind, every step's
                                for kind in (settings.gradient_type, "sgd")]
        pool_features.append(store.features_at(directory, warm, names[0], pool, programs[0], settings.dim, batch,
                                               resumable=True, groups=len(devices)))
        target_features.append(store.features_at(directory, warm, names[1], target, programs[1], settings.dim, batch,
                                                 resumable=False, groups=len(devices)))
        weights.append(warm.lr)
        since = step
    return scores(pool_features, target_features, weights, labels, pool)


def select_conversations(convs: list, spec) -> list:
    """A task's `selection: {method: less, ...}` (`data.tokenized.stream` calls it with the task's conversations and
    bound spec: the run's model as `encoder_model`, its tokenizer, template and length): the chosen conversations,
    best first. The warm-up and features go to `selection.directory`, by default under the tokenized cache by what
    they are of (the pool, model, target and settings); a second run with the same ones reuses them."""
    from instructjax.data import cache
    from instructjax.data.encoding.encode import encode_conversations
    from instructjax.data.encoding.tokenizer import Tokenizer

    sel = spec.selection
    if not sel.encoder_model:
        raise ConfigError("selection less selects with the run's model: set model.init_from (or "
                          "selection.encoder_model)")
    settings = settings_of(sel.less, template=spec.template, max_length=spec.max_length or 2048, seed=sel.seed)
    tokenizer = Tokenizer.load(spec.tokenizer)
    pool = [{"tokens": e.tokens, "loss_mask": e.loss_mask, "conversation": c.to_json()}
            for c, e in zip(convs, encode_conversations(convs, spec.template, tokenizer, spec.max_length), strict=True)]
    directory = sel.directory
    if directory is None:
        home = cache.cache_dir()
        if home is None:
            raise ConfigError("selection less: set selection.directory (the tokenized cache is off)")
        key = hashlib.sha256(json.dumps([sel.encoder_model, [p["conversation"] for p in pool], sorted(sel.less),
                                         settings.max_length, settings.seed], default=str).encode()).hexdigest()
        directory = storage.join(str(home), "less", key[:16])
    target, labels = target_of(sel.target, sel.target_source, spec.tokenizer, spec.template, settings.max_length)
    scored = run(pool, target, labels, settings, sel.encoder_model, directory)
    k = sel.k if sel.k is not None else max(1, round(sel.fraction * len(pool)))
    return [convs[s.index] for s in top(scored, k)]
