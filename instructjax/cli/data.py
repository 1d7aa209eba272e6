"""`instructjax data stats|preview|select|prepare`: look at a task or mixture before training on it (`prepare`, which
tokenizes a run's data ahead of it, is cli/prepare.py)."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from instructjax.cli import add_on_bad_row, load_run_config, prepare, select_less
from instructjax.core.config import DataSection, RunConfig
from instructjax.core.errors import ConfigError
from instructjax.data.sources.synthetic import BUILTIN, LENGTH_STATS, TULU_TABLE1

if TYPE_CHECKING:
    from instructjax.data.binding import Resolved

GREEN, DIM, RESET = "\033[32m", "\033[2m", "\033[0m"


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="tasks and mixtures: stats, preview, select; prepare (tokenize ahead)")
    sub = data.add_subparsers(dest="data_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("name", nargs="?", help="a registered task or mixture, or a source name with --data-files")
        p.add_argument("--config", help="a run config: its data.mixture (and its define: block) is used")
        p.add_argument("--data-files", nargs="+", help="local json/jsonl/parquet files in the source's schema")
        add_on_bad_row(p)
        p.add_argument("--template", help="chat template (default: the task's, tulu)")
        p.add_argument("--tokenizer", help="a tokenizer (.model file or HF directory) instead of the run's (with "
                                           "--config) or the built-in one")
        p.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                       help="with --config: dotted overrides, as train takes them")
        p.add_argument("--max-length", type=int, help="truncate examples to this many tokens")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    stats = sub.add_parser("stats", help="Tulu Table 1 columns per task, trained tokens, packing")
    common(stats)
    stats.add_argument("--seq-len", type=int, help="packed row length (default: the config's, or 2048)")
    stats.add_argument("--global-batch", type=int, help="rows per optimizer step (default: config's, or 64)")
    stats.set_defaults(func=run_stats)

    preview = sub.add_parser("preview", help="rendered examples with the trained tokens highlighted")
    common(preview)
    preview.add_argument("-n", type=int, default=3, help="how many examples")
    preview.set_defaults(func=run_preview)

    select = sub.add_parser("select", help="data selection (seed 002): write the chosen subset as jsonl")
    common(select)
    select.add_argument("--method", required=True,
                        help="longest|shortest|random|kmeans|kcenter|quality|full, or less (targeted: LESS)")
    select.add_argument("-k", type=int, help="how many examples to keep (omit for --method full)")
    select.add_argument("--num-clusters", type=int, default=100, help="k-means clusters (seed 002: 100)")
    select.add_argument("--encoder", default="tfidf-svd",
                        help="instruction embeddings for kmeans/kcenter: tfidf-svd, or llama-mean (seed 002's)")
    select.add_argument("--encoder-model",
                        help="checkpoint or HF directory for --encoder llama-mean (default: the config's model.init_from)")
    select.add_argument("--seed", type=int, default=0)
    select.add_argument("--score-key", default="score", help="meta column for --method quality")
    select.add_argument("--out", required=True, help="output .jsonl with the chosen examples and scores")
    select_less.add_flags(select)
    select.set_defaults(func=run_select)
    prepare.add_parser(sub)


@dataclass
class Target:
    """What a data command looks at: task names, the mixture (or task) name, the run config and the bound
    mixture resolved (`binding.Resolved`)."""

    name: str
    tasks: list[str]
    config: RunConfig | None
    resolved: Resolved | None = None


def command_target(args) -> Target:
    """Turn NAME / --config / --data-files into a bound task or mixture. With --config the tasks are bound to
    that run: its model's tokenizer, its chat template and its row length (`instructjax.data.binding`)."""
    from instructjax.data.binding import bind, specs_of
    from instructjax.data.blends import specs
    from instructjax.data.sources.registry import ALL_SOURCES
    from instructjax.train import setup as run_setup

    overrides = list(getattr(args, "overrides", []))
    if args.name and "=" in args.name:  # `data preview --config C data.seq_len=512`: an override, not a task
        args.name, overrides = None, [args.name, *overrides]
    if overrides and not args.config:
        raise ConfigError(f"{overrides[0]}: key=value overrides go with --config (a task or mixture is named alone)")
    if getattr(args, "tokenizer", None):
        overrides.append(f"tokenizer={args.tokenizer}")
    config = load_run_config(args.config, overrides) if args.config else None
    if config is not None:
        run_setup.run_registry(config)  # its `define:` joins the command's registry, where the lookups below look
    name = args.name or (config.data.mixture if config is not None else None)
    if not name:
        raise ConfigError("name a task or mixture, or pass --config FILE")
    changes = {}
    if args.data_files:
        if name not in ALL_SOURCES:
            raise ConfigError(f"--data-files needs a source name, got {name!r}")
        changes["data_files"] = tuple(args.data_files)
    if args.template:
        changes["template"] = args.template
    if args.max_length:
        changes["max_length"] = args.max_length
    on_bad_row = args.on_bad_row or (config.data.on_bad_row if config is not None else None)
    if on_bad_row is not None and config is None:
        changes["on_bad_row"] = on_bad_row
    found = specs_of(name)
    if found is None:
        raise specs.unknown(name)
    tasks, mixture = found.tasks, found.mixture
    if changes:
        variants = [specs.with_options(t, **changes) for t in tasks]
        name = specs.remix(name, dict(zip(tasks, variants, strict=True))) if mixture else variants[0]
    if config is not None:  # bound to the run: its model's tokenizer, chat template and row length
        bound = bind(name, tokenizer=run_setup.tokenizer_path(config), template=config.template,
                     max_length=config.data.seq_len, model=config.model.init_from, on_bad_row=on_bad_row,
                     system_turn=config.data.system_turn)
    else:  # the tokenizer asked for (the built-in one), and the row length asked for (ShareGPT splits at it)
        bound = bind(name, tokenizer=getattr(args, "tokenizer", None),
                     max_length=getattr(args, "seq_len", None) or args.max_length)
    return Target(name=bound.name, tasks=bound.tasks, config=config, resolved=bound.resolved)



