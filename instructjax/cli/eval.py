"""`instructjax score`, `generate` and `eval` (lm-eval, the papers' suites, Codex-Eval, pairwise judging).

`instructjax eval --config RUN.yaml` (what the config's `eval:` block names) is `cli/eval_config.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from instructjax.core.errors import ConfigError

EVAL_PARTS = ("suite", "tasks", "codex", "pairwise", "alpaca_eval", "flask")  # what `eval --config` runs


def register(subparsers) -> None:
    score = subparsers.add_parser("score", help="per-token log-probabilities of texts under a model")
    _model_args(score)
    score.add_argument("--text", nargs="+", default=[], help="texts to score")
    score.add_argument("--file", help="JSONL with a 'text' field per row")
    score.set_defaults(func=run_score)

    gen = subparsers.add_parser("generate", help="chat completions (template applied, batched, KV cache)")
    _model_args(gen)
    gen.add_argument("--prompts", required=True, help="JSONL rows with 'id' and 'messages' or 'instruction'")
    gen.add_argument("--out", required=True, help="JSONL of {id, instruction, output}")
    gen.add_argument("--max-new-tokens", type=int, default=512)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    gen.set_defaults(func=run_generate)

    ev = subparsers.add_parser("eval", help="lm-eval tasks or a paper's suite; `eval pairwise`, `eval codex`",
                               allow_abbrev=False)
    ev.add_argument("--config", help="a run config: run what its eval: block names (--only picks parts)")
    ev.add_argument("--only", help=f"with --config: comma-separated parts among {', '.join(EVAL_PARTS)}")
    ev.add_argument("--model", help="an exported HF directory (hf backend) or a checkpoint (instructjax backend); "
                                    "with --config: instead of the run's checkpoint")
    ev.add_argument("--tasks", help="comma-separated lm-eval task names")
    ev.add_argument("--suite", help="a paper's suite instead of --tasks: tulu, mixture, leaderboard")
    ev.add_argument("--num-fewshot", type=int)
    ev.add_argument("--backend", choices=["auto", "hf", "instructjax"], default="auto")
    ev.add_argument("--include-path", help="directory with extra (e.g. offline) task YAMLs")
    ev.add_argument("--limit", type=float, help="at most this many documents per task")
    ev.add_argument("--batch-size", type=int, default=8)
    ev.add_argument("--out", help="write the results JSON here")
    ev.set_defaults(func=run_eval)
    sub = ev.add_subparsers(dest="eval_command", required=False)

    pw = sub.add_parser("pairwise", help="judge requests (both orders) and scores from the judge's replies")
    pw.add_argument("action", choices=["requests", "score"])
    pw.add_argument("--mode", choices=["pairwise", "alpacaeval", "flask"], default="pairwise")
    pw.add_argument("--a", help="system A (or the model) outputs: JSONL {id, instruction, output[, skills]}")
    pw.add_argument("--b", help="system B (or the reference) outputs: JSONL {id, instruction, output}")
    pw.add_argument("--requests", required=True, help="requests JSONL (written by `requests`, read by `score`)")
    pw.add_argument("--replies", help="the judge's replies: JSONL {id, reply}")
    pw.add_argument("--seed", type=int, default=0)
    pw.add_argument("--round-like-table", action="store_true",
                    help="flask: round the 1-5 means to two decimals before scaling, as seed 000's Table 2")
    pw.set_defaults(func=run_pairwise)

    codex = sub.add_parser("codex", help="Codex-Eval on the 164 HumanEval problems (pass@1 T=0.1, pass@10 T=0.8)")
    _model_args(codex)
    codex.add_argument("-n", type=int, default=20, help="samples per problem and temperature")
    codex.add_argument("--limit", type=int, help="only the first N problems")
    codex.add_argument("--max-new-tokens", type=int, default=512)
    codex.set_defaults(func=run_codex)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a checkpoint (RUN_DIR[/STEP]) or an HF model directory")
    p.add_argument("--tokenizer", help="tokenizer override (.model or HF dir); default: the model's own")
    p.add_argument("--template", help="chat template name; default: the one the model was trained with")
    p.add_argument("--batch-size", type=int, default=8)


def load_generator(args):
    """(Generator, HF tokenizer) for --model / --tokenizer / --template: the model's own tokenizer and the
    chat template it was trained with (tulu, with a note, for a model that carries none)."""
    from instructjax.convert.saved import load_model, saved_tokenizer
    from instructjax.data.templates import DEFAULT_TEMPLATE, jinja_template
    from instructjax.eval.generate import Generator

    tokenizer, chat_template = saved_tokenizer(args.model, tokenizer=args.tokenizer, template=args.template)
    if chat_template is None:
        print(f"instructjax: note: {args.model} carries no chat template; using {DEFAULT_TEMPLATE!r}", file=sys.stderr)
        chat_template = jinja_template(DEFAULT_TEMPLATE, bos=tokenizer.adds_bos)
    hf_tok = tokenizer.to_hf(chat_template)
    return Generator(load_model(args.model), hf_tok, batch_size=args.batch_size), hf_tok


def _rows(path: str) -> list[dict]:
    from instructjax.eval.pairwise import read_jsonl

    return read_jsonl(path)


def run_score(args) -> int:
    from instructjax.eval.score import score_texts

    texts = list(args.text) + ([r["text"] for r in _rows(args.file)] if args.file else [])
    if not texts:
        raise ConfigError("score: give --text or --file")
    generator, hf_tok = load_generator(args)
    for text, scores in zip(texts, score_texts(generator.model, hf_tok, texts, args.batch_size), strict=True):
        total = sum(lp for _, lp in scores)
        print(json.dumps({"text": text, "logprob": total, "tokens": scores}, ensure_ascii=False))
    return 0


def complete(generator, rows: list[dict], sampling, keep: tuple[str, ...] = ()) -> list[dict]:
    """{id, instruction, output} (plus the row's `keep` fields) for rows with 'messages' or 'instruction'."""
    conversations = []
    for i, row in enumerate(rows):
        messages = row.get("messages") or [{"role": "user", "content": row.get("instruction", "")}]
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        conversations.append(messages)
        row.setdefault("id", str(i))
        row.setdefault("instruction", messages[-1]["content"])
    outputs = generator.chat(conversations, sampling)
    return [{"id": r["id"], "instruction": r["instruction"], "output": o, **{k: r[k] for k in keep if k in r}}
            for r, o in zip(rows, outputs, strict=True)]


def run_generate(args) -> int:
    from instructjax.eval.generate import Sampling
    from instructjax.eval.pairwise import write_jsonl

    rows = _rows(args.prompts)
    generator, _ = load_generator(args)
    completions = complete(generator, rows, Sampling(args.max_new_tokens, args.temperature, args.top_p, args.seed))
    write_jsonl(args.out, completions)
    print(f"wrote {len(completions)} completions to {args.out}")
    return 0


def run_lm_eval(model: str, tasks: list[str], *, backend: str = "auto", num_fewshot: int | None = None,
                include_path: str | None = None, limit: float | None = None, batch_size: int = 8,
                log_samples: bool = False, samples: dict[str, list[int]] | None = None,
                gen_kwargs: dict | None = None) -> dict:
    """lm-eval's simple_evaluate with the hf backend on an HF directory, or ours on a checkpoint (or any
    registered lm-eval model named by `backend`); `samples`: the documents of each task to evaluate."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    import instructjax.eval.lm_eval_adapter  # noqa: F401  (registers "instructjax")

    if backend == "auto":
        backend = "hf" if os.path.isfile(os.path.join(model, "config.json")) else "instructjax"
    model_args = f"pretrained={model}" + (",dtype=float32" if backend == "hf" else "")
    return lm_eval.simple_evaluate(
        model=backend, model_args=model_args, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
        batch_size=batch_size, device="cpu" if backend == "hf" else None, log_samples=log_samples,
        task_manager=TaskManager(include_path=include_path), bootstrap_iters=0, samples=samples,
        gen_kwargs=gen_kwargs,
    )


def leaf_sizes(task: str, include_path: str | None = None) -> dict[str, int]:
    """{leaf task: document count} of an lm-eval task or group (the group's tasks, recursively)."""
    from lm_eval.api.task import Task
    from lm_eval.tasks import TaskManager, get_task_dict

    sizes: dict[str, int] = {}

    def walk(node) -> None:
        for value in node.values():
            if isinstance(value, dict):
                walk(value)
            elif isinstance(value, Task):
                sizes[value.config.task] = len(value.eval_docs)

    walk(get_task_dict([task], TaskManager(include_path=include_path)))
    return sizes


def _numeric(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and "stderr" not in k}


def run_suite(model: str, name: str, *, backend: str = "auto", include_path: str | None = None,
              limit: float | None = None, batch_size: int = 8, samples_out: str | None = None) -> dict:
    """A paper's suite through lm-eval: one call per shot count; the protocol benchmarks (GSM8K, BBH) on
    their seeded subsets (all documents, or lm-eval's first `limit`, when a limit is given) and scored from
    the raw generations by the paper's answer rule (`protocol` in their entry). `samples_out`: JSONL of
    every protocol document's response and extracted answer."""
    from instructjax.eval.pairwise import write_jsonl
    from instructjax.eval.protocols import bbh_answer, gsm8k_answer, protocol_samples, score_suite_task
    from instructjax.eval.suite import SUITE_MAX_GEN_TOKS, lm_eval_runs, protocols

    by_task = protocols(name)
    if by_task and limit is not None:
        print(f"instructjax: note: --limit takes lm-eval's first documents of {', '.join(by_task)}, not the "
              "paper's seeded subsets", file=sys.stderr)
    gen_kwargs = {"max_gen_toks": SUITE_MAX_GEN_TOKS[name]} if name in SUITE_MAX_GEN_TOKS else None
    summary: dict[str, dict] = {}
    logged: list[dict] = []
    for shots, tasks in lm_eval_runs(name):
        here = {t: by_task[t] for t in tasks if t in by_task}
        leaves = {t: leaf_sizes(t, include_path) for t in here}
        samples = None
        if here and limit is None:
            samples = {}
            for task, protocol in here.items():
                samples.update(protocol_samples(protocol, task, leaves[task]))
        out = run_lm_eval(model, tasks, backend=backend, num_fewshot=shots, include_path=include_path, limit=limit,
                          batch_size=batch_size, log_samples=bool(here), samples=samples, gen_kwargs=gen_kwargs)
        for task, metrics in out["results"].items():
            summary[f"{task}|{shots}-shot"] = _numeric(metrics)
        for task, protocol in here.items():
            scores = score_suite_task(protocol.kind, list(leaves[task]), out.get("samples", {}))
            summary.setdefault(f"{task}|{shots}-shot", {})["protocol"] = {
                "kind": protocol.kind, "per_task": protocol.per_task, "seed": protocol.seed, **scores}
            extract = gsm8k_answer if protocol.kind == "gsm8k" else bbh_answer
            for leaf in leaves[task]:
                seen = set()
                for s in out.get("samples", {}).get(leaf, []):
                    if s["doc_id"] not in seen:
                        seen.add(s["doc_id"])
                        text = s["resps"][0][0]
                        logged.append({"task": leaf, "doc_id": s["doc_id"], "target": s["target"],
                                       "response": text, "answer": extract(text)})
    if samples_out and logged:
        write_jsonl(samples_out, logged)
    return summary


def run_eval(args) -> int:
    if args.config:
        from instructjax.cli.eval_config import run_config

        return run_config(args)
    if not args.model or not (args.tasks or args.suite):
        raise ConfigError("eval: give --model and --tasks or --suite, or --config (or a subcommand: pairwise, codex)")
    if args.suite:
        summary = run_suite(args.model, args.suite, backend=args.backend, include_path=args.include_path,
                            limit=args.limit, batch_size=args.batch_size)
    else:
        out = run_lm_eval(args.model, args.tasks.split(","), backend=args.backend, num_fewshot=args.num_fewshot,
                          include_path=args.include_path, limit=args.limit, batch_size=args.batch_size)
        summary = {task: _numeric(metrics) for task, metrics in out["results"].items()}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


def run_pairwise(args) -> int:
    from instructjax.eval import pairwise as pw

    if args.action == "requests":
        if not args.a or (args.mode != "flask" and not args.b):
            raise ConfigError(f"eval pairwise requests --mode {args.mode} needs --a" + ("" if args.mode == "flask" else
                                                                                         " and --b"))
        if args.mode == "pairwise":
            requests = pw.pairwise_requests(_rows(args.a), _rows(args.b))
        elif args.mode == "alpacaeval":
            requests = pw.alpacaeval_requests(_rows(args.a), _rows(args.b), seed=args.seed)
        else:
            requests = pw.flask_requests(_rows(args.a))
        pw.write_jsonl(args.requests, requests)
        print(f"wrote {len(requests)} judge requests to {args.requests}")
        return 0
    if not args.replies:
        raise ConfigError("eval pairwise score needs --replies")
    requests, replies = _rows(args.requests), _rows(args.replies)
    if args.mode == "pairwise":
        r = pw.score_pairwise(requests, replies)
        result = {"win": r.win, "tie": r.tie, "lose": r.lose, "n": r.n, "winning_score": r.winning_score}
    elif args.mode == "alpacaeval":
        result = pw.score_alpacaeval(requests, replies)
    else:
        result = pw.score_flask(requests, replies, round_like_table=args.round_like_table)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


def run_codex(args) -> int:
    from instructjax.eval.humaneval import codex_eval, load_problems

    problems = load_problems()
    if args.limit:
        problems = dict(list(problems.items())[: args.limit])
    generator, _ = load_generator(args)
    print(json.dumps(codex_eval(generator, problems, n=args.n, max_new_tokens=args.max_new_tokens), indent=2))
    return 0
