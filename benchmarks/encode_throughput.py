"""Encoding a task (read, adapt, split, render, tokenize, mask) against the tokenizer's own batch encode alone.

Synthetic rows of the seven Tulu Human+GPT datasets in their hub schemas (`restart_cache.SHAPE`, `--examples`
rows in all), each a task read cold (`INSTRUCTJAX_CACHE_DIR=off`) through `data.examples.encoded_examples`
on every core (`data.encode_pool`: worker processes). Beside it, the same rows' rendered texts (whole
conversations, before any split) through the tokenizer's own Rust `encode_batch` in one call, also on
every core (its Rayon threads: TOKENIZERS_PARALLELISM=true, RAYON_NUM_THREADS unset), ids read back as
lists. Rounds alternate ours and the reference; the median is reported. The worker pool is started once
before the rounds (timed on its own line, and added to the "all" row); the files are read once before the
rounds (datasets' JSON -> Arrow conversion, once per machine, also timed on its own). `--serial` also
times one process encoding one conversation at a time (INSTRUCTJAX_ENCODE_WORKERS=0).

    python benchmarks/encode_throughput.py [--examples 20000] [--rounds 3] [--serial]
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ["INSTRUCTJAX_CACHE_DIR"] = "off"
os.environ["TOKENIZERS_PARALLELISM"] = "true"
sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402
from restart_cache import SHAPE  # noqa: E402

GOAL = 1.5


def write_tasks(directory: Path, examples: int) -> dict[str, str]:
    """source -> task name, over synthetic rows in each hub schema, `examples` rows in all (SHAPE's proportions)."""
    from instructjax.data.blends import specs
    from instructjax.data.blends.specs import TaskSpec
    from instructjax.data.sources import synthetic

    total = sum(SHAPE.values())
    tasks = {}
    for source, rows in SHAPE.items():
        where = directory / source
        n = max(1, round(rows * examples / total))
        marker = where / f".rows-{n}"
        if not marker.exists():
            files = synthetic.write_synthetic(source, str(where), n_rows=n)
            marker.touch()
        else:
            files = sorted(str(p) for p in where.iterdir() if not p.name.startswith("."))
        specs.add_task(f"bench_{source}", TaskSpec(source=source, data_files=tuple(files)))
        tasks[source] = f"bench_{source}"
    return tasks


def rendered_texts(task: str) -> list[str]:
    """The task's conversations rendered with its template (what the reference encodes)."""
    from instructjax.core.errors import BadRowPolicy
    from instructjax.data.blends import specs
    from instructjax.data.encoding.templates import DEFAULT_TEMPLATE, render
    from instructjax.data.encoding.tokenizer import Tokenizer
    from instructjax.data.tokenized.stream import read_conversations

    spec = specs.task(task)
    eos = Tokenizer.load(spec.tokenizer).eos_token
    return [render(c, spec.template or DEFAULT_TEMPLATE, eos_token=eos).text
            for c in read_conversations(spec, BadRowPolicy(spec.on_bad_row))]


def cpu_seconds() -> float:
    """CPU seconds of this process (all its threads) and of its live child processes (the workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = time.process_time()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == os.getpid():
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def ours(task: str, workers: int | None = None) -> tuple[float, float, int]:
    """(seconds, CPU seconds, tokens) of encoding `task` cold here (`workers`: INSTRUCTJAX_ENCODE_WORKERS)."""
    from instructjax.data.tokenized import examples

    if workers is not None:
        os.environ["INSTRUCTJAX_ENCODE_WORKERS"] = str(workers)
    examples.streams().clear()
    cpu, start = cpu_seconds(), time.perf_counter()
    got = examples.encoded_examples(task)
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    os.environ.pop("INSTRUCTJAX_ENCODE_WORKERS", None)
    return seconds, cpu, sum(int(ex["tokens"].shape[0]) for ex in got)


def reference(texts: list[str]) -> tuple[float, float, int]:
    """(seconds, CPU seconds, tokens) of the tokenizer's own batch encode of `texts`, ids read back as lists."""
    from instructjax.data.encoding.tokenizer import Tokenizer

    tok = Tokenizer.load()
    cpu, start = time.process_time(), time.perf_counter()
    ids = tok.encode_batch(texts)
    return time.perf_counter() - start, time.process_time() - cpu, sum(map(len, ids))


def start_pool() -> float:
    """Seconds to start the worker pool (every worker spawned, its tokenizer loaded)."""
    from instructjax.data.encoding import pool
    from instructjax.data.encoding.tokenizer import Tokenizer
    from instructjax.data.schema import Conversation

    workers = pool.default_workers()
    if not workers:
        return 0.0
    job = pool.Job("tulu", Tokenizer.load().path, 2048, False)
    conv = Conversation([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "x", "x-0")
    start = time.perf_counter()
    futures = [pool._submit(workers, pool._encode_packed, job, [conv]) for _ in range(workers * 4)]
    for f in futures:
        f.result()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, summary=None)
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", type=Path, help="keep the rows here (default: a temporary directory)")
    parser.add_argument("--serial", action="store_true", help="also time one conversation at a time, one process")
    args = parser.parse_args(argv)

    from instructjax.data.encoding import pool
    from instructjax.data.tokenized import examples

    load = common.load_average()
    with tempfile.TemporaryDirectory() as tmp:
        tasks = write_tasks(args.dir or Path(tmp), args.examples)
        start = time.perf_counter()
        texts = {source: rendered_texts(task) for source, task in tasks.items()}  # reads every file once
        first_read = time.perf_counter() - start
        pool_start = start_pool()
        runs: dict[str, list[tuple[float, float, int]]] = {s: [] for s in tasks}
        refs: dict[str, list[tuple[float, float, int]]] = {s: [] for s in tasks}
        for _ in range(args.rounds):
            for source, task in tasks.items():
                runs[source].append(ours(task))
                refs[source].append(reference(texts[source]))
                print(f"{source}: ours {runs[source][-1][0]:.2f} s, encode_batch {refs[source][-1][0]:.2f} s", flush=True)
        serial = {source: ours(task, workers=0)[0] for source, task in tasks.items()} if args.serial else {}
        pool.shutdown()
        examples.streams().clear()

    def median(values: list[tuple[float, float, int]], k: int) -> float:
        return statistics.median(v[k] for v in values)

    rows, totals = [], [pool_start, 0.0, 0.0, 0.0, sum(serial.values())]
    for source in tasks:
        figures = [median(runs[source], 0), median(refs[source], 0), median(runs[source], 1), median(refs[source], 1)]
        totals = [t + f for t, f in zip(totals, [*figures, serial.get(source, 0.0)], strict=True)]
        rows.append([source, len(texts[source]), f"{refs[source][0][2]:,}", f"{runs[source][0][2]:,}", *figures,
                     serial.get(source)])
    rows.append(["all (+ pool start)", sum(map(len, texts.values())), f"{sum(r[0][2] for r in refs.values()):,}",
                 f"{sum(r[0][2] for r in runs.values()):,}", *totals])
    table_rows = []
    for name, n, ref_tokens, our_tokens, wall, ref_wall, cpu, ref_cpu, *rest in rows:
        row = [name, n, ref_tokens, our_tokens, f"{wall:.2f}", f"{ref_wall:.2f}", f"**{wall / ref_wall:.2f}x**",
               f"{cpu:.2f} / {ref_cpu:.2f} = {cpu / ref_cpu:.2f}x"]
        if serial:
            row.append(f"{rest[0]:.2f} ({rest[0] / ref_wall:.2f}x)")
        table_rows.append(row)
    header = ["task", "rows", "tokens (whole rows)", "tokens (examples)", "ours s", "encode_batch s",
              "ours / encode_batch", "CPU s: ours / encode_batch"]
    if serial:
        header.append("one at a time s (/ encode_batch)")
    worst = max(r[4] / r[5] for r in rows[:-1])
    body = (f"{args.examples} rows of Tulu Human+GPT's shape (synthetic, hub schemas), seq 2048, tulu template, the "
            f"built-in tokenizer; median of {args.rounds} alternating rounds; {pool.default_workers()} worker "
            f"processes (ours) and the tokenizer's Rayon threads (encode_batch) on {os.cpu_count()} CPUs. Pool start "
            f"{pool_start:.2f} s (once per process, in the 'all' row); the first read of the files (datasets' JSON -> Arrow, "
            f"once per machine, and rendering) {first_read:.1f} s, not in the table. CPU: this process and its "
            f"workers. Goal: at most {GOAL}x per task; worst {worst:.2f}x.\n\n" + common.table(header, table_rows))
    print(body)
    common.finish(args, "Encoding throughput against the tokenizer's own batch encode", body,
                  load_before=load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
