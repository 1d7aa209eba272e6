"""Run metrics: RUN_DIR/metrics.jsonl, TensorBoard events, and loss.png at the end.

One JSON object per logged step (`step`, `loss` with `loss_reduction` saying which objective it is,
`lr`, `grad_norm`, `tokens`, `tokens_per_sec` and `step_seconds` over the logged window's own wall time,
and `loss/<source>`, the mean token loss of every mixture source that had trained tokens in the logged
window). Only the primary host writes; without tensorboardX, metrics.jsonl alone.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


class MetricsLogger:
    """Appends metrics to RUN_DIR/metrics.jsonl and TensorBoard (RUN_DIR/tensorboard)."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():  # drop what the interrupted run logged after its checkpoint
            kept = [line for line in self.path.read_text().splitlines() if _step(line) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None:
            self.path.write_text("")
        try:
            from tensorboardX import SummaryWriter
        except ImportError:  # a bare accelerator image: metrics.jsonl only
            print("instructjax: tensorboardX is not installed: no TensorBoard events (metrics.jsonl is written)",
                  file=sys.stderr)
            return
        self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=resume_step)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _step(line: str) -> float:
    """A logged line's step; a line torn by a kill mid-write (or blank) sorts after every step (dropped)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def plot_losses(run_dir: str | Path) -> Path | None:
    """RUN_DIR/loss.png: total loss and each source's loss against the step. None without metrics."""
    records = read_metrics(run_dir)
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    keys = ["loss"] + sorted({k for r in records for k in r if k.startswith("loss/")})
    for key in keys:
        points = [(r["step"], r[key]) for r in records if key in r and math.isfinite(r[key])]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=key.removeprefix("loss/"), linewidth=2.2 if key == "loss" else 1.2)
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=f"training loss: {Path(run_dir).name}")
    ax.grid(alpha=0.3)
    ax.legend()
    out = Path(run_dir) / "loss.png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
