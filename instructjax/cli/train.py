"""`instructjax train --config FILE [key=value ...] [--resume]`.

Exit status: 0 trained to the end; 2 a user error (one line on stderr); 75 (`EXIT_PREEMPTED`) stopped by
SIGTERM or SIGINT (Ctrl-C) after saving the step in flight (or, while the data is tokenized, before the next task:
the tasks before are in the tokenized cache): run the same command with `--resume` (the launchers do).
"""

from __future__ import annotations

from instructjax.cli import add_on_bad_row, load_run_config, on_bad_row_overrides
from instructjax.core import stopping


def register(subparsers) -> None:
    words = ("train a model on a config's data, by its objective.loss: SFT; DPO, dpo_norm, SimPO or ORPO on preference "
             "pairs; GRPO on rollouts its verifiers score")
    p = subparsers.add_parser("train", help=words, description=words[0].upper() + words[1:] + ".")
    p.add_argument("--config", required=True, help="a run config YAML (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--accept-changes", action="store_true",
                   help="with --resume: continue although the config changes what the run trains (recorded in "
                        "RUN_DIR/changes.jsonl); without it such a resume stops, naming the changes")
    add_on_bad_row(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. max_steps=20")
    p.set_defaults(func=run)


def run(args) -> int:
    with stopping.listening():  # from here on a signal stops at a safe point: while the data is tokenized too
        return _train(args)


def _train(args) -> int:
    from instructjax.train.trainer import train

    config = load_run_config(args.config, [*args.overrides, *on_bad_row_overrides(args)])
    result = train(config, resume=args.resume, accept_changes=args.accept_changes)
    if result.preempted:  # the trainer said so (saved step N); `--resume` continues
        return stopping.EXIT_PREEMPTED
    if result.losses:
        print(f"trained to step {result.step}: loss {result.losses[result.step]:.4f}; run dir {result.run_dir}")
    else:
        print(f"{result.run_dir} is already trained to its last step ({result.step}): nothing to train "
              "(raise max_steps or optim.epochs with --accept-changes to go on)")
    return 0
