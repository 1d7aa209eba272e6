"""A run config's `eval:` block, run (eval.config.EvalSection): what `instructjax eval --config` and
`instructjax sweep` do.

The suite (GSM8K/BBH by the paper's protocol, eval/protocols.py), extra lm-eval tasks, Codex-Eval, ToxiGen and
TruthfulQA as seed 004 scores them (eval/toxigen.py, eval/truthfulqa.py), LongForm and ELI5 by METEOR as seed 002
does (eval/long_form.py), and the judged evaluations (pairwise,
alpaca_eval, flask: eval/judged.py).
Everything lands in the eval directory (default RUN_DIR/eval): results.json (written whole, atomically),
suite_samples.jsonl, and the judged parts' files (eval/judged.py). With an endpoint (eval/endpoint.py) a server
generates every answer (its replies cached in endpoint_cache.jsonl there); lm-eval's parts are refused then.

results.json: {"model", "step" (the checkpoint step evaluated: `model_step`), "eval" (`eval_digest` of the
block), "engine" (what generated: {name, version} of ours, or an endpoint's {name, version, endpoint, model}),
"parts": [the parts it holds], "suite": {"TASK|N-shot": {metric: value, "protocol":
{...}}}, "tasks": {TASK: {metric: value}}, "codex": {"pass@1", "pass@10"}, "toxigen": {GROUP: % toxic, "overall", "n"},
"truthfulqa": {"truthful", "informative", "truthful_and_informative", "n"}, "long_form": {"LongForm", "ELI5"
(METEOR x100), "n": {benchmark: rows}}, and the judged parts' results
"pairwise" {"vs": {NAME: {win, tie, lose, n, winning_score, ...}}}, "alpaca_eval" {annotator, win_rate,
length_controlled_winrate (AlpacaEval 2), n}, "flask" {skill:
score, "average"} (eval/judged.py: what a part still waits for says so in place of its scores).
"""

from __future__ import annotations

import dataclasses
import json
import sys

from instructjax.core import storage, tracking
from instructjax.core.config import RunConfig
from instructjax.core.errors import ConfigError, InstructJaxError
from instructjax.core.run_identity import digest
from instructjax.eval.config import EvalSection, eval_section
from instructjax.eval.harness import numeric, results_json, run_lm_eval, run_suite
from instructjax.eval.judged import (
    JUDGE_MODE,
    check_inputs,
    mt_bench_files,
    resolve_runs,
    run_judged,
    run_mt_bench,
)

EVAL_PARTS = ("suite", "tasks", "codex", "toxigen", "truthfulqa", "long_form", "mt_bench", "pairwise", "alpaca_eval",
              "flask")
# generation scored by classifiers (eval/toxigen.py, eval/truthfulqa.py) or against references (eval/long_form.py)
PROTOCOLS = ("toxigen", "truthfulqa", "long_form")


def config_parts(ev: EvalSection) -> list[str]:
    """The parts of EVAL_PARTS an EvalSection names, in that order (codex: as asked, else with the suite's)."""
    from instructjax.eval.suite import CODEX_EVAL, TULU, check_suite, suite

    parts = []
    if ev.suite:
        parts.append("suite")
    if ev.tasks:
        parts.append("tasks")
    with_codex = bool(ev.suite) and (check_suite(ev.suite) == TULU or any(t.task == CODEX_EVAL for t in suite(ev.suite)))
    codex = ev.codex if ev.codex is not None else with_codex
    if codex:
        parts.append("codex")
    parts += [name for name in (*PROTOCOLS, "mt_bench") if ev.protocol(name) is not None]
    parts += [mode for mode in JUDGE_MODE if ev.judged(mode) is not None]
    return parts


def protocol_data(ev: EvalSection, name: str) -> str | dict[str, str]:
    """The data a protocol part reads: ToxiGen's prompt folder, TruthfulQA's questions, {benchmark: file} of
    long_form (LongForm's test set, ELI5's validation set)."""
    section = ev.protocol(name)
    if name == "toxigen":
        return section.data_dir or storage.join(ev.data_dir, "toxigen")
    if name == "long_form":
        return {"LongForm": section.longform or storage.join(ev.data_dir, "long_form", "longform_test.jsonl"),
                "ELI5": section.eli5 or storage.join(ev.data_dir, "long_form", "eli5_validation.jsonl")}
    return section.data or storage.join(ev.data_dir, "truthfulqa", "TruthfulQA.csv")


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


