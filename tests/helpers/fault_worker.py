"""`instructjax train ...` through the real CLI in its own process, with faults injected on request.

Used by tests/faults/test_faults_training.py, which kill -9s it, fills its disk, or corrupts what it wrote.
  FAULT_HOLD_SAVE_STEP=N  the asynchronous commit of checkpoint step N writes every item into its
                          temporary directory, then writes the path to $FAULT_MARKER and hangs just
                          before the atomic rename (so a kill -9 lands mid-save, deterministically)
  FAULT_NAN_AT_STEP=N     step N's batch gets NaN loss weights (a non-finite loss at step N)
  FAULT_STEP_SECONDS=S    every step takes at least S seconds (a kill "at a random moment" lands mid-run)
  FAULT_SIGTERM_AFTER_STEP=N  the process sends itself SIGTERM once step N is done (a preemption at N)
  FAULT_SIGINT_AFTER_TASK=N   the process sends itself SIGINT (a Ctrl-C) once the examples of the N-th task it reads
                              are made
  FAULT_COUNT_ENCODED=PATH    at exit, write to PATH how many conversations this process tokenized
  FAULT_DIE_TOKENIZING=1      the process dies (os._exit, no clean-up) as it starts tokenizing its first
                              piece of a shared cache
  FAULT_COUNT_READ=PATH       at exit, write to PATH how many rows this process read and adapted (its pipelines'
                              `stats.rows_read`)
  FAULT_FAIL_ENCODING=TEXT    tokenizing a conversation whose text holds TEXT raises a DataError
  FAULT_ALONE=1               this host finds no cache path for any task (as when its hub lookup fails), so it
                              skips the shared cache's collectives the others enter
  FAULT_SLOW_DISAGREE=S       a host that finds the hosts disagree takes S seconds more to say so (the slow
                              exit a loaded machine may give it, while host 0 is already done)
Everything else is the production code path: `python tests/helpers/fault_worker.py train --config ...`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import numpy as np


def hold_save(step: int, marker: str) -> None:
    from orbax.checkpoint._src.path import atomicity

    original = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize(self):
        if self._final_path.name == str(step):
            Path(marker).write_text(str(self.get()))
            await asyncio.sleep(3600)
        return await original(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize


def nan_at(step: int) -> None:
    from instructjax.train import trainer

    original, calls = trainer.on_mesh, [0]

    def on_mesh(host_batch, sharding):
        calls[0] += 1  # one call per step, from step 1 in a fresh run
        if calls[0] == step:
            host_batch = {**host_batch, "loss_weights": np.where(host_batch["loss_weights"] > 0, np.nan, 0.0)
                          .astype(host_batch["loss_weights"].dtype)}  # fmt: skip
        return original(host_batch, sharding)

    trainer.on_mesh = on_mesh


def slow_steps(seconds: float) -> None:
    import time

    from instructjax.train import trainer

    original = trainer.on_mesh

    def on_mesh(host_batch, sharding):
        time.sleep(seconds)
        return original(host_batch, sharding)

    trainer.on_mesh = on_mesh


def sigterm_after(step: int) -> None:
    import signal

    from instructjax.train import preemption

    original = preemption.PreemptionWatch.should_stop

    def should_stop(self, done: int) -> bool:
        if done == step:
            os.kill(os.getpid(), signal.SIGTERM)  # handled by the real handler before the check below
        return original(self, done)

    preemption.PreemptionWatch.should_stop = should_stop


def sigint_after_task(n: int) -> None:
    import signal

    from instructjax.data.tokenized import examples

    original, calls = examples.encoded_examples, [0]

    def encoded_examples(*args, **kwargs):
        made = original(*args, **kwargs)
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGINT)
        return made

    examples.encoded_examples = encoded_examples


def count_encoded(path: str) -> None:
    import atexit

    from instructjax.data.encoding import pool

    original, count = pool._Batch.__init__, [0]

    def init(self, job, items, workers):
        original(self, job, items, workers)
        count[0] += len(self._convs)  # every conversation this process encodes goes through one batch

    pool._Batch.__init__ = init
    atexit.register(lambda: Path(path).write_text(str(count[0])))


def die_tokenizing() -> None:
    from instructjax.data.tokenized import shared

    def encode(*_):  # whatever shared._encode is given
        os._exit(9)

    shared._encode = encode


def count_read(path: str) -> None:
    import atexit

    from instructjax.data.batches import pipeline

    original, made = pipeline.DataPipeline.__init__, []

    def init(self, *args, **kwargs):
        made.append(self)  # every pipeline of this process (train and data prepare make one), its reads in its stats
        original(self, *args, **kwargs)

    pipeline.DataPipeline.__init__ = init
    atexit.register(lambda: Path(path).write_text(str(sum(p.stats.rows_read for p in made if hasattr(p, "stats")))))


def fail_encoding(text: str) -> None:
    from instructjax.core.errors import DataError
    from instructjax.data.encoding import pool

    original = pool.encode_rows

    def encode_rows(job, convs):
        for conv in convs:
            if any(text in m["content"] for m in conv.messages):
                raise DataError("cannot be tokenized (a fault injected by the test)", reason="injected", row=conv.id)
        return original(job, convs)

    pool.encode_rows = encode_rows


def alone() -> None:
    from instructjax.data.tokenized import examples

    examples._cache_path = lambda *args: None


def slow_disagree(seconds: float) -> None:
    import time

    from instructjax.core import hosts

    original = hosts._disagree

    def disagree(*args, **kwargs):
        try:
            original(*args, **kwargs)
        except hosts.HostsDisagree:
            time.sleep(seconds)
            raise

    hosts._disagree = disagree


def main() -> int:
    if "FAULT_HOLD_SAVE_STEP" in os.environ:
        hold_save(int(os.environ["FAULT_HOLD_SAVE_STEP"]), os.environ["FAULT_MARKER"])
    if "FAULT_NAN_AT_STEP" in os.environ:
        nan_at(int(os.environ["FAULT_NAN_AT_STEP"]))
    if "FAULT_STEP_SECONDS" in os.environ:
        slow_steps(float(os.environ["FAULT_STEP_SECONDS"]))
    if "FAULT_SIGTERM_AFTER_STEP" in os.environ:
        sigterm_after(int(os.environ["FAULT_SIGTERM_AFTER_STEP"]))
    if "FAULT_SIGINT_AFTER_TASK" in os.environ:
        sigint_after_task(int(os.environ["FAULT_SIGINT_AFTER_TASK"]))
    if "FAULT_COUNT_ENCODED" in os.environ:
        count_encoded(os.environ["FAULT_COUNT_ENCODED"])
    if os.environ.get("FAULT_DIE_TOKENIZING"):
        die_tokenizing()
    if "FAULT_COUNT_READ" in os.environ:
        count_read(os.environ["FAULT_COUNT_READ"])
    if "FAULT_FAIL_ENCODING" in os.environ:
        fail_encoding(os.environ["FAULT_FAIL_ENCODING"])
    if os.environ.get("FAULT_ALONE"):
        alone()
    if "FAULT_SLOW_DISAGREE" in os.environ:
        slow_disagree(float(os.environ["FAULT_SLOW_DISAGREE"]))
    from instructjax import cli

    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
