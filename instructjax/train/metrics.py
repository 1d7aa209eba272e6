"""Run metrics: RUN_DIR/metrics.jsonl, TensorBoard events, and loss.png at the end (a grpo run's solve_rate.png too);
RUN_DIR local or in a bucket; Weights & Biases too where the config asks (core/tracking.py).

One JSON object per logged step (`step`, `loss` with `loss_reduction` saying which objective it is,
`lr`, `grad_norm`, `tokens`, `tokens_per_sec` and `step_seconds` over the logged window's own wall time,
and `loss/<source>`, the mean token loss of every mixture source that had trained tokens in the logged
window; under a preference loss, `loss` is the mean over the window's pairs and the objective's own values, e.g.
`rewards/chosen`, `rewards/rejected`, `rewards/accuracies` and `rewards/margins`, are TRL's, means over the same pairs:
train/objectives/); a window that trained no token (a grpo step whose rollouts all scored alike) logs `loss: null`
(its token means too), never a 0 no step reached. A mixture of experts adds `moe/aux_loss` and `moe/z_loss` (the
router's losses before their coefficients, means over the window's steps) and, per sparse layer i, `moe/layer_i/max_share` and
`moe/layer_i/min_share`: the most and the least loaded expert's share of the window's tokens' choices. Only the primary host writes; without tensorboardX, metrics.jsonl alone.

Nothing can be appended to in a bucket: the files are written in a local mirror of the run directory
(`storage.Mirror`) and uploaded whole by `sync()`: after a log line at most every `SYNC_SECONDS`, before every
checkpoint save (so a checkpoint never holds a step the kept metrics lack) and at `close()`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import numpy as np

from instructjax.core import storage

SYNC_SECONDS = 30.0
# what every step returns (train/step.py) and the trainer adds; an objective's other values are sums over its pairs
STEP_KEYS = frozenset({"loss", "loss_sum", "loss_weight", "pairs", "grad_norm", "trained_tokens", "tokens",
                       "source_sums", "source_weights", "lr"})


def _summary_writer():
    """tensorboardX's SummaryWriter, imported without torch where torch is not imported yet: tensorboardX imports
    torch when it can (4-6 s of a training process's start on a CPU) only to accept torch tensors, which metrics
    never are."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter
        return SummaryWriter
    sys.modules["torch"] = None  # tensorboardX's `try: import torch` takes the ImportError path
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsWindow:
    """Sums over the steps since the last log line. A step's time runs from the previous step's outputs
    being ready to its own (the first step of a process includes compilation); `tokens_per_sec` and
    `step_seconds` are the window's tokens and time over its steps. The open window is saved with a
    checkpoint (`state`, `load`), so a preempted and resumed run logs what an uninterrupted one logs.

    The logged `loss` is the objective the steps optimised (`loss_reduction`): with "mean" the trained
    tokens' mean cross-entropy over the window, with "sum" the mean per step of the summed loss."""

    def __init__(self, num_sources: int, reduction: str):
        self.num_sources, self.reduction = num_sources, reduction
        self.reset()

    def reset(self) -> None:
        self.loss_sum = self.weight = self.tokens = self.seconds = self.pairs = 0.0
        self.steps = 0
        self.source_sums, self.source_weights = np.zeros(self.num_sources), np.zeros(self.num_sources)
        self.rewards: dict[str, float] = {}  # an objective's own values (a preference loss's rewards), summed over pairs
        # (over trained tokens where the objective has no pairs: grpo's)
        self.rollout: dict[str, float] = {}  # a rollout's values (grpo's rewards, lengths), summed over steps
        self.moe: dict[str, float] = {}  # a mixture of experts' router losses, summed over steps
        self.expert_counts: np.ndarray | None = None  # [sparse layers, experts] choices, summed over steps
        self.doremi: dict[str, np.ndarray] = {}  # DoReMi's weights, running mean and scores [sources] after the last step

    def state(self) -> dict:
        """The open window as JSON values (saved with a checkpoint)."""
        return {"loss_sum": self.loss_sum, "weight": self.weight, "tokens": self.tokens, "seconds": self.seconds,
                "steps": self.steps, "source_sums": self.source_sums.tolist(),
                "source_weights": self.source_weights.tolist(), "pairs": self.pairs, "rewards": self.rewards,
                "moe": self.moe, "expert_counts": None if self.expert_counts is None else self.expert_counts.tolist(),
                "rollout": self.rollout}

    def load(self, state: dict) -> None:
        if len(state["source_sums"]) != self.num_sources:  # another mixture: start a fresh window
            return
        self.loss_sum, self.weight, self.tokens = state["loss_sum"], state["weight"], state["tokens"]
        self.seconds, self.steps = state["seconds"], state["steps"]
        self.source_sums = np.asarray(state["source_sums"], np.float64)
        self.source_weights = np.asarray(state["source_weights"], np.float64)
        self.pairs, self.rewards = state.get("pairs", 0.0), dict(state.get("rewards", {}))
        self.moe, self.rollout = dict(state.get("moe", {})), dict(state.get("rollout", {}))
        counts = state.get("expert_counts")
        self.expert_counts = None if counts is None else np.asarray(counts, np.float64)

    def add(self, m: dict, seconds: float, rollout: dict[str, float] | None = None) -> None:
        """A step's device metrics `m`, its time, and the values of the rollout it trained on (grpo's)."""
        for k, v in (rollout or {}).items():
            self.rollout[k] = self.rollout.get(k, 0.0) + float(v)
        self.loss_sum += float(m["loss_sum"])
        self.weight += float(m.get("loss_weight", m["trained_tokens"]))  # the objective's normaliser (pairs: DPO)
        self.pairs += float(m.get("pairs", 0.0))
        for k in (k for k in m if k not in STEP_KEYS):
            if k == "moe/counts":
                counts = np.asarray(m[k], np.float64)
                self.expert_counts = counts if self.expert_counts is None else self.expert_counts + counts
            elif k.startswith("doremi/"):  # the last step's (a state, not a sum)
                self.doremi[k] = np.asarray(m[k], np.float64)
            elif k.startswith("moe/"):
                self.moe[k] = self.moe.get(k, 0.0) + float(m[k])
            else:
                self.rewards[k] = self.rewards.get(k, 0.0) + float(m[k])
        self.tokens += float(m["tokens"])
        self.seconds += seconds
        self.steps += 1
        self.source_sums += m["source_sums"]
        self.source_weights += m["source_weights"]

    def flush(self, m: dict, total_tokens: int, sources: list[str]) -> dict:
        per = self.weight if self.reduction == "mean" else self.steps
        record = {
            "loss": self.loss_sum / per if per else None,  # null: the window trained no token (a grpo step may not)
            "loss_reduction": self.reduction,
            "lr": float(m["lr"]),
            "grad_norm": float(m["grad_norm"]),
            "tokens": total_tokens,
            "tokens_per_sec": self.tokens / max(self.seconds, 1e-9),
            "step_seconds": self.seconds / max(self.steps, 1),
        }
        for name, s, w in zip(sources, self.source_sums, self.source_weights, strict=True):
            if w > 0:
                record[f"loss/{name}"] = float(s / w)
        record.update({k: v / max(self.steps, 1) for k, v in sorted(self.moe.items())})
        if self.expert_counts is not None:
            shares = self.expert_counts / np.maximum(self.expert_counts.sum(-1, keepdims=True), 1.0)
            for i, layer in enumerate(shares):
                record[f"moe/layer_{i}/max_share"], record[f"moe/layer_{i}/min_share"] = float(layer.max()), float(
                    layer.min())
        if self.pairs:
            record["loss_reduction"] = "pairs"  # a preference loss: the mean over the window's pairs
            record.update({k: v / self.pairs for k, v in sorted(self.rewards.items())})
        elif self.rewards:  # sums over the trained tokens: their means
            record.update({k: v / self.weight if self.weight else None for k, v in sorted(self.rewards.items())})
        record.update({k: v / max(self.steps, 1) for k, v in sorted(self.rollout.items())})
        for key, values in self.doremi.items():  # doremi/weights -> doremi/weight/SOURCE, ...
            kind = {"doremi/weights": "weight", "doremi/average": "average", "doremi/scores": "score"}[key]
            record.update({f"doremi/{kind}/{name}": float(v) for name, v in zip(sources, values, strict=True)})
        self.reset()
        return record


class MetricsLogger:
    """Appends metrics to RUN_DIR/metrics.jsonl and TensorBoard (RUN_DIR/tensorboard). `resume_step`: a resumed
    run keeps what was logged up to that step, and TensorBoard discards what the interrupted run logged after it."""

    def __init__(self, run_dir, *, enabled: bool = True, resume_step: int | None = None, tracker=None):
        self.enabled = enabled
        self.writer = None
        self.tracker = tracker  # a W&B run (core/tracking.start) or None
        if not enabled:
            return
        self.mirror = storage.Mirror(run_dir)
        self.path = os.path.join(self.mirror.local, "metrics.jsonl")
        kept = ""
        if resume_step is not None:  # drop what the interrupted run logged after its checkpoint
            kept = "".join(line + "\n" for line in _lines(run_dir) if _step(line) <= resume_step)
        with open(self.path, "w") as f:
            f.write(kept)
        self.mirror.sync()
        self._synced = time.monotonic()
        try:
            SummaryWriter = _summary_writer()
        except ImportError:  # a bare accelerator image: metrics.jsonl only
            print("instructjax: tensorboardX is not installed: no TensorBoard events (metrics.jsonl is written)",
                  file=sys.stderr)
            return
        # purge_step: TensorBoard discards events from this step on in the files written before (the resumed run
        # logs them again); the step the run resumes from was logged and saved, so it is kept
        purge = resume_step + 1 if resume_step is not None else None
        self.writer = SummaryWriter(os.path.join(self.mirror.local, "tensorboard"), purge_step=purge)

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()
        if self.tracker is not None:
            self.tracker.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)
        if time.monotonic() - self._synced >= SYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        """Make what was logged so far durable in the run directory (a bucket: upload what changed)."""
        if self.enabled:
            if self.writer is not None:
                self.writer.flush()
            self.mirror.sync()
            self._synced = time.monotonic()

    def close(self) -> None:
        if not self.enabled:
            return
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None
        self.mirror.close()
        self.enabled = False


