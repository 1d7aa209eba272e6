"""Restart to the first step with and without the tokenized-task cache, on a mixture of Tulu Human+GPT's shape.

Built-in synthetic rows of the seven Tulu Human+GPT datasets (seed 004 Table 1 proportions, each in its
hub schema and lengths) written as local files, `--examples` rows in all, one config whose `define:` block
makes them tasks and an epoch mixture of all of them. Timed one after another, each a fresh
`instructjax train ... max_steps=1` process (tiny model, so the figure is the data side plus the fixed cost
of starting JAX and compiling the step), with its peak RSS:
  no-cache  INSTRUCTJAX_CACHE_DIR=off: every row read, rendered and tokenized (what every restart did);
  cold      the first start with the cache on (tokenizes, then writes the cache; an existing one is removed);
  warm      a restart: the tokenized tasks read back (`--warm` times).
`--dir` keeps the data and the cache between invocations, so a large size is written and tokenized once
and later invocations time warm restarts alone (`--starts warm`). `--xla-cache` also turns on JAX's own
persistent compilation cache (JAX_COMPILATION_CACHE_DIR, in the same directory) for every start, to
see what compiling the step costs a restart.

    python benchmarks/restart_cache.py [--examples 500000 --seq-len 2048]
    python benchmarks/restart_cache.py --examples 500000 --dir /tmp/bench500k --starts cold,warm
    python benchmarks/restart_cache.py --examples 500000 --dir /tmp/bench500k --starts warm --warm 3
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

# Tulu Human+GPT (seed 004 Table 1): rows per dataset (FLAN V2 and CoT sampled to 100K each).
SHAPE = {"flan_v2": 100_000, "cot": 100_000, "dolly": 15_011, "oasst1": 34_795, "gpt4_alpaca": 52_002,
         "code_alpaca": 20_022, "sharegpt": 168_864}  # fmt: skip
STARTS = ("no-cache", "cold", "warm")


def write_data(directory: Path, examples: int) -> dict:
    """Synthetic rows in each dataset's schema, scaled to `examples` rows; the config's define block."""
    from instructjax.data.sources import synthetic

    total = sum(SHAPE.values())
    tasks = {}
    for source, rows in SHAPE.items():
        n = max(1, round(rows * examples / total))
        files = synthetic.write_synthetic(source, str(directory / source), n_rows=n)
        tasks[f"bench_{source}"] = {"source": source, "data_files": files}
    return {"tasks": tasks, "mixtures": {"bench_tulu_shape": {"mode": "epoch", "counts": dict.fromkeys(tasks)}}}


def prepare(directory: Path, examples: int, seq_len: int) -> tuple[Path, str]:
    """The run config over `examples` rows in `directory` (written unless an earlier run left them there)."""
    config, marker = directory / "run.yaml", directory / "examples.txt"
    if config.exists() and marker.exists() and marker.read_text().strip() == str(examples):
        return config, "written by an earlier run"
    shutil.rmtree(directory / "data", ignore_errors=True)
    start = time.perf_counter()
    define = write_data(directory / "data", examples)
    config.write_text(yaml.safe_dump({
        "define": define, "model": {"preset": "tiny"},
        "data": {"mixture": "bench_tulu_shape", "global_batch": 8, "seq_len": seq_len},
        "checkpoint": {"every": 1000}, "log_every": 1,
    }))  # fmt: skip
    marker.write_text(str(examples))
    return config, f"written in {time.perf_counter() - start:.0f} s"


def first_step(config: Path, run_dir: Path, cache: str, seq_len: int, xla_cache: Path | None = None
               ) -> tuple[float, float]:
    """(seconds from process start to the end of step 1, peak RSS in GiB) of a fresh `instructjax train`."""
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {**os.environ, "INSTRUCTJAX_CACHE_DIR": cache, "JAX_PLATFORMS": "cpu"}
    if xla_cache is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(xla_cache)
    cmd = [sys.executable, "-m", "instructjax.cli", "train", "--config", str(config), f"run_dir={run_dir}",
           "max_steps=1", f"data.seq_len={seq_len}"]  # fmt: skip
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(err.read().decode(errors="replace")[-3000:])
    return seconds, usage.ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, summary=None)
    parser.add_argument("--examples", type=int, default=500_000)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--dir", type=Path, help="keep the data and the cache here (default: a temporary directory)")
    parser.add_argument("--starts", default=",".join(STARTS), help=f"which starts to time, of {', '.join(STARTS)}")
    parser.add_argument("--warm", type=int, default=1, help="warm restarts to time")
    parser.add_argument("--xla-cache", action="store_true", help="with JAX's persistent compilation cache")
    args = parser.parse_args(argv)
    starts = args.starts.split(",")
    if not set(starts) <= set(STARTS):
        parser.error(f"--starts: choose from {', '.join(STARTS)}")

    load = common.load_average()
    with tempfile.TemporaryDirectory() as tmp:
        where = args.dir or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        config, written = prepare(where, args.examples, args.seq_len)
        cache = where / "cache"
        rows = []

        xla = where / "xla" if args.xla_cache else None

        def timed(label: str, cache_dir: str) -> None:
            seconds, rss = first_step(config, where / "run", cache_dir, args.seq_len, xla)
            rows.append([label, f"{seconds:.1f}", f"{rss:.2f}"])
            print(f"{label}: {seconds:.1f} s, peak RSS {rss:.2f} GiB", flush=True)

        if "no-cache" in starts:
            timed("no cache", "off")
        if "cold" in starts:
            shutil.rmtree(cache, ignore_errors=True)
            timed("cold cache (writes it)", str(cache))
        if "warm" in starts:
            if not any(cache.glob("*.tok")):
                parser.error(f"no cache in {cache} to restart from: time a cold start first (--starts cold,warm)")
            for k in range(args.warm):
                timed(f"warm cache (restart {k + 1})" if args.warm > 1 else "warm cache (a restart)", str(cache))
        size = sum(f.stat().st_size for f in cache.glob("*.tok")) / 2**20
    xla_note = "; JAX's persistent compilation cache on" if args.xla_cache else ""
    body = (f"{args.examples} examples (Tulu Human+GPT shape, built-in rows {written}), seq {args.seq_len}, tiny "
            f"model, 1 step; cache {size:.0f} MiB{xla_note}; goal: warm restart <= 60 s\n\n"
            + common.table(["start", "seconds to the end of step 1", "peak RSS (GiB)"], rows))  # fmt: skip
    print(body)
    common.finish(args, "Restart to the first step with the tokenized-task cache", body, load_before=load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
