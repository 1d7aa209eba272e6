"""Deterministic synthetic rows in each dataset's native schema, for tests and the quickstart.

The real instruction datasets do not ship, so `write_synthetic(name, dir)` writes a jsonl file in the
NATIVE hub schema of `name` (it goes through the real adapter and loader). Every row is labelled:
its id starts with "synthetic-" and it has a `"synthetic": true` field. Text is word salad from a fixed
vocabulary of English and code words; lengths are lognormal, rescaled so their means match Tulu's
Table 1 (rounds, prompt and completion tokens per turn, LLaMA tokenizer). Row counts are Table 1's
instance counts scaled down (1/250, clipped to 200..800 rows). The statistics and the text are in
`synthetic_text`; this module is the schemas and the files.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import numpy as np

from instructjax.core.errors import ConfigError
from instructjax.data.sources.synthetic_text import (  # noqa: F401  (LengthStats, the tables: their old import path)
    ARITHMETIC_ROWS,
    LENGTH_STATS,
    OTHER_STATS,
    TULU_TABLE1,
    LengthStats,
    _lengths,
    _rescale,
    _text,
    default_rows,
)

BUILTIN = "builtin"  # a task's data_files = (BUILTIN,): these synthetic rows
BUILTIN_SUFFIX = "_builtin"  # every source's built-in task is named SOURCE_builtin

GENERATOR_VERSION = 2


# --- one generator per native schema -------------------------------------------------------------

def _instruction_rows(name, rng, n, stats, vocab_out="prose", has_input=0.4, input_field="input",
                      output_field="output", score=False):
    prompts, outputs = _lengths(rng, stats.prompt, n), _lengths(rng, stats.completion, n, 0.7)
    for i in range(n):
        with_input = rng.random() < has_input
        instruction_tokens = prompts[i] * (0.4 if with_input else 1.0)
        row = {"id": f"synthetic-{i:05d}", "instruction": _text(rng, instruction_tokens)}
        if input_field:
            row[input_field] = _text(rng, prompts[i] - instruction_tokens, vocab_out) if with_input else ""
        row[output_field] = _text(rng, outputs[i], vocab_out)
        if score:
            row["score"] = float(rng.choice([2.5, 3.0, 3.5, 4.0, 4.5, 5.0], p=[.05, .1, .2, .3, .25, .1]))
        yield row


def _inputs_targets_rows(name, rng, n, stats, keys=("inputs", "targets")):
    prompts, targets = _lengths(rng, stats.prompt, n), _lengths(rng, stats.completion, n, 0.8)
    for i in range(n):
        yield {"id": f"synthetic-{i:05d}", keys[0]: _text(rng, prompts[i]), keys[1]: _text(rng, targets[i]),
               "task": f"synthetic_task_{i % 17}"}


def _superni_rows(name, rng, n, stats):
    prompts, targets = _lengths(rng, stats.prompt, n), _lengths(rng, stats.completion, n, 0.8)
    for i in range(n):
        yield {"id": f"synthetic-{i:05d}", "task_name": f"task{i % 23:03d}_synthetic",
               "definition": _text(rng, prompts[i] * 0.6), "inputs": _text(rng, prompts[i] * 0.4),
               "targets": _text(rng, targets[i])}


def _self_instruct_rows(name, rng, n, stats):
    prompts, outputs = _lengths(rng, stats.prompt, n), _lengths(rng, stats.completion, n, 0.7)
    for i in range(n):
        yield {"id": f"synthetic-{i:05d}", "prompt": _text(rng, prompts[i]) + "\n\nOutput:",
               "completion": " " + _text(rng, outputs[i]) + "<|endoftext|>"}


def _unnatural_rows(name, rng, n, stats):
    counts = 1 + (rng.random(n) < 0.04)  # 68,478 instances over 66,010 instructions
    prompts, outputs = _lengths(rng, stats.prompt, counts.sum()), _lengths(rng, stats.completion, counts.sum())
    k = 0
    for i in range(n):
        instruction = _text(rng, prompts[k] * 0.6)
        instances = []
        for _ in range(counts[i]):
            input_text = _text(rng, prompts[k] * 0.4)
            instances.append({"instruction_with_input": f"{instruction}\n\n{input_text}", "input": input_text,
                              "constraints": "None.", "output": _text(rng, outputs[k])})
            k += 1
        yield {"id": f"synthetic-{i:05d}", "instruction": instruction, "instances": instances}


def _turn_lengths(rng, stats, rounds):
    total = int(rounds.sum())
    return iter(_lengths(rng, stats.prompt, total)), iter(_lengths(rng, stats.completion, total, 0.7))


def _baize_rows(name, rng, n, stats):
    rounds = 1 + rng.poisson(stats.rounds - 1, size=n)
    users, bots = _turn_lengths(rng, stats, rounds)
    for i in range(n):
        turns = "".join(f"[|Human|] {_text(rng, next(users))}\n[|AI|] {_text(rng, next(bots))}\n"
                        for _ in range(rounds[i]))
        yield {"id": f"synthetic-{i:05d}", "topic": _text(rng, 6),
               "input": f"The conversation between human and AI assistant.\n{turns}[|Human|] "}


def _sharegpt_rows(name, rng, n, stats):
    """Most chats are short; one in ten is long (6-16 rounds) and needs splitting at 2048 tokens.
    Turns of long chats are shorter (length scale rounds**-1), as in real ShareGPT."""
    long = rng.random(n) < 0.1
    rounds = np.where(long, rng.integers(6, 17, size=n), 1 + rng.poisson(3.0, size=n))
    scale = np.repeat(1.0 / rounds, rounds)
    users = iter(_rescale(_lengths(rng, stats.prompt, len(scale)) * scale, stats.prompt))
    bots = iter(_rescale(_lengths(rng, stats.completion, len(scale), 0.7) * scale, stats.completion))
    for i in range(n):
        turns = []
        for _ in range(rounds[i]):
            turns.append({"from": "human", "value": _text(rng, next(users))})
            turns.append({"from": "gpt", "value": _text(rng, next(bots), "code" if rng.random() < .15 else "prose")})
        yield {"id": f"synthetic-{i:05d}", "conversations": turns}


def _messages_rows(name, rng, n, stats):
    """Chats in the `messages` format: 1 + Poisson rounds, a system turn (not counted in the stats) in one
    row of three."""
    rounds = 1 + rng.poisson(stats.rounds - 1, size=n)
    users, bots = _turn_lengths(rng, stats, rounds)
    for i in range(n):
        messages = [{"role": "system", "content": _text(rng, 15)}] if rng.random() < 1 / 3 else []
        for _ in range(rounds[i]):
            messages.append({"role": "user", "content": _text(rng, next(users))})
            messages.append({"role": "assistant", "content": _text(rng, next(bots),
                                                                    "code" if rng.random() < .1 else "prose")})
        yield {"id": f"synthetic-{i:05d}", "messages": messages}


LMSYS_MODELS = ("vicuna-13b", "koala-13b", "alpaca-13b", "chatglm-6b", "llama-13b", "claude-1", "gpt-3.5-turbo")
LMSYS_LANGUAGES = ("English",) * 8 + ("Portuguese", "Russian", "Chinese", "unknown")


def _lmsys_rows(name, rng, n, stats):
    """LMSYS-Chat-1M's schema: user/assistant turns, a language, a moderation verdict per turn (flagged now and
    then), redacted conversations with NAME_1-style placeholders; an unanswered last user turn in one in
    twenty and an empty reply in one in fifty (as the real dump has)."""
    rounds = 1 + rng.poisson(stats.rounds - 1, size=n)
    users, bots = _turn_lengths(rng, stats, rounds)
    for i in range(n):
        turns = []
        for _ in range(rounds[i]):
            turns.append({"content": _text(rng, next(users)), "role": "user"})
            reply = "" if rng.random() < 0.02 else _text(rng, next(bots), "code" if rng.random() < .1 else "prose")
            turns.append({"content": reply, "role": "assistant"})
        if rng.random() < 0.05:
            turns.append({"content": _text(rng, 20), "role": "user"})
        redacted = bool(rng.random() < 0.05)
        if redacted:
            turns[0]["content"] = "NAME_1 asks: " + turns[0]["content"]
        verdicts = [{"categories": {"harassment": False, "violence": False}, "category_scores": {"harassment": 0.001},
                     "flagged": bool(rng.random() < 0.03)} for _ in turns]
        yield {"conversation_id": f"synthetic-{i:06x}", "model": str(rng.choice(LMSYS_MODELS)), "conversation": turns,
               "turn": int(rounds[i]), "language": str(rng.choice(LMSYS_LANGUAGES)), "openai_moderation": verdicts,
               "redacted": redacted}


def _magpie_rows(name, rng, n, stats):
    """Magpie's schema: one human and one gpt turn, the instruction and response also on their own, and
    Magpie's annotations (task category, difficulty, input quality, reward)."""
    prompts, outputs = _lengths(rng, stats.prompt, n), _lengths(rng, stats.completion, n, 0.7)
    for i in range(n):
        instruction = _text(rng, prompts[i])
        response = _text(rng, outputs[i], "code" if rng.random() < .2 else "prose")
        yield {"uuid": f"synthetic-{i:08x}-magpie", "instruction": instruction, "response": response,
               "conversations": [{"from": "human", "value": instruction}, {"from": "gpt", "value": response}],
               "task_category": str(rng.choice(["Information seeking", "Coding & Debugging", "Math", "Planning"])),
               "difficulty": str(rng.choice(["easy", "medium", "hard"])),
               "input_quality": str(rng.choice(["good", "excellent", "average"])),
               "instruct_reward": float(rng.normal(2.0, 1.0)), "language": "EN"}


