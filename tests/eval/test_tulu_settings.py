"""Seed 004's Table 8 settings of our own (instructjax/eval/tasks): GSM Direct, BBH Direct and TydiQA closed book.

Each task is loaded by lm-eval's real TaskManager from our folder, its dataset swapped for local rows in the hub
schema (tests/assets/tulu_settings), and the prompt it builds must be the one open-instruct's scripts build
(`eval/gsm/run_eval.py --no_cot`, `eval/bbh/run_eval.py --no_cot`, `eval/tydiqa/run_eval.py --no_context`, the
June 2023 revision the paper's numbers come from), rebuilt here from those scripts' rules; the answer rules of
instructjax.eval.protocols must agree with the scripts' on hand-written generations.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter

import pytest
from helpers import ASSETS

from instructjax.eval.harness import TASKS_DIR, task_manager
from instructjax.eval.protocols import Protocol, is_correct, protocol_samples

DATA = ASSETS / "tulu_settings"


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


def _task(name: str, data_files: dict[str, str]):
    """Our task `name` as lm-eval builds it, its hub dataset replaced by local JSON files."""
    from lm_eval.tasks._yaml_loader import load_yaml

    manager = task_manager(None, [name])
    config = load_yaml(manager._index[name].yaml_path)
    config.update(dataset_path="json", dataset_name=None,
                  dataset_kwargs={"data_files": {split: str(DATA / f) for split, f in data_files.items()}})
    return manager.load_task_or_group([config])[name]


def _squad_normalize(text: str) -> str:  # the squad metric's normalization (open-instruct scores TydiQA with it)
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def _exact_match(prediction: str, reference: str) -> bool:  # evaluate's exact_match(ignore_case, ignore_punctuation)
    table = str.maketrans("", "", string.punctuation)
    return prediction.lower().translate(table) == reference.lower().translate(table)


# ---- GSM Direct ------------------------------------------------------------------------------------------------


def _open_instruct_gsm_prompt(question: str) -> str:
    demos = [f"Quesion: {e['question']}\nAnswer: {e['short_answer']}" for e in _rows("gsm_exemplars.jsonl")]
    return "Answer the following questions.\n\n" + "\n\n".join(demos) + "\n\n" + \
        "Question: " + question.strip() + "\nAnswer:"


def _open_instruct_gsm_correct(output: str, answer: str) -> bool:
    target = re.sub(r"(\d),(\d)", r"\1\2", answer.split("####")[1].strip())
    output = re.sub(r"(\d),(\d)", r"\1\2", output)
    numbers = re.findall(r"[-+]?\d*\.\d+|\d+", output)
    return _exact_match(numbers[-1] if numbers else output, target)


def test_gsm_direct_prompt_is_open_instructs():
    task = _task("tulu_gsm8k_direct", {"test": "gsm8k_test.jsonl"})
    docs = list(task.test_docs())
    assert len(docs) == 3
    for doc in docs:
        assert task.fewshot_context(doc, 8) == _open_instruct_gsm_prompt(doc["question"])
    assert task.config.generation_kwargs["until"] == ["\n"]  # the script stops at the first new line
    assert task.doc_to_target(docs[0]) == "18"


@pytest.mark.parametrize("output, doc", [
    (" 18", 0), (" 18 dollars.", 0), (" $18", 0), (" 9 * 2 = 18", 0), (" 16", 0), (" She makes 18 and 2 more", 0),
    (" 3", 1), (" 3 bolts", 1), (" no idea", 1), (" 2,500", 2), (" $2,500.", 2), (" 2500", 2), (" 1,250", 2),
])
def test_gsm_direct_answer_rule_is_open_instructs(output, doc):
    row = _rows("gsm8k_test.jsonl")[doc]
    assert is_correct("gsm8k", output, row) == _open_instruct_gsm_correct(output, row["answer"])


# ---- BBH Direct ------------------------------------------------------------------------------------------------


def _open_instruct_bbh_prompt(task: str, question: str) -> str:
    text = (DATA / f"bbh_cot_prompt_{task}.txt").read_text()
    task_prompt = "".join(text.splitlines(keepends=True)[2:])  # without the canary and "-----" lines
    fields = []
    for field in task_prompt.split("\n\n"):
        if field.startswith("Q:"):
            field = field.split("\nA:")[0].strip() + "\nA: " + field.split("So the answer is")[-1].strip()
        fields.append(field)
    return "\n\n".join(fields).strip() + "\n\nQ: " + question + "\nA:"


def _open_instruct_bbh_correct(output: str, target: str) -> bool:
    output = output.strip().split("\n\n")[0].strip()
    found = re.search(r"So the answer is (.*?)\.", output)
    return _exact_match(found.group(1).strip() if found else output.strip(), target)


@pytest.mark.parametrize("task", ["sports_understanding", "boolean_expressions"])
def test_bbh_direct_prompt_is_open_instructs(task):
    lm_task = _task(f"tulu_bbh_direct_{task}", {"test": f"bbh_{task}.jsonl"})
    docs = list(lm_task.test_docs())
    assert len(docs) == 2
    for doc in docs:
        assert lm_task.fewshot_context(doc, 3) == _open_instruct_bbh_prompt(task, doc["input"])
    assert lm_task.config.generation_kwargs["until"] == ["\n\n"]


@pytest.mark.parametrize("output, target", [
    (" (A).", "(A)"), (" (B)", "(A)"), (" yes.", "yes"), (" no", "yes"), (" False.", "False"),
    (" So the answer is True.", "True"), (" So the answer is (C). Because", "(C)"), (" valid", "valid"),
    (" invalid.", "valid"), (" ] ) ).", "] ) )"), (" costume counterpart oven.", "costume counterpart oven"),
])
def test_bbh_direct_answer_rule_is_open_instructs(output, target):
    assert is_correct("bbh", output, {"target": target}) == _open_instruct_bbh_correct(output, target)


def test_bbh_direct_exemplars_keep_the_answer_sentence():
    """--no_cot keeps what follows "So the answer is" with its period; every task has the official 3 exemplars."""
    from instructjax.eval.tasks import utils

    assert [s["target"] for s in utils.bbh_sports_understanding()] == ["yes.", "no.", "yes."]
    assert all(len(utils.bbh_direct_samples(t)) == 3 for t in utils.BBH_TASKS)
    assert len(utils.BBH_TASKS) == 27


# ---- TydiQA closed book ----------------------------------------------------------------------------------------

# open-instruct's `encoding_templates_without_context` for two of the nine languages
TYDIQA_TEMPLATES = {"english": ("Answer the following question.", "Question:", "Answer:"),
                    "finnish": ("Vastaa seuraavaan kysymykseen.", "Kysymys:", "Vastaus:")}


def _open_instruct_tydiqa_prompt(lang: str, exemplar: dict, question: str) -> str:
    prompt, q_template, a_template = TYDIQA_TEMPLATES[lang]
    prompt += "\n\n"
    prompt += q_template + " " + exemplar["question"] + "\n" + a_template + " " + exemplar["answers"]["text"][0]
    prompt += "\n\n" + q_template + " " + question + "\n"
    return prompt + a_template


def _squad_f1(prediction: str, answers: list[str]) -> float:
    def f1(reference: str) -> float:
        p, r = _squad_normalize(prediction).split(), _squad_normalize(reference).split()
        same = sum((Counter(p) & Counter(r)).values())
        return 0.0 if same == 0 else 2 * same / (len(p) + len(r))
    return max(f1(a) for a in answers)


@pytest.mark.parametrize("lang, code", [("english", "en"), ("finnish", "fi")])
def test_tydiqa_closed_book_prompt_is_open_instructs(lang, code):
    task = _task(f"tulu_tydiqa_cb_{code}", {"train": "tydiqa_train.jsonl", "validation": "tydiqa_validation.jsonl"})
    docs = list(task.validation_docs())
    assert {d["id"].split("-")[0] for d in docs} == {lang}  # the language's questions only
    exemplar = next(r for r in _rows("tydiqa_train.jsonl") if r["id"].startswith(lang))  # one, fixed per language
    for doc in docs:
        assert task.fewshot_context(doc, 1) == _open_instruct_tydiqa_prompt(lang, exemplar, doc["question"])
    assert "passage" not in task.fewshot_context(docs[0], 1)
    assert task.config.generation_kwargs["until"] == ["\n"] and task.config.generation_kwargs["max_gen_toks"] == 50
    if lang == "english":  # lm-eval's TydiQA F1 agrees with the squad metric the script uses, on English answers
        doc = next(d for d in docs if d["id"] == "english-9")
        for output in ("1889", " In 1889.", "the year 1889", "1890", "It was built in 1889"):
            ours = task.process_results(doc, [output])["f1"]
            assert ours == pytest.approx(_squad_f1(output.strip(), doc["answers"])), output


# ---- the suite ---------------------------------------------------------------------------------------------------


def test_table8_task_yamls_are_found_alone_and_draw_alike():
    # ours alone are found without reading lm-eval's own YAMLs; with lm-eval's, beside them
    ours = task_manager(None, ["tulu_bbh_direct", "tulu_tydiqa_cb", "tulu_gsm8k_direct"])
    assert ours.include_path == [TASKS_DIR] and "gsm8k_cot" not in ours.all_tasks
    leaves = sorted(n for n in ours.all_subtasks if n.startswith("tulu_bbh_direct_"))
    assert len(leaves) == 27
    # the direct and CoT settings of a BBH task draw the same problems
    sizes = {leaf: 250 for leaf in leaves[:3]}
    direct = protocol_samples(Protocol("bbh", 40, 42), "tulu_bbh_direct", sizes)
    cot = protocol_samples(Protocol("bbh", 40, 42), "bbh_cot_fewshot",
                           {leaf.replace("tulu_bbh_direct", "bbh_cot_fewshot"): 250 for leaf in sizes})
    assert list(direct.values()) == list(cot.values())
