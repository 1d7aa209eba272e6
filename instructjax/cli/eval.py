"""`instructjax score`, `generate` and `eval` (lm-eval, the papers' suites, Codex-Eval, judging, quality ratings).

`instructjax eval --config RUN.yaml` runs what the config's `eval:` block names (instructjax/eval/run.py);
the lm-eval runs are instructjax/eval/harness.py, generation instructjax/eval/generate.py (or, with --endpoint, an
OpenAI-compatible server: instructjax/eval/endpoint.py).
"""

from __future__ import annotations

import json
import os
import sys
import time

from instructjax.cli import load_run_config
from instructjax.cli.engine_flags import check_numbers, completion_tokens, endpoint, endpoint_args, model_args
from instructjax.cli.engine_flags import generator as _generator
from instructjax.cli.engine_flags import placement as _placement
from instructjax.cli.engine_flags import placement_args as _placement_args
from instructjax.core import storage
from instructjax.core.errors import ConfigError
from instructjax.core.user_paths import expect_file, same_path
from instructjax.eval.config import JudgeEndpoint
from instructjax.eval.harness import numeric, results_json, run_lm_eval, run_suite
from instructjax.eval.run import EVAL_PARTS, evaluate_config


def register(subparsers) -> None:
    score = subparsers.add_parser("score", help="per-token log-probabilities of texts under a model")
    model_args(score)
    score.add_argument("--text", nargs="+", default=[], help="texts to score")
    score.add_argument("--file", help="JSONL with a 'text' field per row")
    score.set_defaults(func=run_score)

    gen = subparsers.add_parser("generate", help="chat completions (template applied, continuous batching)")
    model_args(gen)
    gen.add_argument("--prompts", required=True, help="JSONL rows with 'id' and 'messages' or 'instruction'")
    gen.add_argument("--out", required=True, help="JSONL of {id, instruction, output}")
    gen.add_argument("--max-new-tokens", type=int, default=512)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=0)
    endpoint_args(gen)
    gen.set_defaults(func=run_generate)

    ev = subparsers.add_parser("eval", help="lm-eval tasks or a paper's suite; `eval pairwise`, `eval codex`",
                               allow_abbrev=False)
    ev.add_argument("--config", help="a run config: run what its eval: block names (--only picks parts)")
    ev.add_argument("--only", help=f"with --config: comma-separated parts among {', '.join(EVAL_PARTS)}")
    ev.add_argument("--model", help="an exported HF directory (hf backend) or a checkpoint (instructjax backend); "
                                    "with --config: instead of the run's checkpoint")
    ev.add_argument("--tasks", help="comma-separated lm-eval task names")
    ev.add_argument("--suite", help="a paper's suite instead of --tasks: tulu, mixture, leaderboard")
    ev.add_argument("--data-dir", default="eval_data",
                    help="--suite tulu: the evaluation sets, laid out as open-instruct's data/eval")
    ev.add_argument("--chat-format", choices=["auto", "tulu", "model", "none"], default="auto",
                    help="--suite tulu: the prompts' chat format (auto: tulu for a model trained with the Tulu "
                         "template, its own template for one trained with another, none for a base model)")
    ev.add_argument("--prompts-only", action="store_true",
                    help="--suite tulu: write every request to OUT/requests.jsonl (--out), call no model")
    ev.add_argument("--skip", help="--suite tulu: comma-separated benchmarks (mmlu, gsm, bbh, tydiqa, codex) or "
                                   "settings (e.g. mmlu_5shot) left out, e.g. mmlu for a server without prompt "
                                   "log-probs")
    ev.add_argument("--num-fewshot", type=int)
    ev.add_argument("--backend", choices=["auto", "hf", "instructjax"], default="auto")
    ev.add_argument("--include-path", help="directory with extra (e.g. offline) task YAMLs")
    ev.add_argument("--limit", type=float, help="at most this many documents per task")
    ev.add_argument("--batch-size", type=int, default=8)
    _placement_args(ev)
    ev.add_argument("--out", help="write the results JSON here")
    endpoint_args(ev)
    ev.set_defaults(func=run_eval)
    sub = ev.add_subparsers(dest="eval_command", required=False)

    pairwise = sub.add_parser("pairwise", help="judge requests (both orders) and scores from the judge's replies")
    pairwise.add_argument("action", choices=["requests", "score"])
    pairwise.add_argument("--mode", choices=["pairwise", "flask"], default="pairwise")
    pairwise.add_argument("--a", help="system A (or the model) outputs: JSONL {id, instruction, output[, skills]}")
    pairwise.add_argument("--b", help="system B (or the reference) outputs: JSONL {id, instruction, output}")
    pairwise.add_argument("--requests", required=True, help="requests JSONL (written by `requests`, read by `score`)")
    pairwise.add_argument("--replies", help="the judge's replies: JSONL {id, reply}")
    pairwise.add_argument("--prompt", help="pairwise: the judge prompt, a name (seed002, seed002_length_neutral, seed003) "
                                           "or a JSON/YAML file {system, user}; default: seed 002's Figure 4")
    pairwise.add_argument("--round-like-table", action="store_true",
                          help="flask: round the 1-5 means to two decimals before scaling, as seed 000's Table 2")
    pairwise.set_defaults(func=run_pairwise)

    qa = sub.add_parser("quality", help="seed 002's 0-5 quality ratings of training rows (Figure 3): requests, "
                                        "or the rated rows from the judge's replies or a judge endpoint")
    qa.add_argument("action", choices=["requests", "rate"])
    qa.add_argument("--data", required=True, help="JSONL training rows: instruction, input/context, output/response")
    qa.add_argument("--requests", help="requests: where to write them")
    qa.add_argument("--replies", help="rate: the judge's replies, JSONL {id, reply} (or give --base-url and --model)")
    qa.add_argument("--out", help="rate: the rows with their rating in `score` (what selection: quality ranks by)")
    qa.add_argument("--base-url", help="rate: an OpenAI-compatible endpoint to ask instead of --replies")
    qa.add_argument("--model", help="rate: the judge model at --base-url (e.g. gpt-3.5-turbo-0301, as the paper)")
    qa.add_argument("--api-key-env", default="OPENAI_API_KEY", help="the environment variable holding the key")
    qa.add_argument("--concurrency", type=int, default=4)
    qa.add_argument("--cache", help="rate: the reply cache (default: OUT.judge_cache.jsonl)")
    qa.set_defaults(func=run_quality)

    codex = sub.add_parser("codex", help="Codex-Eval on the 164 HumanEval problems (pass@1 T=0.1, pass@10 T=0.8)")
    model_args(codex)
    codex.add_argument("-n", type=int, default=20, help="samples per problem and temperature")
    codex.add_argument("--limit", type=int, help="only the first N problems")
    codex.add_argument("--max-new-tokens", type=int, default=512)
    endpoint_args(codex)
    codex.set_defaults(func=run_codex)