def _preference_rows(name, rng, n, stats):
    """UltraFeedback binarized's schema (`train_prefs`): a prompt, its chosen and rejected conversations, scores."""
    prompts, answers = _lengths(rng, stats.prompt, n), _lengths(rng, stats.completion, 2 * n, 0.7)
    for i in range(n):
        prompt = _text(rng, prompts[i])
        chosen, rejected = _text(rng, answers[2 * i]), _text(rng, answers[2 * i + 1])
        score = float(rng.integers(6, 11))
        yield {"prompt": prompt, "prompt_id": f"synthetic-{i:06x}-pair",
               "chosen": [{"role": "user", "content": prompt}, {"role": "assistant", "content": chosen}],
               "rejected": [{"role": "user", "content": prompt}, {"role": "assistant", "content": rejected}],
               "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": chosen}],
               "score_chosen": score, "score_rejected": score - float(rng.integers(1, 6))}


def _oasst1_rows(name, rng, n, stats):
    """Message trees: a prompt, 1-3 ranked replies, follow-up prompts with their own ranked replies."""
    users, bots = iter(_lengths(rng, stats.prompt, 40 * n)), iter(_lengths(rng, stats.completion, 40 * n, 0.7))
    for t in range(n):
        tree = f"synthetic-t{t:05d}"
        counter = iter(range(1_000))

        def message(parent, role, rank, depth, tree=tree, counter=counter):
            mid = f"{tree}-m{next(counter):03d}"
            text = _text(rng, next(users) if role == "prompter" else next(bots))
            yield {"message_id": mid, "parent_id": parent, "role": role, "text": text, "rank": rank,
                   "lang": "en", "message_tree_id": tree, "deleted": bool(rng.random() < 0.02),
                   "synthetic": True}
            if role == "prompter":
                for r in range(int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.2]))):
                    yield from message(mid, "assistant", r, depth)
            elif depth < 3 and rng.random() < 0.3:
                yield from message(mid, "prompter", 0, depth + 1)

        yield from message(None, "prompter", None, 1)


