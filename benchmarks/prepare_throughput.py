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
  engine  the same strings through the tokenizer `data prepare` uses, alone (`Tokenizer.encode_offsets`: Hugging
        Face tokenizers' batch encode on every core, and each token's span): the floor under `ours`.
  beam  `data prepare --runner beam` (a fresh process, start to exit: the plan, an Apache Beam pipeline on the
        FnApiRunner with N local worker processes, `--beam-args --direct_num_workers=N`, then the same summary), for
        each N of `--beam-workers`; its cache files checked against the in-process run's bytes.
The median of each is reported, with the ratio to sentencepiece (goal: at most 2.0x) and Beam's to the in-process
prepare (goal: at most 1.3x with 2 workers on 2 cores). `--hosts H`: then `data prepare` once on one process and once
on H local processes (JAX's distributed runtime, gloo) sharing a fresh cache directory: the rows each process read
(fetched and adapted) and the conversations it tokenized, from its own `data:` line, and whether the cache files are
the one process's bytes.

    python benchmarks/prepare_throughput.py [--examples 20000] [--rounds 2] [--dir DIR] [--hosts 4]
    python benchmarks/prepare_throughput.py --examples 500000 --rounds 1 --beam-workers 1,2
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

GOAL = 1.5  # issue 78 (issue 40: 2.0, issue 24: 2.5)
BEAM_GOAL = 1.3  # issue 68: Beam with 2 local workers against the in-process prepare, on 2 cores


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


def beam(config: Path, cache: Path, workers: int) -> float:
    """`data prepare --runner beam` on `workers` local worker processes into an empty `cache`: seconds to its exit."""
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "INSTRUCTJAX_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "instructjax.cli", "data", "prepare", "--config", str(config),
                           "--runner", "beam", "--beam-args", f"--direct_num_workers={workers}"], env=env,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    return time.perf_counter() - start


def same_files(a: Path, b: Path) -> bool:
    return {f.name: f.read_bytes() for f in a.glob("*.tok")} == {f.name: f.read_bytes() for f in b.glob("*.tok")}


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


def engine(strings: list[str]) -> float:
    """Seconds `Tokenizer.encode_offsets` takes over `strings` (the built-in tokenizer, 10,000 strings a call)."""
    from instructjax.data.encoding.tokenizer import Tokenizer

    tokenizer = Tokenizer.load()
    start = time.perf_counter()
    for at in range(0, len(strings), 10_000):
        tokenizer.encode_offsets(strings[at : at + 10_000])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, summary=None)
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", type=Path, help="keep the rows here between invocations (default: a temporary one)")
    parser.add_argument("--hosts", type=int, default=0, help="also prepare on this many local processes")
    parser.add_argument("--beam-workers", default="1,2",
                        help="`--runner beam` rows: local worker counts, comma-separated (empty: none)")
    args = parser.parse_args(argv)
    beam_workers = [int(n) for n in args.beam_workers.split(",") if n.strip()]
    load_before = common.load_average()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="prepare_bench_"))
    directory.mkdir(parents=True, exist_ok=True)
    config, written = prepare(directory, args.examples, args.seq_len)
    strings = row_strings(directory / "data")
    times: dict[str, list[float]] = {"ours": [], **{f"beam{n}": [] for n in beam_workers}, "engine": [], "spm": []}
    tokens, same = 0, []
    for r in range(args.rounds):
        times["ours"].append(ours(config, directory / "cache")[0])
        for n in beam_workers:
            times[f"beam{n}"].append(beam(config, directory / f"cache-beam{n}", n))
            same.append(same_files(directory / "cache", directory / f"cache-beam{n}"))
        times["engine"].append(engine(strings))
        seconds, tokens = spm(strings)
        times["spm"].append(seconds)
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items()), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    a, b = med["ours"], med["spm"]
    each = lambda k: f"{med[k]:.1f} ({', '.join(f'{t:.1f}' for t in times[k])})"  # noqa: E731
    rows = [["instructjax data prepare (in process)", each("ours"), f"**{a / b:.2f}x**", "1x"]]
    rows += [[f"data prepare --runner beam, {n} worker(s)", each(f"beam{n}"), f"{med[f'beam{n}'] / b:.2f}x",
              f"**{med[f'beam{n}'] / a:.2f}x**"] for n in beam_workers]  # fmt: skip
    rows.append(["its tokenizer alone (encode_offsets)", each("engine"), f"{med['engine'] / b:.2f}x",
                 f"{med['engine'] / a:.2f}x"])
    rows.append(["sentencepiece encode", each("spm"), "1x", f"{b / a:.2f}x"])
    body = (
        f"{args.examples} rows of Tulu Human+GPT's shape (synthetic, hub schemas; data {written}), seq "
        f"{args.seq_len}, {os.cpu_count()} CPUs, median of {args.rounds} alternating rounds. `data prepare`: a fresh "
        "process into an empty cache, start to exit (`--runner beam`: the FnApiRunner with N local worker "
        "processes). sentencepiece: the built-in tokenizer's SentencePiece "
        f"model, one `encode` call over every string of the rows ({len(strings):,} strings, {tokens:,} tokens) "
        "with a thread per CPU.\n\n"
        + common.table(["", "seconds (each round)", "ratio to sentencepiece", "ratio to in process"], rows)
        + f"\n\nGoal: at most {GOAL}x sentencepiece: {'met' if a / b <= GOAL else 'missed'}."
    )
    if 2 in beam_workers:
        ratio = med["beam2"] / a
        body += f" Beam with 2 workers at most {BEAM_GOAL}x in process: {'met' if ratio <= BEAM_GOAL else 'missed'}."
    if beam_workers:
        body += f" Beam's cache files the in-process bytes: {'yes' if all(same) else 'NO'}."
    body += "\n"
    if args.hosts > 1:
        body += "\n" + shares(config, directory, args.hosts) + "\n"
    print(body)
    common.finish(args, "data prepare against sentencepiece's batch encode (issues 24, 40, 68)", body,
                  load_before=load_before)
    if args.dir is None:
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
