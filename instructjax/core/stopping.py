"""Stopping on request: SIGINT (Ctrl-C) and SIGTERM (a preemption, `launch/tpu_vm.py stop`, SLURM, `kill`) alike.

`listening()` (around `train`, `sweep`, `data prepare`) takes both signals, whatever their inherited disposition (a
process started in the background by a non-interactive shell, `nohup ... &`, inherits SIGINT ignored). The first
signal asks the work to stop at its next safe point and says so in one line; the work asks `requested()` there:
the trainer after each step (it saves that step, says so, and the command exits `EXIT_PREEMPTED`), the data side
before each task it tokenizes (`check`: the tasks before are in the tokenized cache; `Stopped`, exit
`EXIT_PREEMPTED`), a sweep before each stage. A second signal ends the process at once, with 128 + the signal,
saying that what was not saved is lost (a checkpoint being written is never read: core.integrity).

The signals are read by a thread from the pipe `signal.set_wakeup_fd` writes them to as they arrive, so the second
one ends the process even while the main thread waits inside a long XLA call.

Several hosts: once JAX's runtime is up (`jax_runtime_started`, called by core.hosts) SIGTERM is JAX's: its
preemption notifier makes `multihost_utils.reached_preemption_sync_point` True on every host at the same step, so
every host saves that step. A SIGINT is handed to it as a SIGTERM to this process. JAX's notifier acts once: a
second SIGTERM does nothing there, a second SIGINT still ends the process at once. The data side runs to its end
before the first step on several hosts (the hosts tokenize together and must stop together).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

# "Temporary failure, try again" (sysexits.h EX_TEMPFAIL): stopped on request with the work saved; launch/gpu.py and
# launch/tpu_vm.py run `instructjax train --resume` again when they see it (unless they were told to stop).
EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(Exception):
    """The work stopped at a safe point because a signal asked it to; what it had done is kept. The CLI prints it
    as one line and exits `EXIT_PREEMPTED`."""


class _Listener:
    """Both signals, handled by a thread that reads them from the wakeup pipe (see the module doc)."""

    def __init__(self, jax_sigterm: bool):
        self.requested = False
        self.received = 0  # signals the thread has read
        self.jax_sigterm = jax_sigterm  # SIGTERM is JAX's preemption notifier's (several hosts)
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        taken = (signal.SIGINT,) if jax_sigterm else SIGNALS
        self._previous = {s: signal.signal(s, self._on_signal) for s in taken}
        self._previous_wakeup = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._listen, name="instructjax-stop", daemon=True)
        self._thread.start()

    def _on_signal(self, signum, frame) -> None:
        """Python's handler, in the main thread: only the flag (the thread prints and counts), so the work sees the
        request from the next bytecode on, even before the thread has run."""
        self.requested = True

    def _listen(self) -> None:
        while True:
            got = os.read(self._read, 64)
            for signum in got:
                if signum == 0:  # `close`
                    return
                if signum in SIGNALS:  # the pipe has a byte for every signal with a Python handler
                    self._received(signal.Signals(signum))

    def _received(self, sig: signal.Signals) -> None:
        self.received += 1
        self.requested = True
        if self.received > 1:
            print(f"instructjax: {sig.name} again: exiting at once; what was not saved yet is lost (a checkpoint "
                  "being written is not kept: --resume starts from the newest saved step)", file=sys.stderr,
                  flush=True)  # fmt: skip
            sys.stdout.flush()
            os._exit(128 + sig)
        again = "Ctrl-C again" if sig == signal.SIGINT else "a second signal"
        print(f"instructjax: {sig.name}: stopping once the work in flight is saved ({again} exits at once, losing "
              "what is not saved)", file=sys.stderr, flush=True)  # fmt: skip
        if self.jax_sigterm and sig == signal.SIGINT:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's preemption notifier: every host saves the same step

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_wakeup)
        for s, previous in self._previous.items():
            if not (s == signal.SIGTERM and self.jax_sigterm):  # JAX's handler stays JAX's
                signal.signal(s, previous if previous is not None else signal.SIG_DFL)
        os.write(self._write, b"\0")
        self._thread.join(timeout=5)
        os.close(self._write)
        os.close(self._read)


@dataclass
class ProcessHandles:
    """What this process holds for the command running in it, in one object: the signal listener (`listening`), the
    number of processes of JAX's distributed runtime once core.hosts started it, and the stderr relay process
    (core.hosts). Signals and file descriptors belong to the process, so there is one (`PROCESS`): the trainer holds
    it and passes it on (to `listening`, `requested` and `hosts.initialize`); every function here takes it, `PROCESS`
    where none is given."""

    listener: _Listener | None = None
    jax_processes: int = 1
    relay: subprocess.Popen | None = None


PROCESS = ProcessHandles()


@contextlib.contextmanager
def listening(handles: ProcessHandles = PROCESS) -> Iterator[None]:
    """Within: SIGINT and SIGTERM ask the work to stop (see the module doc); a nested `listening()` changes nothing.
    Off the main thread (where Python cannot take signals) it does nothing."""
    if handles.listener is not None or threading.current_thread() is not threading.main_thread():
        yield
        return
    handles.listener = _Listener(jax_sigterm=handles.jax_processes > 1)
    try:
        yield
    finally:
        listener, handles.listener = handles.listener, None
        listener.close()


def requested(handles: ProcessHandles = PROCESS) -> bool:
    """Whether a signal asked this process's work to stop; never on several hosts, where JAX's preemption sync point
    says where they all stop (see the module doc)."""
    listener = handles.listener
    return listener is not None and listener.requested and not listener.jax_sigterm


def check(where: str, kept: str, handles: ProcessHandles = PROCESS) -> None:
    """At a safe point of work that one process does alone: `Stopped` when a signal asked, its line "stopped
    {where}: {kept}; run the same command again to continue"."""
    if requested(handles):
        raise Stopped(f"stopped {where}: {kept}; run the same command again to continue")


def jax_runtime_started(processes: int, handles: ProcessHandles = PROCESS) -> None:
    """JAX's distributed runtime is up (core.hosts), and with it JAX's own SIGTERM handler. With several processes
    SIGTERM stays JAX's, and a signal that came before is handed to it now (see the module doc); alone, this
    process's handler takes SIGTERM back."""
    handles.jax_processes = processes
    listener = handles.listener
    if listener is None:
        return
    if processes == 1:
        signal.signal(signal.SIGTERM, listener._on_signal)
        return
    listener.jax_sigterm = True
    if listener.requested:
        os.kill(os.getpid(), signal.SIGTERM)
