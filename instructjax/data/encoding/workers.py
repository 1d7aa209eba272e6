"""The shared pool of worker processes that `encoding.pool`'s batches go to: spawned, one per core (at most
`MAX_WORKERS`, or `INSTRUCTJAX_ENCODE_WORKERS`), each tokenizing on one thread, ignoring Ctrl-C (the main process
stops them) and ending when the main process is gone; one pool per command (`core.context`), restarted at another size, shut down after `IDLE_SECONDS`
without work (and at exit)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
import types
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager

from instructjax.core.context import current
from instructjax.core.errors import ConfigError
from instructjax.data.encoding.tokenizer import Tokenizer

MAX_WORKERS = 32
IDLE_SECONDS = 30.0


def default_workers() -> int:
    """Worker processes: `INSTRUCTJAX_ENCODE_WORKERS`, else the CPUs this process may use (at most MAX_WORKERS)."""
    said = os.environ.get("INSTRUCTJAX_ENCODE_WORKERS")
    if said is not None:
        if not said.strip().isdigit():
            raise ConfigError(f"INSTRUCTJAX_ENCODE_WORKERS must be a number of processes (0: none), got {said!r}")
        return int(said)
    return min(MAX_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class WorkerPool:
    """The worker processes of the outermost context (`core.context`: a process resource, which every command
    shares), started on the first batch, restarted at another size, shut down after IDLE_SECONDS without work."""

    def __init__(self):
        self.lock = threading.Lock()
        self.executor: ProcessPoolExecutor | None = None
        self.workers = 0
        self.pid = 0  # the process that started the pool (a forked child has none of its own)
        self.pending = 0  # batches submitted and not done
        self.active = 0.0  # when a batch was last submitted or done (time.monotonic)

    def is_up(self) -> bool:
        return self.executor is not None and self.pid == os.getpid()

    def submit(self, workers: int, fn, *args) -> Future:
        """`fn(*args)` in the pool of `workers` processes (started, or restarted at that size)."""
        old = None
        with self.lock:
            if self.pid != os.getpid():  # inherited through a fork: not ours to use
                self.executor, self.pending = None, 0
            if self.executor is not None and self.workers != workers:
                old, self.executor = self.executor, None
            if self.executor is None:
                self.executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=_init_worker, initargs=(os.getpid(),))
                self.workers, self.pid = workers, os.getpid()
                threading.Thread(target=self._reap, args=(self.executor,), daemon=True).start()
            with _without_main():  # a batch may start a worker
                future = self.executor.submit(fn, *args)
            self.pending += 1
            self.active = time.monotonic()
        if old is not None:
            old.shutdown(wait=False)  # its batches still finish
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future) -> None:
        with self.lock:
            self.pending -= 1
            self.active = time.monotonic()

    def _reap(self, executor: ProcessPoolExecutor) -> None:
        """Shut `executor` down once it has had nothing to do for IDLE_SECONDS."""
        while True:
            time.sleep(IDLE_SECONDS / 4)
            with self.lock:
                if self.executor is not executor:
                    return
                if self.pending or time.monotonic() - self.active < IDLE_SECONDS:
                    continue
            self.shutdown(if_idle=True)
            return

    def shutdown(self, if_idle: bool = False, wait: bool = True) -> None:
        """Stop the worker processes (a later batch starts them again); `if_idle`: only when no batch is pending;
        `wait`: until they have exited (else they exit meanwhile, and the interpreter waits for them at its exit)."""
        with self.lock:
            if self.executor is None or (if_idle and self.pending):
                return
            executor, self.executor = self.executor, None
        if self.pid == os.getpid():
            executor.shutdown(wait=wait)

    close_with_context = shutdown


def worker_pool() -> WorkerPool:
    """The encoding workers of the current command: its outermost context's (`core.context`)."""
    return current().slot("data.encoding_pool", lambda _: WorkerPool(), shared=True)


def _init_worker(main: int) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per process: the processes use the cores
    for stop in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C or a stop to the process group: the main process's to
        signal.signal(stop, signal.SIG_IGN)   # handle (core.stopping); a worker ends with the pool
    threading.Thread(target=_exit_without, args=(main,), daemon=True).start()


def _exit_without(main: int) -> None:
    """End this worker once the main process `main` is gone without shutting the pool down (killed, or ended by
    JAX's distributed runtime when another host died): nothing would stop it, as it ignores SIGTERM, and it holds
    the main process's stdout and stderr open for whoever reads them."""
    while os.getppid() == main:
        time.sleep(1.0)
    os._exit(1)


@contextmanager
def _without_main() -> Iterator[None]:
    """Workers need nothing from `__main__`: a process spawned in here does not import it again (multiprocessing
    would, running a script that encodes at its top level, with no `if __name__ == "__main__":`, once more
    in every worker)."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")  # no __file__, no __spec__: nothing to import
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _pool_is_up() -> bool:
    return worker_pool().is_up()


def start(tokenizer: str | None, workers: int | None = None) -> None:
    """Start the pool ahead of the first batch, each worker loading `tokenizer` (a path; None: the built-in one),
    so that what the caller does meanwhile (imports, opening the sources) overlaps the workers' own start."""
    workers = default_workers() if workers is None else workers
    if workers and not multiprocessing.current_process().daemon:
        for _ in range(workers):
            _submit(workers, Tokenizer.load, tokenizer)


def _submit(workers: int, fn, *args) -> Future:
    """`fn(*args)` in the current command's pool of `workers` processes (`WorkerPool.submit`)."""
    return worker_pool().submit(workers, fn, *args)


def shutdown(if_idle: bool = False, wait: bool = True) -> None:
    """Stop the worker processes of the current command's pool (`WorkerPool.shutdown`)."""
    worker_pool().shutdown(if_idle, wait)
