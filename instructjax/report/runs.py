"""A family's runs on disk: the configs a DIR_OR_GLOB names, and each run's results and metrics.

`sweep` runs the configs; `report` reads what the runs left: RUN_DIR/eval/results.json (written by
`eval --config`, layout in instructjax/eval/run.py) and RUN_DIR/metrics.jsonl (instructjax/train/metrics.py).
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from instructjax.core import storage
from instructjax.core.config import RunConfig, load_config
from instructjax.core.errors import ConfigError
from instructjax.eval.config import eval_section
from instructjax.eval.run import read_results
from instructjax.train.metrics import read_metrics, read_mosaic_k


def config_paths(where: str) -> list:
    """The YAML configs of a directory (recursively) or a glob (local or in a bucket), sorted; one line when there
    are none."""
    if storage.is_remote(where):
        base, _, pattern = where.partition("*")
        root = storage.path(base.rsplit("/", 1)[0]) if pattern else storage.path(where)
        found = sorted(root.rglob("*.y*ml") if not pattern else root.glob(where[len(str(root)) + 1 :]))
    else:
        path = Path(where)
        found = sorted(path.rglob("*.yaml")) if path.is_dir() else sorted(Path(p) for p in glob.glob(where, recursive=True))
    found = [p for p in found if p.suffix in (".yaml", ".yml") and p.is_file()]
    if not found:
        raise ConfigError(f"{where}: no config files (a directory of .yaml files, or a glob)")
    return found


@dataclass
class Run:
    """One config and what its run left on disk (results None: no results.json yet)."""

    path: Path
    config: RunConfig
    results: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    against: dict[str, Run] = field(default_factory=dict)  # comparison name -> the run compared with (link_pairwise)
    mosaic_k: dict[str, dict[str, int]] | None = None  # RUN_DIR/mosaic_k.json: {epoch: {k: mosaics}}
    start: Run | None = None  # the run whose checkpoint it started from (its model.init_from; link_pairwise)

    @property
    def name(self) -> str:
        """The config's `name:`, or where it has none (RunConfig's default) its run directory's name."""
        if self.config.name != RunConfig.name:
            return self.config.name
        return storage.path(self.config.run_dir.rstrip("/")).name or self.config.name

    @property
    def adapter(self) -> str:
        """"LoRA" or "QLoRA" where the run trained adapters (`model.lora`, `model.quantize_base`), else "": a
        report labels such a run's model with it, so it gets rows of its own beside the full fine-tune's."""
        model = self.config.model.overrides
        if not model.get("lora"):
            return ""
        return "QLoRA" if model.get("quantize_base", "none") != "none" else "LoRA"

    @property
    def objective(self) -> str:
        """"DPO", "DPO-norm", "SimPO", "RLVR" (grpo: RL with verifiable rewards; any other objective by its name in
        capitals) where the run continued another on preference pairs or rollouts (`objective.loss`), else "": a report
        labels such a run with it, and compares it with the run it started from (`start`)."""
        loss = self.config.objective.loss
        return {"sft": "", "dpo": "DPO", "dpo_norm": "DPO-norm", "simpo": "SimPO", "grpo": "RLVR"}.get(loss, loss.upper())

    def pairwise_against(self) -> dict[str, str]:
        """What the pairwise judge compared this run with, by comparison name (`eval.pairwise.against`)."""
        section = eval_section(self.config.eval).judged("pairwise")
        return {name: c.against for name, c in section.comparisons().items()} if section is not None else {}


def read_run(path: Path) -> Run:
    """The run of one config: its results.json and metrics.jsonl (torn or missing files read as nothing)."""
    config = load_config(path)
    return Run(path, config, read_results(config), read_metrics(config.run_dir), mosaic_k=read_mosaic_k(config.run_dir))


def number(value: object) -> float | None:
    """A finite number, else None (missing is never zero)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def link_pairwise(runs: list[Run]) -> None:
    """Set each run's `against`: per comparison, the run whose directory it names, or whose name is a component
    (or the file's stem) of the path, e.g. runs/seed002_selection/alpaca_full_llama2_7b(/eval/pairwise_outputs.jsonl);
    and its `start`: the run whose directory its model.init_from is (an SFT run a preference run continues)."""
    for run in runs:
        start = (run.config.model.init_from or "").rstrip("/")
        run.start = next((r for r in runs if r is not run and start and r.config.run_dir.rstrip("/") == start), None)
        run.against = {}
        for name, path in run.pairwise_against().items():
            parts = set(Path(os.path.normpath(path)).parts) | {Path(path).stem}
            same_dir = [r for r in runs if r is not run and r.config.run_dir.rstrip("/") == path.rstrip("/")]
            other = next(iter(same_dir), None) or next((r for r in runs if r.name in parts and r is not run), None)
            if other is not None:
                run.against[name] = other