def _lines(run_dir) -> list[str]:
    path = storage.path(run_dir) / "metrics.jsonl"
    return path.read_text().splitlines() if path.is_file() else []


def _step(line: str) -> float:
    """A logged line's step; a line torn by a kill mid-write (or blank) sorts after every step (dropped)."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def read_metrics(run_dir) -> list[dict]:
    """RUN_DIR/metrics.jsonl's records (none when it is missing); a line torn by a kill is skipped."""
    records = []
    for line in _lines(run_dir):
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def progress_figures(m: dict, seconds: float) -> dict[str, str]:
    """A step's figures for the progress line: its loss (the objective's, as metrics.jsonl's: a mixture of experts'
    router penalty apart, its load-balancing loss as `aux`) and tokens a second; under a preference loss also its
    pairs' mean reward accuracy and margin (TRL's `rewards/accuracies` and `rewards/margins`)."""
    figures = {"loss": f"{float(m['loss']):.4f}"}
    if "moe/aux_loss" in m:  # a mixture of experts' load-balancing loss, before its coefficient
        figures["aux"] = f"{float(m['moe/aux_loss']):.4f}"
    pairs = float(m.get("pairs", 0.0))
    if pairs:
        figures["acc"] = f"{float(m['rewards/accuracies']) / pairs:.3f}"
        figures["margin"] = f"{float(m['rewards/margins']) / pairs:.4f}"
    figures["tokens/s"] = f"{float(m['tokens']) / max(seconds, 1e-9):,.0f}"
    return figures


