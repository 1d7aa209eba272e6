# Derived from open-instruct (https://github.com/allenai/open-instruct), Copyright 2024 AllenAI, Apache-2.0.
# Modified for instructjax. See NOTICE.

"""GSM8K as open-instruct's eval/gsm/run_eval.py (e44fcf5) with --n_shot 8 --max_num_examples 200: 200 test
problems drawn by `random.seed(42); random.sample(test, 200)`, the eight CoT exemplars of Wei et al. (2022, Table
20) with their reasoning (CoT) or only their answers (direct, --no_cot, whose exemplars the script introduces with
"Quesion:"), greedy generation up to the first newline or 512 tokens, the last number of the response (commas
inside numbers removed) against the answer after "####", exact match ignoring case and punctuation."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import instructjax.eval.tulu.files as files
from instructjax.core.errors import DataError
from instructjax.eval.tulu.metrics import exact_match
from instructjax.eval.tulu.request import Request, Turn, format_prompt

MAX_EXAMPLES = 200
SEED = 42
MAX_NEW_TOKENS = 512

# (question, chain-of-thought answer, short answer): Wei et al. (2022), Table 20
EXEMPLARS = (
    ("There are 15 trees in the grove. Grove workers will plant trees in the grove today. After they are done, there "
     "will be 21 trees. How many trees did the grove workers plant today?",
     "There are 15 trees originally. Then there were 21 trees after some more were planted. So there must have been "
     "21 - 15 = 6. So the answer is 6.", "6"),
    ("If there are 3 cars in the parking lot and 2 more cars arrive, how many cars are in the parking lot?",
     "There are originally 3 cars. 2 more cars arrive. 3 + 2 = 5. So the answer is 5.", "5"),
    ("Leah had 32 chocolates and her sister had 42. If they ate 35, how many pieces do they have left in total?",
     "Originally, Leah had 32 chocolates. Her sister had 42. So in total they had 32 + 42 = 74. After eating 35, "
     "they had 74 - 35 = 39. So the answer is 39.", "39"),
    ("Jason had 20 lollipops. He gave Denny some lollipops. Now Jason has 12 lollipops. How many lollipops did "
     "Jason give to Denny?",
     "Jason started with 20 lollipops. Then he had 12 after giving some to Denny. So he gave Denny 20 - 12 = 8. So "
     "the answer is 8.", "8"),
    ("Shawn has five toys. For Christmas, he got two toys each from his mom and dad. How many toys does he have now?",
     "Shawn started with 5 toys. If he got 2 toys each from his mom and dad, then that is 4 more toys. 5 + 4 = 9. "
     "So the answer is 9.", "9"),
    ("There were nine computers in the server room. Five more computers were installed each day, from monday to "
     "thursday. How many computers are now in the server room?",
     "There were originally 9 computers. For each of 4 days, 5 more computers were added. So 5 * 4 = 20 computers "
     "were added. 9 + 20 is 29. So the answer is 29.", "29"),
    ("Michael had 58 golf balls. On tuesday, he lost 23 golf balls. On wednesday, he lost 2 more. How many golf "
     "balls did he have at the end of wednesday?",
     "Michael started with 58 golf balls. After losing 23 on tuesday, he had 58 - 23 = 35. After losing 2 more, he "
     "had 35 - 2 = 33 golf balls. So the answer is 33.", "33"),
    ("Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
     "Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has 23 - 15 dollars "
     "left. 23 - 15 is 8. So the answer is 8.", "8"),
)

_COMMA_IN_NUMBER = re.compile(r"(\d),(\d)")
_NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")


def problems(data_dir: str, max_examples: int | None = MAX_EXAMPLES) -> list[dict]:
    """The test problems the script evaluates, in its order: {question, answer} (the answer after "####"); from the
    data_dir's gsm/test.jsonl, else the hub's copy."""
    if files.local(data_dir, "gsm"):
        path = files.need(data_dir, "gsm", "test.jsonl")
        read = files.read_jsonl(path)
    else:
        path, read = files.HUB["gsm"][0], files.hub_rows("gsm", "test", data_dir)
    rows = []
    for i, row in enumerate(read, 1):
        if "####" not in str(row.get("answer", "")):
            raise DataError("the answer has no '####' before its number", reason="wrong_type", file=path, row=i)
        answer = _COMMA_IN_NUMBER.sub(r"\1\2", row["answer"].split("####")[1].strip())
        rows.append({"question": row["question"], "answer": answer})
    if max_examples and len(rows) > max_examples:
        rows = random.Random(SEED).sample(rows, max_examples)
    return rows


def requests(data_dir: str, hf_tokenizer, chat_format: str, *, cot: bool, protocol: str,
             max_examples: int | None = MAX_EXAMPLES) -> list[Request]:
    if cot:
        shots = ["Question: " + q + "\n" + "Answer: " + a for q, a, _ in EXEMPLARS]
    else:
        shots = ["Quesion: " + q + "\n" + "Answer: " + a for q, _, a in EXEMPLARS]  # the script's spelling
    prefix = "Answer the following questions.\n\n" + "\n\n".join(shots) + "\n\n"
    out = []
    for i, problem in enumerate(problems(data_dir, max_examples)):
        question = problem["question"].strip()
        turn = Turn(user=prefix + "Question: " + question, reply_start="Answer:",
                    raw=prefix + "Question: " + question + "\nAnswer:")
        out.append(Request(protocol, str(i), format_prompt(turn, chat_format, hf_tokenizer), stop=("\n",),
                           max_new_tokens=MAX_NEW_TOKENS, target=problem["answer"]))
    return out


def answer(response: str) -> str:
    """The last number of the response (commas inside numbers removed), else the whole response."""
    numbers = _NUMBER.findall(_COMMA_IN_NUMBER.sub(r"\1\2", response))
    return numbers[-1] if numbers else _COMMA_IN_NUMBER.sub(r"\1\2", response)


def score(reqs: Sequence[Request], responses: Sequence[str]) -> dict:
    """Exact match (a fraction) of the answers."""
    return {"exact_match": exact_match([answer(r) for r in responses], [q.target for q in reqs]), "n": len(reqs)}
