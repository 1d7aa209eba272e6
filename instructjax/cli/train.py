"""`instructjax train --config FILE [key=value ...] [--resume]`."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model on a config's data (SFT)")
    p.add_argument("--config", required=True, help="a run config YAML (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. max_steps=20")
    p.set_defaults(func=run)


def run(args) -> int:
    from instructjax.core.config import load_config
    from instructjax.train.trainer import train

    config = load_config(args.config, args.overrides)
    result = train(config, resume=args.resume)
    if result.losses:
        print(f"trained to step {result.step}: loss {result.losses[result.step]:.4f}; run dir {result.run_dir}")
    return 0
