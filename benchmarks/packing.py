"""Packing efficiency and speed, side by side: ours (best-fit-decreasing), seqio's packer, no packing.

Data: the Tulu Human+GPT mix (FLAN V2, CoT, Dolly, OASST1, GPT4-Alpaca, Code-Alpaca, ShareGPT), in
Table 1's proportions (seed 004). The real datasets do not ship offline, so either
  --data synthetic (default): the built-in synthetic rows of each dataset (lengths matched to Table 1),
      through the real adapters, Tulu chat template and LLaMA tokenizer, resampled to --examples; or
  --data table1: lengths drawn from a log-normal model of Table 1's means (`tulu_lengths`).

    python benchmarks/packing.py [--data synthetic|table1] [--examples 20000] [--seqio-examples 5000]

Efficiency = non-padding tokens / all tokens; tokens/s = non-padding tokens out per second of packing
(one process; seqio's time is iterating its tf.data pipeline). Appends a section to
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

from instructjax.data.batches.packing import PackStats, SequencePacker  # noqa: E402

# Tulu (seed 004) Table 1, Human+GPT mixture: instances, mean rounds, mean prompt / completion tokens.
TULU_HUMAN_GPT = {
    "flan_v2": (100_000, 1.0, 355.7, 31.2),
    "cot": (100_000, 1.0, 266.0, 53.2),
    "dolly": (15_011, 1.0, 118.1, 91.3),
    "oasst1": (34_795, 1.6, 34.8, 212.5),
    "gpt4_alpaca": (52_002, 1.0, 28.0, 161.8),
    "code_alpaca": (20_022, 1.0, 35.6, 67.8),
    "sharegpt": (168_864, 3.2, 71.0, 357.8),
}
TEMPLATE_TOKENS_PER_ROUND = 13  # "<|user|>\n", "\n<|assistant|>\n", "</s>" in the LLaMA tokenizer
SHAREGPT_BLOCK = 2048  # Tulu follows Vicuna: ShareGPT conversations split into blocks of <= 2048 tokens
LENGTH_SIGMA = 1.0  # log-normal spread of a turn's length (Table 1 gives only means)


def tulu_lengths(n_examples: int, seed: int = 0) -> list[tuple[int, int]]:
    """(length, trained tokens) of `n_examples` sampled from the Human+GPT mix, datasets in proportion.

    Per example: rounds = 1 + geometric(mean rounds - 1); per round a log-normal prompt and completion
    with Table 1's means, plus the Tulu template tokens. ShareGPT is cut into 2048-token blocks.
    Replace with real encoded conversations when they are available; callers only need lengths.
    """
    rng = np.random.default_rng(seed)
    names = list(TULU_HUMAN_GPT)
    sizes = np.array([TULU_HUMAN_GPT[k][0] for k in names], dtype=float)
    counts = rng.multinomial(n_examples, sizes / sizes.sum())
    mu = -(LENGTH_SIGMA**2) / 2  # log-normal with mean 1, scaled by the table's mean
    out: list[tuple[int, int]] = []
    for name, count in zip(names, counts, strict=True):
        _, rounds_mean, prompt_mean, completion_mean = TULU_HUMAN_GPT[name]
        extra = rounds_mean - 1
        rounds = 1 + (rng.geometric(1 / (1 + extra), count) - 1 if extra else np.zeros(count, int))
        for r in rounds:
            prompt = np.maximum(1, np.rint(prompt_mean * rng.lognormal(mu, LENGTH_SIGMA, r))).sum()
            completion = np.maximum(1, np.rint(completion_mean * rng.lognormal(mu, LENGTH_SIGMA, r))).sum()
            trained = int(completion) + r  # completion + "</s>" per round
            length = int(prompt + completion) + TEMPLATE_TOKENS_PER_ROUND * r + 1  # + BOS
            blocks = [length]
            if name == "sharegpt" and length > SHAREGPT_BLOCK:
                full, rest = divmod(length, SHAREGPT_BLOCK)
                blocks = [SHAREGPT_BLOCK] * full + ([rest] if rest else [])
            out += [(b, max(1, round(b * trained / length))) for b in blocks]
    order = rng.permutation(len(out))  # a concatenated, shuffled mixture (Tulu's epoch mode)
    return [out[i] for i in order]


def make_examples(lengths: list[tuple[int, int]], seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Token arrays of those lengths: random ids, the last `trained` tokens in the loss mask."""
    rng = np.random.default_rng(seed)
    examples = []
    for length, trained in lengths:
        mask = np.zeros(length, np.int32)
        mask[length - min(trained, length - 1) :] = 1
        examples.append(dict(tokens=rng.integers(3, 32000, length, dtype=np.int32), loss_mask=mask))
    return examples


