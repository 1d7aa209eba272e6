"""`instructjax eval --config RUN.yaml`: run what the config's `eval:` block names (core.config.EvalSection).

The suite (GSM8K/BBH by the paper's protocol, instructjax.eval.protocols), extra lm-eval tasks, Codex-Eval,
and the judged evaluations (pairwise, alpaca_eval, flask): the model answers the instructions at the
paper's generation length, the judge requests are written, and scored once the judge's replies are there.
Everything lands in the eval directory (default RUN_DIR/eval): results.json, suite_samples.jsonl,
<mode>_outputs.jsonl, <mode>_requests.jsonl.
"""

from __future__ import annotations

import json
import os

from instructjax.cli.eval import _numeric, _rows, complete, load_generator, run_lm_eval, run_suite
from instructjax.core.errors import ConfigError

JUDGE_MODE = {"pairwise": "pairwise", "alpaca_eval": "alpacaeval", "flask": "flask"}  # config key -> pairwise.py


def config_parts(ev) -> list[str]:
    """The parts of EVAL_PARTS an EvalSection names, in that order (codex: as asked, else with the suite's)."""
    from instructjax.eval.suite import CODEX_EVAL, suite

    parts = []
    if ev.suite:
        parts.append("suite")
    if ev.tasks:
        parts.append("tasks")
    codex = ev.codex if ev.codex is not None else bool(ev.suite and any(t.task == CODEX_EVAL for t in suite(ev.suite)))
    if codex:
        parts.append("codex")
    parts += [mode for mode in JUDGE_MODE if ev.judge(mode) is not None]
    return parts


def judge_files(ev, mode: str, out_dir: str) -> dict[str, str | None]:
    """Input/output paths of one judged evaluation: prompts, against (the other system / the reference;
    None for flask), replies, outputs, requests, scores."""
    section = ev.judge(mode)
    default = os.path.join(ev.data_dir, mode)
    against = None if mode == "flask" else (
        section.against or os.path.join(default, "against.jsonl" if mode == "pairwise" else "reference.jsonl"))
    return {"prompts": section.prompts or os.path.join(default, "prompts.jsonl"), "against": against,
            "replies": section.replies or os.path.join(out_dir, f"{mode}_replies.jsonl"),
            "outputs": os.path.join(out_dir, f"{mode}_outputs.jsonl"),
            "requests": os.path.join(out_dir, f"{mode}_requests.jsonl")}


def run_judged(generator, ev, mode: str, out_dir: str) -> dict:
    """Model outputs at the paper's generation length, the judge requests, and the scores when the judge's
    replies are there (else where to put them)."""
    from instructjax.eval import pairwise as pw
    from instructjax.eval.generate import Sampling

    section, files = ev.judge(mode), judge_files(ev, mode, out_dir)
    protocol = pw.JUDGE_PROTOCOLS[JUDGE_MODE[mode]]
    max_new = section.max_new_tokens or protocol.max_new_tokens
    prompts = _rows(files["prompts"])
    result: dict = {}
    if mode == "flask":
        kept = pw.flask_subset(prompts)
        result["dropped_other_skills"] = len(prompts) - len(kept)
        prompts = kept
    outputs = complete(generator, prompts, Sampling(max_new, section.temperature, 1.0, section.seed),
                       keep=("skills", "reference"))
    pw.write_jsonl(files["outputs"], outputs)
    if mode == "pairwise":
        requests = pw.pairwise_requests(outputs, _rows(files["against"]))
    elif mode == "alpaca_eval":
        requests = pw.alpacaeval_requests(outputs, _rows(files["against"]), seed=section.seed)
    else:
        requests = pw.flask_requests(outputs)
    pw.write_jsonl(files["requests"], requests)
    result.update(outputs=files["outputs"], requests=files["requests"], max_new_tokens=max_new)
    if not os.path.exists(files["replies"]):
        result["replies"] = f"none yet: put the judge's replies ({{id, reply}} per request) in {files['replies']}"
        return result
    replies = _rows(files["replies"])
    if mode == "pairwise":
        r = pw.score_pairwise(requests, replies)
        result.update(win=r.win, tie=r.tie, lose=r.lose, n=r.n, winning_score=r.winning_score)
    elif mode == "alpaca_eval":
        result.update(pw.score_alpacaeval(requests, replies))
    else:
        result.update(pw.score_flask(requests, replies))
    return result


def run_config(args) -> int:
    """`eval --config RUN.yaml [--only PARTS] [--model M]`: the eval: block's parts, results in its out dir."""
    from types import SimpleNamespace

    from instructjax.core.config import eval_section, load_config

    config = load_config(args.config)
    ev = eval_section(config.eval)
    parts = config_parts(ev)  # an unknown suite: a one-line ConfigError
    if args.only:
        wanted = [p.strip() for p in args.only.split(",") if p.strip()]
        unknown = [p for p in wanted if p not in parts]
        if unknown:
            raise ConfigError(f"--only {unknown[0]!r}: the config's eval: block names {', '.join(parts) or 'nothing'}")
        parts = [p for p in parts if p in wanted]
    if not parts:
        raise ConfigError(f"{args.config}: the eval: block names nothing to run (suite, tasks, codex, "
                          "pairwise, alpaca_eval, flask)")
    model = args.model or (config.model.init_from if config.max_steps == 0 else config.run_dir)
    if not model:
        raise ConfigError(f"{args.config}: no model to evaluate (give --model)")
    out_dir = ev.out_dir or os.path.join(config.run_dir, "eval")
    for mode in (p for p in parts if p in JUDGE_MODE):  # every input file before any work
        for key, path in judge_files(ev, mode, out_dir).items():
            if key in ("prompts", "against") and path and not os.path.isfile(path):
                raise ConfigError(f"eval.{mode}.{key}: {path} does not exist")
    os.makedirs(out_dir, exist_ok=True)
    results: dict = {"model": model, "parts": parts}
    if "suite" in parts:
        results["suite"] = run_suite(model, ev.suite, backend=ev.backend, include_path=ev.include_path,
                                     batch_size=ev.batch_size, samples_out=os.path.join(out_dir, "suite_samples.jsonl"))
    if "tasks" in parts:
        out = run_lm_eval(model, list(ev.tasks), backend=ev.backend, num_fewshot=ev.num_fewshot,
                          include_path=ev.include_path, batch_size=ev.batch_size)
        results["tasks"] = {task: _numeric(metrics) for task, metrics in out["results"].items()}
    generator = None
    for part in (p for p in parts if p == "codex" or p in JUDGE_MODE):
        if generator is None:
            generator, _ = load_generator(SimpleNamespace(model=model, tokenizer=None, template=None,
                                                          batch_size=ev.batch_size))
        if part == "codex":
            from instructjax.eval.humaneval import codex_eval

            results["codex"] = codex_eval(generator, n=ev.codex_samples)
        else:
            results[part] = run_judged(generator, ev, part, out_dir)
    text = json.dumps(results, indent=2, default=str)
    for path in [os.path.join(out_dir, "results.json")] + ([args.out] if args.out else []):
        with open(path, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0
