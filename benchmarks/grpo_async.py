"""GRPO with rollouts made ahead (issue 81 item 6: `objective.grpo.async_steps` k = 0, 1, 2), on this CPU: the same run
(grpo_toy's model and prompts: a tiny LLaMA SFT'd on `arithmetic_builtin`, then GRPO on `verifiable_builtin`, every
group kept, `filter_zero_std: false`, so each step draws one rollout) for each k on one device, then on 8 host
devices split 4 + 4 (`objective.grpo.rollout_devices: 4`: the engine on 4, the learner on 4), one after the other in one
process, to the same number of updates.

Printed and logged for each: the wall time of the GRPO run (Trainer.run, its compiles included), the median step
time over steps 2.., the generated tokens a second of wall time, the rollouts' mean solve rate; and the solve rate
against wall-clock time (figure: OUT/grpo_async.png).

    python benchmarks/grpo_async.py [--sft-steps 100] [--steps 12] [--samples 4] [--prompts 32] [--out /tmp/grpo_async]
                                    [--sft-from DIR] [--no-append]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # before JAX: 8 host devices
sys.path.insert(0, str(Path(__file__).parent))

from common import finish, parser  # noqa: E402
from grpo_toy import MODEL, RESPONSE, train_sft  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__)
    p.add_argument("--sft-steps", type=int, default=100)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--samples", type=int, default=4, help="completions a prompt (16 prompts a rollout)")
    p.add_argument("--prompts", type=int, default=32, help="of verifiable_builtin, the run's prompts")
    p.add_argument("--out", default="/tmp/grpo_async")
    p.add_argument("--sft-from", help="an SFT run to start from (grpo_toy's: --sft-from /tmp/grpo_toy/sft)")
    args = p.parse_args(argv)
    from instructjax.core.config import load_config
    from instructjax.train.trainer import Trainer

    out = Path(args.out)
    sft_dir = Path(args.sft_from) if args.sft_from else out / "sft"
    if not args.sft_from:
        train_sft(sft_dir, args.sft_steps)
    mixture = out / "grpo_prompts.yaml"
    mixture.parent.mkdir(parents=True, exist_ok=True)
    mixture.write_text(f"define:\n  mixtures:\n    grpo_async_prompts:\n      mode: epoch\n      counts:\n"
                       f"        verifiable_builtin: {args.prompts}\n")
    import jax

    rows, curves = [], {}
    for (layout, devices, apart), k in ((layout, k) for layout in (("1 device", 1, 0), ("4 + 4 devices", 8, 4))
                                        for k in (0, 1, 2)):
        run_dir = out / f"d{devices}-k{k}"
        shutil.rmtree(run_dir, ignore_errors=True)
        started = time.perf_counter()
        Trainer(load_config(mixture, [*MODEL, f"model.init_from={sft_dir}", "data.mixture=grpo_async_prompts",
                                      "data.seq_len=64", f"data.global_batch={16 * args.samples}",
                                      "objective.loss=grpo", "objective.grpo.prompts_per_rollout=16",
                                      f"objective.grpo.samples_per_prompt={args.samples}",
                                      f"objective.grpo.response_length={RESPONSE}", "optim.lr=5e-4",
                                      "optim.schedule=constant", "optim.warmup_ratio=0", f"objective.grpo.async_steps={k}",
                                      f"max_steps={args.steps}", "log_every=1", f"run_dir={run_dir}",
                                      "objective.grpo.filter_zero_std=false", f"objective.grpo.rollout_devices={apart}",
                                      f"checkpoint.every={args.steps}"]), devices=jax.devices()[:devices]).run()
        wall = time.perf_counter() - started
        steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        generated = sum(s["val/actor_tokens_per_second"] * s["time/generation"] for s in steps)
        seconds = np.array([s["step_seconds"] for s in steps])
        rate = np.array([s["objective/verifiable_correct_rate"] for s in steps])
        curves[f"{layout}, k {k}"] = (np.cumsum(seconds), rate)
        rows.append([layout, str(k), f"{wall:.0f}", f"{np.median(seconds[1:]):.1f}", f"{generated / wall:.0f}",
                     f"{rate.mean():.3f}"])
        print(rows[-1], flush=True)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        for k, (clock, rate) in curves.items():
            ax.plot(clock, rate, marker=".", label=k)
        ax.set(xlabel="wall-clock seconds (steps)", ylabel="rollouts' solve rate", title="grpo_async: tiny LLaMA, CPU")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "grpo_async.png", dpi=100)
    except ImportError:
        pass
    body = "\n".join([
        f"GRPO from {'the SFT model at ' + str(sft_dir) if args.sft_from else f'{args.sft_steps} SFT steps'}: "
        f"{args.steps} updates on {args.prompts} of verifiable_builtin, 16 prompts x {args.samples} samples, "
        f"{RESPONSE} new tokens, every group kept (one rollout a step), on this CPU.",
        "",
        "| devices | async_steps | wall s (run) | median step s | generated tokens / wall s | mean solve rate |",
        "|---|---|---|---|---|---|",
        *[f"| {' | '.join(row)} |" for row in rows],
        "",
        f"figure: {out / 'grpo_async.png'} (solve rate against wall-clock)",
    ])
    summary = {f"{row[0]} k{row[1]} wall_s": float(row[2]) for row in rows}
    finish(args, "GRPO with rollouts made ahead, CPU (issue 81 item 6)", body, summary)
    print(body)
    return summary


if __name__ == "__main__":
    main()
