"""Verifiable prompts (issue 69, items 1 and 2's data side): the `verifiable` source on local rows in allenai/RLVR-GSM's
schema, its bad rows, the built-in arithmetic sets, a verifiable task through `data stats` and seqio, and
`encode_prompt` against transformers' `apply_chat_template(add_generation_prompt=True)` and against the prompt part
of an encoded training conversation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from instructjax.cli import main
from instructjax.core.errors import DataError
from instructjax.data.blends import specs
from instructjax.data.encoding.encode import encode_conversation
from instructjax.data.encoding.prompt import encode_prompt
from instructjax.data.encoding.tokenizer import Tokenizer, default_tokenizer_path
from instructjax.data.schema import Conversation
from instructjax.data.sources.load import load_conversations
from instructjax.data.sources.registry import SOURCES, VERIFIABLE_SOURCES, get_source
from instructjax.data.sources.synthetic import synthetic_rows


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def s(text):
    return {"role": "system", "content": text}


# allenai/RLVR-GSM's schema (written by hand): the prompt's messages, the answer, the verifier's name
ROWS = [
    {"messages": [u("Natalia sold clips to 48 friends in April, and half as many in May. How many in all?")],
     "ground_truth": "72", "dataset": "gsm8k"},
    {"messages": [s("Answer briefly."), u("What is 6 * 7?"), a("42"), u("And 6 * 8?")], "ground_truth": "48",
     "dataset": "GSM8K"},
    {"messages": [u("Simplify $\\frac{2}{4}$.")], "ground_truth": "\\frac{1}{2}", "dataset": "MATH"},
]


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_rlvr_rows_are_prompts_with_their_ground_truth_and_verifier(tmp_path):
    assert get_source("verifiable") is VERIFIABLE_SOURCES["verifiable"]
    assert get_source("verifiable").hub_id == "allenai/RLVR-GSM" and "verifiable" not in SOURCES
    spec = specs.task("verifiable_builtin")
    assert spec.verifiable and not spec.preference and not specs.task("alpaca_builtin").verifiable
    convs = list(load_conversations("verifiable", [write_jsonl(tmp_path / "rlvr.jsonl", ROWS)]))
    assert [c.messages for c in convs] == [r["messages"] for r in ROWS]
    assert [c.meta["ground_truth"] for c in convs] == ["72", "48", "\\frac{1}{2}"]
    assert [c.meta["verifier"] for c in convs] == ["gsm8k", "gsm8k", "math"]  # lower-cased, as open-instruct
    assert [c.meta["prompt_turns"] for c in convs] == [1, 4, 1] and all(c.prompt_only for c in convs)
    # the system turn dropped or merged keeps the prompt a prompt
    assert convs[1].with_system_turn("drop").prompt_only and convs[1].with_system_turn("merge").validate()


@pytest.mark.parametrize("row, reason, words", [
    ({"messages": [u("1 + 1?")], "dataset": "gsm8k"}, "missing_field", "'ground_truth'"),
    ({"messages": [u("1 + 1?")], "ground_truth": None, "dataset": "gsm8k"}, "missing_field", "'ground_truth'"),
    ({"ground_truth": "2", "dataset": "gsm8k"}, "missing_field", "'messages'"),
    ({"messages": [u("1 + 1?"), a("2")], "ground_truth": "2", "dataset": "gsm8k"}, "role_order", "user turn"),
    ({"messages": [], "ground_truth": "2", "dataset": "gsm8k"}, "role_order", "user turn"),
    ({"messages": [a("Hi."), u("1 + 1?")], "ground_truth": "2", "dataset": "gsm8k"}, "role_order", "out of order"),
    ({"messages": [u("1 + 1?")], "ground_truth": "2", "dataset": "no_such_verifier"}, "unknown_verifier",
     "flan, gsm8k, ifeval, ifeval_old, math"),
])
def test_a_bad_row_is_one_data_error_naming_file_and_row(row, reason, words, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [ROWS[0], row])
    with pytest.raises(DataError) as err:
        list(load_conversations("verifiable", [path]))
    assert err.value.reason == reason and err.value.row == 2 and err.value.file == path
    assert words in str(err.value) and "\n" not in str(err.value)


def test_rlvr_ifeval_rows_read_with_remap_verifier_and_score_with_ifeval_old(tmp_path):
    """allenai/RLVR-IFeval's rows (a row as its dataset card shows it) name `ifeval` but hold if_functions' JSON
    constraints: refused with the way out (their ground truth is not IFEvalG's), read with `remap_verifier`, scored
    by `ifeval_old`; an IF_multi_constraints row (IFEvalG's ground truth) is read and scored as `ifeval`."""
    from instructjax.data.verifiers import verify

    truth = {"func_name": "validate_lowercase", "N": None, "quantifier": None, "end_phrase": None,
             "keyword_list": None, "word": None, "forbidden_words": None, "letter": None, "i": None,
             "first_word": None, "postscript_marker": None, "options": None, "section_splitter": None,
             "original_prompt": None}
    row = {"messages": [u("Describe IPv6. Your entire response should be in English, and in all lowercase letters.")],
           "ground_truth": json.dumps(truth), "dataset": "ifeval", "constraint_type": "All Lowercase"}
    path = write_jsonl(tmp_path / "ifeval.jsonl", [row])
    with pytest.raises(DataError, match="remap_verifier: ifeval=ifeval_old") as err:
        list(load_conversations("verifiable", [path]))
    assert err.value.reason == "bad_ground_truth" and err.value.row == 1 and "\n" not in str(err.value)
    (conv,) = load_conversations("verifiable", [path], remap_verifier="ifeval=ifeval_old")
    assert conv.meta["verifier"] == "ifeval_old"
    assert verify("ifeval_old", "ipv6 is the newest version.", conv.meta["ground_truth"]) == 1.0
    assert verify("ifeval_old", "IPv6 is the newest version.", conv.meta["ground_truth"]) == 0.0
    constraint = {"instruction_id": ["change_case:english_lowercase", "punctuation:no_comma"], "kwargs": [None, None]}
    multi = {**row, "ground_truth": str([json.dumps(constraint)])}
    import langdetect

    langdetect.DetectorFactory.seed = 0  # english_lowercase asks langdetect, which draws
    (conv,) = load_conversations("verifiable", [write_jsonl(tmp_path / "multi.jsonl", [multi])])
    assert conv.meta["verifier"] == "ifeval"
    assert verify("ifeval", "ipv6 is the newest version.", conv.meta["ground_truth"]) == 1.0
    assert verify("ifeval", "<think>Hm.</think>IPv6, the newest version.", conv.meta["ground_truth"]) == 0.0


def test_the_cli_refuses_a_bad_row_in_one_line_with_exit_2(tmp_path, capsys):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [u("1 + 1?")], "ground_truth": "2", "dataset": "nope"}])
    code = main(["data", "stats", "verifiable", "--data-files", path])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'nope'" in err and "gsm8k" in err, err