def _rows(path: str, what: str | None = None) -> list[dict]:
    """A JSONL file's rows; `what`: the flag that named it, said with a path that is no file."""
    from instructjax.eval.pairwise import read_jsonl

    if what:
        expect_file(path, what)
    return read_jsonl(path)


def run_score(args) -> int:
    from instructjax.eval.score import score_texts

    check_numbers(args)
    texts = list(args.text) + ([r["text"] for r in _rows(args.file, "--file")] if args.file else [])
    if not texts:
        raise ConfigError("score: give --text or --file")
    generator, hf_tok = _generator(args)
    scored = score_texts(generator, hf_tok, texts)
    if not _first_host():  # every host holds every score: one prints them
        return 0
    for text, scores in zip(texts, scored, strict=True):
        total = sum(lp for _, lp in scores)
        print(json.dumps({"text": text, "logprob": total, "tokens": scores}, ensure_ascii=False))
    return 0


def run_generate(args) -> int:
    from instructjax.core import progress
    from instructjax.eval.generate import Sampling, complete, prompt_messages
    from instructjax.eval.pairwise import write_jsonl

    check_numbers(args)
    if same_path(args.prompts, args.out):
        raise ConfigError(f"--out {args.out} is the --prompts file: the completions would replace the prompts; "
                          "choose another --out")
    rows = _rows(args.prompts, "--prompts")
    if not rows:
        raise ConfigError(f"--prompts {args.prompts} holds no prompts")
    for i, row in enumerate(rows):  # every row asks for something: said before the model loads
        prompt_messages(row, file=args.prompts, row_number=i + 1)
    if storage.path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a directory: give the file to write")
    storage.check_bucket(args.out, "--out")  # before generating, not after
    generator, _ = _generator(args, cache=f"{args.out}.endpoint_cache.jsonl")
    stats = getattr(getattr(generator, "engine", None), "stats", None)
    before, start = (stats.new_tokens if stats else 0), time.perf_counter()
    bar = progress.bar(desc="generate", unit="tokens", disable=not _first_host())
    try:
        completions = complete(generator, rows, Sampling(args.max_new_tokens, args.temperature, args.top_p, args.seed),
                               file=args.prompts, progress=bar)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    tokens = stats.new_tokens - before if stats else completion_tokens(generator, completions)
    if _first_host():  # every host holds every completion: one writes them
        write_jsonl(args.out, completions)
        rate = f" ({tokens / seconds:,.1f} tokens/s)" if tokens is not None and seconds > 0 else ""
        made = f"{tokens:,} new tokens" if tokens is not None else "generated"
        print(f"wrote {len(completions)} completions to {args.out}: {made} in {seconds:.1f} s{rate}")
    return 0


