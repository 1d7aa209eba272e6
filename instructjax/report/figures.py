"""Figures as PNG files (matplotlib, Agg backend): a paper's sweep curves and the runs' training losses.

Every figure is `figure_size(panels, columns)` pixels: PANEL_W x PANEL_H per panel, `columns` panels a row.
A family's figures are {name: Figure}.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from instructjax.report.runs import Run, number

DPI = 100
PANEL_W, PANEL_H, COLUMNS = 420, 340, 4


@dataclass
class Series:
    label: str
    x: list[float]
    y: list[float]
    style: str = "-o"  # ours solid, the paper's dashed ("--s")
    color: str | None = None


@dataclass
class Panel:
    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    bars: bool = False  # draw the (single) series as bars
    xlog: bool = False


@dataclass
class Figure:
    title: str
    panels: list[Panel]
    columns: int = COLUMNS


def figure_size(panels: int, columns: int = COLUMNS) -> tuple[int, int]:
    """The (width, height) in pixels of a figure of `panels` panels, at most `columns` a row."""
    cols = min(columns, panels)
    return cols * PANEL_W, math.ceil(panels / cols) * PANEL_H


def draw(path: Path, figure: Figure) -> Path:
    """Write the figure as one PNG (each series' points sorted by x; a panel without points says so)."""
    title, panels, columns = figure.title, figure.panels, figure.columns
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width, height = figure_size(len(panels), columns)
    cols = min(columns, len(panels))
    fig, axes = plt.subplots(math.ceil(len(panels) / cols), cols, figsize=(width / DPI, height / DPI), dpi=DPI,
                             squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for s in panel.series:
            points = sorted(zip(s.x, s.y, strict=True))
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            if panel.bars:
                ax.bar(xs, ys, label=s.label, color=s.color)
                ax.set_xticks(xs)
            else:
                ax.plot(xs, ys, s.style, label=s.label, markersize=4, color=s.color)
        if not any(s.x for s in panel.series):
            ax.text(0.5, 0.5, "no results yet", ha="center", va="center", transform=ax.transAxes, color="grey")
        elif len(panel.series) > 1 or not panel.bars:
            ax.legend(fontsize=7)
        if panel.xlog:
            ax.set_xscale("log")
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel(panel.xlabel, fontsize=8)
        ax.set_ylabel(panel.ylabel, fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def loss_panels(runs: list[Run]) -> list[Panel]:
    """The training loss of every run overlaid: the total, then one panel per mixture source."""
    keys = ["loss"] + sorted({k for r in runs for rec in r.metrics for k in rec if k.startswith("loss/")})
    panels = []
    for key in keys:
        panel = Panel("total" if key == "loss" else key.removeprefix("loss/"), "step", "cross-entropy (nats/token)")
        for i, run in enumerate(runs):  # a run keeps its colour in every panel
            points = [(rec["step"], number(rec.get(key))) for rec in run.metrics if number(rec.get(key)) is not None]
            if points:
                panel.series.append(Series(run.name, [p[0] for p in points], [p[1] for p in points], "-", f"C{i % 10}"))
        panels.append(panel)
    return panels