def test_a_prompt_validates_and_everything_else_is_still_refused():
    prompt = {"prompt_turns": 1}
    Conversation([u("Hi?")], "t", "x", prompt).validate()
    with pytest.raises(DataError, match="ends on a user turn"):  # not said to be a prompt
        Conversation([u("Hi?")], "t", "x").validate()
    with pytest.raises(DataError, match="not a user turn"):
        Conversation([u("Hi?"), a("Hello.")], "t", "x", {"prompt_turns": 2}).validate()
    with pytest.raises(DataError, match="out of order"):
        Conversation([u("Hi?"), u("Hi?")], "t", "x", {"prompt_turns": 2}).validate()
    with pytest.raises(DataError, match="assistant turn 1 is empty"):
        Conversation([u("Hi?"), a(" "), u("Hm?")], "t", "x", {"prompt_turns": 3}).validate()


def test_the_builtin_arithmetic_sets_differ_and_are_answered_right():
    prompts, chats = synthetic_rows("verifiable"), synthetic_rows("arithmetic")
    assert len(prompts) == 500 and len(chats) == 800
    asked = [r["messages"][0]["content"] for r in prompts]
    taught = [r["messages"][0]["content"] for r in chats]
    assert not set(asked) & set(taught) and len(set(asked)) == 500  # SFT and RL on different questions
    for row in prompts:
        x, op, y = re.fullmatch(r"What is (\d+) ([-+*]) (\d+)\? Give the answer as a number\.",
                                row["messages"][0]["content"]).groups()
        assert row["ground_truth"] == str({"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y)}[op])
        assert row["dataset"] == "gsm8k" and int(row["ground_truth"]) >= 0
    assert {r["messages"][0]["content"].split()[3] for r in prompts} == {"+", "-", "*"}
    for row in chats:
        x, op, y = re.search(r"(\d+) ([-+*]) (\d+)\?", row["messages"][0]["content"]).groups()
        want = {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y)}[op]
        assert row["messages"][1]["content"] == f"{x} {op} {y} = {want}. The answer is {want}."
    assert synthetic_rows("verifiable") == prompts  # seeded


def test_data_stats_says_a_verifiable_task_holds_prompts(capsys):
    code = main(["data", "stats", "verifiable_builtin", "--json"])
    (task,) = json.loads(capsys.readouterr().out)["tasks"]
    assert code == 0 and task["unit"] == "prompts" and task["instances"] == 500  # none dropped as untrainable
    assert task["trained_tokens"] == 0 and task["tokens"] > 500 * 10 and task["verifiers"] == {"gsm8k": 500}
    assert task["mean_completion_tokens"] == 0.0 and task["rows"]["untrainable"] == 0
    code = main(["data", "stats", "verifiable_builtin"])
    assert code == 0 and "500 prompt(s) (verifiable" in capsys.readouterr().out
    code = main(["data", "preview", "verifiable_builtin", "-n", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "(a prompt: verifier 'gsm8k', ground truth \"" in out and "kept out of training" not in out


def test_a_mixture_of_two_verifiable_tasks_through_seqio(tmp_path):
    """Both tasks registered as seqio Tasks and mixed in a seqio Mixture: every example is a prompt's
    `encode_prompt` ids, nothing trained, and the mixture holds each task's prompts."""
    import seqio

    from instructjax.data.seqio import mixtures
    from instructjax.data.seqio.tasks import register_task

    register_task("my_rlvr", specs.TaskSpec("verifiable", (write_jsonl(tmp_path / "rlvr.jsonl", ROWS),)))
    mixture = mixtures.register_epoch_mixture("rlvr_mix", {"my_rlvr": None, "verifiable_builtin": 20})
    assert isinstance(mixture, seqio.Mixture) and seqio.get_mixture_or_task("rlvr_mix") is mixture
    tok = Tokenizer.load(None)
    for name, count in (("my_rlvr", 3), ("verifiable_builtin", 500)):
        task = seqio.get_mixture_or_task(name)
        examples = list(task.get_dataset(sequence_length=None, split="train", shuffle=False).as_numpy_iterator())
        assert len(examples) == count
        for ex in examples[:5]:
            conv = Conversation.from_json(ex["conversation"].decode())
            assert ex["tokens"].tolist() == encode_prompt(conv, "tulu", tok) and ex["loss_mask"].sum() == 0


# ---- encode_prompt -------------------------------------------------------------------------------------------

FAMILIES = ("llama3", "qwen2.5", "qwen3", "gemma2", "phi3", "mistral")
NO_SYSTEM = ("gemma2", "mistral")  # their templates refuse a system turn


@pytest.fixture(scope="module")
def family_tokenizers(tmp_path_factory):
    import transformers
    from helpers.chat_templates import build

    root = tmp_path_factory.mktemp("chat_templates")
    return {name: (Tokenizer.load(path := build(name, root / name)), transformers.AutoTokenizer.from_pretrained(path))
            for name in FAMILIES}


@pytest.mark.parametrize("name", FAMILIES)
def test_model_template_prompt_equals_transformers_generation_prompt(family_tokenizers, name):
    ours, hf = family_tokenizers[name]
    for row in ROWS:
        messages = [m for m in row["messages"] if name not in NO_SYSTEM or m["role"] != "system"]
        got = encode_prompt(Conversation(messages, "t", "x"), "model", ours)
        want = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        want = want if isinstance(want, list) else list(want["input_ids"])
        assert got == want, name


@pytest.mark.parametrize("path", [None, "bpe"])
def test_tulu_prompt_is_the_training_encodings_part_before_the_reply(path, tmp_path):
    """The same conversation with an assistant reply, encoded for training: its ids up to where the reply's trained
    tokens begin are the prompt's ids (BOS handled alike)."""
    from helpers import pretrained_models as pm

    tok = Tokenizer.load(default_tokenizer_path() if path is None else pm.bpe_tokenizer(str(tmp_path)))
    for row in ROWS:
        conv = Conversation(row["messages"], "t", "x")
        whole = encode_conversation(Conversation([*row["messages"], a("The answer is 7.")], "t", "x"), "tulu", tok)
        ones = np.flatnonzero(whole.loss_mask)
        gaps = np.flatnonzero(np.diff(ones) > 1)
        start = int(ones[gaps[-1] + 1] if len(gaps) else ones[0])  # the final reply's first trained token
        got = encode_prompt(conv, "tulu", tok)
        assert got == whole.tokens[:start].tolist()
        assert (got[0] == tok.bos_id) == bool(tok.adds_bos)


def test_a_prompt_longer_than_the_row_is_left_out_and_counted(tmp_path):
    """Cut, a prompt would ask for something else: it is skipped (`prompt_over_max_length`), never truncated."""
    from instructjax.data.tokenized import examples as examples_lib

    tok = Tokenizer.load(None)
    lengths = [len(encode_prompt(Conversation(r["messages"], "t", "x"), "tulu", tok)) for r in ROWS]
    limit = sorted(lengths)[1]  # the two shortest fit
    specs.add_task("rlvr_short", specs.TaskSpec("verifiable", (write_jsonl(tmp_path / "r.jsonl", ROWS),),
                                                max_length=limit))
    kept = examples_lib.encoded_examples("rlvr_short")
    assert sorted(len(e["tokens"]) for e in kept) == sorted(lengths)[:2]
    report = examples_lib.task_report("rlvr_short")
    assert report.skipped == {"prompt_over_max_length": 1} and report.truncated == 0
