"""Run configuration: one YAML file per experiment, read into typed sections that check themselves.

A config reads like a paper's experiment section::

    name: acp_ACP_llama2_7b
    model: {preset: llama2-7b, init_from: checkpoints/base/llama2-7b}
    data: {mixture: acp_ACP, seq_len: 2048, global_batch: 64}
    optim: {lr: 5.0e-5, warmup_ratio: 0.03, epochs: 2}

Every section is a light dataclass (no JAX, seqio or TensorFlow import) that checks its own values when it
is built; `RunConfig` checks what spans sections. Unknown keys, wrong types and impossible values are
one-line `ConfigError`s before any work. What depends on the machine (the mesh against the device count,
the batch against hosts and devices) is checked by `core.sharding.resolve_mesh`, which the trainer and
`plan` both call. `key=value` overrides with dotted keys (`optim.lr=1e-5`, `max_steps=20`) apply on top of
the file. A `define:` block holds the config's own tasks and mixtures (`data.blends.specs.define` registers
them).

Here: `RunConfig`, the overrides and `load_config`. Elsewhere: the sections of its blocks
(`core/config_sections.py`, importable from here too), the `eval:` block's sections (`eval/config.py`), how YAML
values become sections (`core/coerce.py`), what a run's training depends on (`core/run_identity.py`), a config's
own modules (`core/user_modules.py`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from instructjax.core import storage
from instructjax.core.coerce import build_section
from instructjax.core.config_sections import (  # noqa: F401  (re-exported: their import path is this module)
    ADVANTAGE_NORMALIZATIONS,
    GRPO_LOSSES,
    LOSS_REDUCTIONS,
    MOSAIC_DISTRIBUTIONS,
    MOSAIC_STRATEGIES,
    OBJECTIVES,
    OVERLONG,
    PACK_MODES,
    PAIR_LOSSES,
    REFERENCE_MODELS,
    REFERENCES,
    SCHEDULES,
    SYSTEM_TURNS,
    WANDB_MODES,
    CheckpointSection,
    DataSection,
    ModelSection,
    MosaicSection,
    ObjectiveSection,
    OptimSection,
    ReweightingSection,
    WandbSection,
    _check,
)
from instructjax.core.errors import ConfigError
from instructjax.core.shipped import config_file
from instructjax.core.user_modules import import_modules
from instructjax.core.user_paths import expect_file


@dataclass
class RunConfig:
    name: str = "run"
    run_dir: str = "runs/run"
    seed: int = 0
    max_steps: int | None = None  # cut the run short (None: optim.epochs worth of steps; 0: evaluate only)
    log_every: int = 10
    # the mesh's axis sizes (one may be -1: the rest), or "auto": the mesh `plan` proposes for the devices at hand
    # (train.meshes.choose_mesh), recorded in the run's config.yaml and kept on resume
    mesh: dict[str, int] | str = field(default_factory=lambda: {"data": -1, "fsdp": 1, "tensor": 1})
    distributed: bool = False  # call jax.distributed.initialize (also when JAX_COORDINATOR_ADDRESS is set)
    tokenizer: str | None = None  # None: the one saved with model.init_from (the built-in default from scratch)
    template: str | None = None  # chat template of every task; None: the tasks' own (tulu unless they say)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    eval: dict[str, Any] = field(default_factory=dict)  # read with instructjax.eval.config.eval_section
    define: dict[str, Any] = field(default_factory=dict)
    imports: list[str] = field(default_factory=list)  # user modules (names or .py paths) imported on load
    wandb: WandbSection | None = None  # optional Weights & Biases logging of metrics and results
    compiled: str | None = None  # a train step saved by `plan --compile --save-executable`: used, not compiled again
    # what the run is an experiment of, for the report (`family` and the paper's row: seed 000's setting, seed 002's
    # dataset, method and K, seed 003's dataset, method and ablation, seed 004's data; cli/experiment_grid.py writes
    # it): recorded with the run, never read by training
    experiment: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        _check(self.max_steps is None or self.max_steps >= 0, f"max_steps must be >= 0, got {self.max_steps}")
        _check(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        _check(not isinstance(self.mesh, str) or self.mesh == "auto",
               f"mesh must be a mapping of axis sizes or 'auto', got {self.mesh!r}")
        micro, batch = self.optim.micro_batches, self.data.global_batch
        _check(batch % micro == 0, f"data.global_batch={batch} is not divisible by optim.micro_batches={micro}")
        if self.data.reweighting is not None:  # DoReMi's proxy: the next-token loss, its weights updated each step
            _check(self.objective.loss == "sft", "data.reweighting trains a proxy on the next-token loss: objective.loss "
                                                 f"must be sft, got {self.objective.loss}")
            _check(micro == 1, f"data.reweighting updates the domain weights from the whole step's batch: "
                               f"optim.micro_batches must be 1, got {micro}")
        unknown = set(self.define) - {"tasks", "mixtures"}
        _check(not unknown, f"define: unknown key(s) {sorted(unknown)}; 'tasks' and 'mixtures'")


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


def yaml_error(path: str, error: yaml.YAMLError) -> str:
    """A YAML syntax error as one line: the file, the line and column (1-based) where the parser stopped, and what it
    found there."""
    mark = getattr(error, "problem_mark", None)
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    return f"config file {path}{where}: not valid YAML ({f'{context}: ' if context else ''}{problem})"


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (local or in a bucket, or a shipped one by name: `core.shipped.config_file`; or only
    overrides when `path` is None) into a checked RunConfig."""
    raw: dict = {}
    if path is not None:
        path = config_file(str(path))  # a shipped config by name (`quickstart`) too
        if storage.path(path).is_dir():
            expect_file(path, "config file")
        try:
            raw = yaml.safe_load(storage.path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(yaml_error(path, e)) from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
    extra = parse_overrides(overrides or [])
    if raw.get("mesh") == "auto" and isinstance(extra.get("mesh"), dict):  # axes named over `auto`: FSDP the rest
        raw["mesh"] = {"data": 1, "fsdp": -1, "tensor": 1}
    raw = _merge(raw, extra)
    config = build_section(RunConfig, raw, "")
    local = path is not None and not storage.is_remote(path)  # a bucket's config: imports by name or path alone
    import_modules(config.imports, Path(path).parent if local else None)
    return config


def to_dict(config: RunConfig) -> dict:
    """The resolved config as plain data, as a config file writes it (saved with every checkpoint)."""
    out = dataclasses.asdict(config)
    loss = config.objective.loss
    out["objective"] = {"loss": loss, loss: out["objective"]["options"]}  # `objective: {loss: grpo, grpo: {...}}`
    return out




# The eval: block's sections moved to instructjax.eval.config (core cannot import eval): an old import names it.
_MOVED_TO_EVAL = ("EVAL_BACKENDS", "JUDGE_MODES", "Comparison", "JudgeSection", "JudgeEndpoint", "ToxigenSection",
                  "TruthfulqaSection", "LongFormSection", "MT_BENCH_JUDGE_MAX_TOKENS", "MtBenchSection", "EvalSection",
                  "eval_section")


def __getattr__(name: str):
    if name in _MOVED_TO_EVAL:
        raise ImportError(f"instructjax.core.config.{name} moved: import it from instructjax.eval.config")
    raise AttributeError(f"module 'instructjax.core.config' has no attribute {name!r}")
