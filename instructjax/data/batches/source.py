"""Where a run's batches come from (`BatchSource`), one kind for each kind of data an objective trains on: the data
pipeline's batches (SFT's examples, preference pairs: `DataPipeline.batch_source`) and a grpo run's rollouts
(`Rollouts.batch_source`: made between steps, or `async_steps` ahead, train/rollout_ahead.py). The trainer's loop
asks a source for each step's batch and tells it when a step is dispatched; it never asks which kind it is.

    begin(start, last, params)   before step start + 1 (`last`: the last step this run trains)
    take(step, params)           step `step`'s `Batch`, its rows on the mesh (`params`: those the step starts from)
    after(step, params)          step `step` dispatched (`params`: its outputs, not ready yet): the next batch made
                                 while it runs
    position(step)               the data's position after step `step`'s batch, what its checkpoint saves
    save(step, kept_steps)       beside checkpoint `step` (written before it), what the position alone cannot give
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

IteratorState = Any  # data/batches/pipeline.py's (which makes its sources from here)


@dataclass
class Batch:
    """A step's batch: this host's rows (numpy; once made for a step, on the mesh: a source's `place`), and the
    values it logs (a rollout's rewards and lengths)."""

    rows: dict[str, np.ndarray]
    metrics: dict[str, float] = field(default_factory=dict)


class BatchSource(Protocol):
    def begin(self, start: int, last: int, params: Any) -> None: ...

    def take(self, step: int, params: Any) -> Batch: ...

    def after(self, step: int, params: Any) -> None: ...

    def position(self, step: int) -> IteratorState: ...

    def save(self, step: int, kept_steps: Any) -> None: ...


class MadeBetweenSteps:
    """Step t + 1's batch made while step t runs (the step dispatched, its outputs not ready): `make(params)` is the
    next batch (the pipeline's next, or the rollout of step t's parameters), placed on the mesh by `place` (its rows
    sent while the step runs too), `position()` the data's position after the batch made last."""

    def __init__(self, make: Callable[[Any], Batch], position: Callable[[], IteratorState], place: Callable):
        self.make, self._position, self.place = make, position, place
        self.last, self.made, self.positions = 0, None, {}

    def begin(self, start: int, last: int, params: Any) -> None:
        self.last = last
        self._make(start + 1, params)

    def take(self, step: int, params: Any) -> Batch:
        return self.made

    def after(self, step: int, params: Any) -> None:
        if step < self.last:
            self._make(step + 1, params)

    def position(self, step: int) -> IteratorState:
        return self.positions[step]

    def save(self, step: int, kept_steps: Any) -> None:
        """Nothing: the position gives every later batch."""

    def _make(self, step: int, params: Any) -> None:
        self.made = self.make(params)
        self.made.rows = self.place(self.made.rows)
        self.positions = {s: p for s, p in self.positions.items() if s >= step - 1} | {step: self._position()}
