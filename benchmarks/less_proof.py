"""LESS's proof (issue 80, item 5): a pool of the four built-in sources LESS selects from (seed 004's `tulu_human`:
FLAN V2, CoT, Dolly, Open Assistant) and a fifth of another kind, the built-in arithmetic chats (`--pool-rows` of
them); a target whose examples are arithmetic's (`--target-rows` rows held out of the pool, `--heldout-rows` more held
out to score); 5% of the pool selected by LESS (`data select --method less`), at random and by seed 002's longest
responses; each selection trained from the same base for the same steps; the target's held-out loss of each, and
where each selection's examples came from.

Why a fifth source: the four Tulu sources' built-in rows are word sequences of one generator in four schemas (what a
target could share with one of them is its form alone); the arithmetic chats are a kind of their own ("17 + 25 =
42. The answer is 42."), as a real target task differs from most of a real pool. `--target cot` runs the four alone
with CoT's rows as the target.

The base: a tiny model trained on the whole pool first (`--base-steps`), so a warm-up has something to adapt. The
warm-up and features use LESS's recipe at this model's size (`--rank`, `--warmup-lr`; 4 epochs, a checkpoint an
epoch, Adam features, 8192 dimensions).

    python benchmarks/less_proof.py [--dir DIR] [--fraction 0.05] [--steps 40] [--no-append]
"""

from __future__ import annotations

import collections
import json
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

TULU = ("flan_v2", "cot", "dolly", "oasst1")


def pool_files(root: Path, sources: tuple[str, ...], target: str, target_rows: int, heldout_rows: int,
               pool_rows: int | None) -> dict:
    """The `define:` block: each source's built-in rows as a task (the target source's first rows held out), the
    pool mixture, the target task and the held-out task."""
    from instructjax.data.sources import synthetic

    tasks = {}
    for source in sources:
        rows = [line for f in synthetic.ensure_synthetic(source) for line in Path(f).read_text().splitlines()]
        if source == target:
            (root / "target.jsonl").write_text("\n".join(rows[:target_rows]) + "\n")
            (root / "heldout.jsonl").write_text("\n".join(rows[target_rows : target_rows + heldout_rows]) + "\n")
            rows = rows[target_rows + heldout_rows :][:pool_rows]
        (root / f"{source}.jsonl").write_text("\n".join(rows) + "\n")
        tasks[f"pool_{source}"] = {"source": source, "data_files": [str(root / f"{source}.jsonl")]}
    tasks["target"] = {"source": target, "data_files": [str(root / "target.jsonl")]}
    tasks["heldout"] = {"source": target, "data_files": [str(root / "heldout.jsonl")]}
    return {"tasks": tasks, "mixtures": {"less_pool": {"counts": {f"pool_{s}": None for s in sources}}}}


def write_config(path: Path, body: dict) -> str:
    path.write_text(yaml.safe_dump(body))
    return str(path)


