"""Rollouts made ahead (`objective.grpo.async_steps: k` > 0; open-instruct's `async_steps`): step t trains on a rollout
of the parameters after update t - 1 - k (the run's first parameters for steps 1 .. k + 1), so a rollout is made while
the k steps before it train.

schedule   right after step t is dispatched (JAX's async dispatch: its update runs on the devices meanwhile), the
           rollout of step t + k is made from a copy of the parameters step t started from (update t - 1; the step
           donates its own); a run's first k rollouts are made before step 1, from its first parameters
staleness  a rollout's age when trained, in updates since its parameters, is logged (`rollout/staleness`: k from step
           k + 1 on); one older than k (made by a run that ran with a larger k, then resumed with this one) is dropped,
           open-instruct's `max_result_age_steps` rule, said in one line, and a fresh one is made from the parameters
           as they stand (its prompts are not drawn again)
resume     a saved step s keeps the rollouts of steps s + 1 .. s + k (made from parameters no checkpoint holds) in
           RUN_DIR/rollouts/step-S.npz, written by host 0 before the checkpoint (every host makes the same rollouts);
           a resumed run reads them back (on any number of hosts), so it trains as the uninterrupted run does
"""

from __future__ import annotations

import io
import json
import sys
from typing import Any

import numpy as np

from instructjax.core import hosts, storage
from instructjax.data.batches.pipeline import IteratorState
from instructjax.data.batches.source import Batch, MadeBetweenSteps

Rollouts = Any  # train/rollout.py's (which makes these sources: no import back)
Rollout = Batch  # train/rollout.py's Rollout: a Batch with its whole batch and the position after it


class RolloutsAhead:
    """A grpo run's rollouts made `k` steps ahead (see the module doc), over its `Rollouts`."""

    def __init__(self, rollouts: Rollouts, k: int, run_dir, total_steps: int, place):
        self.rollouts, self.k, self.total_steps, self.place = rollouts, k, total_steps, place
        self.folder = storage.join(str(run_dir), "rollouts")
        self.made: dict[int, tuple[Rollout, int]] = {}  # step -> (its rollout, the update its parameters are of)
        self.snapshot = None  # the parameters the step in flight started from, where the engine decodes

    def begin(self, start: int, last: int, params) -> None:
        """Before step `start` + 1: the rollouts of steps start + 1 .. start + k, made from `params` (a fresh run's) or
        read back from the saved step `start`'s file (a resumed run's; made from `params` where it is missing)."""
        if start:
            self.made = read_ahead(self.folder, start, self.rollouts)
            if self.made is None:
                print(f"instructjax: warning: {self.folder} holds no rollouts made ahead of step {start}: the next "
                      f"{self.k} are made from step {start}'s parameters", file=sys.stderr, flush=True)
                self.made = {}
        for step in range(start + 1, min(start + self.k, self.total_steps) + 1):
            if step not in self.made:
                self.made[step] = (self.rollouts.rollout(params), start)
        for rollout, _ in self.made.values():
            rollout.rows = self.place(rollout.rows)

    def take(self, step: int, params) -> Rollout:
        """Step `step`'s rollout, its staleness among its metrics; one older than k is dropped and made anew from
        `params` (update `step` - 1). A copy of `params` is kept where the engine decodes (the step donates them)."""
        self.snapshot = self.rollouts.engine_params(params)
        rollout, version = self.made.pop(step)
        if step - 1 - version > self.k:
            if self.rollouts.process_index == 0:
                print(f"instructjax: warning: the rollout of step {step} was made from update {version}'s parameters,"
                      f" {step - 1 - version} updates old (objective.grpo.async_steps={self.k}): dropped, made anew "
                      f"from update {step - 1}'s", file=sys.stderr, flush=True)
            rollout, version = self.rollouts.rollout(params), step - 1
            rollout.rows, rollout.metrics["rollout/dropped"] = self.place(rollout.rows), 1.0
        age = step - 1 - version
        rollout.metrics |= {"rollout/staleness": float(age), f"rollout/staleness_{age}": 1.0}  # a window's: a histogram
        return rollout

    def after(self, step: int, params) -> None:
        """Step `step` dispatched: make step `step` + k's rollout from the copy of the parameters it started from
        (update `step` - 1's)."""
        snapshot, self.snapshot = self.snapshot, None
        if step + self.k <= self.total_steps:
            rollout = self.rollouts.rollout(snapshot)
            rollout.rows = self.place(rollout.rows)  # sent while the step runs
            self.made[step + self.k] = (rollout, step - 1)

    def position(self, step: int) -> IteratorState:
        """The prompts drawn so far (by the rollouts made ahead too): what a checkpoint saves beside them."""
        return IteratorState(self.rollouts.drawn, 0, 0)

    def save(self, step: int, kept_steps) -> None:
        """RUN_DIR/rollouts/step-S.npz: the rollouts made ahead of saved step `step` (host 0 writes, before the
        checkpoint); the files of steps no longer among `kept_steps` are removed."""
        if not hosts.is_first():
            return
        arrays, meta = {}, {}
        for later, (rollout, version) in sorted(self.made.items()):
            arrays |= {f"{later}/{k}": v for k, v in rollout.whole.items()}
            meta[later] = {"version": version, "metrics": rollout.metrics, "position": rollout.position}
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.asarray(json.dumps(meta)), **arrays)
        storage.write_bytes(storage.join(self.folder, f"step-{step}.npz"), buffer.getvalue())
        keep = {f"step-{s}.npz" for s in (*kept_steps, step)}
        for path in storage.path(self.folder).iterdir():
            if path.name.startswith("step-") and path.name not in keep:
                path.unlink()


def read_ahead(folder: str, step: int, rollouts: Rollouts) -> dict[int, tuple[Rollout, int]] | None:
    """The rollouts saved with step `step` (`RolloutsAhead.save`), this host's rows of each; None where none were."""
    path = storage.join(folder, f"step-{step}.npz")
    if not storage.path(path).exists():
        return None
    with np.load(io.BytesIO(storage.path(path).read_bytes())) as saved:
        meta = json.loads(str(saved["meta"]))
        made = {}
        for later, m in meta.items():
            whole = {k.split("/", 1)[1]: saved[k] for k in saved.files if k.startswith(f"{later}/")}
            made[int(later)] = (rollouts.restored(whole, m["metrics"], m["position"]), m["version"])
    return made


class RolloutsBetweenSteps(MadeBetweenSteps):
    """`async_steps: 0`: each step's rollout made while the step before runs, from its outputs; a resumed run's
    rollouts made ahead by a run with async_steps are dropped, said in one line."""

    def __init__(self, rollouts: Rollouts, run_dir, place):
        super().__init__(rollouts.rollout, lambda: rollouts.state, place)
        self.rollouts, self.folder = rollouts, storage.join(str(run_dir), "rollouts")

    def begin(self, start: int, last: int, params) -> None:
        dropped = read_ahead(self.folder, start, self.rollouts) if start else None
        if dropped and self.rollouts.process_index == 0:
            print(f"instructjax: warning: the {len(dropped)} rollouts made ahead of step {start} are dropped "
                  "(objective.grpo.async_steps is 0: each step's rollout is made from the parameters before it)",
                  file=sys.stderr, flush=True)
        super().begin(start, last, params)