def same_engine(a: dict | None, b: dict | None) -> bool:
    """Whether two results.json `engine` records name the same engine (its version aside); none is ours."""
    fields = ("name", "endpoint", "model")
    return all((a or {"name": "instructjax"}).get(f) == (b or {"name": "instructjax"}).get(f) for f in fields)


def evaluate_config(config: RunConfig, *, model: str | None = None, only: list[str] | None = None,
                    endpoint=None) -> dict:
    """Run the config's eval: block (`only`: those parts) on `model` (default `eval_model`) and write
    results.json; a run of some parts keeps the other parts of an earlier results.json of the same model and
    engine. `endpoint` (eval/endpoint.py's Endpoint): a server generates instead of this process."""
    from instructjax.convert.saved import is_hf_dir, split_checkpoint_path
    from instructjax.core.checkpoint import checkpoints_dir
    from instructjax.eval import tulu
    from instructjax.eval.endpoint import EndpointError
    from instructjax.eval.engines import engine_record, load_engine
    from instructjax.eval.long_form import require_nltk_data, run_long_form
    from instructjax.eval.suite import TULU
    from instructjax.eval.toxigen import run_toxigen
    from instructjax.eval.truthfulqa import run_truthfulqa
    from instructjax.eval.tulu import check_data
    from instructjax.eval.tulu.codex import codex_eval, problems

    ev = resolve_runs(eval_section(config.eval), config.run_dir)
    named = config_parts(ev)  # an unknown suite: a one-line ConfigError
    unknown = [p for p in only or [] if p not in named]
    if unknown:
        raise ConfigError(f"--only {unknown[0]!r}: the config's eval: block names {', '.join(named) or 'nothing'}")
    parts = [p for p in named if only is None or p in only]
    if not parts:
        raise ConfigError(f"config {config.name!r}: the eval: block names nothing to run "
                          f"({', '.join(EVAL_PARTS)})")
    lm_eval_parts = [p for p in parts if p == "tasks" or (p == "suite" and ev.suite != TULU)]
    if endpoint is not None and lm_eval_parts:
        raise ConfigError(f"eval --endpoint: part {lm_eval_parts[0]!r} runs lm-eval, which an endpoint does not "
                          "serve here (--only the other parts, or suite: tulu)")
    model = model or eval_model(config)
    if not model:
        raise ConfigError(f"config {config.name!r}: no model to evaluate (give --model)")
    out = out_dir(config)
    step = model_step(model)  # the step evaluated, pinned: a run that trains on meanwhile changes nothing here
    pinned = step is not None and not is_hf_dir(model) and split_checkpoint_path(model)[1] is None
    target = storage.join(checkpoints_dir(model), str(step)) if pinned else model
    for mode in (p for p in parts if p in JUDGE_MODE):  # every input file before any work
        check_inputs(ev, mode, out)
    for name in (p for p in parts if p in PROTOCOLS):
        data = protocol_data(ev, name)
        for path in data.values() if isinstance(data, dict) else [data]:
            if not storage.path(path).exists():
                raise ConfigError(f"eval.{name}: {path} does not exist")
    if "suite" in parts and ev.suite == TULU:
        check_data(ev.data_dir)
    if "long_form" in parts:  # METEOR's nltk data (never downloaded): missing, one line before any work
        require_nltk_data()
    if "mt_bench" in parts:
        if not storage.path(mt_bench_files(ev, out)["questions"]).is_file():
            raise ConfigError(f"eval.mt_bench.questions: {mt_bench_files(ev, out)['questions']} does not exist")
    loaded: list = []
    if endpoint is not None:  # reached (and its engine asked) before any work; its replies cached beside results
        if endpoint.cache is None:
            endpoint = dataclasses.replace(endpoint, cache=storage.join(out, "endpoint_cache.jsonl"))
        loaded.append(load_engine(target, batch_size=ev.batch_size, endpoint=endpoint)[0])
        if "suite" in parts and ev.suite == TULU:  # MMLU on a server without prompt log-probs: said before any work
            tulu.check_engine(loaded[0], tulu.SCORED, "--only the other parts")
    results: dict = {"model": model, "step": step, "eval": eval_digest(config),
                     "engine": engine_record(loaded[0] if loaded else None), "parts": parts}
    earlier = read_results(config) if only is not None else None
    same = bool(earlier) and all(earlier.get(k) == results[k] for k in ("model", "step", "eval")) and \
        same_engine(earlier.get("engine"), results["engine"])

    def generator():  # loaded once, when a part first needs it
        if not loaded:
            # the run's mesh (auto: the default's), its expert axis folded into fsdp (the engine decodes without one)
            from instructjax.core import sharding  # here: JAX loads with a model, not with the command line

            mesh = sharding.without_experts(config.mesh) if isinstance(config.mesh, dict) else None
            slots = {"slots": ev.slots} if ev.slots else {}  # eval.slots, else the engine's default
            loaded.append(load_engine(target, batch_size=ev.batch_size, mesh=mesh, **slots)[0])
        return loaded[0]

    tulu_suite = ev.suite == TULU
    if "suite" in parts and tulu_suite:
        chat_format = tulu.chat_format_of(target) if ev.chat_format == "auto" else ev.chat_format
        results["suite"] = tulu.run(generator(), ev.data_dir, chat_format,
                                    samples_out=storage.join(out, "suite_samples.jsonl"))
    elif "suite" in parts:
        results["suite"] = run_suite(target, ev.suite, backend=ev.backend, include_path=ev.include_path,
                                     batch_size=ev.batch_size, samples_out=storage.join(out, "suite_samples.jsonl"))
    if "tasks" in parts:
        found = run_lm_eval(target, list(ev.tasks), backend=ev.backend, num_fewshot=ev.num_fewshot,
                            include_path=ev.include_path, batch_size=ev.batch_size)
        results["tasks"] = {task: numeric(metrics) for task, metrics in found["results"].items()}
    if "codex" in parts:
        if tulu_suite:  # open-instruct's: its data_dir's problems, prompts without BOS
            results["codex"] = codex_eval(generator(), problems(ev.data_dir), n=ev.codex_samples, bos=False)
        else:
            results["codex"] = codex_eval(generator(), n=ev.codex_samples)
    if "toxigen" in parts:
        results["toxigen"] = run_toxigen(generator(), ev.protocol("toxigen"), protocol_data(ev, "toxigen"), out)
    if "truthfulqa" in parts:
        results["truthfulqa"] = run_truthfulqa(generator(), ev.protocol("truthfulqa"), protocol_data(ev, "truthfulqa"),
                                               out)
    if "long_form" in parts:
        results["long_form"] = run_long_form(generator(), ev.protocol("long_form"), protocol_data(ev, "long_form"),
                                             out)
    failed: list[str] = []

    def judged(part: str, run) -> None:
        """A judged part; a judge that is down or answers garbage loses only this part: one line, the rest kept."""
        try:
            results[part] = run(generator, ev, out, reuse_outputs=same and part in earlier.get("parts", []))
        except EndpointError:  # the generating server, not the judge: every part after it would fail too
            raise
        except InstructJaxError as e:  # left out of `parts`: the next `eval --config` (or sweep) runs it again
            print(f"instructjax: eval {part}: {e}", file=sys.stderr, flush=True)
            results.setdefault("errors", {})[part] = str(e)
            failed.append(part)

    if "mt_bench" in parts:
        judged("mt_bench", run_mt_bench)
    for part in (p for p in parts if p in JUDGE_MODE):  # an earlier run's outputs of this model are kept
        judged(part, lambda gen, ev, out, reuse_outputs, part=part: run_judged(gen, ev, part, out,
                                                                                reuse_outputs=reuse_outputs))
    results["parts"] = [p for p in parts if p not in failed]
    if same:
        held = set(results["parts"]) | (set(earlier.get("parts", [])) - set(failed))  # a failed rerun: asked again
        results = {**earlier, **results, "parts": [p for p in named if p in held]}
        errors = {p: e for p, e in results.pop("errors", {}).items() if p in failed}  # a rerun that worked: gone
        results.update({"errors": errors} if errors else {})
    # whole or not at all: a killed evaluation never leaves a torn results.json
    storage.write_text(storage.path(out) / "results.json", results_json(results) + "\n")
    tracking.log_results(config, results)  # W&B, where the config asks
    if failed:
        raise ConfigError(f"eval: {', '.join(failed)} failed (each named above); the other parts are in "
                          f"{storage.join(out, 'results.json')}")
    return results
