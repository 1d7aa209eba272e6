"""`instructjax data prepare`: tokenize a run's data ahead of training, into the tokenized cache `train` starts
from: in this process (every core; every host of a launch) or by an Apache Beam pipeline (`--runner beam`, the
`beam` extra: `data.tokenized.beam_prepare`)."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from instructjax.cli import add_on_bad_row, load_run_config, on_bad_row_overrides
from instructjax.core import stopping, storage
from instructjax.core.errors import ConfigError


def add_parser(subparsers) -> None:
    """`prepare` among `data`'s subcommands."""
    prepare = subparsers.add_parser("prepare",
                                    help="tokenize a run's data ahead of training (train starts from the cache)")
    prepare.add_argument("--config", required=True, help="the run config YAML that train will be given")
    add_on_bad_row(prepare)
    prepare.add_argument("overrides", nargs="*", metavar="key=value", help="the dotted overrides train will be given")
    prepare.add_argument("--runner", default="in-process",
                         help="in-process (this machine's cores; every host of a launch) or beam (an Apache Beam "
                              "pipeline: the `beam` extra; local worker processes unless --beam-args names a runner)")
    prepare.add_argument("--shard-rows", type=int,
                         help="--runner beam: rows (or conversations) a shard holds at most (default: 64 shards or "
                              "more in all, of at most 8192 rows): smaller shards spread a task over more workers")
    prepare.add_argument("--beam-args", nargs=argparse.REMAINDER, default=[], metavar="OPTION",
                         help="last: Beam's pipeline options as Beam takes them, e.g. --direct_num_workers=4, or "
                              "--runner=DataflowRunner --project=P --region=R --temp_location=gs://B/tmp")
    prepare.set_defaults(func=run_prepare)


def run_prepare(args) -> int:
    """Exactly the training run's data side (the same binding, task keys and cache files, on every host of a
    multi-host launch), with a progress bar per task and a summary of the cache. SIGINT or SIGTERM stops it before
    the next task (`core.stopping`: the tasks before are in the cache; exit 75); on several hosts it runs to its end."""
    with stopping.listening():
        return _prepare(args)


def _prepare(args) -> int:
    start = time.time()  # the one figure printed: the whole prepare's wall time (a Beam pipeline's included)
    from instructjax.core import hosts, progress
    from instructjax.data import cache
    from instructjax.data.blends import specs
    from instructjax.data.encoding import pool
    from instructjax.data.tokenized import examples, stream
    from instructjax.train import setup as run_setup
    from instructjax.train.resolution import PIPELINE, resolve

    beam = _beam_runner(args)  # before any work: a runner or options that cannot run, or Beam missing
    config = load_run_config(args.config, [*args.overrides, *on_bad_row_overrides(args)])
    if cache.cache_dir() is None:
        raise ConfigError("the tokenized cache is off (INSTRUCTJAX_CACHE_DIR=off): there is nowhere to prepare to")
    if beam is None:
        pool.start(run_setup.tokenizer_path(config))  # the workers start while the hosts connect and the sources open

    hosts.initialize(config.distributed, f"prepare:{config.run_dir}")
    bound = resolve(config, sizes=PIPELINE).bound  # the trainer's binding: its tokenizer, model and bound data
    index, count = hosts.process()
    primary, bars = index == 0, {}
    built = _prepare_on_beam(beam, args, config, bound, count) if beam is not None else set()

    def show(task: str, done: int, total: int | None) -> None:
        if task not in bars:
            for bar in bars.values():
                bar.close()
            bars[task] = progress.bar(total=total, desc=task, unit="row", disable=not primary)
        bars[task].n = done
        bars[task].refresh() if total is not None and done >= total else bars[task].update(0)

    with stream.progress(show):
        pipeline = run_setup.open_pipeline(bound, index, count)
        pool.shutdown(wait=False)  # every task is encoded: the workers exit while the epoch is planned
        plan = pipeline.plan_epoch(0)
    for bar in bars.values():
        bar.close()
    if primary:
        stats = pipeline.stats
        files = {f: storage.stat(f).size for f in dict.fromkeys(stats.cache_files.values()) if f.exists()}
        written = sum(str(f) in stats.written or str(f) in built for f in files)
        print(f"prepared {len(pipeline.task_names)} task(s) of {specs.base_name(config.data.mixture)} in "
              f"{time.time() - start:.1f} s: {plan.examples:,} examples, {plan.tokens:,} tokens, "
              f"{plan.steps} steps per epoch")
        print(f"cache: {cache.cache_dir()} ({len(files)} file(s), {sum(files.values()) / 2**20:.1f} MiB; "
              f"{written} written now, {len(files) - written} there already)")
        for f, size in files.items():
            print(f"  {f.name}  {size / 2**20:.1f} MiB")
        flags = [f"--on-bad-row {args.on_bad_row}"] if args.on_bad_row else []
        print(f"train starts from it: INSTRUCTJAX_CACHE_DIR={cache.cache_dir()} instructjax train --config "
              f"{args.config}" + "".join(f" {o}" for o in [*args.overrides, *flags]))
    host = f"host {index}: " if count > 1 else ""
    print(f"data: {host}{examples.cache_report(list(pipeline.task_names), pipeline.stats)}", flush=True)  # this host's
    return 0


def _beam_runner(args):
    """`--runner`: None in process, else the Beam module and its pipeline options (`--beam-args`, checked)."""
    if args.runner not in ("in-process", "beam"):
        raise ConfigError(f"--runner {args.runner!r}: use in-process (the default) or beam")
    if args.runner != "beam":
        if args.beam_args:
            raise ConfigError("--beam-args go with --runner beam")
        return None

    root, guard = logging.getLogger(), logging.NullHandler()  # Beam warns on import through `logging.warning`, which
    root.addHandler(guard)  # would install a handler on the root logger for good when it has none
    try:
        from instructjax.data.tokenized import beam_prepare
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("apache_beam"):
            raise
        raise ConfigError("--runner beam needs Apache Beam: pip install 'instructjax[beam]' && pip install --no-deps "
                          "apache-beam==2.77.0 (what `make setup` does)") from None
    finally:
        root.removeHandler(guard)
    beam_prepare.check_options(args.beam_args, workers=os.cpu_count() or 1)
    return beam_prepare


def _prepare_on_beam(beam, args, config, bound, host_count: int) -> set[str]:
    """The run's missing cache files built by a Beam pipeline (`data.tokenized.beam_prepare`); the files written."""
    from instructjax.data.batches.example_order import task_subsets

    beam_prepare = beam
    if host_count > 1:
        raise ConfigError("--runner beam runs once, on one machine (its workers share the tasks): not on every host "
                          "of a launch")
    tasks = [(name, spec, n, seed) for name, spec, n, seed in task_subsets(config.data, bound.data.resolved)
             if spec is not None]  # a user's own seqio Task: read in process
    builds = beam_prepare.plan(tasks, args.shard_rows)
    if not builds:
        return set()
    base = None if storage.is_remote(args.config) else str(Path(args.config).parent)
    imports = (*((name, None) for name in [*args.imports_first, *args.imports]),
               *((name, base) for name in config.imports))
    print(f"beam: {len(builds)} task(s) to tokenize in {sum(len(b.shards) for b in builds)} shard(s)", flush=True)
    beam_prepare.run(builds, args.beam_args, os.cpu_count() or 1, imports)
    print(f"beam: {len(builds)} cache file(s) written", flush=True)  # the time: prepare's own line
    return {b.where for b in builds}
