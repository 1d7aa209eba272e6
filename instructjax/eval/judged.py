"""The judged parts of an `eval:` block (pairwise, alpaca_eval, flask), run: the model answers the instructions at
the paper's generation length, the judge's requests are written, the judge is asked (`eval.judge`) or its replies
read from files, and the scores computed (eval/pairwise.py).

Pairwise compares the run with other systems, each a named comparison (`JudgeSection.comparisons`): another run
(by name, a sibling of this run's directory, or by directory: its `eval/pairwise_outputs.jsonl`) or a file of
outputs, judged with the paper's prompt (eval/judge_prompts.py).
Files, in the eval directory: `<mode>_outputs.jsonl`; pairwise `pairwise_vs_<name>_{requests,replies}.jsonl` per
comparison; alpaca_eval and flask `<mode>_{requests,replies}.jsonl`.

A part's result (results.json): alpaca_eval {annotator, win_rate, length_controlled_winrate (AlpacaEval 2),
standard errors, n} (eval/alpacaeval.py: the `alpaca_eval` package's annotator and metrics), flask {skill: score, "average"}, pairwise {"vs": {name:
{win, tie, lose, n, winning_score, against, prompt}}}; what is not there yet says so in place of the scores:
"replies": "none yet: ..." (the judge's replies), pairwise "outputs": "none yet: ..." (the other run's outputs:
that run is evaluated first). `pending` lists them; a rerun (`instructjax sweep` does it) fills them in.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

from instructjax.core import storage
from instructjax.core.errors import ConfigError, DataError
from instructjax.eval.config import Comparison, EvalSection

JUDGE_MODE = {"pairwise": "pairwise", "alpaca_eval": "alpacaeval", "flask": "flask"}  # config key -> pairwise.py
JUDGED_PARTS = (*JUDGE_MODE, "mt_bench")  # every part a judge scores (MT-Bench: eval/mt_bench.py)
OTHER_OUTPUTS = "eval/pairwise_outputs.jsonl"  # where a comparison against a run directory reads that run's outputs
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def resolve_runs(ev: EvalSection, run_dir: str) -> EvalSection:
    """`ev` with each pairwise comparison that names a run (a bare name: no "/", no ".jsonl") made that run's
    directory, beside `run_dir` (`alpaca_full_llama2_7b` -> runs/seed002_selection/alpaca_full_llama2_7b, or
    BUCKET/runs/alpaca_full_llama2_7b where the run lives in a bucket)."""
    section = ev.judged("pairwise")
    if section is None or not isinstance(section.against, dict):
        return ev
    parent = run_dir.rstrip("/").rsplit("/", 1)[0] if "/" in run_dir.rstrip("/") else "."

    def place(c: str | Comparison) -> Comparison:
        c = c if isinstance(c, Comparison) else Comparison(c)
        sibling = "/" not in c.against and not c.against.endswith(".jsonl")
        return dataclasses.replace(c, against=storage.join(parent, c.against)) if sibling else c

    against = {name: place(c) for name, c in section.against.items()}
    return dataclasses.replace(ev, pairwise=dataclasses.replace(section, against=against))


def comparisons(ev: EvalSection, out: str) -> dict[str, dict]:
    """Each pairwise comparison's files: {name: {"against" (the other outputs), "prompt" (name or file, None: the
    part's), "requests", "replies", "file" (True: a file the user gave, which must exist; False: another run's)}}."""
    section = ev.judged("pairwise")
    default = {"against": Comparison(storage.join(ev.data_dir, "pairwise", "against.jsonl"))}
    named = default if section.against is None else section.comparisons()  # {}: the outputs only
    found = {}
    for name, c in named.items():
        if not NAME.match(name):
            raise ConfigError(f"eval.pairwise.against: comparison name {name!r} must be letters, digits, _ . -")
        is_file = c.against.endswith(".jsonl")
        replies = section.replies if section.replies and not isinstance(section.against, dict) else None
        found[name] = {"against": c.against if is_file else storage.join(c.against, OTHER_OUTPUTS),
                       "prompt": c.prompt or section.prompt, "file": is_file,
                       "requests": storage.join(out, f"pairwise_vs_{name}_requests.jsonl"),
                       "replies": replies or storage.join(out, f"pairwise_vs_{name}_replies.jsonl")}
    return found


def judge_files(ev: EvalSection, mode: str, out: str) -> dict[str, str | None]:
    """Paths of one judged part: prompts (alpaca_eval: None, the reference holds the instructions), outputs, and
    for alpaca_eval and flask against (the reference; None for flask), requests and replies (pairwise: per
    comparison, `comparisons`)."""
    section = ev.judged(mode)
    default = storage.join(ev.data_dir, mode)
    prompts = None if mode == "alpaca_eval" else section.prompts or storage.join(default, "prompts.jsonl")
    files = {"prompts": prompts, "outputs": storage.join(out, f"{mode}_outputs.jsonl")}
    if mode != "pairwise":
        files.update(against=None if mode == "flask" else section.against or storage.join(default, _reference(section)),
                     requests=storage.join(out, f"{mode}_requests.jsonl"),
                     replies=section.replies or storage.join(out, f"{mode}_replies.jsonl"))
    return files


def _reference(section) -> str:
    """The default AlpacaEval set of the part's annotator: the hub's file name (eval/alpacaeval.py)."""
    from instructjax.eval.alpacaeval import ALPACA_EVAL_2, REFERENCE_FILES

    return REFERENCE_FILES.get(section.annotator or ALPACA_EVAL_2, "reference.json")


def check_inputs(ev: EvalSection, mode: str, out: str) -> None:
    """A one-line ConfigError for an input file the part needs that is not there (before any work). Another run's
    outputs are not inputs: a comparison waits for them."""
    from instructjax.eval.alpacaeval import package
    from instructjax.eval.judge_prompts import pairwise_prompt

    files = judge_files(ev, mode, out)
    needed = [("prompts", files["prompts"]), ("against", files.get("against"))]
    if mode == "alpaca_eval":
        package()
    if mode == "pairwise":
        for name, c in comparisons(ev, out).items():
            needed += [(f"against.{name}", c["against"])] if c["file"] else []
            pairwise_prompt(c["prompt"])  # an unknown name or a bad file: its own one-line error
    for key, path in needed:
        if path and not storage.path(path).is_file():
            raise ConfigError(f"eval.{mode}.{key}: {path} does not exist")


def _judge(ev: EvalSection, part: str, requests: list[dict], replies_path: str, out: str, recorded: bool,
           parses=None) -> list[dict] | None:
    """The judge's replies to `requests`: asked of the part's judge (`EvalSection.judge_of`; cached where the
    protocol `parses` them) unless the config names a replies file, else read from `replies_path`; None when there
    are none yet."""
    from instructjax.eval import pairwise as pw

    endpoint = ev.judge_of(part)
    if endpoint is not None and not recorded:
        from instructjax.eval.judge import ask

        pw.write_jsonl(replies_path, ask(requests, endpoint, storage.join(out, "judge_cache.jsonl"), parses))
    return pw.read_jsonl(replies_path) if storage.path(replies_path).exists() else None


def judge_record(ev: EvalSection, part: str) -> dict:
    """What results.json says of a part's judge: its model, and the endpoint where one was asked."""
    endpoint = ev.judge_of(part)
    if endpoint is not None:
        return {"model": endpoint.model, "base_url": endpoint.base_url, "max_tokens": endpoint.max_tokens}
    return {"model": ev.judge_model(part), "replies": "read from files"}


