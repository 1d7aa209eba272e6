"""A run config's `eval:` block, run (core.config.EvalSection): what `instructjax eval --config` and
`instructjax sweep` do.

The suite (GSM8K/BBH by the paper's protocol, eval/protocols.py), extra lm-eval tasks, Codex-Eval, and the
judged evaluations (pairwise, alpaca_eval, flask): the model answers the instructions at the paper's
generation length, the judge requests are written, and scored once the judge's replies are there.
Everything lands in the eval directory (default RUN_DIR/eval): results.json (written whole, atomically),
suite_samples.jsonl, <mode>_outputs.jsonl, <mode>_requests.jsonl.

results.json: {"model", "step" (the checkpoint step evaluated: `model_step`), "eval" (`eval_digest` of the
block), "parts": [the parts it holds], "suite": {"TASK|N-shot": {metric: value, "protocol":
{...}}}, "tasks": {TASK: {metric: value}}, "codex": {"pass@1", "pass@10"}, "pairwise": {win, tie, lose, n,
winning_score}, "alpaca_eval": {win_rate, n}, "flask": {skill: score, "average"}}; a judged part without
the judge's replies yet holds "replies": "none yet: ...".
"""

from __future__ import annotations

import dataclasses
import json

from instructjax.core import storage
from instructjax.core.config import EvalSection, RunConfig, digest, eval_section
from instructjax.core.errors import ConfigError

EVAL_PARTS = ("suite", "tasks", "codex", "pairwise", "alpaca_eval", "flask")
JUDGE_MODE = {"pairwise": "pairwise", "alpaca_eval": "alpacaeval", "flask": "flask"}  # config key -> pairwise.py


def config_parts(ev: EvalSection) -> list[str]:
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
    parts += [mode for mode in JUDGE_MODE if ev.judged(mode) is not None]
    return parts


def eval_model(config: RunConfig) -> str | None:
    """What `eval --config` evaluates: the run's checkpoint, or `model.init_from` for an evaluation-only
    config (max_steps: 0)."""
    return config.model.init_from if config.max_steps == 0 else config.run_dir


def model_step(model: str) -> int | None:
    """The checkpoint step `model` stands for: a run's newest intact step, a step directory's own, an export's
    (its marker); None when it names none (an HF model of its own)."""
    from instructjax.convert.saved import export_step, is_hf_dir, split_checkpoint_path
    from instructjax.core.checkpoint import read_meta

    if is_hf_dir(model):
        return export_step(model)
    directory, step = split_checkpoint_path(model)
    if step is not None:
        return step
    try:
        return read_meta(directory)[2]
    except ConfigError:
        return None


def eval_digest(config: RunConfig) -> str:
    """What the eval: block asks for, as a digest (results.json records it: a changed block is evaluated again)."""
    return digest(dataclasses.asdict(eval_section(config.eval)))


def out_dir(config: RunConfig) -> str:
    """The eval directory: `eval.out_dir`, else RUN_DIR/eval."""
    return eval_section(config.eval).out_dir or storage.join(config.run_dir, "eval")


def read_results(config: RunConfig) -> dict | None:
    """The run's results.json, or None when it is not there (or not a JSON object)."""
    try:
        results = json.loads((storage.path(out_dir(config)) / "results.json").read_text())
    except (OSError, ValueError):
        return None
    return results if isinstance(results, dict) else None


def judge_files(ev: EvalSection, mode: str, out: str) -> dict[str, str | None]:
    """Input/output paths of one judged evaluation: prompts, against (the other system / the reference;
    None for flask), replies, outputs, requests."""
    section = ev.judged(mode)
    default = storage.join(ev.data_dir, mode)
    against = None if mode == "flask" else (
        section.against or storage.join(default, "against.jsonl" if mode == "pairwise" else "reference.jsonl"))
    return {"prompts": section.prompts or storage.join(default, "prompts.jsonl"), "against": against,
            "replies": section.replies or storage.join(out, f"{mode}_replies.jsonl"),
            "outputs": storage.join(out, f"{mode}_outputs.jsonl"),
            "requests": storage.join(out, f"{mode}_requests.jsonl")}


