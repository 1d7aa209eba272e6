"""Proxies stacked in one step (`mix train --packed K`, train/packed.py) against the same K proxies trained one after
another (issue 79, item 2): tokens per second, for each K of `--k`.

K proxies of one tiny model on the built-in A/C/P sources, each its own rate-mode mixture (a flat Dirichlet draw,
`--seed`), `--steps` steps each. For each K, in one process (JAX's compilation cache shared, so a program is compiled
once whichever comes first):
  separate  each proxy a `Trainer` run of its own, one after another;
  stacked   the K proxies in one `PackedTrainer` run (one vmapped step).
Reported: steady tokens per second (the proxies' tokens over their steps' seconds, the first step of each run, which
compiles, left out: metrics.jsonl's `tokens_per_sec` and `step_seconds` from step 2) and each way's wall seconds,
start to end, with the ratio stacked / separate.

    python benchmarks/packed_proxies.py [--k 1,4,16] [--steps 8] [--dir DIR] [--no-append]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

SOURCES = ("alpaca_builtin", "code_alpaca_builtin", "p3_builtin")


def configs(root: Path, k: int, steps: int, seed: int, way: str) -> list:
    """K proxy configs (one mixture name, each at its own rates), their runs under ROOT/WAY_K."""
    from instructjax.core.config import load_config

    rates = np.random.default_rng(seed).dirichlet(np.ones(len(SOURCES)), k)
    out = []
    for i, weights in enumerate(rates):
        overrides = ["model.preset=tiny", "model.dtype=float32", "data.mixture=acp_bench", "data.seq_len=128",
                     "data.global_batch=8", "data.pack_window=16", "optim.lr=3e-3", "optim.warmup_ratio=0",
                     f"max_steps={steps}", "log_every=1", f"checkpoint.every={steps}",
                     f"run_dir={root / f'{way}_{k}' / f'proxy{i}'}", "define.mixtures.acp_bench.mode=rate",
                     *(f"define.mixtures.acp_bench.rates.{s}={w:.6f}" for s, w in zip(SOURCES, weights, strict=True))]
        out.append(load_config(None, overrides))
    return out


def steady(run_dir: Path) -> tuple[float, float]:
    """(tokens, seconds) of a run's steps after its first, from its metrics.jsonl."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    seconds = sum(r["step_seconds"] for r in records)
    return sum(r["tokens_per_sec"] * r["step_seconds"] for r in records), seconds


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--k", default="1,4,16", help="proxies a step trains side by side, comma-separated")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", help="working directory (default: a fresh temporary one)")
    args = p.parse_args()

    import jax

    from instructjax.core.context import Context, current
    from instructjax.train.packed import PackedTrainer
    from instructjax.train.trainer import Trainer

    root = Path(args.dir or tempfile.mkdtemp(prefix="packed_proxies_"))
    jax.config.update("jax_compilation_cache_dir", str(root / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    devices = jax.devices()[:1]  # one device: what a proxy takes on a machine of them (stacking fills it)
    load_before = common.load_average()
    rows, summary = [], {}
    for k in (int(x) for x in args.k.split(",")):
        start = time.perf_counter()
        for config in configs(root, k, args.steps, args.seed, "separate"):
            with Context(parent=current()):
                Trainer(config, devices=devices).run()
        separate_wall = time.perf_counter() - start
        start = time.perf_counter()
        stacked_configs = configs(root, k, args.steps, args.seed, "stacked")
        PackedTrainer(stacked_configs, devices=devices).run()
        stacked_wall = time.perf_counter() - start
        figures = {}
        for way, runs in (("separate", configs(root, k, args.steps, args.seed, "separate")),
                          ("stacked", stacked_configs)):
            parts = [steady(Path(c.run_dir)) for c in runs]
            tokens = sum(t for t, _ in parts)
            seconds = sum(s for _, s in parts)  # a stacked run's lanes each log their share of the step's time
            figures[way] = tokens / seconds
        ratio = figures["stacked"] / figures["separate"]
        rows.append([k, f"{figures['separate']:,.0f}", f"{figures['stacked']:,.0f}", f"**{ratio:.2f}x**",
                     f"{separate_wall:.1f}", f"{stacked_wall:.1f}", f"{separate_wall / stacked_wall:.2f}x"])
        summary[f"k{k}_ratio"] = ratio
        print(rows[-1], flush=True)
    body = "\n\n".join([
        f"Tiny proxies (seq 128, batch 8) on {', '.join(SOURCES)}, each a rate mixture of its own, {args.steps} steps "
        f"each, one CPU device; steady: steps 2 on (step 1 compiles).",
        common.table(["K", "separate: tokens/s (steady)", "stacked: tokens/s (steady)", "stacked / separate",
                      "separate: wall s", "stacked: wall s", "wall: separate / stacked"], rows),
    ])
    print(body)
    common.finish(args, "proxies stacked in one step against one after another (issue 79)", body, summary,
                  load_before=load_before)


if __name__ == "__main__":
    main()
