"""Chat templates: exact wording, trained spans, and equality with independent renderings: open-instruct's
Tulu Jinja, FastChat's own conversation templates (fschat 0.2.36), Stanford Alpaca's and WizardLM's prompt
code (tests/helpers/upstream_code.py, verbatim)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instructjax.core.errors import ConfigError, DataError
from instructjax.data.encoding.templates import (
    jinja_template,
    render,
    render_prompt,
    template_names,
)
from instructjax.data.encoding.tokenizer import Tokenizer
from instructjax.data.schema import Conversation

# open-instruct's Tulu chat template (open_instruct/dataset_transformation.py, CHAT_TEMPLATES["tulu"]),
# written out here as the independent reference; contents are stripped as open-instruct's
# `_concat_messages` does before rendering.
OPEN_INSTRUCT_TULU_JINJA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}"
    "{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token + '\n' }}"
    "{% else %}"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}"
    "{{ '<|assistant|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
)


def open_instruct_concat_messages(messages, eos_token="</s>"):
    """open-instruct v1's `_concat_messages(...).strip()` (finetune.py), copied as a second reference."""
    text = ""
    for m in messages:
        if m["role"] == "system":
            text += "<|system|>\n" + m["content"].strip() + "\n"
        elif m["role"] == "user":
            text += "<|user|>\n" + m["content"].strip() + "\n"
        else:
            text += "<|assistant|>\n" + m["content"].strip() + eos_token + "\n"
    return text.strip()


from helpers.text_strategies import responses, texts  # noqa: E402  (tests/helpers/text_strategies.py)


@st.composite
def conversations(draw, with_system=None):
    messages = []
    if draw(st.booleans()) if with_system is None else with_system:
        messages.append({"role": "system", "content": draw(texts)})
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(texts)})
        messages.append({"role": "assistant", "content": draw(responses)})
    return Conversation(messages, source="test", id="t-0")


@pytest.fixture(scope="module")
def hf_tokenizer():
    return Tokenizer.load().to_hf()


def stripped(messages):
    return [{"role": m["role"], "content": m["content"].strip()} for m in messages]


HYPO = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@HYPO
@given(conv=conversations())
def test_tulu_matches_open_instruct(conv, hf_tokenizer):
    rendered = render(conv, "tulu")
    reference = hf_tokenizer.apply_chat_template(
        stripped(conv.messages), tokenize=False, chat_template=OPEN_INSTRUCT_TULU_JINJA
    )
    assert rendered.text == reference
    assert rendered.text == open_instruct_concat_messages(conv.messages)


@HYPO
@given(conv=conversations())
def test_trained_spans_are_each_response_and_its_eos(conv):
    """Each response and its EOS marker; Tulu also the "\\n" after a non-final marker (open-instruct trains
    it: `tests/data/test_encode.py::test_tulu_mask_equals_open_instructs_own_code`)."""
    responses = [m["content"].strip() + "</s>" for m in conv.messages if m["role"] == "assistant"]
    for name in template_names():
        separators = ["\n"] * (len(responses) - 1) + [""] if name == "tulu" else [""] * len(responses)
        r = render(conv, name)
        assert [r.text[a:b] for a, b in r.trained_spans] == [x + y for x, y in zip(responses, separators, strict=True)], name
        assert [(r.text[a:b], token) for a, b, token in r.specials] == [("</s>", "</s>")] * len(responses)
        assert [b - a for (_, b), (a, _, _) in zip(r.trained_spans, r.specials, strict=True)] == [
            4 + len(sep) for sep in separators
        ]


@HYPO
@given(conv=conversations())
def test_jinja_twins_render_the_same_text(conv, hf_tokenizer):
    for name in template_names():
        via_hf = hf_tokenizer.apply_chat_template(
            conv.messages, tokenize=False, chat_template=jinja_template(name)
        )
        assert via_hf == render(conv, name).text, name


@HYPO
@given(conv=conversations())
def test_generation_prompt_matches_jinja(conv, hf_tokenizer):
    prompt_messages = conv.messages[:-1]
    for name in template_names():
        via_hf = hf_tokenizer.apply_chat_template(
            prompt_messages, tokenize=False, add_generation_prompt=True, chat_template=jinja_template(name)
        )
        ours = render_prompt(prompt_messages, name)
        assert via_hf == ours, name
        # the prompt is exactly the training text up to where the last response starts
        full = render(conv, name)
        assert full.text[: full.trained_spans[-1][0]].rstrip(" ") == ours.rstrip(" ")