def _none_yet(path: str) -> str:
    return f"none yet: put the judge's replies ({{id, reply}} per request) in {path}"


def run_judged(generator: Callable[[], object], ev: EvalSection, mode: str, out: str, *,
               reuse_outputs: bool = False) -> dict:
    """One judged part (the module doc). `generator()` gives the model's generator (loaded when first needed);
    `reuse_outputs`: the model's outputs of an earlier run of this same model and block are taken as they are."""
    from instructjax.eval import pairwise as pw
    from instructjax.eval.generate import Sampling, complete

    section, files = ev.judged(mode), judge_files(ev, mode, out)
    protocol = pw.JUDGE_PROTOCOLS[JUDGE_MODE[mode]]
    max_new = section.max_new_tokens or protocol.max_new_tokens
    result: dict = {"outputs": files["outputs"], "max_new_tokens": max_new, "judge": judge_record(ev, mode)}
    prompts = pw.read_jsonl(files["prompts"]) if files["prompts"] else _alpaca_eval_prompts(files["against"])
    if mode == "flask":
        kept = pw.flask_subset(prompts)
        result["dropped_other_skills"] = len(prompts) - len(kept)
        prompts = kept
    if reuse_outputs and storage.path(files["outputs"]).exists():
        outputs = pw.read_jsonl(files["outputs"])
    else:
        outputs = complete(generator(), prompts, Sampling(max_new, section.temperature, 1.0, section.seed),
                           keep=("skills", "reference"))
        pw.write_jsonl(files["outputs"], outputs)
    if mode == "pairwise":
        result["vs"] = {name: _compare(ev, outputs, c, out) for name, c in comparisons(ev, out).items()}
        return result
    if mode == "alpaca_eval":
        return {**result, **_alpaca_eval(ev, outputs, files, out)}
    requests = pw.flask_requests(outputs)
    pw.write_jsonl(files["requests"], requests)
    result["requests"] = files["requests"]
    replies = _judge(ev, mode, requests, files["replies"], out, recorded=section.replies is not None,
                     parses=pw.reads_flask)
    if replies is None:
        return {**result, "replies": _none_yet(files["replies"])}
    result.update(pw.score_flask(requests, replies))
    return result


