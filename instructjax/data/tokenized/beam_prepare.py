"""A run's tokenized cache built by an Apache Beam pipeline (`data prepare --runner beam`; the `beam` extra): every
task's shards encoded by any number of workers, then each task's pieces merged into the cache file one process
writes, byte for byte.

    shards (task, lo, hi) -> grouped by shard (fan-out) -> encode: `<cache file>.pieces/<lo>-<hi>`
      -> grouped by task -> merge: the pieces replayed in order (`shards.assemble`), the cache file written with the
         task's report (`stream.save`: read, kept, skipped per reason, repaired, split, truncated), the pieces removed

`plan` cuts the tasks whose cache file is missing into shards (`shards.cut`) and notes each one's cache key; a
worker first checks that it sees the task as the plan did (the key: the data files' content, the tokenizer, the
template, the data layer's code), else one ConfigError line. Every step may be run again: a piece is written whole or
not at all, and a piece or a cache file already there is not made again. Beam's local runner (the FnApiRunner, here
with worker processes) does not retry the bundle of a worker that dies: `run` then runs the pipeline again (up to
`ATTEMPTS` times in all) and only the shards without a piece are encoded again; Dataflow, Flink and Spark retry a
failed work item themselves. A lost worker is known by its exit status: the runner's thread that waits on it
raises when it exits non-zero, which ends the child process that runs the pipeline with `LOST`. A user's error in a
worker (a bad row under `on_bad_row: error`, a worker that sees other data) crosses as data: a JSON record the worker
writes beside the cache files (`<cache dir>/.beam-errors-<run>/`), which this process reads back as its one line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import (
    DirectOptions,
    PipelineOptions,
    StandardOptions,
    WorkerOptions,
)

from instructjax.core import storage
from instructjax.core.errors import ConfigError, DataError, InstructJaxError
from instructjax.core.user_modules import import_modules
from instructjax.data import cache
from instructjax.data.blends import specs
from instructjax.data.blends.specs import TaskSpec
from instructjax.data.sources.rows import PipelineStats
from instructjax.data.tokenized import examples, shards, shared, stream

ATTEMPTS = 3  # runs of the pipeline on the local runner when a worker process is lost
MIN_SHARDS = 64  # shards in all at least (smaller ones where the tasks are small), so every worker has its share
LOST = 3  # the exit status of the child process whose runner lost a worker


@dataclass(frozen=True)
class TaskBuild:
    """One task's cache file to build: the subset (`count` drawn with `seed`; None: every example), the cache key
    and file the plan found, and its first round's shards. `name` is the task as the run registered it (a variant
    of `base` bound to the run), `base` the name its subset is drawn by (`specs.subset_seed`): workers read the
    task as `base`, since they do not know the run's variants."""

    name: str
    base: str
    spec: TaskSpec
    count: int | None
    seed: int | None
    key: str
    where: str
    shards: tuple[shards.Shard, ...]
    unit_bytes: float = 1.0  # the task's data bytes per unit: what a shard costs, roughly (the hub's: unknown)


# A user's modules the workers import first: (name or .py path, the directory a relative path is found in)
Imports = tuple[tuple[str, str | None], ...]