def synthetic_examples(n_examples: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Built-in synthetic conversations, encoded with the Tulu template and the LLaMA tokenizer, then
    drawn (with replacement) per dataset in Table 1's proportions."""
    from instructjax.data.encoding.encode import encode_conversation
    from instructjax.data.encoding.tokenizer import Tokenizer
    from instructjax.data.sources.catalog import load_conversations
    from instructjax.data.sources.synthetic import ensure_synthetic

    tokenizer = Tokenizer.load()
    rng = np.random.default_rng(seed)
    names = list(TULU_HUMAN_GPT)
    sizes = np.array([TULU_HUMAN_GPT[k][0] for k in names], dtype=float)
    examples = []
    for name, count in zip(names, rng.multinomial(n_examples, sizes / sizes.sum()), strict=True):
        encoded = [
            encode_conversation(c, "tulu", tokenizer)
            for c in load_conversations(name, ensure_synthetic(name))
        ]
        examples += [
            dict(tokens=encoded[i].tokens, loss_mask=encoded[i].loss_mask)
            for i in rng.integers(0, len(encoded), count)
        ]
    return [examples[i] for i in rng.permutation(len(examples))]


def run_ours(examples, seq_len: int, window: int, pack: bool = True) -> tuple[float, float, int]:
    """(efficiency, non-padding tokens/s, rows) of our packer over all examples."""
    packer, total = SequencePacker(seq_len, window=window, pack=pack), PackStats()
    start = time.perf_counter()
    for _, stats in packer.windows(examples):
        total += stats
    seconds = time.perf_counter() - start
    return total.efficiency, total.tokens / seconds, total.rows


def run_seqio(examples, seq_len: int) -> tuple[float, float, int]:
    """(efficiency, non-padding tokens/s, rows) of seqio.utils.trim_and_pack_dataset, feature "targets"."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import seqio
    import tensorflow as tf

    tokens = np.concatenate([e["tokens"] for e in examples])
    lengths = np.array([e["tokens"].size for e in examples])
    ragged = tf.RaggedTensor.from_row_lengths(tokens, lengths)
    ds = tf.data.Dataset.from_tensor_slices(ragged).map(
        tf.autograph.experimental.do_not_convert(lambda t: {"targets": t})
    )
    packed = seqio.utils.trim_and_pack_dataset(ds, {"targets": seq_len})
    real = total = rows = 0
    start = time.perf_counter()
    for row in packed.as_numpy_iterator():
        real += int(np.count_nonzero(row["targets_segment_ids"]))
        total += row["targets_segment_ids"].size
        rows += 1
    seconds = time.perf_counter() - start
    return real / total, real / seconds, rows


def main(argv: list[str] | None = None) -> None:
    parser = common.parser(__doc__, summary=None)
    parser.add_argument("--data", choices=["synthetic", "table1"], default="synthetic")
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--seqio-examples", type=int, default=5_000, help="seqio is slow: a prefix")
    parser.add_argument("--window", type=int, default=None, help="our window (default: the packer's)")
    parser.add_argument("--windows", default="50,100,250,500,1000,2000,5000", help="window sweep")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    load_before = common.load_average()

    if args.data == "synthetic":
        examples = synthetic_examples(args.examples, args.seed)
        what = "built-in synthetic rows (Tulu template, LLaMA tokenizer)"
    else:
        examples = make_examples(tulu_lengths(args.examples, args.seed), args.seed)
        what = "log-normal length model of Table 1 (ShareGPT in 2048-token blocks)"
    lengths = np.array([e["tokens"].size for e in examples])
    default_window = args.window or SequencePacker(2048).window
    lines = [
        f"Data: Tulu Human+GPT mix, {what}: {len(examples):,} examples, {lengths.sum():,} tokens, "
        f"mean length {lengths.mean():.0f}, {np.mean(lengths > 512):.1%} over 512, "
        f"{np.mean(lengths > 2048):.1%} over 2048.",
        "",
        "| packer | seq_len | window | examples | rows | efficiency | tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(name, seq_len, window, n, result):
        eff, rate, rows = result
        lines.append(f"| {name} | {seq_len} | {window} | {n:,} | {rows:,} | {eff:.2%} | {rate:,.0f} |")
        print(lines[-1], flush=True)

    print("\n".join(lines), flush=True)
    for seq_len in (2048, 512):
        row(
            "ours (best-fit-decreasing)",
            seq_len,
            default_window,
            len(examples),
            run_ours(examples, seq_len, default_window),
        )
        row("no packing", seq_len, "-", len(examples), run_ours(examples, seq_len, 1, pack=False))
        subset = examples[: args.seqio_examples]
        row("seqio trim_and_pack_dataset", seq_len, "-", len(subset), run_seqio(subset, seq_len))

    lines += ["", "Our efficiency against the packing window (examples per window):", ""]
    windows = [int(w) for w in args.windows.split(",")]
    lines += ["| seq_len | " + " | ".join(map(str, windows)) + " |", "|---" * (len(windows) + 1) + "|"]
    print("\n".join(lines[-5:]), flush=True)
    for seq_len in (2048, 512):
        effs = [run_ours(examples, seq_len, w)[0] for w in windows]
        lines.append(f"| {seq_len} | " + " | ".join(f"{e:.2%}" for e in effs) + " |")
        print(lines[-1], flush=True)

    common.finish(args, "Packing", "\n".join(lines), load_before=load_before)


if __name__ == "__main__":
    main()
