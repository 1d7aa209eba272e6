"""Restart to the first step with and without the tokenized-task cache, on a mixture of Tulu Human+GPT's shape.

Built-in synthetic rows of the seven Tulu Human+GPT datasets (seed 004 Table 1 proportions, each in its
hub schema and lengths) written as local files, `--examples` rows in all, one config whose `define:` block
makes them tasks and an epoch mixture of all of them. Timed side by side, each a fresh
`instructjax train ... max_steps=1` process (tiny model, so the figure is the data side):
  no cache      INSTRUCTJAX_CACHE_DIR=off: every row read, rendered and tokenized (what every restart did);
  cold cache    the first start with the cache on (tokenizes, then writes the cache);
  warm cache    a restart: the tokenized tasks read back.

    python benchmarks/restart_cache.py [--examples 500000 --seq-len 2048]
"""

from __future__ import annotations

import argparse
import os
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


def write_data(directory: Path, examples: int) -> dict:
    """Synthetic rows in each dataset's schema, scaled to `examples` rows; the config's define block."""
    from instructjax.data import synthetic

    total = sum(SHAPE.values())
    tasks = {}
    for source, rows in SHAPE.items():
        n = max(1, round(rows * examples / total))
        files = synthetic.write_synthetic(source, str(directory / source), n_rows=n)
        tasks[f"bench_{source}"] = {"source": source, "data_files": files}
    return {"tasks": tasks, "mixtures": {"bench_tulu_shape": {"mode": "epoch", "counts": dict.fromkeys(tasks)}}}


def first_step(config: Path, run_dir: Path, cache: str, seq_len: int) -> float:
    """Seconds from process start to the end of step 1 (a fresh `instructjax train`)."""
    env = {**os.environ, "INSTRUCTJAX_CACHE_DIR": cache, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "instructjax.cli", "train", "--config", str(config), f"run_dir={run_dir}",
           "max_steps=1", f"data.seq_len={seq_len}"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=500_000)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--skip-no-cache", action="store_true", help="the cold start stands for it")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)

    load = common.load_average()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        define = write_data(tmp / "data", args.examples)
        written = time.perf_counter() - t
        config = tmp / "run.yaml"
        config.write_text(yaml.safe_dump({
            "define": define, "model": {"preset": "tiny"},
            "data": {"mixture": "bench_tulu_shape", "global_batch": 8, "seq_len": args.seq_len},
            "checkpoint": {"every": 1000}, "log_every": 1,
        }))  # fmt: skip
        rows = []
        if not args.skip_no_cache:
            rows.append(["no cache", f"{first_step(config, tmp / 'r0', 'off', args.seq_len):.1f}"])
        rows.append(["cold cache (writes it)", f"{first_step(config, tmp / 'r1', str(tmp / 'cache'), args.seq_len):.1f}"])
        rows.append(["warm cache (a restart)", f"{first_step(config, tmp / 'r2', str(tmp / 'cache'), args.seq_len):.1f}"])
        size = sum(f.stat().st_size for f in (tmp / "cache").glob("*.npz")) / 2**20
    body = (f"{args.examples} examples (Tulu Human+GPT shape, built-in rows written in {written:.0f} s), seq "
            f"{args.seq_len}, tiny model, 1 step; cache {size:.0f} MiB; goal: warm restart <= 60 s\n\n"
            + common.table(["start", "seconds to the end of step 1"], rows))  # fmt: skip
    print(body)
    if not args.no_append:
        common.append_results("Restart to the first step with the tokenized-task cache", body, load_before=load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
