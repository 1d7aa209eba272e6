"""Weights & Biases, where a config asks for it (`wandb:`, core.config.WandbSection): the training metrics as they
are logged (train/metrics.py) and the evaluation results (eval/run.py), beside metrics.jsonl, TensorBoard and
results.json, which stay the record.

One W&B run per run directory: its id is derived from RUN_DIR, so a resumed training run, its evaluation and a
later re-evaluation all land in the same W&B run (`resume="allow"`). W&B's history only grows: steps a run logs
again after a hard kill (past its last checkpoint) keep the values first sent; metrics.jsonl has the final ones.
Only the primary host logs.
"""

from __future__ import annotations

import hashlib
import math

from instructjax.core.config import RunConfig, to_dict
from instructjax.core.errors import ConfigError


def run_id(run_dir: str) -> str:
    """The W&B run id of a run directory (the same on every resume and evaluation)."""
    return hashlib.sha256(str(run_dir).rstrip("/").encode()).hexdigest()[:16]


def start(config: RunConfig, job: str):
    """The W&B run of `config` (its `wandb:` section), started or resumed for `job` ("train", "eval"); None when
    the config names no `wandb:` section. A W&B run still active in this process is finished first (`reinit`):
    W&B would otherwise hand that run back, and this run's numbers would land in it."""
    section = config.wandb
    if section is None:
        return None
    try:
        import wandb
    except ImportError:
        raise ConfigError("wandb: the config asks for Weights & Biases logging; pip install wandb") from None
    parts = str(config.run_dir).rstrip("/").split("/")
    group = section.group or (parts[-2] if len(parts) > 1 else None)
    return wandb.init(project=section.project, entity=section.entity, group=group, name=config.name,
                      id=run_id(config.run_dir), resume="allow", job_type=job, tags=list(section.tags),
                      mode=section.mode, dir=section.dir, config=to_dict(config), reinit=True)


def numbers(values: dict, prefix: str = "", sep: str = "/") -> dict[str, float]:
    """Every finite number of a nested dict (results.json), by its `sep`-joined path (standard errors left out)."""
    out: dict[str, float] = {}
    for key, value in values.items():
        path = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict):
            out.update(numbers(value, path, sep))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                and "stderr" not in path:
            out[path] = float(value)
    return out


def log_results(config: RunConfig, results: dict) -> None:
    """The evaluation's numbers into the run's W&B summary, as `eval/<part>/...` (nothing without `wandb:`)."""
    run = start(config, "eval")
    if run is None:
        return
    run.summary.update({f"eval/{k}": v for k, v in numbers(results).items() if k != "step"})
    run.finish()
