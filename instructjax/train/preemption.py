"""Preemption: on SIGTERM or SIGINT the run saves the step in flight and exits with `EXIT_PREEMPTED`.

A Cloud TPU VM, SLURM or `launch/tpu_vm.py stop` sends SIGTERM; a user presses Ctrl-C. Both reach
`core.stopping` (whatever the inherited disposition), and the trainer asks `should_stop(step)` after every step.
One process: True once a signal came. Several hosts: JAX's preemption notifier (installed by
`jax.distributed.initialize`; a SIGINT is handed to it as a SIGTERM) and `multihost_utils.reached_preemption_sync_point`,
which answers True on every host at the same step, so all hosts save that step together. A second signal in one
process (a second Ctrl-C on several) exits at once; Orbax writes a step into a temporary directory and renames it
when complete, and a step committed but not yet sealed by its manifest is skipped by every reader
(core.integrity), so nothing torn is ever read.
"""

from __future__ import annotations

import jax

from instructjax.core import stopping


class PreemptionWatch:
    """`watch.should_stop(step)` after each step: True on every host at the same step once a signal came. Within
    `watch.listening()` the signals are taken (a no-op under a command that already took them); `handles`: the
    process's (`core.stopping.ProcessHandles`), which the trainer holds."""

    def __init__(self, handles: stopping.ProcessHandles = stopping.PROCESS):
        self.multi_host = jax.process_count() > 1
        self.handles = handles

    def listening(self):
        return stopping.listening(self.handles)

    def should_stop(self, step: int) -> bool:
        if self.multi_host:
            from jax.experimental import multihost_utils

            return bool(multihost_utils.reached_preemption_sync_point(step))
        return stopping.requested(self.handles)
