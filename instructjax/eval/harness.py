"""lm-evaluation-harness runs: tasks on a model, and a paper's suite (eval/suite.py) scored by its protocol.

The backend is lm-eval's `hf` on an exported HF directory, or ours ("instructjax", eval/lm_eval_adapter.py)
on a checkpoint. `instructjax eval`, `eval --config` (eval/run.py) and `instructjax sweep` all call these.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from instructjax.core import storage
from instructjax.core.errors import ConfigError

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager


def run_lm_eval(model: str, tasks: list[str], *, backend: str = "auto", num_fewshot: int | None = None,
                include_path: str | None = None, limit: float | None = None, batch_size: int = 8,
                log_samples: bool = False, samples: dict[str, list[int]] | None = None,
                gen_kwargs: dict | None = None) -> dict:
    """lm-eval's simple_evaluate with the hf backend on an HF directory, or ours on a checkpoint (or any
    registered lm-eval model named by `backend`); `samples`: the documents of each task to evaluate."""
    import lm_eval

    import instructjax.eval.lm_eval_adapter  # noqa: F401  (registers "instructjax")

    if backend == "auto":
        backend = "hf" if (storage.path(model) / "config.json").is_file() else "instructjax"
    device = None
    model_args = f"pretrained={model}"
    if backend == "hf":  # transformers reads a local directory (a bucket's: downloaded once)
        model = storage.local_copy(model)
        device, dtype = hf_placement(model, local_accelerator())
        model_args = f"pretrained={model},dtype={dtype}"
    try:
        with quiet_git():
            return lm_eval.simple_evaluate(
                model=backend, model_args=model_args, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                batch_size=batch_size, device=device, log_samples=log_samples,
                task_manager=task_manager(include_path, tasks), bootstrap_iters=0, samples=samples,
                gen_kwargs=gen_kwargs,
            )
    except ModuleNotFoundError as exc:  # lm-eval's hf backend imports accelerate: the `eval` extra
        from instructjax.core.errors import ConfigError

        raise ConfigError(f"lm-eval's {backend} backend needs the `{exc.name}` package: "
                          "pip install 'instructjax[eval]'") from None
    except Exception as exc:  # a task's hub dataset out of reach: one line naming it (else as raised)
        from instructjax.core.errors import ConfigError
        from instructjax.data.sources.hub import hub_failure, hub_problem

        dataset = hub_failure(exc)
        if dataset is None:
            raise
        local = "or evaluate on tasks read from local files (lm-eval task YAMLs with `dataset_path: json`, " \
                "`--include-path`: instructjax/eval/offline_tasks)"
        raise ConfigError(f"lm-eval task(s) {', '.join(tasks)}: {hub_problem(dataset, exc, local)}") from None



@contextlib.contextmanager
def quiet_git():
    """Within: lm-eval's record of the working directory's git commit (`evaluator.get_git_commit_hash`, which runs
    `git describe` with git's stderr on ours) taken quietly. Outside a git checkout (an installed wheel's folder,
    a user's directory) git would print "fatal: not a git repository" on ours."""

    from lm_eval import evaluator
    from lm_eval.loggers.utils import get_commit_from_path

    def commit() -> str | None:
        try:
            described = subprocess.run(["git", "describe", "--always"], capture_output=True, text=True, check=True)
        except (subprocess.CalledProcessError, FileNotFoundError):
            return get_commit_from_path(os.getcwd())  # what lm-eval falls back on
        return described.stdout.strip()

    original, evaluator.get_git_commit_hash = evaluator.get_git_commit_hash, commit
    try:
        yield
    finally:
        evaluator.get_git_commit_hash = original

def local_accelerator() -> str | None:
    """The torch device of this machine's accelerator ("cuda", "mps"), None on a CPU-only machine."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else None


def hf_placement(model_dir: str, accelerator: str | None) -> tuple[str, str]:
    """(device, dtype) of lm-eval's hf model for an HF directory: the accelerator in the dtype the run computed in
    (the export's marker; else the weights' own, config.json's `torch_dtype`), the CPU in float32 where there is no
    accelerator (bfloat16 arithmetic is emulated, slowly, on most CPUs)."""
    from instructjax.convert.saved import export_dtype

    if accelerator is None:
        return "cpu", "float32"
    dtype = export_dtype(model_dir)
    if dtype is None:
        try:
            with open(os.path.join(model_dir, "config.json")) as f:
                hf = json.load(f)
            dtype = hf.get("torch_dtype") or hf.get("dtype")
        except (OSError, ValueError):
            dtype = None
    return accelerator, dtype or "bfloat16"


# our own lm-eval task YAMLs (seed 004's GSM/BBH Direct and TydiQA closed book), found beside lm-eval's
TASKS_DIR = str(Path(__file__).with_name("tasks"))


def task_manager(include_path: str | None, tasks: Sequence[str] = ()) -> TaskManager:
    """lm-eval's task index for `tasks`: the include path's own (or our TASKS_DIR's) when it holds them all as
    tasks (reading every one of lm-eval's task YAMLs takes seconds), else lm-eval's with the include path and
    ours; built once per process."""
    if include_path and not Path(include_path).is_dir():  # lm-eval would look for its tasks on the hub
        raise ConfigError(f"--include-path {include_path}: no such directory (the task YAMLs' folder; relative "
                          "to where the command runs)")
    if include_path and set(tasks) <= set(_index(include_path, False).all_subtasks):
        return _index(include_path, False)
    if tasks and set(tasks) <= set(_index(TASKS_DIR, False).all_tasks):  # ours: tasks, groups and tags
        return _index(TASKS_DIR, False)
    return _index(include_path, True)


@functools.lru_cache(maxsize=8)
def _index(include_path: str | None, defaults: bool) -> TaskManager:
    from lm_eval.tasks import TaskManager

    paths = [p for p in (TASKS_DIR if defaults else None, include_path) if p]  # later paths win a name
    return TaskManager(include_path=paths or None, include_defaults=defaults)


def leaf_sizes(task: str, include_path: str | None = None) -> dict[str, int]:
    """{leaf task: document count} of an lm-eval task or group (the group's tasks, recursively)."""
    from lm_eval.api.task import Task
    from lm_eval.tasks import get_task_dict

    sizes: dict[str, int] = {}

    def walk(node) -> None:
        for value in node.values():
            if isinstance(value, dict):
                walk(value)
            elif isinstance(value, Task):
                sizes[value.config.task] = len(value.eval_docs)

    walk(get_task_dict([task], task_manager(include_path, [task])))
    return sizes


def results_json(results) -> str:
    """Results as JSON that every reader takes: a NaN or infinite float (a metric with nothing to average) is
    null, never the `NaN` JSON does not have."""

    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.dumps(finite(results), indent=2, default=str, allow_nan=False)


def numeric(metrics: dict) -> dict:
    """A task's numeric lm-eval metrics, without their standard errors."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and "stderr" not in k}


def run_suite(model: str, name: str, *, backend: str = "auto", include_path: str | None = None,
              limit: float | None = None, batch_size: int = 8, samples_out: str | None = None) -> dict:
    """A paper's suite through lm-eval: one call per shot count; the protocol benchmarks (GSM8K, BBH) on
    their seeded subsets (all documents, or lm-eval's first `limit`, when a limit is given) and scored from
    the raw generations by the paper's answer rule (`protocol` in their entry). `samples_out`: JSONL of
    every protocol document's response and extracted answer."""
    from instructjax.eval.pairwise import write_jsonl
    from instructjax.eval.protocols import protocol_samples
    from instructjax.eval.suite import lm_eval_runs, protocols

    by_task = protocols(name)
    if by_task and limit is not None:
        print(f"instructjax: note: --limit takes lm-eval's first documents of {', '.join(by_task)}, not the "
              "paper's seeded subsets", file=sys.stderr)
    summary: dict[str, dict] = {}
    logged: list[dict] = []

    def call(tasks: list[str], shots: int) -> tuple[dict, dict, dict]:
        here = {t: by_task[t] for t in tasks if t in by_task}
        leaves = {t: leaf_sizes(t, include_path) for t in here}
        samples = None
        if here and limit is None:
            samples = {}
            for task, protocol in here.items():
                samples.update(protocol_samples(protocol, task, leaves[task]))
        out = run_lm_eval(model, tasks, backend=backend, num_fewshot=shots, include_path=include_path, limit=limit,
                          batch_size=batch_size, log_samples=bool(here), samples=samples)
        return here, leaves, out

    failures: list[Exception] = []
    scored = 0
    for shots, group in lm_eval_runs(name):
        calls = []
        try:
            calls.append(call(group, shots))
        except Exception:  # noqa: BLE001  one task's failure loses only itself: each alone, failures named
            for task in group:
                try:
                    calls.append(call([task], shots))
                except Exception as exc:  # noqa: BLE001
                    problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    print(f"instructjax: lm-eval task {task} ({shots}-shot) failed, the others are scored: "
                          f"{problem}", file=sys.stderr)
                    summary[f"{task}|{shots}-shot"] = {"error": problem}
                    failures.append(exc)
        scored += len(calls)
        for here, leaves, out in calls:
            _record(summary, logged, shots, here, leaves, out)
    if failures and not scored:  # nothing ran (no hub, a wrong include path): the first failure, as raised
        raise failures[0]
    if samples_out and logged:
        write_jsonl(samples_out, logged)
    return summary


def _record(summary: dict, logged: list, shots: int, here: dict, leaves: dict, out: dict) -> None:
    """One lm-eval call's metrics into the suite's summary, its protocol tasks scored by the paper's rule."""
    from instructjax.eval.protocols import bbh_answer, gsm8k_answer, score_suite_task

    for task, metrics in out["results"].items():
        summary[f"{task}|{shots}-shot"] = numeric(metrics)
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
