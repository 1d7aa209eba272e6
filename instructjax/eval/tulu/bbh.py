# Derived from open-instruct (https://github.com/allenai/open-instruct), Copyright 2024 AllenAI, Apache-2.0.
# Modified for instructjax. See NOTICE.

"""BIG-Bench Hard as open-instruct's eval/bbh/run_eval.py (e44fcf5) with --max_num_examples_per_task 40: each
task's 3-shot CoT prompt (the official cot-prompts file past its two header lines; direct, --no_cot: each exemplar's
reasoning replaced by its final answer), 40 problems per task drawn by one `random.seed(42)` generator task after
task, greedy generation up to 512 tokens with no stop sequence (the script's direct-setting stop never matches:
it compares a token with a pair), the first paragraph of the response, the text after "So the answer is" up to the
next period (else the whole paragraph), exact match ignoring case and punctuation; the mean over tasks."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import instructjax.eval.tulu.files as files
from instructjax.core import storage
from instructjax.core.errors import ConfigError, DataError
from instructjax.eval.tulu.metrics import exact_match
from instructjax.eval.tulu.request import Request, Turn, format_prompt

PER_TASK = 40
SEED = 42
MAX_NEW_TOKENS = 512


def _past_header(text: str) -> str:
    """A cot-prompts file without its first two lines (the canary string and a rule)."""
    parts = text.split("\n", 2)
    return parts[2] if len(parts) == 3 else ""


def direct_prompt(cot_prompt: str, where: str) -> str:
    """A CoT prompt with each exemplar's reasoning replaced by its answer (the script's --no_cot)."""
    fields = []
    for part in cot_prompt.split("\n\n"):
        if part.startswith("Q:"):
            if "So the answer is" not in part or "\nA:" not in part:
                raise DataError("an exemplar without 'So the answer is' or '\\nA:'", reason="wrong_type", file=where)
            part = part.split("\nA:")[0].strip() + "\nA: " + part.split("So the answer is")[-1].strip()
        fields.append(part)
    return "\n\n".join(fields)


def requests(data_dir: str, hf_tokenizer, chat_format: str, *, cot: bool, protocol: str,
             per_task: int | None = PER_TASK) -> list[Request]:
    tasks = files.names(data_dir, "bbh/bbh", ".json")
    prompts = files.names(data_dir, "bbh/cot-prompts", ".txt")
    if tasks != prompts:
        missing = sorted(set(tasks) ^ set(prompts))
        raise ConfigError(f"Tulu suite: BBH task {missing[0]!r} has a problem file or a prompt file, not both "
                                f"({storage.join(data_dir, 'bbh')}); {files.LAYOUT}")
    rng = random.Random(SEED)
    out = []
    for task in tasks:
        path = files.need(data_dir, "bbh", "bbh", f"{task}.json")
        examples = files.read_json(path)["examples"]
        if per_task and len(examples) > per_task:
            examples = rng.sample(examples, per_task)
        prompt_file = files.need(data_dir, "bbh", "cot-prompts", f"{task}.txt")
        prompt = _past_header(files.read_text(prompt_file))
        if not cot:
            prompt = direct_prompt(prompt, prompt_file)
        for i, example in enumerate(examples):
            user = prompt.strip() + "\n\nQ: " + example["input"]
            turn = Turn(user=user, reply_start="A:", raw=user + "\nA:")
            out.append(Request(protocol, f"{task}/{i}", format_prompt(turn, chat_format, hf_tokenizer),
                               max_new_tokens=MAX_NEW_TOKENS, target=example["target"], group=task))
    return out


def answer(response: str) -> str:
    """The response's first paragraph; within it, what follows "So the answer is" up to the next period."""
    paragraph = response.strip().split("\n\n")[0].strip()
    found = re.search(r"So the answer is (.*?)\.", paragraph)
    return found.group(1).strip() if found else paragraph.strip()


def score(reqs: Sequence[Request], responses: Sequence[str]) -> dict:
    """Exact match (a fraction) per task and its mean over tasks."""
    by_task: dict[str, tuple[list[str], list[str]]] = {}
    for r, text in zip(reqs, responses, strict=True):
        predicted, targets = by_task.setdefault(r.group, ([], []))
        predicted.append(answer(text))
        targets.append(r.target)
    tasks = {task: exact_match(p, t) for task, (p, t) in by_task.items()}
    return {"exact_match": sum(tasks.values()) / len(tasks) if tasks else float("nan"), "n": len(reqs),
            "tasks": tasks}
