"""Mixture search end to end (issue 79's proof): a swarm of tiny proxies on the built-in A/C/P sources, its fit, its
proposal, and the proposal trained against the natural and the uniform mixture.

On the built-in alpaca, code_alpaca and p3 tasks (seed 000's A, C and P), a tiny model:
  1. `mix swarm`: `--runs` proxy configs (default 30) of `--steps` steps (default 40), olmix's draws;
  2. each proxy trained (`train`, in this process: one compile, shared);
  3. `mix table`: each proxy's loss on `--target-task` (default dolly_builtin, a task none of them trains on);
  4. `--held` mixtures (default 6) drawn uniformly on the simplex (a flat Dirichlet, the benchmark's seed), trained as
     the proxies are and scored the same way; `mix fit` (olmix's log-linear law) on the swarm, `--test` on them: their
     Spearman (goal 0.8);
  5. `mix propose` (olmix's exact proposer) from the fit; the proposal, the natural mixture (each task's share of the
     tokens) and the uniform one each trained at 4x a proxy's steps and scored on the target the same way (goal: the
     proposal lowest);
  6. compute: the swarm's tokens against a grid `sweep` at the swarm's resolution (every mixture on the 3-source
     simplex in steps of `--grid-step`, each run at the 4x budget).

    python benchmarks/mix_swarm.py [--runs 30] [--steps 40] [--dir DIR] [--no-append]
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

SPEARMAN_GOAL = 0.8


def run(argv: list[str]) -> None:
    from instructjax.cli import main

    if main(argv) != 0:
        raise SystemExit(f"failed: instructjax {' '.join(argv)}")


def quietly(argv: list[str]) -> str:
    """`instructjax ARGV` with its output kept (returned), not printed."""
    from contextlib import redirect_stderr, redirect_stdout

    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(io.StringIO()):
        run(argv)
    return out.getvalue()


def with_rates(config: dict, name: str, rates: dict[str, float], steps: int, run_dir: str) -> dict:
    """`config` (a proxy's or the proposal's) training a rate-mode mixture of `rates` for `steps` steps."""
    mixture = f"acp_{name}"
    return {**config, "name": name, "run_dir": run_dir, "max_steps": steps, "experiment": {"mix_swarm": name},
            "data": {**config["data"], "mixture": mixture},
            "define": {"mixtures": {mixture: {"mode": "rate", "rates": rates}}}}


def trained(root: Path, where: str, base: dict, mixtures: dict[str, dict[str, float]], sources: list[str], steps: int,
            target: str, examples: int) -> dict[str, float]:
    """Each of `mixtures` trained from `base` for `steps` steps (ROOT/runs/WHERE_NAME), laid out as a swarm in ROOT/WHERE
    for `mix table`, which scores each on `target` into ROOT/WHERE.csv: name -> its figure."""
    folder = root / where
    folder.mkdir(exist_ok=True)
    for name, rates in mixtures.items():
        config = with_rates(base, name, {s: float(rates.get(s, 0.0)) for s in sources if rates.get(s, 0.0) > 0},
                            steps, str(root / "runs" / f"{where}_{name}"))
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        quietly(["train", "--config", str(folder / f"{name}.yaml")])
    with (folder / "weights.csv").open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["proxy", "config", "run_dir", *(f"weight.{s}" for s in sources)])
        for name, rates in mixtures.items():
            writer.writerow([name, f"{name}.yaml", str(root / "runs" / f"{where}_{name}"),
                             *(float(rates.get(s, 0.0)) for s in sources)])
    run(["mix", "table", str(folder), "--target", target, "--examples", str(examples),
         "--out", str(root / f"{where}.csv")])
    return {r["proxy"]: float(r[target]) for r in csv.DictReader((root / f"{where}.csv").open())}


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--runs", type=int, default=30, help="proxies")
    p.add_argument("--held", type=int, default=6, help="mixtures drawn uniformly on the simplex, never fitted on")
    p.add_argument("--steps", type=int, default=40, help="each proxy's steps (the final runs train 4x as many)")
    p.add_argument("--target-task", default="dolly_builtin", help="the held-out task whose loss is the target")
    p.add_argument("--examples", type=int, default=128, help="the target task's examples scored")
    p.add_argument("--grid-step", type=float, default=0.1, help="the grid's resolution on the simplex")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dir", help="working directory (default: a fresh temporary one)")
    args = p.parse_args()

    import jax

    root = Path(args.dir or tempfile.mkdtemp(prefix="mix_swarm_"))
    root.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(root / "xla"))  # proxies share one step: compiled once
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    load_before = common.load_average()
    base = {"name": "acp", "run_dir": str(root / "runs" / "acp"), "model": {"preset": "tiny"},
            "data": {"mixture": "acp_ACP_builtin", "seq_len": 128, "global_batch": 8, "pack_window": 16},
            "optim": {"lr": 3e-3, "warmup_ratio": 0, "schedule": "constant"}, "log_every": 10, "seed": args.seed}
    (root / "base.yaml").write_text(yaml.safe_dump(base, sort_keys=False))
    swarm, target = root / "swarm", f"loss:{args.target_task}"

    start = time.perf_counter()
    run(["mix", "swarm", "--config", str(root / "base.yaml"), "--runs", str(args.runs), "--seed", str(args.seed),
         "--out", str(swarm), "--force", "--max-repetition", "8", f"max_steps={args.steps}"])
    manifest = json.loads((swarm / "swarm.json").read_text())
    proxies = list(csv.DictReader((swarm / "weights.csv").open()))
    for i, proxy in enumerate(proxies):
        t = time.perf_counter()
        quietly(["train", "--config", str(swarm / proxy["config"])])
        print(f"proxy {i + 1}/{len(proxies)} trained in {time.perf_counter() - t:.1f} s", flush=True)
    swarm_seconds = time.perf_counter() - start
    run(["mix", "table", str(swarm), "--target", target, "--examples", str(args.examples),
         "--out", str(root / "table.csv")])
    sources, steps = manifest["sources"], 4 * args.steps
    draws = np.random.default_rng(args.seed).dirichlet(np.ones(len(sources)), args.held)
    held = {f"held{i}": dict(zip(sources, map(float, w), strict=True)) for i, w in enumerate(draws)}
    trained(root, "held", base, held, sources, args.steps, target, args.examples)
    fit = json.loads(quietly(["mix", "fit", "--table", str(root / "table.csv"), "--weights", "weight.", "--target",
                              target, "--test", str(root / "held.csv"), "--out", str(root / "fit"), "--json"]))
    figures = fit["targets"][target]
    run(["mix", "propose", "--fit", str(root / "fit"), "--config", str(root / "base.yaml"),
         "--out", str(root / "proposed.yaml")])
    proposed_config = yaml.safe_load((root / "proposed.yaml").read_text())
    proposed_rates = next(iter(proposed_config["define"]["mixtures"].values()))["rates"]

    final = {"proposed": proposed_rates, "natural": manifest["natural"], "uniform": dict.fromkeys(sources, 1 / 3)}
    scored = trained(root, "finals", base, final, sources, steps, target, args.examples)

    grid_points = math.comb(round(1 / args.grid_step) + len(sources) - 1, len(sources) - 1)
    swarm_tokens, final_tokens = manifest["total_tokens"], 4 * manifest["budget_tokens"]
    won = scored["proposed"] < min(scored["natural"], scored["uniform"])
    body = "\n\n".join([
        f"{len(proxies)} proxies of {args.steps} steps (tiny preset, seq 128, batch 8) on {', '.join(sources)}; the "
        f"target: the loss on {args.examples} examples of {args.target_task} (trained by none). Swarm trained in "
        f"{swarm_seconds:.0f} s.",
        common.table(["fit (olmix's log-linear law)", "Spearman", "R²"], [
            [f"leave-one-out, {len(proxies)} proxies", f"{figures['leave_one_out']['spearman']:.3f}",
             f"{figures['leave_one_out']['r2']:.3f}"],
            [f"{args.held} mixtures it never saw, drawn uniformly on the simplex (goal >= {SPEARMAN_GOAL})",
             f"**{figures['test']['spearman']:.3f}**", f"{figures['test']['r2']:.3f}"]]),
        common.table(["mixture, trained 4x a proxy's steps", *sources, f"{target}"], [
            [name, *(f"{float(final[name].get(s, 0.0)):.3f}" for s in sources), f"{scored[name]:.4f}"]
            for name in final]),
        f"The proposal {'beats' if won else 'does NOT beat'} the natural and the uniform mixture. Compute: the swarm "
        f"trained {swarm_tokens:,} tokens; a grid at steps of {args.grid_step:g} over {len(sources)} sources is "
        f"{grid_points} runs, {grid_points * final_tokens:,} tokens at the final runs' budget "
        f"({grid_points * final_tokens / swarm_tokens:.1f}x the swarm).",
    ])
    print(body)
    common.finish(args, "mixture search on the A/C/P sources (issue 79)", body,
                  {"test_spearman": figures["test"]["spearman"], "proposal_wins": won, **scored},
                  load_before=load_before)


if __name__ == "__main__":
    main()
