"""End-to-end input pipeline throughput: DataPipeline on a built-in mixture, encode and pack timed apart.

The first pass over a mixture reads every row, applies the chat template and tokenizes (the tasks'
encode, cached per process); every epoch then packs (best-fit-decreasing) and batches. Timed here:
  encode      DataPipeline(...) construction: read rows + template + tokenize every task (+ subset draw);
  pack        one epoch of host batches out of the iterator (window packing, shuffle, stacking), no prefetch;
  end to end  encode + pack, i.e. what the first epoch of a run costs.
tokens/s counts non-padding tokens of the packed epoch; efficiency = those / (rows x seq_len).

    python benchmarks/pipeline_throughput.py [--mixture tulu_human_gpt_builtin --seq-len 2048 --batch 64]
        [--mosaic] [--profile]

Goal: >= 100,000 tokens/s. `--profile` prints cProfile's top functions of each phase.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

FALLBACK = "all_builtin"  # every built-in dataset, whole


def _profiled(enabled: bool, fn, *args):
    """(result, seconds, top-functions text or '') of fn(*args)."""
    prof = cProfile.Profile() if enabled else None
    t0 = time.perf_counter()
    if prof:
        prof.enable()
    result = fn(*args)
    if prof:
        prof.disable()
    seconds = time.perf_counter() - t0
    text = ""
    if prof:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
        text = out.getvalue()
    return result, seconds, text


def one_epoch(pipeline) -> tuple[int, int, int]:
    """(batches, non-padding tokens, rows) of one epoch pulled from the pipeline's iterator."""
    import numpy as np

    steps = pipeline.plan_epoch(0).steps
    tokens = rows = 0
    it = iter(pipeline)
    for _ in range(steps):
        batch = next(it)
        tokens += int(np.count_nonzero(batch["segment_ids"]))
        rows += batch["segment_ids"].shape[0]
    return steps, tokens, rows


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__)
    parser.add_argument("--mixture", default="tulu_human_gpt_builtin")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--mosaic", action="store_true", help="also time a Mosaic-IT (mix) epoch")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions per phase")
    args = parser.parse_args(argv)

    load_before = common.load_average()
    t0 = time.perf_counter()
    import instructjax.data.seqio.mixtures  # noqa: F401  (the seqio face, imported as before: its time is counted)
    from instructjax.core.config import DataSection, MosaicSection
    from instructjax.data.batches.pipeline import DataPipeline

    import_s = time.perf_counter() - t0
    from instructjax.core.errors import ConfigError

    note = ""
    try:
        config = DataSection(mixture=args.mixture, seq_len=args.seq_len, global_batch=args.batch, prefetch=0)
        pipeline, encode_s, encode_prof = _profiled(args.profile, DataPipeline, config)
    except ConfigError as e:  # e.g. a built-in mixture asking for more rows than its synthetic task holds
        note = f"`{args.mixture}` could not be built ({e}); measured `{FALLBACK}` instead. "
        print(note)
        args.mixture = FALLBACK
        config = DataSection(mixture=args.mixture, seq_len=args.seq_len, global_batch=args.batch, prefetch=0)
        pipeline, encode_s, encode_prof = _profiled(args.profile, DataPipeline, config)
    examples = sum(len(e) for e in pipeline.stream.examples)
    encoded_tokens = sum(len(x["tokens"]) for e in pipeline.stream.examples for x in e)
    (steps, tokens, rows), pack_s, pack_prof = _profiled(args.profile, one_epoch, pipeline)
    efficiency = tokens / (rows * args.seq_len)
    rows_out = [
        ["encode (read + template + tokenize, all tasks)", f"{examples:,} examples", f"{encoded_tokens:,}",
         f"{encode_s:.2f}", f"{encoded_tokens / encode_s:,.0f}", ""],
        ["pack (one epoch of batches)", f"{steps} batches, {rows:,} rows", f"{tokens:,}", f"{pack_s:.2f}",
         f"{tokens / pack_s:,.0f}", f"{efficiency:.2%}"],
        ["**end to end (first epoch: encode + pack)**", "", f"{tokens:,}", f"{encode_s + pack_s:.2f}",
         f"**{tokens / (encode_s + pack_s):,.0f}**", f"{efficiency:.2%}"],
    ]  # fmt: skip
    profiles = {"encode": encode_prof, "pack": pack_prof}
    if args.mosaic:
        mconfig = DataSection(mixture=args.mixture, seq_len=args.seq_len, global_batch=args.batch, prefetch=0,
                             mosaic=MosaicSection(max_length=args.seq_len))  # fmt: skip
        mpipe = DataPipeline(mconfig)  # tasks already encoded (cached): this times the mosaic epoch only
        (msteps, mtokens, mrows), mosaic_s, profiles["mosaic"] = _profiled(args.profile, one_epoch, mpipe)
        rows_out.append(["Mosaic-IT epoch (mix, k<=10: mosaic + template + tokenize + pack)",
                         f"{msteps} batches, {mrows:,} rows", f"{mtokens:,}", f"{mosaic_s:.2f}",
                         f"{mtokens / mosaic_s:,.0f}", f"{mtokens / (mrows * args.seq_len):.2%}"])  # fmt: skip
    e2e = tokens / (encode_s + pack_s)
    body = (
        f"{note}Mixture `{args.mixture}`, seq_len {args.seq_len}, global batch {args.batch}, one process, no prefetch "
        f"thread; import of seqio/TF and the registries {import_s:.1f}s (not counted).\n\n"
        + common.table(["phase", "size", "tokens", "s", "tokens/s", "efficiency"], rows_out)
        + f"\n\nGoal >= 100,000 tokens/s end to end: {'met' if e2e >= 1e5 else 'missed'} "
        f"(pack only: {tokens / pack_s:,.0f} tokens/s).\n"
    )
    print(body)
    for name, text in profiles.items():
        if text:
            print(f"---- profile: {name} ----\n{text}")
    summary = {"end_to_end_tokens_per_s": e2e, "pack_tokens_per_s": tokens / pack_s,
               "encode_tokens_per_s": encoded_tokens / encode_s, "efficiency": efficiency,
               "load_before": load_before, "load_after": common.load_average()}  # fmt: skip
    common.finish(args, "Input pipeline, end to end", body, summary, load_before=load_before)
    return summary


if __name__ == "__main__":
    main()