LOSS_LABELS = {"mean": "cross-entropy (nats/token)", "sum": "cross-entropy (nats, summed over a step's tokens)",
               "pairs": "preference loss (nats/pair)"}  # by `loss_reduction`
GRPO_LABEL = "GRPO loss (policy + beta x KL, mean over response tokens)"
SOLVE_RATE = "objective/verifiable_correct_rate"  # a grpo run's rollouts' solve rate (train/rollout.py)


def _rollouts(records: list[dict]) -> bool:
    """Whether the records are a grpo run's (its rollouts' values logged)."""
    return any(SOLVE_RATE in r for r in records)


def loss_figure(records: list[dict], title: str):
    """The figure of loss.png: the loss and each source's against the step, labelled by the objective the records
    say they optimised (`loss_reduction`); a preference run's has a second panel, its rewards' accuracy and margin
    (TRL's names) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    preference = any(r.get("loss_reduction") == "pairs" for r in records)
    fig, axes = plt.subplots(1, 2 if preference else 1, figsize=(12 if preference else 8, 4.5), squeeze=False)
    ax = axes[0][0]
    keys = ["loss"] + sorted({k for r in records for k in r if k.startswith("loss/")})
    for key in keys:
        _plot(ax, records, key, key.removeprefix("loss/"), linewidth=2.2 if key == "loss" else 1.2)
    reduction = next((r["loss_reduction"] for r in reversed(records) if "loss_reduction" in r), "mean")
    label = GRPO_LABEL if _rollouts(records) else LOSS_LABELS.get(reduction, "loss")
    ax.set(xlabel="step", ylabel=label, title=f"training loss: {title}")
    ax.grid(alpha=0.3)
    if ax.get_lines():  # none where no logged window trained a token
        ax.legend()
    if preference:
        ax = axes[0][1]
        _plot(ax, records, "rewards/accuracies", "rewards/accuracies (left)", color="tab:green")
        ax.set(xlabel="step", ylabel="reward accuracy (chosen above rejected)", ylim=(-0.02, 1.02),
               title=f"rewards: {title}")
        ax.grid(alpha=0.3)
        margins = ax.twinx()
        _plot(margins, records, "rewards/margins", "rewards/margins (right)", color="tab:purple")
        margins.set_ylabel("reward margin (chosen - rejected)")
        handles = ax.get_legend_handles_labels(), margins.get_legend_handles_labels()
        ax.legend(handles[0][0] + handles[1][0], handles[0][1] + handles[1][1], loc="lower right")
    fig.tight_layout()
    return fig


def solve_rate_figure(records: list[dict], title: str):
    """The figure of solve_rate.png (a grpo run's): the rollouts' solve rate and each verifier's against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    _plot(ax, records, SOLVE_RATE, "all prompts", linewidth=2.2)
    for key in sorted({k for r in records for k in r if k.endswith("_correct_rate") and k != SOLVE_RATE}):
        _plot(ax, records, key, key.removeprefix("objective/").removesuffix("_correct_rate"), linewidth=1.2)
    ax.set(xlabel="step", ylabel="rollouts' solve rate (verifier score > 0)", ylim=(-0.02, 1.02),
           title=f"solve rate: {title}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _plot(ax, records: list[dict], key: str, label: str, **style) -> None:
    """`key` against the step where a record has a number for it (a window that trained nothing has none)."""
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    if points:
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, label=label, **style)


def plot_losses(run_dir) -> str | None:
    """RUN_DIR/loss.png (`loss_figure`), and a grpo run's RUN_DIR/solve_rate.png (`solve_rate_figure`). None without
    metrics."""
    records = read_metrics(run_dir)
    if not records:
        return None
    import matplotlib.pyplot as plt

    name = storage.path(run_dir).name
    figures = {"loss.png": loss_figure(records, name)}
    if _rollouts(records):
        figures["solve_rate.png"] = solve_rate_figure(records, name)
    with storage.writing_dir(run_dir) as local:
        for file, fig in figures.items():
            fig.savefig(os.path.join(local, file), dpi=110)
            plt.close(fig)
    return f"{storage.path(run_dir)}/loss.png"


MOSAIC_K_FILE = "mosaic_k.json"  # the mosaics a Mosaic-IT run made: {epoch: {k: mosaics of k instructions}}


def record_mosaics(run_dir: str, made: dict[int, dict[int, int]]) -> None:
    """Add the passes `made` ({epoch: {k: mosaics}}) to RUN_DIR/mosaic_k.json (passes are deterministic: a resumed
    run's earlier epochs keep the record the run left); nothing where none was made (a run without Mosaic-IT)."""
    if not made:
        return
    record = read_mosaic_k(run_dir) or {}
    record.update({str(e): {str(k): int(n) for k, n in ks.items()} for e, ks in made.items()})
    storage.write_text(storage.join(run_dir, MOSAIC_K_FILE), json.dumps(record, sort_keys=True) + "\n")


def read_mosaic_k(run_dir: str) -> dict | None:
    """A run's record of its mosaics ({epoch: {k: mosaics}}), None where there is none."""
    try:
        found = json.loads((storage.path(run_dir) / MOSAIC_K_FILE).read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None