def _alpaca_eval_prompts(reference: str) -> list[dict]:
    """The AlpacaEval instructions, in the reference file's order."""
    from instructjax.eval.alpacaeval import read_reference

    return [{"id": str(i), "instruction": row["instruction"]} for i, row in enumerate(read_reference(reference))]


def _alpaca_eval(ev: EvalSection, outputs: list[dict], files: dict, out: str) -> dict:
    """AlpacaEval through the `alpaca_eval` package (eval/alpacaeval.py): its annotator's requests, judged."""
    from instructjax.eval import alpacaeval
    from instructjax.eval import pairwise as pw

    section = ev.judged("alpaca_eval")
    annotator = section.annotator or alpacaeval.ALPACA_EVAL_2
    reference = alpacaeval.read_reference(files["against"])

    asked: list[dict] = []  # every request the annotator made (one call per annotator config)

    def ask(requests: list[dict]) -> list[dict] | None:
        asked.extend(requests)
        pw.write_jsonl(files["requests"], asked)
        replies = _judge(ev, "alpaca_eval", asked, files["replies"], out, recorded=section.replies is not None)
        if replies is not None:
            have = {str(r.get("id")) for r in replies}
            missing = [r["id"] for r in requests if r["id"] not in have]
            if missing:
                raise DataError(f"no judge reply for request {missing[0]!r} ({len(missing)} missing)",
                                reason="missing_field", file=files["replies"])  # fmt: skip
        return replies

    rates = alpacaeval.run(outputs, reference, annotator, "model", ask)
    result = {"annotator": annotator, "requests": files["requests"]}
    if rates is None:
        return {**result, "replies": _none_yet(files["replies"])}
    return {**result, **rates, "n": int(rates["n_total"])}


def _compare(ev: EvalSection, outputs: list[dict], c: dict, out: str) -> dict:
    """One pairwise comparison: the model (system A) against the other outputs, in both orders."""
    from instructjax.eval import pairwise as pw
    from instructjax.eval.judge_prompts import DEFAULT_PAIRWISE_PROMPT, pairwise_prompt

    result = {"against": c["against"], "prompt": c["prompt"] or DEFAULT_PAIRWISE_PROMPT}
    if not storage.path(c["against"]).is_file():
        return {**result, "outputs": f"none yet: {c['against']} (evaluate that run first, then this one again)"}
    requests = pw.pairwise_requests(outputs, pw.read_jsonl(c["against"]), pairwise_prompt(c["prompt"]))
    pw.write_jsonl(c["requests"], requests)
    result["requests"] = c["requests"]
    section = ev.judged("pairwise")
    replies = _judge(ev, "pairwise", requests, c["replies"], out, recorded=c["replies"] == section.replies,
                     parses=pw.reads_score_pair)
    if replies is None:
        return {**result, "replies": _none_yet(c["replies"])}
    r = pw.score_pairwise(requests, replies)
    return {**result, "win": r.win, "tie": r.tie, "lose": r.lose, "n": r.n, "unparsed": r.unparsed,
            "winning_score": r.winning_score if r.n else None}


