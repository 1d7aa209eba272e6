# Derived from open-instruct (https://github.com/allenai/open-instruct), Copyright 2024 AllenAI, Apache-2.0.
# Modified for instructjax. See NOTICE.

"""Seed 004's evaluation suite as open-instruct's own scripts run it (allenai/open-instruct at e44fcf5, the June
2023 revision the paper's numbers come from: eval/*/run_eval.py with the arguments scripts/submit_eval_jobs.py gave
each group). One setting per experiment group of submit_eval_jobs.py; each module builds that script's prompts
(`Request`s, in the chat format the model takes: request.py) and scores the model's answers by its rule.

    setting                  module   what it reports (the script's metrics.json)
    mmlu_0shot, mmlu_5shot   mmlu     acc (fraction), per subject
    gsm_direct, gsm_cot      gsm      exact_match (fraction)
    bbh_direct, bbh_cot      bbh      exact_match (fraction, mean over tasks), per task
    tydiqa_goldp_1shot,      tydiqa   f1, exact_match (0-100, mean over languages), per language
    tydiqa_no_context_1shot
    codex_eval_temp_0.1/0.8  codex    pass@1 / pass@10 (fraction): the `codex` part of results.json

`requests` builds every request (what `instructjax eval --suite tulu --prompts-only` writes), `run` answers and
scores them. The sets are read from a data_dir laid out as open-instruct's data/eval (files.py). `chosen` is what
runs once `--skip` leaves settings out (a server without prompt log-probs runs all but MMLU: `check_engine` says so
before anything is asked).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from instructjax.core.errors import ConfigError
from instructjax.eval.interface import Sampling
from instructjax.eval.pairwise import write_jsonl
from instructjax.eval.tulu import bbh, codex, files, gsm, mmlu, tydiqa
from instructjax.eval.tulu.request import CHAT_FORMATS, Request

__all__ = ["BENCHMARKS", "SETTINGS", "SCORED", "Request", "Setting", "answer", "chat_format_of", "check_data", "check_engine",
           "chosen", "requests", "run"]


@dataclass(frozen=True)
class Setting:
    benchmark: str  # its column in the paper's Table 8
    build: Callable[..., list[Request]]  # (data_dir, hf_tokenizer, chat_format, protocol=) -> requests
    score: Callable[[Sequence[Request], Sequence], dict] | None  # None: scored by the codex part
    log_likelihood: bool = False  # answered from the next token's log-probabilities (a server's prompt log-probs)


SETTINGS: dict[str, Setting] = {
    "mmlu_0shot": Setting("MMLU 0-shot", functools.partial(mmlu.requests, ntrain=0), mmlu.score, True),
    "mmlu_5shot": Setting("MMLU 5-shot", functools.partial(mmlu.requests, ntrain=5), mmlu.score, True),
    "gsm_direct": Setting("GSM Direct", functools.partial(gsm.requests, cot=False), gsm.score),
    "gsm_cot": Setting("GSM CoT", functools.partial(gsm.requests, cot=True), gsm.score),
    "bbh_direct": Setting("BBH Direct", functools.partial(bbh.requests, cot=False), bbh.score),
    "bbh_cot": Setting("BBH CoT", functools.partial(bbh.requests, cot=True), bbh.score),
    "tydiqa_goldp_1shot": Setting("TydiQA GP", functools.partial(tydiqa.requests, passage=True), tydiqa.score),
    "tydiqa_no_context_1shot": Setting("TydiQA CB", functools.partial(tydiqa.requests, passage=False), tydiqa.score),
    "codex_eval_temp_0.1": Setting("Codex-Eval P@1", lambda data_dir, _tok, _fmt, *, protocol:
                                   codex.requests(data_dir, protocol), None),
    "codex_eval_temp_0.8": Setting("Codex-Eval P@10", lambda data_dir, _tok, _fmt, *, protocol:
                                   codex.requests(data_dir, protocol), None),
}
SCORED = tuple(name for name, s in SETTINGS.items() if s.score is not None)  # the `suite` part; codex: its own
BENCHMARKS = tuple(dict.fromkeys(name.split("_")[0] for name in SETTINGS))  # mmlu, gsm, bbh, tydiqa, codex


def chosen(skip: Sequence[str] = ()) -> list[str]:
    """The settings that run (the codex part's among them) once `skip` is left out: each name a setting
    (mmlu_5shot) or a benchmark (mmlu: both its settings; codex: the codex part). What is left out is named in a
    note; an unknown name, or nothing left to run, is one line."""
    for name in skip:
        if name not in SETTINGS and name not in BENCHMARKS:
            raise ConfigError(f"--skip {name!r}: not a benchmark ({', '.join(BENCHMARKS)}) or a setting "
                              f"({', '.join(SETTINGS)}) of the Tulu suite")
    left = [s for s in SETTINGS if s not in skip and s.split("_")[0] not in skip]
    if not left:
        raise ConfigError(f"--skip {','.join(skip)} leaves nothing of the Tulu suite to run")
    if len(left) < len(SETTINGS):
        print(f"instructjax: note: Tulu suite: {', '.join(s for s in SETTINGS if s not in left)} will not run "
              "(--skip)", file=sys.stderr, flush=True)
    return left


def check_engine(engine, settings: Sequence[str], leave_out: str = "--skip mmlu") -> None:
    """Before the suite asks anything: an engine that cannot answer the log-likelihood settings among `settings` (a
    server without prompt log-probs: asked once, `gives_prompt_logprobs`) is one line naming them and how to leave
    them out (`leave_out`)."""
    from instructjax.eval.endpoint import EndpointError, no_prompt_logprobs

    needs = [s for s in settings if SETTINGS[s].log_likelihood]
    probe = getattr(engine, "gives_prompt_logprobs", None)  # the in-job engine always has them
    if needs and probe is not None and not probe():
        raise EndpointError(no_prompt_logprobs(engine.name, f"MMLU's answer letters ({', '.join(needs)})",
                                               leave_out))


def chat_format_of(model: str) -> str:
    """The chat format a model is evaluated in, by submit_eval_jobs.py's rule (tuned models in the format they
    were trained in, vanilla ones without): `tulu` for a model trained with the Tulu template (the checkpoint's
    tokenizer item, an export's marker), `model` for one trained with another template or carrying its own,
    `none` for a base model (no template)."""
    from instructjax.convert.saved import saved_tokenizer, trained_template

    name = trained_template(model)
    if name == "tulu":
        return "tulu"
    return "model" if name or saved_tokenizer(model)[1] else "none"


def check_data(data_dir: str, settings: Sequence[str] = SCORED) -> None:
    """Every file and folder `settings` read is in `data_dir`, where the set has no hub copy (BBH's prompts) or its
    folder is there (else one line naming the first missing one)."""
    for name in settings:
        folder = name.split("_")[0]
        if folder in files.HUB and not files.local(data_dir, folder):
            continue  # read from the hub
        for path in files.SET_FILES.get(folder, ()):
            files.need(data_dir, *path.split("/"))


def requests(data_dir: str, hf_tokenizer, chat_format: str, settings: Sequence[str] = tuple(SETTINGS)) -> list[Request]:
    """Every request of `settings`, in the suite's order."""
    if chat_format not in CHAT_FORMATS:
        raise ConfigError(f"--chat-format must be one of {', '.join(CHAT_FORMATS)}, got {chat_format!r}")
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        raise ConfigError(f"Tulu suite: unknown setting {unknown[0]!r}; known: {', '.join(SETTINGS)}")
    out: list[Request] = []
    for name in settings:
        out += SETTINGS[name].build(data_dir, hf_tokenizer, chat_format, protocol=name)
    return out


def answer(generator, reqs: Sequence[Request]) -> list:
    """The model's answers: the likeliest continuation's index for a log-likelihood request, else the completion
    text (prompts tokenized without special tokens, as the scripts do: `add_special_tokens=False`)."""
    tok = generator.tokenizer
    encoded = [tok(r.prompt, add_special_tokens=False)["input_ids"] for r in reqs]
    out: list = [None] * len(reqs)
    choice = [i for i, r in enumerate(reqs) if r.continuations]
    if choice:
        candidates = mmlu.candidate_ids(tok)
        logprobs = generator.next_token_logprobs([encoded[i] for i in choice], candidates)
        for i, row in zip(choice, logprobs, strict=True):
            out[i] = int(row.argmax())
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(reqs):
        if not r.continuations:
            groups.setdefault((r.max_new_tokens, r.stop), []).append(i)
    for (max_new, stop), members in groups.items():
        texts = generator.generate([encoded[i] for i in members], Sampling(max_new_tokens=max_new), until=stop)
        for i, text in zip(members, texts, strict=True):
            out[i] = text
    return out


def run(generator, data_dir: str, chat_format: str, settings: Sequence[str] = SCORED,
        samples_out: str | None = None) -> dict:
    """{setting: its scores} of the scored settings (codex: the `codex` part), and every request with its answer
    written to `samples_out` (JSONL). Every set is read before the model answers (a missing or unreachable one is
    one ConfigError, nothing asked)."""
    codex_settings = [s for s in settings if SETTINGS[s].score is None]
    if codex_settings:
        raise ConfigError(f"Tulu suite: {codex_settings[0]} is run by the codex part (eval.codex)")
    print(f"instructjax: Tulu suite in chat format {chat_format!r}", file=sys.stderr)
    # every setting's requests first, the hub's sets read too: a set that cannot be read stops the suite before
    # the model answers anything, so no answer is lost to it
    built = {name: SETTINGS[name].build(data_dir, generator.tokenizer, chat_format, protocol=name) for name in settings}
    results, logged = {}, []
    for name, reqs in built.items():
        answers = answer(generator, reqs)
        results[name] = SETTINGS[name].score(reqs, answers)
        logged += [{**r.record(), "target": r.target, "answer": a} for r, a in zip(reqs, answers, strict=True)]
    results["chat_format"] = chat_format
    if samples_out:
        write_jsonl(samples_out, logged)
    return results