def run_eval(args) -> int:
    check_numbers(args)
    if args.endpoint and args.prompts_only:
        raise ConfigError("eval: --endpoint and --prompts-only exclude each other (--prompts-only writes the "
                          "requests and asks no model; send them to the server with --endpoint alone)")
    if args.config:
        return run_eval_config(args)
    if not args.model or not (args.tasks or args.suite):
        raise ConfigError("eval: give --model and --tasks or --suite, or --config (or a subcommand: pairwise, codex)")

    if args.suite == "tulu":
        return run_tulu(args)
    if args.endpoint:
        raise ConfigError("eval --endpoint: lm-eval's tasks and suites are not sent to an endpoint here (--suite "
                          "tulu, or --config, are)")
    if args.prompts_only:
        raise ConfigError("eval --prompts-only: only with --suite tulu")
    # a model that is not there: said before lm-eval reads its thousands of task YAMLs (a suite failed each task
    # after ~20 s of them); --backend hf may name a hub model, a bucket's is found by its checkpoint
    if args.backend in ("auto", "instructjax") and not storage.is_remote(args.model) and not os.path.exists(args.model):
        raise ConfigError(f"--model {args.model}: no such directory (an exported HF directory, or a run's)")
    if args.suite:
        summary = run_suite(args.model, args.suite, backend=args.backend, include_path=args.include_path,
                            limit=args.limit, batch_size=args.batch_size)
    else:
        out = run_lm_eval(args.model, args.tasks.split(","), backend=args.backend, num_fewshot=args.num_fewshot,
                          include_path=args.include_path, limit=args.limit, batch_size=args.batch_size)
        summary = {task: numeric(metrics) for task, metrics in out["results"].items()}
    _print_and_write(summary, args.out)
    return 0


