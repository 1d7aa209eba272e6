"""GRPO learns, on the CPU (issue 69 item 5): a tiny LLaMA SFT'd on the built-in arithmetic chats
(`arithmetic_builtin`), then GRPO (`objective.loss: grpo`) on the built-in verifiable arithmetic prompts
(`verifiable_builtin`, verifier gsm8k), both through `instructjax train`'s Trainer.

Printed and logged: the rollouts' solve rate (open-instruct's `objective/verifiable_correct_rate`) step by step and
plotted to RUN_DIR/solve_rate.png, its mean over the first and the last 10 steps; the greedy solve rate of the SFT
model and of the GRPO model on the prompts RL draws (`--prompts` of the built-in set: a mixture's count of it, the
subset an SFT run takes) and on 100 others (the engine, temperature 0); rollout tokens/s, train
tokens/s (trained tokens over the step's time less its generation) and the share of a step spent generating.
Goal: the solve rate rises from the SFT model's.

    python benchmarks/grpo_toy.py [--sft-steps 800] [--steps 50] [--lr 5e-4] [--samples 8] [--prompts 64]
                                  [--out /tmp/grpo_toy] [--sft-from DIR] [--no-append]
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from common import finish, parser  # noqa: E402

MODEL = ["model.preset=tiny", "model.dtype=float32", "model.hidden_size=128", "model.intermediate_size=256",
         "model.num_layers=4", "model.num_heads=4", "model.num_kv_heads=2"]  # fmt: skip
RESPONSE = 24  # new tokens a completion: "17 + 25 = 42. The answer is 42." and its end of turn are 20


def prompt_sets(mixture: Path, others: int = 100) -> tuple[list, list]:
    """(the prompts the GRPO run draws: its mixture's subset of the built-in set, `others` of the rest)."""
    from instructjax.core.config import load_config
    from instructjax.train import setup as run_setup
    from instructjax.train.rollout import open_rollouts

    def prompts(path, name):
        return open_rollouts(run_setup.bind_run(load_config(path, [
            *MODEL, f"data.mixture={name}", "data.seq_len=64", "objective.loss=grpo", "data.global_batch=64",
            f"objective.grpo.response_length={RESPONSE}"]))).prompts

    trained = prompts(mixture, "grpo_toy_prompts")
    seen = {p.id for p in trained}
    return trained, [p for p in prompts(None, "verifiable_builtin") if p.id not in seen][-others:]


def solve_rate(run_dir: str, prompts: list, seed: int = 7) -> float:
    """Greedy solve rate of the model saved in `run_dir` on `prompts` (the engine, temperature 0)."""
    from instructjax.data.verifiers import verify
    from instructjax.eval.generate import load_generator
    from instructjax.model.engine import Sampling

    generator, _ = load_generator(run_dir)
    outputs = generator.generate([list(p.ids) for p in prompts], Sampling(max_new_tokens=RESPONSE, seed=seed))
    return float(np.mean([verify(p.verifier, text, p.ground_truth) > 0 for p, text in zip(prompts, outputs,
                                                                                          strict=True)]))


def train_sft(sft_dir: Path, steps: int) -> None:
    """The SFT model GRPO starts from: `steps` steps on the built-in arithmetic chats, saved in `sft_dir` (anew)."""
    from instructjax.core.config import load_config
    from instructjax.train.trainer import Trainer

    shutil.rmtree(sft_dir, ignore_errors=True)
    Trainer(load_config(None, [*MODEL, "data.mixture=arithmetic_builtin", "data.seq_len=64", "data.global_batch=32",
                               "optim.lr=3e-3", "optim.epochs=100", f"max_steps={steps}", "log_every=50",
                               f"run_dir={sft_dir}", f"checkpoint.every={steps}"])).run()


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__)
    p.add_argument("--sft-steps", type=int, default=800)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--out", default="/tmp/grpo_toy")
    p.add_argument("--samples", type=int, default=8, help="completions a prompt (16 prompts a rollout)")
    p.add_argument("--prompts", type=int, default=64,
                   help="RL on N of the built-in verifiable prompts (a mixture of that count: each drawn every N / 16 "
                        "steps)")
    p.add_argument("--sft-from", help="an SFT run of this benchmark's to start from (its SFT is not trained again)")
    args = p.parse_args(argv)
    from instructjax.core.config import load_config
    from instructjax.train.trainer import Trainer

    out = Path(args.out)
    shutil.rmtree(out / "grpo", ignore_errors=True)
    sft_dir, grpo_dir = Path(args.sft_from) if args.sft_from else out / "sft", out / "grpo"
    started = time.perf_counter()
    if not args.sft_from:
        train_sft(sft_dir, args.sft_steps)
    sft_seconds = time.perf_counter() - started
    started = time.perf_counter()
    mixture = out / "grpo_prompts.yaml"  # --prompts of the built-in set: each drawn every few steps
    mixture.parent.mkdir(parents=True, exist_ok=True)
    mixture.write_text(f"define:\n  mixtures:\n    grpo_toy_prompts:\n      mode: epoch\n      counts:\n"
                       f"        verifiable_builtin: {args.prompts}\n")
    Trainer(load_config(mixture, [*MODEL, f"model.init_from={sft_dir}", "data.mixture=grpo_toy_prompts",
                               "data.seq_len=64", f"data.global_batch={16 * args.samples}", "objective.loss=grpo",
                               "objective.grpo.prompts_per_rollout=16", f"objective.grpo.samples_per_prompt={args.samples}",
                               f"objective.grpo.response_length={RESPONSE}", f"optim.lr={args.lr}",
                               "optim.schedule=constant", "optim.warmup_ratio=0",
                               f"max_steps={args.steps}", "log_every=1", f"run_dir={grpo_dir}",
                               f"checkpoint.every={args.steps}"])).run()
    grpo_seconds = time.perf_counter() - started
    steps = [json.loads(line) for line in (grpo_dir / "metrics.jsonl").read_text().splitlines()]
    rate = np.array([s["objective/verifiable_correct_rate"] for s in steps])
    generation = np.array([s["time/generation"] for s in steps])
    seconds = np.array([s["step_seconds"] for s in steps])
    trained = np.diff([0] + [s["tokens"] for s in steps])
    rollout_tps = float(np.median([s["val/actor_tokens_per_second"] for s in steps[1:]]))
    # step t's wall time holds its update and the making of step t + 1's rollout (drawn while it runs, logged with
    # step t + 1): the update alone is the time less the next step's generation
    update = seconds[:-1] - generation[1:]
    train_tps = float(np.median((trained[:-1] / np.maximum(update, 1e-9))[1:]))
    share = float(np.median((generation[1:] / seconds[:-1])[1:]))
    trained, held_out = prompt_sets(mixture)
    before, after = solve_rate(str(sft_dir), trained), solve_rate(str(grpo_dir), trained)
    other_before, other_after = solve_rate(str(sft_dir), held_out), solve_rate(str(grpo_dir), held_out)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(np.arange(1, len(rate) + 1), rate, marker=".")
        ax.set_xlabel("GRPO step")
        ax.set_ylabel("rollouts' solve rate")
        ax.set_title("grpo_toy: tiny LLaMA, built-in arithmetic")
        fig.tight_layout()
        fig.savefig(grpo_dir / "solve_rate.png", dpi=100)
    except ImportError:
        pass
    first, last = float(rate[:10].mean()), float(rate[-10:].mean())
    body = "\n".join([
        f"SFT: {args.sft_steps} steps on arithmetic_builtin ({sft_seconds:.0f} s); GRPO: {args.steps} steps on "
        f"{args.prompts} of verifiable_builtin, 16 prompts x {args.samples} samples, temperature 0.7, {RESPONSE} new tokens, lr {args.lr:g} constant "
        f"({grpo_seconds:.0f} s)",
        "",
        "| | SFT model | after GRPO |",
        "|---|---|---|",
        f"| rollouts' solve rate (mean of the first / last 10 steps) | {first:.3f} | {last:.3f} |",
        f"| greedy solve rate, the {args.prompts} RL prompts | {before:.2f} | {after:.2f} |",
        f"| greedy solve rate, 100 other prompts of the set | {other_before:.2f} | {other_after:.2f} |",
        "",
        f"rollout {rollout_tps:.0f} tokens/s (generated); train {train_tps:.0f} tokens/s (trained tokens over the step "
        f"less its generation); a step spends {share:.0%} of its time generating (medians over steps 2..{args.steps - 1})",
        "",
        "solve rate by step: " + " ".join(f"{r:.2f}" for r in rate),
    ])
    summary = {"first10": first, "last10": last, "greedy_sft": before, "greedy_grpo": after,
               "greedy_other_sft": other_before, "greedy_other_grpo": other_after,
               "rollout_tokens_per_sec": rollout_tps, "train_tokens_per_sec": train_tps, "generation_share": share}
    finish(args, "GRPO on built-in arithmetic, CPU (issue 69 item 5)", body, summary)
    print(body)
    return summary


if __name__ == "__main__":
    main()