# ---- against FastChat's own templates (fschat 0.2.36) and the papers' own prompt code -----------------


@st.composite
def nonempty_conversations(draw):
    """As `conversations`, with non-empty user turns (FastChat renders an empty message as a missing one)."""
    messages = [{"role": "system", "content": draw(responses)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        messages += [{"role": "user", "content": draw(responses)}, {"role": "assistant", "content": draw(responses)}]
    return Conversation(messages, source="test", id="t-0")


def fastchat(name: str, messages: list[dict[str, str]], *, system_suffix: str = "", **fields) -> str:
    """FastChat's `get_conv_template(name)` (`fields` replaced) over stripped `messages` (a system turn is
    its system message, then `system_suffix`); a trailing user turn gets FastChat's empty assistant slot,
    i.e. the generation prompt."""
    from fastchat.conversation import get_conv_template

    conv = get_conv_template(name)
    for key, value in fields.items():
        setattr(conv, key, value)
    for m in stripped(messages):
        if m["role"] == "system":
            conv.set_system_message(m["content"] + system_suffix)
        else:
            conv.append_message(conv.roles[m["role"] == "assistant"], m["content"])
    if messages[-1]["role"] == "user":
        conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


@HYPO
@given(conv=nonempty_conversations())
def test_vicuna_is_fastchats_vicuna_v1_1(conv):
    assert render(conv, "vicuna").text == fastchat("vicuna_v1.1", conv.messages)
    assert render_prompt(conv.messages[:-1], "vicuna") == fastchat("vicuna_v1.1", conv.messages[:-1])


@HYPO
@given(conv=nonempty_conversations())
def test_alpaca_is_fastchats_dolly_style_with_the_eos_as_end_marker(conv):
    """Seed 002 prints the Stanford Alpaca prompt ("### Instruction:\\n{instruction}\\n\\n### Response:") and
    cites FastChat. FastChat's template with exactly that layout is `dolly_v2` (its DOLLY style, the same
    preamble, roles "### Instruction"/"### Response"); we end a response with EOS where it writes "### End".
    FastChat also appends "\\n\\n" after the last response; we end the sequence at its EOS."""
    ours = render(conv, "alpaca").text
    dolly = dict(sep2="</s>", system_suffix="\n\n")  # dolly_v2's system message is "{preamble}\n\n"
    assert ours + "\n\n" == fastchat("dolly_v2", conv.messages, **dolly)
    assert render_prompt(conv.messages[:-1], "alpaca") == fastchat("dolly_v2", conv.messages[:-1], **dolly)


def test_fastchats_alpaca_template_differs_from_the_papers_prompt():
    """FastChat's `alpaca` template puts the message after "### Instruction: " / "### Response: " on the same
    line and no separator after "</s>"; the paper's printed prompt (which we follow) has newlines."""
    conv = Conversation([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                         {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}], source="t", id="x")
    ours = render(conv, "alpaca").text
    assert ours.replace(":\n", ": ").replace("</s>\n\n", "</s>") == fastchat("alpaca", conv.messages)
    assert ours != fastchat("alpaca", conv.messages)


@pytest.fixture(scope="module")
def upstream():
    pytest.importorskip("torch")  # tests/helpers/upstream_code.py imports it (open-instruct's function needs it)
    from helpers import upstream_code

    return upstream_code


def test_alpaca_rows_are_stanford_alpacas_prompts_plus_a_newline(upstream):
    """With and without input, the prompt is Stanford Alpaca's own PROMPT_DICT (what seed 002 prints), then
    our newline after "### Response:" (Stanford Alpaca's code puts the response right after the colon)."""
    from helpers.pretrained_models import ALPACA_RESPONSE_SEPARATOR, ALPACA_ROWS

    assert ALPACA_RESPONSE_SEPARATOR == "\n"
    for row in ALPACA_ROWS:
        meta = {"instruction": row["instruction"], "input": row["input"]}
        conv = single(row["instruction"] + (f"\n\n{row['input']}" if row["input"] else ""), row["output"], meta)
        prompt = upstream.STANFORD_ALPACA_PROMPT_DICT["prompt_input" if row["input"] else "prompt_no_input"]
        assert render(conv, "alpaca").text == prompt.format_map(row) + "\n" + row["output"] + "</s>"


def test_wizardlm_is_xu_et_als_training_prompt_plus_a_newline(upstream):
    """FastChat 0.2.36 has no template with this prompt (its WizardLM adapter gives `vicuna_v1.1` for 13B+
    and `one_shot` otherwise); the reference is WizardLM's own train_freeform.py PROMPT_DICT, which seed 002
    uses. As for Alpaca, we add a newline after "### Response:"."""
    for instruction, output in [("Write a haiku.", "Leaves fall."), ("def f():\n    return x", "日本語 😀")]:
        prompt = upstream.WIZARDLM_PROMPT_DICT["prompt_no_input"].format_map({"instruction": instruction})
        assert render(single(instruction, output), "wizardlm").text == prompt + "\n" + output + "</s>"
        assert render_prompt([{"role": "user", "content": instruction}], "wizardlm") == prompt + "\n"


ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
    "\n\n### Instruction:\nName a color.\n\n### Response:\nBlue.</s>"
)
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
    "\n\n### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:\nBonjour</s>"
)


