"""Reading + encoding a sample of a source of many rows: the whole source first, or only the sample.

A FLAN V2 file in the hub schema (`inputs`, `targets`, `task_name`, ...; the built-in synthetic generator,
Tulu Table 1 lengths) of `--rows` rows; a mixture that keeps `--sample` of it. Timed side by side:
  whole then sample  every row read, rendered and tokenized, then the sample drawn (what the pipeline did
                     before: FLAN V2's flan_zs_opt is ~10.9 GB gzipped, millions of rows, on every host);
  sample only        the rows visited in the task's seeded order until the sample is full
                     (`examples_lib.encoded_examples(name, count, seed)`), each read from the Arrow table.
Both read through `datasets` into its memory-mapped Arrow cache first (timed apart: done once per
machine and kept). Figures: conversations of the sample per second.

    python benchmarks/sampled_source.py [--rows 500000 --sample 100000 --seq-len 2048]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = common.parser(__doc__, summary="--summary-json")
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--sample", type=int, default=100_000)
    parser.add_argument("--seq-len", type=int, default=2048)
    args = parser.parse_args(argv)

    from instructjax.data.binding import bind
    from instructjax.data.blends import specs
    from instructjax.data.sources import rows, synthetic
    from instructjax.data.tokenized import examples as examples_lib

    load = common.load_average()
    workdir = tempfile.mkdtemp(prefix="instructjax-sampled-")
    t0 = time.perf_counter()
    [path] = synthetic.write_synthetic("flan_v2", workdir, n_rows=args.rows, seed=0)
    written = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows.RowFile(path, cache_dir=f"{workdir}/cache")  # datasets' Arrow conversion, kept on disk
    arrow = time.perf_counter() - t0

    def task(name: str) -> str:
        specs.add_task(name, specs.TaskSpec(source="flan_v2", data_files=(path,)))
        return bind(name, tokenizer=None, max_length=args.seq_len).name

    whole = task("bench_flan_whole")
    t0 = time.perf_counter()
    everything = examples_lib.encoded_examples(whole)
    whole_seconds = time.perf_counter() - t0
    sampled = task("bench_flan_sampled")
    t0 = time.perf_counter()
    sample = examples_lib.encoded_examples(sampled, args.sample, 0)
    sample_seconds = time.perf_counter() - t0
    report = examples_lib.task_report(sampled, 0)
    rows = [
        ["whole then sample (before)", f"{len(everything):,}", f"{whole_seconds:,.1f}",
         f"{args.sample / whole_seconds:,.0f}"],
        ["sample only (after)", f"{report.read:,}", f"{sample_seconds:,.1f}", f"{len(sample) / sample_seconds:,.0f}"],
    ]
    body = (f"FLAN V2 schema, {args.rows:,} rows (written in {written:.0f}s; datasets' Arrow conversion "
            f"{arrow:.0f}s, once per machine), a sample of {args.sample:,} at seq_len {args.seq_len}, the built-in "
            "tokenizer.\n\n" + common.table(["read + encode", "rows encoded", "seconds", "sample conversations/s"],
                                             rows)
            + f"\n\nSpeed-up {whole_seconds / sample_seconds:.1f}x; the sample's cost no longer grows with the file.")
    print(body)
    summary = {"before_conversations_per_s": args.sample / whole_seconds,
               "after_conversations_per_s": len(sample) / sample_seconds}
    common.finish(args, "Sampling a source before encoding it (issue 14)", body, summary, load_before=load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
