"""`instructjax train --config FILE [key=value ...] [--resume | --auto-resume]`.

Exit status: 0 trained to the end; 2 a user error (one line on stderr); 75 (`EXIT_PREEMPTED`) stopped by
SIGTERM or SIGINT (Ctrl-C) after saving the step in flight (or, while the data is tokenized, before the next task:
the tasks before are in the tokenized cache): run it again with `--resume` (the launchers run `--auto-resume`, which
also starts a run that has no checkpoint yet; `--resume` on a run_dir without one is one line, not a new run).
"""

from __future__ import annotations

from instructjax.cli import add_on_bad_row, load_run_config, on_bad_row_overrides
from instructjax.core import stopping
from instructjax.core.errors import ConfigError


def register(subparsers) -> None:
    words = ("train a model on a config's data, by its objective.loss: SFT; DPO, dpo_norm, SimPO or ORPO on preference "
             "pairs; GRPO on rollouts its verifiers score")
    p = subparsers.add_parser("train", help=words, description=words[0].upper() + words[1:] + ".")
    p.add_argument("--config", required=True, help="a run config YAML (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint (a run_dir "
                   "without one is an error)")
    p.add_argument("--auto-resume", action="store_true", help="continue from the run's latest checkpoint where it "
                   "has one, else start it (what launchers and preemption loops run)")
    p.add_argument("--accept-changes", action="store_true",
                   help="with --resume: continue although the config changes what the run trains (recorded in "
                        "RUN_DIR/changes.jsonl); without it such a resume stops, naming the changes")
    add_on_bad_row(p)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. max_steps=20")
    p.set_defaults(func=run)


def run(args) -> int:
    with stopping.listening():  # from here on a signal stops at a safe point: while the data is tokenized too
        return _train(args)


def has_checkpoint(run_dir: str) -> bool:
    """Whether `run_dir` (local or in a bucket) holds a committed checkpoint step (a damaged one too: resuming says
    what is wrong with it)."""
    from instructjax.core.checkpoint import checkpoints_dir
    from instructjax.core.integrity import steps_on_disk

    return bool(steps_on_disk(checkpoints_dir(run_dir)))


def _train(args) -> int:
    from instructjax.train.trainer import train

    config = load_run_config(args.config, [*args.overrides, *on_bad_row_overrides(args)])
    if args.resume and args.auto_resume:
        raise ConfigError("--resume and --auto-resume exclude each other (--auto-resume: resume where a checkpoint "
                          "exists, else start)")
    if args.resume and not has_checkpoint(config.run_dir):
        raise ConfigError(f"--resume: {config.run_dir} holds no checkpoint to resume from (is run_dir right?); "
                          "start the run without --resume, or use --auto-resume to resume only where one exists")
    result = train(config, resume=args.resume or args.auto_resume, accept_changes=args.accept_changes)
    if result.preempted:  # the trainer said so (saved step N); `--resume` continues
        return stopping.EXIT_PREEMPTED
    if result.losses:
        print(f"trained to step {result.step}: loss {result.losses[result.step]:.4f}; run dir {result.run_dir}")
    else:
        print(f"{result.run_dir} is already trained to its last step ({result.step}): nothing to train "
              "(raise max_steps or optim.epochs with --accept-changes to go on)")
    return 0
