"""`instructjax data prepare` from outside, against sentencepiece's own C++ batch encode of the same rows.

Synthetic rows of the seven Tulu Human+GPT datasets in their hub schemas (`restart_cache.SHAPE`, `--examples`
rows in all, one config whose `define:` block makes them a mixture). Timed in turn, `--rounds` times:
  ours  a fresh `instructjax data prepare --config` process into an empty cache directory (JAX's start, the
        binding, reading, adapting, splitting, rendering, tokenizing and masking every task on every core,
        and writing the cache), start to exit;
  spm   every string in the same rows (each field of each row, as read from the files) through the built-in
        tokenizer's own SentencePiece model (`mistral-common`'s tokenizer.model.v1) in one
        `SentencePieceProcessor.encode(strings, num_threads=CPUs)` call: the tokenizer's C++ batch encode on
        every core, with the reading of the files not timed.
The median of each is reported, with the ratio (goal: at most 2.5x).

    python benchmarks/prepare_throughput.py [--examples 20000] [--rounds 2] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402
from restart_cache import prepare  # noqa: E402

GOAL = 2.5


def strings_of(value, out: list[str]) -> list[str]:
    """Every string in a row, depth first."""
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for v in value.values():
            strings_of(v, out)
    elif isinstance(value, list):
        for v in value:
            strings_of(v, out)
    return out


def row_strings(data: Path) -> list[str]:
    strings: list[str] = []
    for path in sorted(data.rglob("*.jsonl")):
        with path.open() as f:
            for line in f:
                if line.strip():
                    strings_of(json.loads(line), strings)
    return strings


def ours(config: Path, cache: Path) -> float:
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "INSTRUCTJAX_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "instructjax.cli", "data", "prepare", "--config", str(config)],
                          env=env, capture_output=True, text=True)  # fmt: skip
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return seconds


def spm(strings: list[str]) -> tuple[float, int]:
    import sentencepiece

    from instructjax.data.encoding.tokenizer import default_tokenizer_path

    processor = sentencepiece.SentencePieceProcessor(model_file=default_tokenizer_path())
    start = time.perf_counter()
    ids = processor.encode(strings, num_threads=os.cpu_count())
    return time.perf_counter() - start, sum(len(i) for i in ids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", type=Path, help="keep the rows here between invocations (default: a temporary one)")
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)
    load_before = common.load_average()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="prepare_bench_"))
    directory.mkdir(parents=True, exist_ok=True)
    config, written = prepare(directory, args.examples, args.seq_len)
    strings = row_strings(directory / "data")
    times: dict[str, list[float]] = {"ours": [], "spm": []}
    tokens = 0
    for r in range(args.rounds):
        times["ours"].append(ours(config, directory / "cache"))
        seconds, tokens = spm(strings)
        times["spm"].append(seconds)
        print(f"round {r + 1}: data prepare {times['ours'][-1]:.1f} s, sentencepiece {seconds:.1f} s", flush=True)
    a, b = statistics.median(times["ours"]), statistics.median(times["spm"])
    body = (
        f"{args.examples} rows of Tulu Human+GPT's shape (synthetic, hub schemas; data {written}), seq "
        f"{args.seq_len}, {os.cpu_count()} CPUs, median of {args.rounds} alternating rounds. `data prepare`: a fresh "
        "process into an empty cache, start to exit. sentencepiece: the built-in tokenizer's SentencePiece "
        f"model, one `encode` call over every string of the rows ({len(strings):,} strings, {tokens:,} tokens) "
        "with a thread per CPU.\n\n"
        + common.table(["", "seconds (each round)", "ratio"], [
            ["instructjax data prepare", f"{a:.1f} ({', '.join(f'{t:.1f}' for t in times['ours'])})",
             f"**{a / b:.2f}x**"],
            ["sentencepiece encode", f"{b:.1f} ({', '.join(f'{t:.1f}' for t in times['spm'])})", "1x"],
        ])  # fmt: skip
        + f"\n\nGoal: at most {GOAL}x: {'met' if a / b <= GOAL else 'missed'}.\n"
    )
    print(body)
    if not args.no_append:
        common.append_results("data prepare against sentencepiece's batch encode (issue 24)", body,
                              load_before=load_before)  # fmt: skip
    if args.dir is None:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
