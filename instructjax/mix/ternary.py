"""A mixture of three sources drawn on a ternary plot (plain matplotlib, Agg): the fitted law's surface over every
mixture, the swarm's proxies and the proposal."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

STEPS = 60  # the surface's grid: mixtures whose weights are multiples of 1/STEPS


def corners(weights: np.ndarray) -> np.ndarray:
    """Mixtures of three sources [n, 3] as points of the triangle [n, 2] (the sources' corners: bottom left, bottom
    right, top)."""
    weights = np.asarray(weights, np.float64)
    return weights @ np.array([[0.0, 0.0], [1.0, 0.0], [0.5, np.sqrt(3) / 2]])


def grid(steps: int = STEPS) -> np.ndarray:
    """Every mixture of three sources whose weights are multiples of 1/steps [m, 3]."""
    return np.array([(i, j, steps - i - j) for i in range(steps + 1) for j in range(steps + 1 - i)]) / steps


def draw(path: Path, sources: list[str], predict: Callable[[np.ndarray], np.ndarray], proxies: np.ndarray | None,
         proposal: np.ndarray, title: str) -> Path:
    """Write the plot as a PNG: `predict` (mixtures [m, 3] -> the objective [m]) as filled contours, the `proxies`
    [n, 3] (None: not drawn) as dots and the `proposal` [3] as a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.tri import Triangulation

    mixtures = grid()
    xy = corners(mixtures)
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=100)
    try:
        filled = ax.tricontourf(Triangulation(xy[:, 0], xy[:, 1]), predict(mixtures), levels=20, cmap="viridis")
        fig.colorbar(filled, ax=ax, label="predicted objective (lower is better)")
        if proxies is not None and len(proxies):
            dots = corners(proxies)
            ax.scatter(dots[:, 0], dots[:, 1], s=14, c="white", edgecolors="black", linewidths=0.5, label="proxies")
        best = corners(np.asarray(proposal)[None])[0]
        ax.scatter([best[0]], [best[1]], s=220, marker="*", c="red", edgecolors="black", label="proposal")
        edge = corners(np.eye(3)[[0, 1, 2, 0]])
        ax.plot(edge[:, 0], edge[:, 1], color="black", linewidth=1)
        for (x, y), name, place in zip(corners(np.eye(3)), sources, (("right", "top"), ("left", "top"),
                                                                    ("center", "bottom")), strict=True):
            ax.text(x, y + (0.03 if place[1] == "bottom" else -0.03), name, ha=place[0], va=place[1])
        ax.set_xlim(-0.15, 1.15)
        ax.set_ylim(-0.08, np.sqrt(3) / 2 + 0.1)  # room for the corners' names
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(title, pad=12)
        ax.legend(loc="upper right", fontsize="small")
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