def arithmetic_questions(rng, n: int, exclude: frozenset = frozenset()) -> list[tuple[str, int]]:
    """`n` distinct arithmetic questions ("17 + 25", answer 42) not in `exclude`: one- and two-digit additions and
    subtractions (never below 0), and multiplications of numbers up to 12 (one in five)."""
    out: dict[str, int] = {}
    while len(out) < n:
        if rng.random() < 0.2:
            a, b = (int(x) for x in rng.integers(2, 13, 2))
            question, answer = f"{a} * {b}", a * b
        else:
            a, b = (int(x) for x in rng.integers(1, 100, 2))
            if rng.random() < 0.5:
                question, answer = f"{a} + {b}", a + b
            else:
                a, b = max(a, b), min(a, b)
                question, answer = f"{a} - {b}", a - b
        if question not in exclude:
            out.setdefault(question, answer)
    return list(out.items())


ARITHMETIC_PROMPT = "What is {question}? Give the answer as a number."


def _verifiable_rows(name, rng, n, stats):
    """RLVR-GSM's schema: arithmetic prompts, their answers as ground truth, verified as GSM8K's (`gsm8k`)."""
    for i, (question, answer) in enumerate(arithmetic_questions(rng, n)):
        yield {"id": f"synthetic-{i:06x}-verifiable",
               "messages": [{"role": "user", "content": ARITHMETIC_PROMPT.format(question=question)}],
               "ground_truth": str(answer), "dataset": "gsm8k"}