def mt_bench_files(ev: EvalSection, out: str) -> dict[str, str | None]:
    """MT-Bench's questions, reference answers (None: none), the model's answers, the requests and replies."""
    section, default = ev.protocol("mt_bench"), storage.join(ev.data_dir, "mt_bench")
    references = section.reference_answers or storage.join(default, "reference_answer", "gpt-4.jsonl")
    return {"questions": section.questions or storage.join(default, "question.jsonl"),
            "references": references if section.reference_answers or storage.path(references).is_file() else None,
            "outputs": storage.join(out, "mt_bench_outputs.jsonl"), "requests": storage.join(out, "mt_bench_requests.jsonl"),
            "replies": section.replies or storage.join(out, "mt_bench_replies.jsonl")}


def run_mt_bench(generator: Callable[[], object], ev: EvalSection, out: str, *, reuse_outputs: bool = False) -> dict:
    """MT-Bench (eval/mt_bench.py): the model's two-turn answers, the judge's requests, and the turn 1 and turn 2
    mean ratings once the judge's replies are there."""
    from instructjax.eval import mt_bench
    from instructjax.eval import pairwise as pw

    section, files = ev.protocol("mt_bench"), mt_bench_files(ev, out)
    questions = mt_bench.read_questions(files["questions"], files["references"])
    if reuse_outputs and storage.path(files["outputs"]).exists():
        answers = [row["turns"] for row in pw.read_jsonl(files["outputs"])]
    else:
        answers = mt_bench.answer(generator(), questions, section.max_new_tokens, section.seed)
        pw.write_jsonl(files["outputs"], [{"question_id": q.id, "category": q.category, "turns": a}
                                          for q, a in zip(questions, answers, strict=True)])
    requests = mt_bench.judge_requests(questions, answers)
    pw.write_jsonl(files["requests"], requests)
    result: dict = {"outputs": files["outputs"], "requests": files["requests"], "judge": judge_record(ev, "mt_bench")}
    replies = _judge(ev, "mt_bench", requests, files["replies"], out, recorded=section.replies is not None,
                     parses=mt_bench.reads_rating)
    if replies is None:
        return {**result, "replies": _none_yet(files["replies"])}
    return {**result, **mt_bench.score(requests, replies, files["replies"])}


def pending(ev: EvalSection, mode: str, out: str, result: dict) -> list[str]:
    """What a judged part's result still waits for, that has since arrived (judge replies, another run's
    outputs): a rerun of the part gets further. Empty when nothing it waits for is there yet."""
    if mode == "mt_bench":
        waits = "replies" in result and storage.path(mt_bench_files(ev, out)["replies"]).exists()
        return ["mt_bench replies"] if waits else []
    if mode != "pairwise":
        waits = "replies" in result and storage.path(judge_files(ev, mode, out)["replies"]).exists()
        return [f"{mode} replies"] if waits else []
    arrived = []
    for name, c in comparisons(ev, out).items():
        got = (result.get("vs") or {}).get(name)
        if got is None or ("outputs" in got and storage.path(c["against"]).is_file()) or \
                ("replies" in got and storage.path(c["replies"]).exists()):
            arrived.append(f"pairwise vs {name}")
    return arrived


def waiting(result: dict) -> list[str]:
    """What a judged part's result waits for (for a status line): "replies", "vs NAME: outputs"/"replies"."""
    if "vs" not in result:
        return ["replies"] if "replies" in result else []
    return [f"vs {name}: {what}" for name, r in result["vs"].items() for what in ("outputs", "replies") if what in r]