def train(config_path: str) -> None:
    from instructjax.cli import main

    assert main(["train", "--config", config_path]) == 0


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--dir", help="working directory (default: a fresh temporary one)")
    p.add_argument("--fraction", type=float, default=0.05)
    p.add_argument("--target", default="arithmetic", help="the source the target's rows come from: arithmetic (a "
                   "fifth source) or one of the four")
    p.add_argument("--pool-rows", type=int, default=100, help="the fifth source's rows in the pool")
    p.add_argument("--target-rows", type=int, default=16)
    p.add_argument("--heldout-rows", type=int, default=64)
    p.add_argument("--base-steps", type=int, default=150)
    p.add_argument("--steps", type=int, default=40, help="steps each selection trains")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--warmup-lr", type=float, default=1e-3)
    args = p.parse_args()

    from instructjax.cli import main as cli
    from instructjax.core.config import load_config
    from instructjax.mix.targets import task_loss

    load_before = common.load_average()
    root = Path(args.dir or tempfile.mkdtemp(prefix="less_proof_"))
    root.mkdir(parents=True, exist_ok=True)  # a --dir not made yet
    sources = TULU if args.target in TULU else (*TULU, args.target)
    define = pool_files(root, sources, args.target, args.target_rows, args.heldout_rows,
                        args.pool_rows if args.target not in TULU else None)
    common_keys = {"model": {"preset": "tiny", "dtype": "float32"}, "define": define, "log_every": 10}
    base = root / "runs" / "base"
    if not (base / "DONE").exists():  # a second run in --dir DIR takes the base the first trained
        train(write_config(root / "base.yaml", {**common_keys, "run_dir": str(base), "data": {
            "mixture": "less_pool", "seq_len": 256, "global_batch": 16}, "optim": {"lr": 1e-3, "warmup_ratio": 0.03},
            "max_steps": args.base_steps}))
    selecting = write_config(root / "select.yaml", {"model": {"init_from": str(base)}, "define": define,
                                                    "data": {"mixture": "less_pool", "seq_len": 256}})
    outs = {m: root / "selected" / f"{m}.jsonl" for m in ("less", "random", "longest")}
    assert cli(["data", "select", "--config", selecting, "--method", "less", "--model", str(base), "--target",
                "target", "--fraction", str(args.fraction), "--out", str(outs["less"]), "--max-length", "256",
                "--lora-rank", str(args.rank), "--lora-alpha", str(4 * args.rank), "--warmup-lr",
                str(args.warmup_lr), "--warmup-batch", "8", "--warmup-override", "model.dtype=float32"]) == 0
    k = sum(1 for _ in open(outs["less"]))
    for method in ("random", "longest"):
        assert cli(["data", "select", "--config", selecting, "--method", method, "-k", str(k), "--out",
                    str(outs[method])]) == 0
    rows, summary = [], {}
    base_config = load_config(str(root / "base.yaml"))
    base_loss = task_loss(base_config, str(base), "heldout", args.heldout_rows)
    for method, out in outs.items():
        chosen = [json.loads(line) for line in out.read_text().splitlines()]
        where = collections.Counter(c["source"] for c in chosen)
        run = root / "runs" / f"{method}-{args.steps}steps"  # a rerun in --dir DIR at other steps trains anew
        config = write_config(root / f"{method}.yaml", {
            **common_keys, "model": {"init_from": str(base), "dtype": "float32"}, "run_dir": str(run),
            "define": {"tasks": {**define["tasks"], f"sel_{method}": {"source": "messages", "data_files": [str(out)]}},
                       "mixtures": define["mixtures"]},
            "data": {"mixture": f"sel_{method}", "seq_len": 256, "global_batch": 8},
            "optim": {"lr": 5e-4, "warmup_ratio": 0.03}, "max_steps": args.steps})
        if not (run / "DONE").exists():  # at the same steps: the run made before
            train(config)
        loss = task_loss(load_config(config), str(run), "heldout", args.heldout_rows)
        summary[f"{method}_loss"] = loss
        rows.append([method, f"{loss:.4f}", ", ".join(f"{s} {where.get(s, 0)}" for s in sources)])
        print(rows[-1], flush=True)
    pool_words = f" ({args.pool_rows} of {args.target}'s)" if args.target not in TULU else ""
    best = min(outs, key=lambda m: summary[f"{m}_loss"])
    body = "\n\n".join([
        f"Pool: the built-in rows of {', '.join(sources)}{pool_words} ({args.target_rows + args.heldout_rows} "
        f"{args.target} rows held out: {args.target_rows} the target, {args.heldout_rows} scored); {k} examples selected "
        f"({args.fraction:.0%}); each trained {args.steps} steps of 8 from a tiny base trained {args.base_steps} steps "
        f"on the pool (its held-out {args.target} loss {base_loss:.4f}). LESS: LoRA rank {args.rank}, warm-up lr "
        f"{args.warmup_lr}, 4 epochs, Adam features, 8192 dimensions. Lowest: **{best}**.",
        common.table(["selection", f"held-out {args.target} loss", f"selected from ({', '.join(sources)})"], rows),
    ])
    print(body)
    summary.update(base_loss=base_loss, best=best, selected=k)
    common.finish(args, "LESS against random and longest at 5% (issue 80)", body, summary, load_before=load_before)


if __name__ == "__main__":
    main()