def run_tulu(args) -> int:
    """`eval --suite tulu`: open-instruct's scripts (eval/tulu) on the model; --prompts-only: their requests."""
    from instructjax.eval import tulu
    from instructjax.eval.pairwise import write_jsonl
    from instructjax.eval.tulu.codex import codex_eval

    chat_format = tulu.chat_format_of(args.model) if args.chat_format == "auto" else args.chat_format
    left = tulu.chosen([s.strip() for s in (args.skip or "").split(",") if s.strip()])
    scored = [s for s in left if s in tulu.SCORED]
    if args.prompts_only:
        from instructjax.convert.saved import saved_tokenizer

        if not args.out:
            raise ConfigError("eval --prompts-only: give --out (the folder requests.jsonl is written to)")
        storage.check_bucket(args.out, "--out")
        tok, chat_template = saved_tokenizer(args.model)
        reqs = tulu.requests(args.data_dir, tok.to_hf(chat_template), chat_format, left)
        path = storage.join(args.out, "requests.jsonl")
        write_jsonl(path, [r.record() for r in reqs])
        print(f"wrote {len(reqs)} requests (chat format {chat_format!r}) to {path}")
        return 0
    from instructjax.eval.engines import engine_record, load_engine

    tulu.check_data(args.data_dir, scored)
    cache = f"{args.out}.endpoint_cache.jsonl" if args.out else None
    generator, _ = load_engine(args.model, batch_size=args.batch_size, endpoint=endpoint(args, cache),
                               **_placement(args))
    tulu.check_engine(generator, scored)  # a server without MMLU's prompt log-probs: one line before anything runs
    results = {"engine": engine_record(generator), "suite": tulu.run(generator, args.data_dir, chat_format, scored)}
    if len(scored) < len(left):  # the codex part
        results["codex"] = codex_eval(generator, tulu.codex.problems(args.data_dir), bos=False)
    _print_and_write(results, args.out)
    return 0


def run_eval_config(args) -> int:
    """`eval --config RUN.yaml [--only PARTS] [--model M]`: the eval: block's parts, results in its out dir."""
    only = [p.strip() for p in args.only.split(",") if p.strip()] if args.only else None
    results = evaluate_config(load_run_config(args.config), model=args.model, only=only, endpoint=endpoint(args))
    _print_and_write(results, args.out)
    return 0


def _first_host() -> bool:
    """Whether this process writes the results (the first of several hosts, or the only one)."""
    from instructjax.core import hosts

    return hosts.is_first()


def _print_and_write(summary: dict, out: str | None) -> None:
    if not _first_host():
        return
    text = results_json(summary)
    print(text)
    if out:
        storage.write_text(out, text + "\n")


def run_pairwise(args) -> int:
    from instructjax.eval import pairwise as pw
    from instructjax.eval.judge_prompts import pairwise_prompt

    if args.action == "requests":
        if not args.a or (args.mode != "flask" and not args.b):
            raise ConfigError(f"eval pairwise requests --mode {args.mode} needs --a" + ("" if args.mode == "flask" else
                                                                                         " and --b"))
        if args.mode == "pairwise":
            requests = pw.pairwise_requests(_rows(args.a), _rows(args.b), pairwise_prompt(args.prompt))
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
    else:
        result = pw.score_flask(requests, replies, round_like_table=args.round_like_table)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


def run_quality(args) -> int:
    from instructjax.eval import pairwise as pw
    from instructjax.eval import quality
    from instructjax.eval.judge import ask

    rows = _rows(args.data)
    requests = quality.quality_requests(rows)
    if args.action == "requests":
        if not args.requests:
            raise ConfigError("eval quality requests needs --requests (where to write them)")
        pw.write_jsonl(args.requests, requests)
        print(f"wrote {len(requests)} quality-rating requests to {args.requests}")
        return 0
    if not args.out or not (args.replies or (args.base_url and args.model)):
        raise ConfigError("eval quality rate needs --out, and --replies or --base-url with --model")
    if args.replies:
        replies = _rows(args.replies)
    else:
        endpoint = JudgeEndpoint(base_url=args.base_url, model=args.model, api_key_env=args.api_key_env,
                                 concurrency=args.concurrency)
        replies = ask(requests, endpoint, args.cache or f"{args.out}.judge_cache.jsonl")
    rated = quality.rate(rows, replies, file=args.replies or args.base_url)
    pw.write_jsonl(args.out, rated)
    print(f"wrote {len(rated)} rated rows to {args.out}")
    return 0


def run_codex(args) -> int:
    from instructjax.eval.humaneval import load_problems
    from instructjax.eval.tulu.codex import codex_eval

    check_numbers(args)
    problems = load_problems()
    if args.limit:
        problems = dict(list(problems.items())[: args.limit])
    generator, _ = _generator(args)
    print(json.dumps(codex_eval(generator, problems, n=args.n, max_new_tokens=args.max_new_tokens), indent=2))
    return 0
