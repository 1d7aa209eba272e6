"""`instructjax data select NAME --method less --model M --target T (-k K | --fraction F) --out FILE`: LESS's
targeted selection (`train/less_select.py`): the chosen examples to FILE as every method writes them, and beside it,
in FILE's directory (the selection's): FILE's stem + .scores.jsonl (every pool example's id, score and best subtask),
the warm-up run (warmup/) and the features (features/), which a selection for another target in the same directory
reuses."""

from __future__ import annotations

import argparse
import dataclasses
import json

from instructjax.core import hosts, storage
from instructjax.core.errors import ConfigError

LESS_FLAGS = "LESS (--method less; its scripts' values by default)"


def add_flags(select: argparse.ArgumentParser) -> None:
    """The flags of `--method less` (in their own group of `data select`'s help)."""
    from instructjax.train.less_select import GRADIENT_TYPES, LessSettings

    d = LessSettings()
    group = select.add_argument_group(LESS_FLAGS)
    group.add_argument("--model", help="the model selected for: an instructjax checkpoint or an HF directory")
    group.add_argument("--target", help="a task or mixture, or a .jsonl of rows whose examples the selection should "
                                        "help (an optional `subtask` field on every row)")
    group.add_argument("--target-source", default="messages", help="the target file's schema (a source name)")
    group.add_argument("--fraction", type=float, help="keep this share of the pool (LESS: 0.05), instead of -k")
    group.add_argument("--warmup-fraction", type=float, default=d.warmup_fraction)
    group.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs)
    group.add_argument("--warmup-batch", type=int, default=d.warmup_batch, help="examples a warm-up step")
    group.add_argument("--warmup-lr", type=float, default=d.lr)
    group.add_argument("--lora-rank", type=int, default=d.lora_rank)
    group.add_argument("--lora-alpha", type=float, default=d.lora_alpha)
    group.add_argument("--lora-dropout", type=float, default=d.lora_dropout)
    group.add_argument("--lora-targets", nargs="+", default=list(d.lora_targets))
    group.add_argument("--dim", type=int, default=d.dim, help="projected dimensions")
    group.add_argument("--projection-seed", type=int, default=d.projection_seed)
    group.add_argument("--gradient-type", choices=GRADIENT_TYPES, default=d.gradient_type,
                       help="the pool's features (the target's: plain gradients)")
    group.add_argument("--feature-batch", type=int, default=d.batch, help="examples a feature batch")
    group.add_argument("--warmup-override", action="append", default=[], metavar="key=value",
                       help="a dotted key of the warm-up run (model.dtype=float32); repeatable")


def settings_of(args):
    from instructjax.train.less_select import LessSettings

    return LessSettings(
        warmup_fraction=args.warmup_fraction, warmup_epochs=args.warmup_epochs, warmup_batch=args.warmup_batch,
        lr=args.warmup_lr, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
        lora_targets=tuple(args.lora_targets), dim=args.dim, projection_seed=args.projection_seed,
        gradient_type=args.gradient_type, max_length=args.max_length or 2048, batch=args.feature_batch,
        seed=args.seed, template=args.template, warmup_overrides=tuple(args.warmup_override))


def run(args, target_of_pool) -> int:
    """`data select --method less` (see the module doc); `target_of_pool(args)`: the bound pool (`command_target`)."""
    from instructjax.core.config import load_config
    from instructjax.data.blends import specs
    from instructjax.data.schema import Conversation
    from instructjax.data.selection.methods import Selected, write_selection
    from instructjax.train import less_select
    from instructjax.train import setup as run_setup

    if not args.model or not args.target:
        raise ConfigError("--method less needs --model (the model selected for) and --target (what it should help)")
    if (args.k is None) == (args.fraction is None):
        raise ConfigError("--method less: give one of -k and --fraction")
    if args.fraction is not None and not 0 < args.fraction <= 1:
        raise ConfigError(f"--fraction must be in (0, 1], got {args.fraction}")
    settings = settings_of(args)
    directory = str(storage.path(args.out).parent)
    hosts.initialize(False, f"select:{directory}")  # several hosts (JAX_COORDINATOR_ADDRESS): one selection, before JAX
    out = storage.path(args.out)
    made_here = {"warmup.jsonl", "base.json", "features", "warmup", "base"}  # the selection's own, beside FILE
    if out.name in made_here or out.name.endswith(".scores.jsonl") or (
            storage.path(args.target).is_file() and out.resolve() == storage.path(args.target).resolve()):
        raise ConfigError(f"--out {args.out}: the selection writes its own {out.name} there (or it is the "
                          "--target): name another file")
    base = less_select.base_checkpoint(args.model, directory)
    tokenizer = run_setup.tokenizer_path(load_config(None, [f"model.init_from={base}"]))
    args.tokenizer, args.max_length = tokenizer, settings.max_length
    bound = target_of_pool(args)
    template = specs.task(bound.tasks[0]).template  # the pool's, bound (the warm-up trains under it)
    settings = dataclasses.replace(settings, template=template)
    pool, _ = less_select.examples_of(bound.tasks)
    target, labels = less_select.target_of(args.target, args.target_source, tokenizer, template,
                                           settings.max_length)
    scored = less_select.run(pool, target, labels, settings, base, directory)
    k = args.k if args.k is not None else max(1, round(args.fraction * len(pool)))
    chosen = less_select.top(scored, k)
    scores_path = storage.join(directory, f"{out.stem}.scores.jsonl")
    if not hosts.is_first():  # every host scored alike; host 0 writes and says so
        return 0
    write_selection([Selected(Conversation.from_json(pool[s.index]["conversation"]), s.score) for s in chosen],
                    args.out, method="less")
    # FILE.scores.jsonl: several targets' selections share a directory and its features
    less_select.write_scores(scores_path, scored)
    where = {"selected": args.out, "scores": scores_path, "warmup": storage.join(directory, "warmup"),
             "features": storage.join(directory, "features"), "examples": len(chosen), "pool": len(pool)}
    if args.json:
        print(json.dumps(where, indent=2))
    else:
        print(f"selected {len(chosen)} of {len(pool)} examples by less -> {args.out} (scores: {scores_path})")
    return 0