def plan(tasks: list[tuple[str, TaskSpec, int | None, int | None]], shard_units: int | None = None
         ) -> list[TaskBuild]:
    """The builds of the tasks (name, spec, count, seed) whose cache file is missing or does not check out, in shards
    of at most `shard_units` rows (or conversations; None: `MIN_SHARDS` or more in all, of at most
    `shards.SHARD_UNITS` each); a task the cache cannot hold (neither files nor a hub dataset known here) is left to
    the in-process read."""
    missing = []
    for name, spec, count, seed in tasks:
        key = examples.cache_key(name, spec, count, seed)
        if key is None:
            continue
        where = cache.path_of(name, key)
        if cache.load(where) is not None:
            continue
        units = shared.units_of(name, spec, seed, pool=False)
        missing.append((name, spec, count, seed, key, where, units, units.upto(math.inf if count is None else count)))
    total = sum(hi for *_, hi in missing)
    size = shard_units or max(1, min(shards.SHARD_UNITS, -(-total // MIN_SHARDS)))
    builds = []
    for name, spec, count, seed, key, where, units, hi in missing:
        base = specs.base_name(name)
        builds.append(TaskBuild(name, base, spec, count, seed, key, str(where), tuple(shards.cut(base, units, hi, size)),
                                _unit_bytes(units)))
    return builds


def _unit_bytes(units) -> float:
    """The data bytes of a task's files per row (a tree source, a selection: per conversation)."""
    read = getattr(units, "read", None)  # a row source's `row_read.RowRead`
    tables = read.tables if read is not None else []
    paths = [t.path for t in tables if storage.path(t.path).is_file()]
    rows = sum(len(t) for t in tables) if read is not None else units.upto(math.inf)
    return sum(storage.stat(p).size for p in paths) / rows if paths and rows else 1.0


def pipeline_options(args: list[str], workers: int) -> PipelineOptions:
    """Beam's options from `args` (as Beam's own command line takes them), checked here: an option Beam does not know,
    or a value it refuses, is one ConfigError line. No `--runner`: the FnApiRunner with `workers` local processes."""
    options = PipelineOptions(args)
    options.get_all_options(add_extra_args_fn=_strict(args))  # every option class's flags, each value checked
    harness = options.view_as(WorkerOptions)
    harness.default_sdk_harness_log_level = harness.default_sdk_harness_log_level or "WARNING"
    direct = options.view_as(DirectOptions)
    if options.view_as(StandardOptions).runner is None:
        direct.direct_num_workers = direct.direct_num_workers or workers
        direct.direct_running_mode = ("multi_processing" if direct.direct_running_mode == "in_memory"
                                      else direct.direct_running_mode)
    return options


def _strict(args: list[str]):
    """For `get_all_options(add_extra_args_fn=...)`, handed the parser Beam builds of every option class's flags
    before it parses `args`: an option it does not know, or a value it refuses, is one ConfigError line (argparse's
    `error` exits the process otherwise)."""

    def refuse(message: str):
        raise ConfigError(f"--beam-args: {message}")

    def check(parser: argparse.ArgumentParser) -> None:
        parser.error = refuse
        _, unknown = parser.parse_known_args(args)
        if unknown:
            refuse(f"Beam has no option {unknown[0]!r}")

    return check


def _runner(options: PipelineOptions):
    """The runner the options name (None: the FnApiRunner); one that Beam cannot make is one ConfigError line."""
    name = options.view_as(StandardOptions).runner
    if name is None:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return FnApiRunner()
    from apache_beam.runners.runner import create_runner

    try:
        return create_runner(name)
    except (ValueError, ImportError) as exc:
        raise ConfigError(f"--beam-args: runner {name!r}: {_one_line(exc)}") from None


def run(builds: list[TaskBuild], beam_args: list[str], workers: int, imports: Imports = ()) -> None:
    """Build the cache files of `builds` with a Beam pipeline (see the module doc), run by a child process of this
    one whose output (Beam's log lines, and its local workers') goes to a file, named when the pipeline fails. On the
    local runner a lost worker (the child's exit status `LOST`) ends that run: the pipeline is run again, up to
    `ATTEMPTS` runs in all. A user's error a worker met (its record) is raised here as its one line."""
    if not builds:
        return
    options = pipeline_options(beam_args, workers)
    local = isinstance(_runner(options), _local_runner())
    errors = errors_dir(builds)
    fd, plan_file = tempfile.mkstemp(prefix="instructjax-beam-", suffix=".plan")
    with os.fdopen(fd, "wb") as f:
        pickle.dump((builds, beam_args, workers, imports, errors), f)
    fd, log = tempfile.mkstemp(prefix="instructjax-beam-", suffix=".log")
    os.close(fd)
    try:
        for attempt in range(1, ATTEMPTS + 1):
            code = _launch(plan_file, log)
            if code == 0:
                os.unlink(log)
                return
            if code == 2:
                error = recorded_error(errors)
                if error is None:
                    raise ConfigError(f"see Beam's log: {log}")
                os.unlink(log)  # the error is its one line: nothing in the log to look for
                raise error
            lost = code == LOST
            if not (local and lost) or attempt == ATTEMPTS:
                why = "a worker process was lost" if lost else f"exit status {code}"
                raise ConfigError(f"the Beam pipeline failed ({why}; Beam's log: {log})")
            kept = sum(len(storage.listing(p)) for p in (shared.pieces_dir(storage.path(b.where)) for b in builds)
                       if p.is_dir())  # fmt: skip
            print(f"instructjax: warning: a Beam worker process was lost (Beam's log: {log}): running the pipeline "
                  f"again ({attempt + 1} of {ATTEMPTS}); the {kept} piece(s) written are kept", file=sys.stderr,
                  flush=True)
    finally:
        Path(plan_file).unlink(missing_ok=True)
        storage.remove_tree(errors)


def _launch(plan_file: str, log: str) -> int:
    """Run the pipeline of `plan_file` in a child process (its own process group) with its output appended to `log`;
    its exit status. Whatever the child leaves running when it ends (a local runner's workers) is killed."""
    with open(log, "ab") as out:
        child = subprocess.Popen([sys.executable, "-c", _LAUNCHER, plan_file], stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        return child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)  # the runner's workers, when the child ended without them


_LAUNCHER = "import sys; from instructjax.data.tokenized import beam_prepare; sys.exit(beam_prepare.launched(sys.argv[1]))"


def launched(plan_file: str) -> int:
    """In the child process: run the pipeline of `plan_file` once. 0: done; 2: a user's error, recorded (`record`);
    `LOST`: the runner lost a worker; anything else: Beam's failure (in the log)."""
    logging.getLogger().setLevel(logging.WARNING)
    with open(plan_file, "rb") as f:
        builds, beam_args, workers, imports, errors = pickle.load(f)
    options = pipeline_options(beam_args, workers)
    runner = _runner(options)
    if isinstance(runner, _local_runner()):  # its workers are this process's children
        threading.excepthook = _lost_worker
    try:
        with beam.Pipeline(runner=runner, options=options) as pipeline:
            _build(pipeline, builds, imports, errors)
    except Exception as exc:  # noqa: BLE001 - a user's error here, or one a worker recorded: exit 2
        if isinstance(exc, InstructJaxError):
            record(errors, exc)
        if recorded_error(errors) is None:
            raise
        return 2
    return 0


def _lost_worker(args: threading.ExceptHookArgs) -> None:
    """A thread of the runner that ended by an exception: the local runner's thread that waits on a worker process
    raises when that process exits non-zero (killed, out of memory), and the runner would wait for the worker for
    ever; the pipeline's run ends at once with `LOST`."""
    threading.__excepthook__(args)  # its traceback, in the log
    sys.stderr.flush()
    os._exit(LOST)


def _local_runner() -> type:
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return FnApiRunner


def _build(pipeline, builds: list[TaskBuild], imports: Imports, errors: str) -> None:
    # the costliest shards first: the local runner deals the shards out to its workers in turn, once
    units = sorted(((t, s.lo, s.hi) for t, b in enumerate(builds) for s in b.shards),
                   key=lambda u: -(u[2] - u[1]) * builds[u[0]].unit_bytes)
    _ = (pipeline
         | "shards" >> beam.Create(list(enumerate(units)))
         | "spread" >> beam.GroupByKey()  # one key a shard: the runner hands them out over its workers
         | "unkey" >> beam.FlatMap(lambda kv: kv[1])
         | "encode" >> beam.ParDo(_Encode(builds, imports, errors))
         | "by task" >> beam.GroupByKey()
         | "merge" >> beam.ParDo(_Merge(builds, imports, errors)))  # fmt: skip


class _Worker(beam.DoFn):
    """What each step of a worker shares: the user's modules imported, the tokenizer on one thread (the runner's
    processes use the cores), each task checked against the plan once, its read opened once."""

    def __init__(self, builds: list[TaskBuild], imports: Imports, errors: str):
        self.builds, self.imports, self.errors = builds, imports, errors

    def setup(self) -> None:
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
        for name, base in self.imports:  # a config's `imports:` (relative to its directory), `--import`
            import_modules([name], None if base is None else Path(base))
        self._checked: set[int] = set()
        self._units: dict[int, object] = {}

    def check(self, t: int) -> TaskBuild:
        build = self.builds[t]
        if t not in self._checked:
            key = examples.cache_key(build.base, build.spec, build.count, build.seed)
            if key != build.key:
                raise ConfigError(f"task {build.base!r}: this Beam worker sees other data than the plan (its cache "
                                  f"key {str(key)[:12]}, the plan's {build.key[:12]}: the data files, the tokenizer, "
                                  "the template or instructjax's code differ); give every worker the same ones")
            self._checked.add(t)
        return build

    def units(self, t: int, fresh: bool = False):
        build = self.builds[t]
        if fresh or t not in self._units:
            self._units[t] = shared.units_of(build.base, build.spec, build.seed, pool=False)
        return self._units[t]


class _Encode(_Worker):
    """(task, lo, hi) -> its piece written into the task's pieces directory (unless there); (task, (lo, hi))."""

    def process(self, unit: tuple[int, int, int]) -> Iterator[tuple[int, tuple[int, int]]]:
        t, lo, hi = unit
        with _crossing(self.errors):
            build = self.check(t)
            pieces = shared.pieces_dir(storage.path(build.where))
            if not storage.path(build.where).exists():  # a task merged already: nothing to make
                units = self.units(t)
                if shared.read_piece(pieces, "", lo, hi, units.whole) is None:
                    shared.write_piece(pieces, "", lo, hi, shards.encode(units, stream.job_of(build.spec), lo, hi))
        yield t, (lo, hi)


class _Merge(_Worker):
    """(task, its shards' spans) -> the task's cache file written from the pieces (unless there); (task, its file)."""

    def process(self, task: tuple[int, list]) -> Iterator[tuple[str, str]]:
        t, _ = task
        with _crossing(self.errors):
            build = self.check(t)
            where = storage.path(build.where)
            if cache.load(where) is None:
                units = self.units(t, fresh=True)  # counted from the start
                pieces = shared.pieces_dir(where)
                replayed, taken = shards.assemble(
                    build.base, build.spec, build.seed, build.count, units, list(build.shards),
                    lambda s: shared.read_piece(pieces, "", s.lo, s.hi, units.whole))  # fmt: skip
                stream.save(where, replayed, taken, PipelineStats())
                shared.remove_pieces(pieces)
                del self._units[t]
        yield build.name, build.where


def errors_dir(builds: list[TaskBuild]) -> str:
    """Where the workers of one `run` record a user's error: beside the cache files (a worker writes there anyway)."""
    return storage.join(storage.path(builds[0].where).parent, f".beam-errors-{uuid.uuid4().hex[:12]}")


def record(errors: str, exc: InstructJaxError) -> None:
    """A user's error as data: one JSON record in `errors` (a worker's own file), read back by `recorded_error`."""
    fields = ({"kind": "DataError", "problem": exc.problem, "reason": exc.reason, "file": exc.file, "row": exc.row,
               "source": exc.source} if isinstance(exc, DataError) else {"kind": "ConfigError", "message": _one_line(exc)})
    storage.write_text(storage.join(errors, f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"), json.dumps(fields))


def recorded_error(errors: str) -> InstructJaxError | None:
    """The first user's error recorded in `errors` (None: none), as the error the worker met."""
    found = sorted(name for name in storage.listing(errors) if name.endswith(".json"))  # not a write's temporary
    if not found:
        return None
    fields = json.loads(storage.path(storage.join(errors, found[0])).read_text())
    if fields["kind"] == "DataError":
        return DataError(fields["problem"], reason=fields["reason"], file=fields["file"], row=fields["row"],
                         source=fields["source"])
    return ConfigError(fields["message"])


@contextlib.contextmanager
def _crossing(errors: str) -> Iterator[None]:
    """A user's error in a worker, recorded in `errors` for `run` to raise as its one line (and the bundle failed)."""
    try:
        yield
    except InstructJaxError as exc:
        record(errors, exc)
        raise


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 400 else text[:400] + "..."


def check_options(beam_args: list[str], workers: int) -> None:
    """Beam's options, the runner they name and its own checks of them, before any work (one ConfigError line)."""
    options = pipeline_options(beam_args, workers)
    runner = _runner(options)
    quiet = logging.getLogger("apache_beam")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its warnings on the way (credentials, a bucket's policy)
    try:
        beam.Pipeline(runner=runner, options=options)  # the runner validates the options here (Dataflow's GCP ones)
    except ValueError as exc:
        raise ConfigError(f"--beam-args: {type(runner).__name__} refuses them: {_one_line(exc)}") from None
    finally:
        quiet.setLevel(level)
