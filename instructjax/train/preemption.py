"""Preemption: on SIGTERM the run saves the step in flight and exits with `EXIT_PREEMPTED`.

A Cloud TPU VM or SLURM sends SIGTERM before it takes the machine. One process: a signal handler notes it
and the trainer checks after every step. Several hosts: JAX's preemption notifier (installed by
`jax.distributed.initialize`: SIGTERM, and Cloud TPU's maintenance notice) and
`multihost_utils.reached_preemption_sync_point`, which answers True on every host at the same step, so all
hosts save that step together. A second SIGTERM in one process exits at once; Orbax writes a step into a
temporary directory and renames it when complete, and a step committed but not yet sealed by its manifest
is skipped by every reader (core.integrity), so nothing torn is ever read.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

import jax

# "Temporary failure, try again" (sysexits.h EX_TEMPFAIL): launch/gpu.py and launch/tpu_vm.py re-run
# `instructjax train --resume` when they see it.
EXIT_PREEMPTED = 75


class PreemptionWatch:
    """`watch.should_stop(step)` after each step: True on every host at the same step once SIGTERM came."""

    def __init__(self):
        self.multi_host = jax.process_count() > 1
        self.signalled = False
        self._previous = None
        if not self.multi_host and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        if self.signalled:  # the second signal: leave now (a step being written stays in its temporary dir)
            os._exit(128 + signal.SIGTERM)
        self.signalled = True
        print("instructjax: SIGTERM: saving after the step in flight (send again to exit at once)",
              file=sys.stderr, flush=True)

    def should_stop(self, step: int) -> bool:
        if self.multi_host:
            from jax.experimental import multihost_utils

            self.signalled = self.signalled or multihost_utils.reached_preemption_sync_point(step)
        return self.signalled

    def close(self) -> None:
        """Give SIGTERM back to whoever had it."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