def _arithmetic_rows(name, rng, n, stats):
    """Chats (`messages`) answering the built-in verifiable prompts' kind of question ("17 + 25 = 42. The answer is
    42."), none of those prompts' questions (seed 0's) among them."""
    seen = frozenset(q for q, _ in arithmetic_questions(
        np.random.default_rng([0, sum(b"verifiable")]), ARITHMETIC_ROWS["verifiable"]))
    for i, (question, answer) in enumerate(arithmetic_questions(rng, n, seen)):
        yield {"id": f"synthetic-{i:06x}-arithmetic",
               "messages": [{"role": "user", "content": ARITHMETIC_PROMPT.format(question=question)},
                            {"role": "assistant", "content": f"{question} = {answer}. The answer is {answer}."}]}


_GENERATORS = {
    "superni": _superni_rows,
    "cot": _inputs_targets_rows,
    "flan_v2": _inputs_targets_rows,
    "dolly": lambda name, rng, n, s: _instruction_rows(name, rng, n, s, has_input=0.35, input_field="context",
                                                      output_field="response", score=True),
    "oasst1": _oasst1_rows,
    "self_instruct": _self_instruct_rows,
    "unnatural_instructions": _unnatural_rows,
    "alpaca": lambda name, rng, n, s: _instruction_rows(name, rng, n, s, score=True),
    "code_alpaca": lambda name, rng, n, s: _instruction_rows(name, rng, n, s, vocab_out="code"),
    "gpt4_alpaca": _instruction_rows,
    "baize": _baize_rows,
    "sharegpt": _sharegpt_rows,
    "p3": lambda name, rng, n, s: _inputs_targets_rows(name, rng, n, s, ("inputs_pretokenized",
                                                                         "targets_pretokenized")),
    "wizardlm": lambda name, rng, n, s: _instruction_rows(name, rng, n, s, has_input=0.0, input_field=None,
                                                         score=True),
    "messages": _messages_rows,
    "lmsys_chat": _lmsys_rows,
    "magpie": _magpie_rows,
    "preference": _preference_rows,
    "verifiable": _verifiable_rows,
    "arithmetic": _arithmetic_rows,
}


def synthetic_rows(name: str, n_rows: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The synthetic native rows of `name` (deterministic in `seed`), each labelled synthetic."""
    if name not in _GENERATORS:
        raise ConfigError(f"no synthetic generator for {name!r}; known: {', '.join(sorted(_GENERATORS))}")
    n = default_rows(name) if n_rows is None else n_rows
    if n < 1:
        raise ConfigError(f"n_rows must be >= 1, got {n}")
    name_key = sum(name.encode())  # a per-dataset stream, stable across Python runs
    rng = np.random.default_rng([seed, name_key])
    rows = list(_GENERATORS[name](name, rng, n, LENGTH_STATS.get(name)))
    for row in rows:
        row["synthetic"] = True
    return rows


def _write_atomic(path: str, lines: list[str]) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_synthetic(name: str, directory: str, n_rows: int | None = None, seed: int = 0) -> list[str]:
    """Write `<directory>/<name>.synthetic.jsonl` in `name`'s native schema; return [path]."""
    path = os.path.join(directory, f"{name}.synthetic.jsonl")
    rows = synthetic_rows(name, n_rows, seed)
    _write_atomic(path, [json.dumps(r, ensure_ascii=False) for r in rows])
    return [path]


def builtin_dir() -> str:
    """Cache directory for built-in synthetic data: $INSTRUCTJAX_CACHE or ~/.cache/instructjax/synthetic."""
    return os.environ.get("INSTRUCTJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                               "instructjax", "synthetic")


def ensure_synthetic(name: str, n_rows: int | None = None) -> list[str]:
    """The synthetic files of `name` (seed 0) in `builtin_dir()`, written once and reused."""
    n = default_rows(name) if n_rows is None else n_rows
    directory = os.path.join(builtin_dir(), f"v{GENERATOR_VERSION}-n{n}")
    path = os.path.join(directory, f"{name}.synthetic.jsonl")
    if os.path.exists(path):
        return [path]
    return write_synthetic(name, directory, n, seed=0)