def run_judged(generator, ev: EvalSection, mode: str, out: str) -> dict:
    """Model outputs at the paper's generation length, the judge requests, and the scores when the judge's
    replies are there (else where to put them)."""
    from instructjax.eval import pairwise as pw
    from instructjax.eval.generate import Sampling, complete

    section, files = ev.judged(mode), judge_files(ev, mode, out)
    protocol = pw.JUDGE_PROTOCOLS[JUDGE_MODE[mode]]
    max_new = section.max_new_tokens or protocol.max_new_tokens
    prompts = pw.read_jsonl(files["prompts"])
    result: dict = {}
    if mode == "flask":
        kept = pw.flask_subset(prompts)
        result["dropped_other_skills"] = len(prompts) - len(kept)
        prompts = kept
    outputs = complete(generator, prompts, Sampling(max_new, section.temperature, 1.0, section.seed),
                       keep=("skills", "reference"))
    pw.write_jsonl(files["outputs"], outputs)
    if mode == "pairwise":
        requests = pw.pairwise_requests(outputs, pw.read_jsonl(files["against"]))
    elif mode == "alpaca_eval":
        requests = pw.alpacaeval_requests(outputs, pw.read_jsonl(files["against"]), seed=section.seed)
    else:
        requests = pw.flask_requests(outputs)
    pw.write_jsonl(files["requests"], requests)
    result.update(outputs=files["outputs"], requests=files["requests"], max_new_tokens=max_new)
    if ev.judge is not None and section.replies is None:  # the judge called directly (cached: a rerun is free)
        from instructjax.eval.judge import ask

        pw.write_jsonl(files["replies"], ask(requests, ev.judge, storage.join(out, "judge_cache.jsonl")))
        result["judge"] = {"model": ev.judge.model, "base_url": ev.judge.base_url}
    if not storage.path(files["replies"]).exists():
        result["replies"] = f"none yet: put the judge's replies ({{id, reply}} per request) in {files['replies']}"
        return result
    replies = pw.read_jsonl(files["replies"])
    if mode == "pairwise":
        r = pw.score_pairwise(requests, replies)
        result.update(win=r.win, tie=r.tie, lose=r.lose, n=r.n, winning_score=r.winning_score)
    elif mode == "alpaca_eval":
        result.update(pw.score_alpacaeval(requests, replies))
    else:
        result.update(pw.score_flask(requests, replies))
    return result


def evaluate_config(config: RunConfig, *, model: str | None = None, only: list[str] | None = None) -> dict:
    """Run the config's eval: block (`only`: those parts) on `model` (default `eval_model`) and write
    results.json; a run of some parts keeps the other parts of an earlier results.json of the same model."""
    from instructjax.convert.saved import is_hf_dir, split_checkpoint_path
    from instructjax.core.checkpoint import checkpoints_dir
    from instructjax.eval.generate import load_generator
    from instructjax.eval.harness import numeric, run_lm_eval, run_suite

    ev = eval_section(config.eval)
    named = config_parts(ev)  # an unknown suite: a one-line ConfigError
    unknown = [p for p in only or [] if p not in named]
    if unknown:
        raise ConfigError(f"--only {unknown[0]!r}: the config's eval: block names {', '.join(named) or 'nothing'}")
    parts = [p for p in named if only is None or p in only]
    if not parts:
        raise ConfigError(f"config {config.name!r}: the eval: block names nothing to run (suite, tasks, codex, "
                          "pairwise, alpaca_eval, flask)")
    model = model or eval_model(config)
    if not model:
        raise ConfigError(f"config {config.name!r}: no model to evaluate (give --model)")
    out = out_dir(config)
    step = model_step(model)  # the step evaluated, pinned: a run that trains on meanwhile changes nothing here
    pinned = step is not None and not is_hf_dir(model) and split_checkpoint_path(model)[1] is None
    target = storage.join(checkpoints_dir(model), str(step)) if pinned else model
    for mode in (p for p in parts if p in JUDGE_MODE):  # every input file before any work
        for key, path in judge_files(ev, mode, out).items():
            if key in ("prompts", "against") and path and not storage.path(path).is_file():
                raise ConfigError(f"eval.{mode}.{key}: {path} does not exist")
    results: dict = {"model": model, "step": step, "eval": eval_digest(config), "parts": parts}
    if "suite" in parts:
        results["suite"] = run_suite(target, ev.suite, backend=ev.backend, include_path=ev.include_path,
                                     batch_size=ev.batch_size, samples_out=storage.join(out, "suite_samples.jsonl"))
    if "tasks" in parts:
        found = run_lm_eval(target, list(ev.tasks), backend=ev.backend, num_fewshot=ev.num_fewshot,
                            include_path=ev.include_path, batch_size=ev.batch_size)
        results["tasks"] = {task: numeric(metrics) for task, metrics in found["results"].items()}
    generator = None
    for part in (p for p in parts if p == "codex" or p in JUDGE_MODE):
        if generator is None:
            generator, _ = load_generator(target, batch_size=ev.batch_size)
        if part == "codex":
            from instructjax.eval.humaneval import codex_eval

            results["codex"] = codex_eval(generator, n=ev.codex_samples)
        else:
            results[part] = run_judged(generator, ev, part, out)
    earlier = read_results(config) if only is not None else None
    if earlier and all(earlier.get(k) == results[k] for k in ("model", "step", "eval")):
        held = set(parts) | set(earlier.get("parts", []))
        results = {**earlier, **results, "parts": [p for p in named if p in held]}
    # whole or not at all: a killed evaluation never leaves a torn results.json
    storage.write_text(storage.path(out) / "results.json", json.dumps(results, indent=2, default=str) + "\n")
    return results
