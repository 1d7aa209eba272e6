# Derived from FastChat (https://github.com/lm-sys/FastChat), the FastChat authors (LMSYS), Apache-2.0.
# Modified for instructjax. See NOTICE.

"""MT-Bench as FastChat's llm_judge runs it (Zheng et al. 2023; seed 003 Tables 2 and 3: the 1-round and 2-round
scores): 80 two-turn questions, the model answering turn 2 after its own turn-1 answer, a judge rating each turn
1-10 with FastChat's single-answer prompts.

- Answers (`gen_model_answer`): the question's turns one after the other in the model's chat template, at the
  category's temperature (`TEMPERATURE`: greedy at 0), at most 1024 new tokens.
- Judging (`gen_judgment --mode single`): turn 1 with `single-v1`, turn 2 with `single-v1-multi-turn` (the whole
  conversation); math, reasoning and coding (`NEED_REFERENCE`) with the `single-math-v1` forms and the reference
  answers. The prompts are FastChat's own (eval/data/mt_bench_judge_prompts.jsonl, from its
  data/judge_prompts.jsonl), sent as a system and a user message.
- Rating: the first "[[x]]" of the reply, else the first "[x]"; a reply with neither is -1 and left out of the
  mean (`show_result`). The scores are the mean rating of turn 1 and of turn 2.

Files: questions as FastChat's `question.jsonl` ({question_id, category, turns}); the reference answers as its
`reference_answer/gpt-4.jsonl` ({question_id, choices: [{turns}]}) or a `reference` list in the question row.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib.resources import files

from instructjax.core import storage
from instructjax.core.errors import ConfigError, DataError
from instructjax.eval.pairwise import read_jsonl  # a bad line: one error naming the file and line

TEMPERATURE = {"writing": 0.7, "roleplay": 0.7, "extraction": 0.0, "math": 0.0, "coding": 0.0, "reasoning": 0.0,
               "stem": 0.1, "humanities": 0.1, "arena-hard-200": 0.0}
NEED_REFERENCE = ("math", "reasoning", "coding", "arena-hard-200")
RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def judge_prompts() -> dict[str, dict]:
    """FastChat's single-answer judge prompts by name: {system_prompt, prompt_template, ...}."""
    text = (files("instructjax.eval") / "data" / "mt_bench_judge_prompts.jsonl").read_text()
    return {row["name"]: row for row in map(json.loads, text.splitlines())}


@dataclass
class Question:
    id: str
    category: str
    turns: list[str]
    reference: list[str] | None = None


def read_questions(path: str, references: str | None = None) -> list[Question]:
    """MT-Bench's questions, with the reference answers of the categories that need them (one-line errors)."""
    if not storage.path(path).is_file():
        raise ConfigError(f"eval.mt_bench.questions: {path} does not exist (FastChat's question.jsonl)")

    refs: dict[str, list[str]] = {}
    for i, row in enumerate(read_jsonl(references) if references else [], 1):
        try:
            refs[str(row["question_id"])] = list(row["choices"][0]["turns"])
        except (KeyError, IndexError, TypeError):
            raise DataError("a reference answer needs 'question_id' and 'choices': [{'turns': [...]}]",
                            reason="missing_field", file=references, row=i) from None
    questions = []
    for i, row in enumerate(read_jsonl(path), 1):
        turns = row.get("turns")
        if not isinstance(turns, list) or len(turns) != 2 or "question_id" not in row:
            raise DataError("an MT-Bench question needs a 'question_id' and two 'turns'", reason="missing_field",
                            file=path, row=i)
        qid = str(row["question_id"])
        reference = row.get("reference") or refs.get(qid)
        if row.get("category") in NEED_REFERENCE and not reference:
            raise DataError(f"category {row['category']!r} needs reference answers (eval.mt_bench.reference_answers)",
                            reason="missing_field", file=path, row=i)
        questions.append(Question(qid, row.get("category", "general"), turns, reference))
    return questions


def answer(generator, questions: list[Question], max_new_tokens: int = 1024, seed: int = 0) -> list[list[str]]:
    """The model's two answers per question: turn 2 asked after its own turn-1 answer, at the category's
    temperature (questions of one temperature batched together)."""
    from instructjax.eval.generate import Sampling

    answers: list[list[str]] = [[] for _ in questions]
    for turn in range(2):
        by_temperature: dict[float, list[int]] = {}
        for i, q in enumerate(questions):
            by_temperature.setdefault(TEMPERATURE.get(q.category, 0.7), []).append(i)
        for temperature, which in sorted(by_temperature.items()):
            conversations = []
            for i in which:
                messages = []
                for t in range(turn + 1):
                    messages.append({"role": "user", "content": questions[i].turns[t]})
                    if t < turn:
                        messages.append({"role": "assistant", "content": answers[i][t]})
                conversations.append(messages)
            sampling = Sampling(max_new_tokens, temperature if temperature >= 1e-4 else 0.0, 1.0, seed + turn)
            for i, text in zip(which, generator.chat(conversations, sampling), strict=True):
                answers[i].append(text)
    return answers


def judge_requests(questions: list[Question], answers: list[list[str]]) -> list[dict]:
    """Two single-answer judge requests per question ({id: "<question_id>|<turn>", turn, system, prompt})."""
    prompts, requests = judge_prompts(), []
    for q, a in zip(questions, answers, strict=True):
        math = q.category in NEED_REFERENCE
        refs = {"ref_answer_1": q.reference[0], "ref_answer_2": q.reference[1]} if math else {}
        first = prompts["single-math-v1" if math else "single-v1"]
        second = prompts["single-math-v1-multi-turn" if math else "single-v1-multi-turn"]
        turn1 = first["prompt_template"].format(question=q.turns[0], answer=a[0], **refs)
        turn2 = second["prompt_template"].format(question_1=q.turns[0], question_2=q.turns[1], answer_1=a[0],
                                                 answer_2=a[1], **refs)
        requests += [{"id": f"{q.id}|1", "turn": 1, "system": first["system_prompt"], "prompt": turn1},
                     {"id": f"{q.id}|2", "turn": 2, "system": second["system_prompt"], "prompt": turn2}]
    return requests


def rating(reply: str) -> float:
    """FastChat's rating of a judgment: the first [[x]], else the first [x]; -1 when there is none."""
    match = RATING.search(reply) or RATING_BACKUP.search(reply)
    return float(match.group(1)) if match else -1.0


def score(requests: list[dict], replies: list[dict], file: str | None = None) -> dict[str, float]:
    """Mean rating of turn 1 and of turn 2 (ratings of -1 left out, as `show_result`), and the counts; a request
    without a reply is a one-line error naming the replies `file`."""
    by_id = {str(r["id"]): str(r["reply"]) for r in replies}
    ratings: dict[int, list[float]] = {1: [], 2: []}
    unrated = 0
    for request in requests:
        if request["id"] not in by_id:
            raise DataError(f"no judge reply for request {request['id']!r}", reason="missing_field", file=file)
        value = rating(by_id[request["id"]])
        if value < 0:
            unrated += 1
        else:
            ratings[request["turn"]].append(value)
    return {"turn_1": sum(ratings[1]) / len(ratings[1]) if ratings[1] else None,  # None: every reply unrated
            "turn_2": sum(ratings[2]) / len(ratings[2]) if ratings[2] else None,
            "n": len(requests) // 2, "unrated": unrated}


def reads_rating(request, reply: str) -> bool:
    """Whether the reply holds a rating (what the judge's cache keeps)."""
    return rating(reply) >= 0