def single(user, assistant, meta=None, system=None):
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return Conversation(messages, source="test", id="x", meta=meta or {})


def test_alpaca_exact_wording():
    assert render(single("Name a color.", "Blue."), "alpaca").text == ALPACA_NO_INPUT
    meta = {"instruction": "Translate to French.", "input": "Good morning"}
    conv = single("Translate to French.\n\nGood morning", " Bonjour ", meta)
    r = render(conv, "alpaca")
    assert r.text == ALPACA_WITH_INPUT
    assert r.text[slice(*r.trained_spans[0])] == "Bonjour</s>"
    # meta instruction with an empty input falls back to the no-input prompt
    meta = {"instruction": "Name a color.", "input": ""}
    assert render(single("ignored", "Blue.", meta), "alpaca").text == ALPACA_NO_INPUT


def test_alpaca_multi_turn_and_system():
    conv = Conversation(
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
        ],
        source="test",
        id="x",
        meta={"instruction": "not used: multi-turn"},
    )
    assert render(conv, "alpaca").text == (
        "You are terse.\n\n### Instruction:\na\n\n### Response:\nb</s>"
        "\n\n### Instruction:\nc\n\n### Response:\nd</s>"
    )


def test_wizardlm_and_vicuna_exact_wording():
    assert render(single("Write a haiku.", "Leaves fall."), "wizardlm").text == (
        "Write a haiku.\n\n### Response:\nLeaves fall.</s>"
    )
    conv = Conversation(
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye."},
        ],
        source="test",
        id="x",
    )
    assert render(conv, "vicuna").text == (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions. "
        "USER: Hi ASSISTANT: Hello!</s>USER: Bye ASSISTANT: Goodbye.</s>"
    )
    assert render(single("q", "a", system="Sys."), "tulu").text == (
        "<|system|>\nSys.\n<|user|>\nq\n<|assistant|>\na</s>"
    )


def test_custom_eos_token():
    r = render(single("q", "a"), "tulu", eos_token="<|end_of_text|>")
    assert r.text.endswith("a<|end_of_text|>")
    assert r.text[slice(*r.trained_spans[0])] == "a<|end_of_text|>"


def test_bad_inputs_raise_one_clear_error():
    with pytest.raises(ConfigError, match="unknown chat template 'chatml'.*tulu"):
        render(single("q", "a"), "chatml")
    ends_on_user = Conversation([{"role": "user", "content": "q"}], source="s", id="row-7")
    with pytest.raises(DataError, match="row-7.*ends on a user turn"):
        render(ends_on_user, "tulu")
    with pytest.raises(DataError, match="empty"):
        render(single("q", "   "), "alpaca")
    with pytest.raises(DataError, match="end on a user turn"):
        render_prompt([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tulu")


def test_exported_tokenizer_carries_the_template(tmp_path):
    from transformers import AutoTokenizer

    Tokenizer.load().to_hf(chat_template=jinja_template("tulu")).save_pretrained(tmp_path)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    conv = single("What is 2+2?", "4", system="Be exact.")
    assert reloaded.apply_chat_template(conv.messages, tokenize=False) == render(conv, "tulu").text
    prompt = reloaded.apply_chat_template(conv.messages[:-1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nWhat is 2+2?\n<|assistant|>\n")
