"""Training cost of Mosaic-IT vs the baseline, side by side with seed 003 Table 7's time ratios.

Data: the project's synthetic Alpaca / GPT4-Alpaca rows (`ensure_synthetic`), whose prompt and
completion lengths follow Tulu Table 1 (Alpaca 27.8 / 64.6 tokens, GPT4-Alpaca 28.0 / 161.8). They are
labelled synthetic: lengths are modelled, the text is not real. Table 7 itself is Mistral-7B on
Alpaca-GPT4 with max length 2048, timed on 4 A100s.

    python benchmarks/mosaic_cost.py [--rows 5200] [--passes 1] [--datasets alpaca gpt4_alpaca] [--no-append]

Per setting and per pass (= per baseline epoch): training sequences, templated tokens (Tulu template,
LLaMA SentencePiece tokenizer, meta-instructions included), and padded tokens (batches of 128
sequences in random order, each padded to its longest: the compute of an unpacked trainer with
dynamic padding). Training time sits between the sequence ratio (fixed per-step cost) and the
padded-token ratio. "mix<=5" is the share of mosaics of at most 5 instructions (Table 5's column).
Appends a section to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

from instructjax.core.config import MosaicSection  # noqa: E402
from instructjax.data.encoding.encode import count_tokens  # noqa: E402
from instructjax.data.encoding.tokenizer import Tokenizer  # noqa: E402
from instructjax.data.mosaic.augment import mosaic_epoch  # noqa: E402
from instructjax.data.schema import Conversation  # noqa: E402
from instructjax.data.sources.catalog import load_conversations  # noqa: E402
from instructjax.data.sources.synthetic import ensure_synthetic  # noqa: E402

BATCH = 128  # seed 003 Appendix B.1
MAX_LENGTH = 2048

# seed 003 Table 7: setting -> (time ratio vs baseline, winning score); Table 5: Mix<=5 share.
PAPER_TIME_RATIO = {
    "baseline": 1.000, "fixed": 0.146, "exponential": 0.156, "pareto": 0.161, "lognormal": 0.161,
    "logistic": 0.173, "uni-2": 0.866, "uni-4": 0.515, "uni-6": 0.369, "uni-8": 0.296, "uni-10": 0.244,
    "uni-12": 0.209,
}  # fmt: skip
PAPER_MIX_LE_5 = {"fixed": 0.0239, "exponential": 0.0258, "pareto": 0.0894, "lognormal": 0.0683,
                  "logistic": 0.1584, "uni-10": 0.5145}  # fmt: skip


def settings() -> dict[str, MosaicSection]:
    """The columns of Table 7 (all with the default Permute/Maskout mix)."""
    out = {f"uni-{k}": MosaicSection(k_max=k, max_length=MAX_LENGTH) for k in (2, 4, 6, 8, 10, 12)}
    for dist in ("fixed", "exponential", "pareto", "lognormal", "logistic"):
        out[dist] = MosaicSection(distribution=dist, max_length=MAX_LENGTH)
    return out


def padded_tokens(lengths: list[int], rng: np.random.Generator) -> int:
    """Tokens an unpacked trainer computes: random batches of BATCH, each padded to its longest."""
    order = rng.permutation(np.asarray(lengths))
    return int(sum(batch.max() * len(batch) for batch in np.array_split(order, max(1, -(-len(order) // BATCH)))))


def measure(data: list[Conversation], passes: int, tokenizer: Tokenizer) -> list[dict]:
    """One row per setting: sequences, tokens, padded tokens per pass, count calls, mix<=5."""
    memo: dict[tuple, int] = {}

    def count(conv: Conversation) -> int:
        key = tuple(m["content"] for m in conv.messages)
        if key not in memo:
            memo[key] = count_tokens(conv, "tulu", tokenizer)
        return memo[key]

    rng = np.random.default_rng(0)
    base = [count(c) for c in data]
    rows = [dict(setting="baseline", sequences=len(data), tokens=sum(base),
                 padded=padded_tokens(base, rng), calls=len(data), mix5=None, seconds=0.0)]  # fmt: skip
    for name, config in settings().items():
        seqs = toks = pad = calls = small = mosaics = 0
        start = time.perf_counter()
        for epoch in range(passes):
            out, stats = mosaic_epoch(data, config, seed=0, epoch=epoch, count_tokens=count)
            lengths = [count(c) for c in out]  # memoized: the mosaics were measured while fitting
            seqs, toks, pad = seqs + len(out), toks + sum(lengths), pad + padded_tokens(lengths, rng)
            calls += stats.count_tokens_calls
            mosaics += stats.mosaics
            small += sum(n for k, n in stats.k_histogram.items() if k <= 5)
        rows.append(dict(setting=name, sequences=seqs / passes, tokens=toks / passes, padded=pad / passes,
                         calls=calls / passes, mix5=small / max(mosaics, 1),
                         seconds=(time.perf_counter() - start) / passes))  # fmt: skip
    return rows


def table(dataset: str, rows: list[dict]) -> str:
    base = rows[0]
    lines = [
        f"**{dataset}** ({base['sequences']} examples, {base['tokens'] / base['sequences']:.1f} templated tokens "
        f"per example; per pass = per baseline epoch)\n",
        "| setting | sequences | seq ratio | tokens | token ratio | padded ratio | paper time ratio "
        "| mix<=5 | paper mix<=5 | count_tokens calls | s/pass |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        paper = PAPER_TIME_RATIO.get(r["setting"])
        mix5 = "" if r["mix5"] is None else f"{100 * r['mix5']:.1f}%"
        paper5 = PAPER_MIX_LE_5.get(r["setting"])
        lines.append(
            f"| {r['setting']} | {r['sequences']:.0f} | {100 * r['sequences'] / base['sequences']:.1f}% "
            f"| {r['tokens']:.0f} | {100 * r['tokens'] / base['tokens']:.1f}% "
            f"| {100 * r['padded'] / base['padded']:.1f}% | {'' if paper is None else f'{100 * paper:.1f}%'} "
            f"| {mix5} | {'' if paper5 is None else f'{100 * paper5:.2f}%'} | {r['calls']:.0f} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = common.parser(__doc__, summary=None, append_help="print only, do not touch RESULTS.md")
    parser.add_argument("--rows", type=int, default=5200, help="synthetic rows per dataset (Alpaca/10)")
    parser.add_argument("--passes", type=int, default=1, help="mosaic passes (baseline epochs) to average")
    parser.add_argument("--datasets", nargs="+", default=["alpaca", "gpt4_alpaca"])
    args = parser.parse_args()
    load_before = common.load_average()
    tokenizer = Tokenizer.load()
    sections = []
    for dataset in args.datasets:
        data = list(load_conversations(dataset, ensure_synthetic(dataset, args.rows)))
        sections.append(table(f"{dataset} (synthetic)", measure(data, args.passes, tokenizer)))
        print(sections[-1], flush=True)
    notes = (
        f"Mix = Format always, + Permute or + Maskout each w.p. 1/3; max length {MAX_LENGTH} after the Tulu template "
        f"(LLaMA SentencePiece from mistral-common). Paper: seed 003 Table 7 (Mistral-7B, Alpaca-GPT4, 4xA100 time) "
        f"and Table 5 (Mix<=5). Padded ratio: batches of {BATCH}, padded to their longest.\n\n"
    )
    common.finish(args, "Mosaic-IT training cost vs baseline", notes + "\n".join(sections), load_before=load_before)


if __name__ == "__main__":
    main()
