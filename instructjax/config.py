"""Run configuration: one YAML file per experiment, read into typed dataclasses.

A config reads like a paper's experiment section::

    name: acp_ACP_llama2_7b
    model: {preset: llama2-7b}
    data: {mixture: acp_ACP, seq_len: 2048, global_batch: 64}
    optim: {lr: 5.0e-5, warmup_ratio: 0.03, epochs: 2}

Unknown keys, wrong types and impossible values are one-line `ConfigError`s before any work.
`key=value` overrides with dotted keys (`optim.lr=1e-5`, `max_steps=20`) apply on top of the file.
A `define:` block registers the config's own tasks and mixtures (see `define_data`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from instructjax.data.mosaic import MosaicConfig
from instructjax.data.pipeline import DataConfig
from instructjax.errors import ConfigError


@dataclass
class ModelSection:
    """`preset` names a LlamaConfig preset; any other key overrides one of its fields."""

    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # an instructjax checkpoint (e.g. imported from HF) to start from


@dataclass
class OptimSection:
    """AdamW with linear warmup over `warmup_ratio` of the steps, then linear (or cosine) decay to 0."""

    lr: float = 2e-5
    warmup_ratio: float = 0.03
    schedule: str = "linear"  # decay after warmup: "linear" (seeds 000/002/004) or "cosine" (seed 003)
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0
    epochs: int = 2
    micro_batches: int = 1  # gradient accumulation: the global batch is split into this many
    loss_reduction: str = "mean"  # "mean" over the global batch's trained tokens, or "sum"


@dataclass
class CheckpointSection:
    every: int = 500
    keep: int = 3
    async_save: bool = True


@dataclass
class RunConfig:
    name: str = "run"
    run_dir: str = "runs/run"
    seed: int = 0
    max_steps: int | None = None  # cut the run short (None: optim.epochs worth of steps)
    log_every: int = 10
    mesh: dict[str, int] = field(default_factory=lambda: {"data": -1, "fsdp": 1, "tensor": 1})
    distributed: bool = False  # call jax.distributed.initialize (also when JAX_COORDINATOR_ADDRESS is set)
    tokenizer: str | None = None  # None: the one saved with model.init_from (the built-in default from scratch)
    template: str | None = None  # chat template of every task; None: the tasks' own (tulu unless they say)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=lambda: DataConfig(mixture="acp_ACP_builtin"))
    optim: OptimSection = field(default_factory=OptimSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: dict[str, Any] = field(default_factory=dict)
    define: dict[str, Any] = field(default_factory=dict)


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Check/convert a YAML value to a dataclass field type, or raise a ConfigError naming it."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(kind):
        if isinstance(value, kind):  # already built (data.mosaic)
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(kind, value, where)
    if origin in (tuple, list) or kind in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return (tuple if (origin or kind) is tuple else list)(value)
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if kind is Any:
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if kind in (int, str, bool) and type(value) is kind:
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    raise ConfigError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


def _build(cls, values: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if cls is ModelSection and key not in names:
            kwargs.setdefault("overrides", {})[key] = value
            continue
        if key not in names:
            raise ConfigError(f"unknown config key {path!r} (known: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or 'config'}: {e}") from None


def parse_overrides(pairs: list[str]) -> dict:
    """`["optim.lr=1e-5", "max_steps=20"]` -> nested dict, values parsed as YAML scalars."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not key=value")
        key, raw = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw else None
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (or only overrides when `path` is None) into a checked RunConfig."""
    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
    raw = _merge(raw, parse_overrides(overrides or []))
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("mosaic"), dict):
        data = dict(data)
        data["mosaic"] = _build(MosaicConfig, data["mosaic"], "data.mosaic")
        raw = {**raw, "data": data}
    config = _build(RunConfig, raw, "")
    if isinstance(config.data, dict):  # pragma: no cover - _build always returns the dataclass
        raise ConfigError("data: expected a mapping")
    return config


def define_data(define: dict) -> None:
    """Register a config's own tasks and mixtures::

    define:
      tasks:    {my_chats: {source: sharegpt, data_files: [/data/chats.jsonl], template: tulu}}
      mixtures: {my_blend: {mode: epoch, counts: {alpaca: 20000, my_chats: null}},
                 my_rates: {mode: rate, rates: {alpaca: 1.0, my_chats: 2.0}}}
    """
    from instructjax.data import mixtures
    from instructjax.data.tasks import TaskSpec, register_task

    unknown = set(define) - {"tasks", "mixtures"}
    if unknown:
        raise ConfigError(f"define: unknown key(s) {sorted(unknown)}; 'tasks' and 'mixtures'")
    for name, spec in (define.get("tasks") or {}).items():
        spec = dict(spec)
        if "data_files" in spec and spec["data_files"] is not None:
            files = spec["data_files"]
            spec["data_files"] = tuple([files] if isinstance(files, str) else files)
        if "source_options" in spec:
            spec["source_options"] = tuple(sorted(spec["source_options"].items()))
        register_task(name, _build(TaskSpec, spec, f"define.tasks.{name}"))
    for name, spec in (define.get("mixtures") or {}).items():
        mode = spec.get("mode", "epoch")
        if mode == "epoch":
            mixtures.register_epoch_mixture(name, dict(spec.get("counts") or {}))
        elif mode == "rate":
            mixtures.register_rate_mixture(name, dict(spec.get("rates") or {}))
        else:
            raise ConfigError(f"define.mixtures.{name}.mode must be 'epoch' or 'rate', got {mode!r}")


def to_dict(config: RunConfig) -> dict:
    """The resolved config as plain data (saved with every checkpoint)."""
    return dataclasses.asdict(config)
