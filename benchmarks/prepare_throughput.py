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
The median of each is reported, with the ratio (goal: at most 2.0x). `--hosts H`: then `data prepare` once on one
process and once on H local processes (JAX's distributed runtime, gloo) sharing a fresh cache directory: the rows
each process read (fetched and adapted) and the conversations it tokenized, from its own `data:` line, and whether
the cache files are the one process's bytes.

    python benchmarks/prepare_throughput.py [--examples 20000] [--rounds 2] [--dir DIR] [--hosts 4]
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402
from restart_cache import prepare  # noqa: E402

GOAL = 2.0  # issue 40 (issue 24: 2.5)


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


def ours(config: Path, cache: Path, hosts: int = 1) -> tuple[float, list[str]]:
    """`data prepare` into an empty `cache` on `hosts` processes: seconds to the last exit, each one's data line."""
    shutil.rmtree(cache, ignore_errors=True)
    port, procs = _free_port(), []
    start = time.perf_counter()
    for i in range(hosts):
        env = {**os.environ, "INSTRUCTJAX_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu"}
        if hosts > 1:
            env |= {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(hosts),
                    "JAX_PROCESS_ID": str(i), "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, "-m", "instructjax.cli", "data", "prepare", "--config",
                                       str(config)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))  # fmt: skip
    lines = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(err[-3000:])
        lines.append(next(line for line in out.splitlines() if line.startswith("data: ")))
    return time.perf_counter() - start, lines


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shares(config: Path, directory: Path, hosts: int) -> str:
    """Rows read and conversations tokenized by one process, then by each of `hosts`, on one fresh cache each."""
    rows = []
    for n in (1, hosts):
        seconds, lines = ours(config, directory / f"cache{n}", n)
        for i, line in enumerate(lines):
            read, tokenized = (int(m.replace(",", "")) for m in re.findall(r"([\d,]+) (?:row|conversation)", line))
            rows.append([f"{n} process(es)", i, f"{read:,}", f"{tokenized:,}", f"{seconds:.1f}"])
    same = {f.name: f.read_bytes() for f in (directory / "cache1").glob("*.tok")} == \
        {f.name: f.read_bytes() for f in (directory / f"cache{hosts}").glob("*.tok")}  # fmt: skip
    return (f"**Each host's share**: `data prepare` on one process, then on {hosts} local processes (gloo, one cache "
            f"directory; {os.cpu_count()} CPUs shared, so the seconds are not a speed-up): what each read and "
            f"tokenized, from its own `data:` line. Cache files the one process's bytes: {'yes' if same else 'NO'}."
            "\n\n" + common.table(["run", "process", "rows read (fetched, adapted)", "conversations tokenized",
                                    "seconds (run)"], rows))


def spm(strings: list[str]) -> tuple[float, int]:
    import sentencepiece

    from instructjax.data.encoding.tokenizer import default_tokenizer_path

    processor = sentencepiece.SentencePieceProcessor(model_file=default_tokenizer_path())
    start = time.perf_counter()
    ids = processor.encode(strings, num_threads=os.cpu_count())
    return time.perf_counter() - start, sum(len(i) for i in ids)


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, summary=None)
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", type=Path, help="keep the rows here between invocations (default: a temporary one)")
    parser.add_argument("--hosts", type=int, default=0, help="also prepare on this many local processes")
    args = parser.parse_args(argv)
    load_before = common.load_average()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="prepare_bench_"))
    directory.mkdir(parents=True, exist_ok=True)
    config, written = prepare(directory, args.examples, args.seq_len)
    strings = row_strings(directory / "data")
    times: dict[str, list[float]] = {"ours": [], "spm": []}
    tokens = 0
    for r in range(args.rounds):
        times["ours"].append(ours(config, directory / "cache")[0])
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
    if args.hosts > 1:
        body += "\n" + shares(config, directory, args.hosts) + "\n"
    print(body)
    common.finish(args, "data prepare against sentencepiece's batch encode (issues 24, 40)", body,
                  load_before=load_before)
    if args.dir is None:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