def subset_sha256(ids) -> str:
    """The sha256 of a task's selected example ids, sorted and joined by newlines: two runs trained on the same
    examples of a task print the same digest (seed 000 shares one 20K draw per dataset across settings)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def task_stats(task: str, count: int | None = None, seed: int | None = None) -> dict:
    """Tulu Table 1 columns (instances, mean rounds, mean prompt / completion tokens per round),
    trained-token totals and what happened to the rows (read, kept, repaired, skipped) of one task, or of
    its subset of `count` drawn with `seed`, measured with the task's tokenizer, and the digest of the
    examples a run trains on (see `subset_sha256`)."""
    from instructjax.data.blends import specs
    from instructjax.data.encoding.tokenizer import Tokenizer
    from instructjax.data.schema import Conversation
    from instructjax.data.tokenized import examples as examples_lib

    spec = specs.task(task)
    tokenizer = Tokenizer.load(spec.tokenizer)
    seed = seed if count is not None else None
    examples = examples_lib.encoded_examples(task, count, seed)
    rounds, prompt, completion, ids = [], [], [], []
    verifiers: Counter = Counter()  # a verifiable task's prompts per verifier
    for ex in examples:
        conv = Conversation.from_json(ex["conversation"])
        ids.append(conv.id)
        if spec.verifiable:
            verifiers[conv.meta.get("verifier")] += 1
        rounds.append(conv.rounds)
        for m in conv.messages:
            if m["role"] != "system":  # Table 1 counts user prompts and assistant completions per round
                n = len(tokenizer.encode(m["content"].strip()))
                (completion if m["role"] == "assistant" else prompt).append(n)
    trained = int(sum(int(ex["loss_mask"].sum()) for ex in examples))
    total = int(sum(len(ex["tokens"]) for ex in examples))
    report = examples_lib.task_report(task, seed)
    # the published figures are the hub dataset's (and the built-in rows' it models): a task's own data_files are
    # counted alone, whatever schema they share with a published dataset (your own preference pairs are not
    # UltraFeedback)
    own_data = spec.data_files not in (None, (BUILTIN,))
    paper = None if own_data else LENGTH_STATS.get(spec.source)
    return {
        "task": specs.base_name(task),
        "source": spec.source,
        "tokenizer": tokenizer.words.removeprefix("tokenizer "),
        "instances": len(examples),
        "unit": "pairs" if spec.preference else "prompts" if spec.verifiable else "examples",
        "subset_sha256": subset_sha256(ids),
        **({"verifiers": dict(verifiers)} if spec.verifiable else {}),
        "mean_rounds": float(np.mean(rounds)) if rounds else 0.0,
        "mean_prompt_tokens": float(np.mean(prompt)) if prompt else 0.0,
        "mean_completion_tokens": float(np.mean(completion)) if completion else 0.0,
        "tokens": total,
        "trained_tokens": trained,
        "rows": report.as_dict(),
        "notes": report.lines(),
        "paper": None if paper is None else dict(paper._asdict(), table="Tulu Table 1" if spec.source in TULU_TABLE1
                                                  else "our estimate (not in Tulu Table 1)"),
    }


def run_stats(args) -> int:
    from instructjax.data.batches.pipeline import DataPipeline
    from instructjax.data.blends import specs

    target = command_target(args)
    base = target.config.data if target.config else DataSection(mixture=target.name)
    mixture = specs.lookup_mixture(target.name)
    counts = dict(mixture.counts) if mixture is not None else {}
    rows = [task_stats(t, counts.get(t), base.seed) for t in target.tasks]
    data = dataclasses.replace(base, mixture=target.name, prefetch=0, seq_len=args.seq_len or base.seq_len,
                               global_batch=args.global_batch or base.global_batch)
    plan = DataPipeline(data, resolved=target.resolved).plan_epoch(0)
    result = {"name": specs.base_name(target.name), "tasks": rows, "epoch": asdict(plan), "seq_len": data.seq_len,
              "global_batch": data.global_batch}  # fmt: skip
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{specs.base_name(target.name)}: {len(rows)} task(s), tokenizer {rows[0]['tokenizer'] if rows else '-'}")
    header = (
        f"{'task':<28} {'instances':>9} {'rounds':>6} {'prompt':>7} {'compl.':>7} {'trained tok':>12}"
        f"   | paper: {'rounds':>6} {'prompt':>7} {'compl.':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        p = r["paper"]
        ref = f"{p['rounds']:>6.1f} {p['prompt']:>7.1f} {p['completion']:>7.1f}" if p else ""
        mark = "" if not p or p["table"] == "Tulu Table 1" else " *"
        print(
            f"{r['task']:<28} {r['instances']:>9} {r['mean_rounds']:>6.1f} {r['mean_prompt_tokens']:>7.1f}"
            f" {r['mean_completion_tokens']:>7.1f} {r['trained_tokens']:>12,}   |        {ref}{mark}"
        )
        kept = r["rows"]
        unit = {"pairs": "pair(s)", "prompts": "prompt(s) (verifiable: no token trained, rewarded by a verifier: "
                 + ", ".join(f"{v} {n:,}" for v, n in sorted(r.get("verifiers", {}).items())) + ")"}
        print(f"  rows: read {kept['read']:,}, kept {kept['kept']:,} " + unit.get(r["unit"], "example(s)"))
        for note in r["notes"]:
            print(f"  note: {note}")
    if any(r["paper"] and r["paper"]["table"] != "Tulu Table 1" for r in rows):
        print("* not in Tulu Table 1: our estimate of the dataset's lengths")
    print(
        f"one epoch at seq_len {data.seq_len}: {plan.examples} examples -> {plan.rows} rows, "
        f"{plan.tokens:,} tokens ({plan.trained_tokens:,} trained), packing efficiency {plan.efficiency:.1%}, "
        f"{plan.steps} optimizer steps at global batch {data.global_batch}"
    )
    return 0


def highlight(tokenizer, tokens: np.ndarray, mask: np.ndarray, color: bool) -> str:
    """Decode tokens with the template's special tokens shown (dimmed on a terminal), marking the trained ones
    (green on a terminal, [[...]] otherwise): a trained end-of-turn token shows as trained."""
    special = tokenizer.special_ids
    pieces = []  # (text, trained, special): runs of plain tokens trained alike, and each special token alone
    i = 0
    while i < len(tokens):
        trained, alone = bool(mask[i]), int(tokens[i]) in special
        j = i + 1
        while not alone and j < len(tokens) and bool(mask[j]) == trained and int(tokens[j]) not in special:
            j += 1
        pieces.append((tokenizer.decode([int(t) for t in tokens[i:j]], skip_special_tokens=False), trained, alone))
        i = j
    if color:
        return "".join((GREEN if trained else "") + (DIM if alone else "") + text + (RESET if trained or alone else "")
                       for text, trained, alone in pieces)
    runs = itertools.groupby(pieces, key=lambda piece: piece[1])
    return "".join(f"[[{text}]]" if trained else text
                   for trained, group in runs for text in ["".join(piece[0] for piece in group)])


def run_preview(args) -> int:
    from instructjax.data.batches.pipeline import DataPipeline
    from instructjax.data.blends import specs
    from instructjax.data.encoding.tokenizer import Tokenizer
    from instructjax.data.schema import Conversation
    from instructjax.data.tokenized import examples as examples_lib

    target = command_target(args)
    mosaic = target.config.data.mosaic if target.config else None
    tokenizer = Tokenizer.load(specs.task(target.tasks[0]).tokenizer)
    shown = []  # (conversation, tokens, loss mask, where a pair's rejected side starts or None, the example's id)
    if mosaic is not None:
        data = dataclasses.replace(target.config.data, mixture=target.name, prefetch=0)
        pipeline = DataPipeline(data, resolved=target.resolved)
        for conv in pipeline.stream.mosaic_conversations(0)[: args.n]:
            enc = pipeline.stream.mosaic_encoder.encode(conv)
            shown.append((conv, enc.tokens, enc.loss_mask, None, conv.id))
    else:
        per_task = max(1, -(-args.n // len(target.tasks)))
        for task in target.tasks:
            for ex in examples_lib.encoded_examples(task)[:per_task]:
                conv = Conversation.from_json(ex["conversation"])
                pair = ex.get("rejected_at")  # a preference pair: one example, its id the pair's
                shown.append((conv, ex["tokens"], ex["loss_mask"], pair, conv.id if pair is None else ex["id"]))
        shown = shown[: args.n]
    color = sys.stdout.isatty()
    for conv, tokens, mask, rejected_at, example_id in shown:
        text = tokenizer.decode([int(t) for t in tokens], skip_special_tokens=False)  # the template's markers too
        if args.json:
            print(json.dumps({"id": example_id, "source": conv.source, "text": text, "tokens": tokens.tolist(),
                              "loss_mask": mask.tolist(), "meta": conv.meta,
                              **({} if rejected_at is None else {"rejected_at": int(rejected_at)})},
                             ensure_ascii=False))
            continue
        if rejected_at is not None:  # a preference pair: its id, then each side
            print(f"=== pair {example_id} ({conv.source}) {len(tokens)} tokens, {int(mask.sum())} trained ===")
            for side, part in (("chosen", slice(0, rejected_at)), ("rejected", slice(rejected_at, None))):
                print(f"--- {side}: {len(tokens[part])} tokens, {int(mask[part].sum())} trained")
                print(highlight(tokenizer, tokens[part], mask[part], color))
            continue
        print(f"=== {example_id} ({conv.source}) {len(tokens)} tokens, {int(mask.sum())} trained ===")
        if conv.meta.get("mosaic"):
            print(f"mosaic: {json.dumps(conv.meta['mosaic'], ensure_ascii=False)}")
        if conv.prompt_only:  # a verifiable prompt: its ids ask for the answer, which a verifier scores
            print(f"(a prompt: verifier {conv.meta.get('verifier')!r}, ground truth "
                  f"{json.dumps(conv.meta.get('ground_truth'), ensure_ascii=False)})")
        elif not mask.any():
            print(f"(no trained token within the first {len(tokens)} tokens: this example is kept out of training)")
        print(highlight(tokenizer, tokens, mask, color))
    return 0


def run_select(args) -> int:
    from instructjax.data.blends import specs
    from instructjax.data.encoding.encode import response_token_length
    from instructjax.data.encoding.tokenizer import Tokenizer
    from instructjax.data.schema import Conversation
    from instructjax.data.selection.embeddings import MODEL_ENCODERS, get_encoder
    from instructjax.data.selection.methods import select, write_selection
    from instructjax.data.tokenized import examples as examples_lib

    if args.method == "less":
        return select_less.run(args, command_target)
    target = command_target(args)
    convs = [
        Conversation.from_json(ex["conversation"]) for t in target.tasks for ex in examples_lib.encoded_examples(t)
    ]
    tokenizer = Tokenizer.load(specs.task(target.tasks[0]).tokenizer)
    encoder_kwargs = {}
    if args.encoder in MODEL_ENCODERS:
        model = args.encoder_model or (target.config.model.init_from if target.config else None)
        if not model:
            raise ConfigError(f"--encoder {args.encoder} embeds with a model: pass --encoder-model, or --config "
                              "with model.init_from")
        encoder_kwargs = {"model": model, "tokenizer": specs.task(target.tasks[0]).tokenizer}
    chosen = select(
        convs,
        args.method,
        args.k,
        seed=args.seed,
        response_length=partial(response_token_length, tokenizer=tokenizer),
        score_key=args.score_key,
        encoder=get_encoder(args.encoder, **encoder_kwargs),
        num_clusters=args.num_clusters,
    )
    write_selection(chosen, args.out, method=args.method)
    print(f"selected {len(chosen)} of {len(convs)} examples by {args.method} -> {args.out}")
    return 0
