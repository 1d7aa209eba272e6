# Derived from FastChat (https://github.com/lm-sys/FastChat), the FastChat authors (LMSYS), Apache-2.0.
# Modified for instructjax. See NOTICE.

"""Chat templates: a Conversation -> one training text plus the character spans that are trained.

Four templates, registered by name (message contents are stripped of surrounding whitespace in all):

- "tulu": open-instruct's Tulu format (seed 004)::

      <|system|>\\n{system}\\n<|user|>\\n{user}\\n<|assistant|>\\n{assistant}</s>\\n<|user|>\\n...

  with no newline after the final end-of-sequence marker.
- "alpaca": the Alpaca/FastChat prompt of seed 002 (appendix C), with and without input::

      {preamble}\\n\\n### Instruction:\\n{instruction}\\n\\n[### Input:\\n{input}\\n\\n]### Response:\\n{response}</s>

  A single-turn conversation takes `meta["instruction"]` / `meta["input"]` when present, else the user
  message is the instruction. Multi-turn: each further turn appends
  "\\n\\n### Instruction:\\n{user}\\n\\n### Response:\\n{assistant}</s>". A system turn replaces the preamble.
- "wizardlm": WizardLM's prompt "{instruction}\\n\\n### Response:\\n{response}</s>"; further turns are
  separated by "\\n\\n"; a system turn is put first, followed by "\\n\\n".
- "vicuna": FastChat's Vicuna v1.1: "{system} USER: {user} ASSISTANT: {assistant}</s>USER: ...".

The Alpaca prompt is the one seed 002 prints (Stanford Alpaca's); FastChat's template with that layout is
`dolly_v2`, whose "### End" we replace by EOS. FastChat's own `alpaca` template differs (message on the
"### Instruction: " line, nothing after "</s>"). We put a newline after "### Response:" as FastChat's
`dolly_v2` does; Stanford Alpaca's and WizardLM's training code put the response right after the colon.

The trained spans cover each assistant turn's content and the end-of-sequence marker right after it,
never a role marker. Tulu also trains the "\\n" after a non-final marker, as open-instruct's
`encode_with_messages_format` does (it masks only the non-assistant messages, and that newline ends the
assistant message's text); the other templates train no separator. `Rendered.eos_offsets` says where
the markers were inserted, so a tokenizer can put the real EOS id there rather than tokenizing the
marker's text.
Each template also has a Jinja twin (`jinja_template(name)`) for the exported HF tokenizer; on
conversations without meta it renders the same text through `apply_chat_template`, and it wraps the
trained spans in `{% generation %}` ... `{% endgeneration %}`, so that
`apply_chat_template(..., return_assistant_tokens_mask=True)` (TRL's assistant-only loss) marks them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from instructjax.core.context import current
from instructjax.core.errors import ConfigError, DataError
from instructjax.data.schema import Conversation

DEFAULT_TEMPLATE = "tulu"
MODEL_TEMPLATE = "model"  # the model's own chat template: the tokenizer's `chat_template`
PROMPT = "prompt"
RESPONSE = "response"
EOS = "eos"

ALPACA_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
ALPACA_PREAMBLE_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

Piece = tuple[str, str]  # (text, PROMPT | RESPONSE | EOS); RESPONSE and EOS are trained; EOS holds the marker


@dataclass(frozen=True)
class Rendered:
    """A rendered conversation: `text`, the trained `[start, end)` character spans, and the template's special
    tokens, `(start, end, token)` each: the characters `[start, end)` of the text are the special token
    `token` (its id, never its text's pieces; the range may take in whitespace the token strips). `adds_bos`:
    whether the tokenizer's BOS goes first (where the tokenizer adds one); False where the template writes
    its own."""

    text: str
    trained_spans: list[tuple[int, int]]
    specials: list[tuple[int, int, str]] = field(default_factory=list)
    adds_bos: bool = True


@dataclass(frozen=True)
class ChatTemplate:
    """A named template: `pieces(messages, meta, eos)` -> text pieces; the prompt that asks for a reply."""

    name: str
    pieces: Callable[[list[dict[str, str]], dict[str, Any], str], list[Piece]]
    generation_prompt: str
    jinja: str


def register_template(template: ChatTemplate) -> ChatTemplate:
    """Add your own template to the built-in ones (`_TEMPLATES`, at the end of this module; a name can be
    registered once), in the current context (`core.context`: a module a config imports registers for the process)."""
    if template.name in _TEMPLATES or _registered(template.name) is not None:
        raise ConfigError(f"chat template {template.name!r} is already registered")
    current().tables("data.templates")[0][template.name] = template
    return template


def _registered(name: str) -> ChatTemplate | None:
    return next((t[name] for t in current().tables("data.templates") if name in t), None)


def template_names() -> list[str]:
    """Names of all registered templates (the built-in ones and yours; "model", the tokenizer's own, besides)."""
    return sorted({*_TEMPLATES, *(n for table in current().tables("data.templates") for n in table)})


def get_template(template: str | ChatTemplate) -> ChatTemplate:
    """The template registered under `template` (a ChatTemplate passes through)."""
    if isinstance(template, ChatTemplate):
        return template
    if template == MODEL_TEMPLATE:
        return MODEL
    found = _TEMPLATES.get(template) or _registered(template)
    if found is None:
        raise ConfigError(f"unknown chat template {template!r}; known: {', '.join(template_names())}, or "
                          f"{MODEL_TEMPLATE!r} (the model's own)")
    return found


def jinja_template(name: str, *, bos: bool = False, own: str | None = None) -> str:
    """The Jinja chat template (for HF `apply_chat_template`) equivalent to template `name`; with `bos`
    it starts with `{{ bos_token }}` (for a tokenizer that adds BOS: `apply_chat_template(tokenize=True)`
    adds no special tokens of its own, so the template must). The "model" template is the tokenizer's own,
    `own`, as it is."""
    if name == MODEL_TEMPLATE:
        if not own:
            raise ConfigError(f"template 'model': the tokenizer has no chat_template of its own; name one of "
                              f"{', '.join(template_names())}")
        return own
    return ("{{ bos_token }}" if bos else "") + get_template(name).jinja


def render(conv: Conversation, template: str | ChatTemplate, eos_token: str = "</s>") -> Rendered:
    """Render a (validated) conversation into training text and its trained character spans."""
    conv.validate()
    pieces = get_template(template).pieces(conv.messages, conv.meta, eos_token)
    text_parts: list[str] = []
    spans: list[tuple[int, int]] = []
    specials: list[tuple[int, int, str]] = []
    pos = 0
    for text, kind in pieces:
        if kind == EOS:
            specials.append((pos, pos + len(text), text))
        if kind in (RESPONSE, EOS) and text:
            if spans and spans[-1][1] == pos:
                spans[-1] = (spans[-1][0], pos + len(text))
            else:
                spans.append((pos, pos + len(text)))
        text_parts.append(text)
        pos += len(text)
    return Rendered("".join(text_parts), spans, specials)


def render_prompt(
    messages: list[dict[str, str]], template: str | ChatTemplate, eos_token: str = "</s>"
) -> str:
    """The text that asks the model for the next assistant turn (messages end on a user turn)."""
    if not messages or messages[-1].get("role") != "user":
        raise DataError("a generation prompt needs messages that end on a user turn", reason="role_order")
    tpl = get_template(template)
    return "".join(text for text, _ in tpl.pieces(messages, {}, eos_token)) + tpl.generation_prompt


def _split_system(messages: list[dict[str, str]]) -> tuple[str | None, list[dict[str, str]]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"].strip(), messages[1:]
    return None, messages


# ---- tulu -------------------------------------------------------------------------------------------


def _tulu_pieces(messages, meta, eos):
    out: list[Piece] = []
    for i, m in enumerate(messages):
        content = m["content"].strip()
        if m["role"] == "assistant":
            out += [("<|assistant|>\n", PROMPT), (content, RESPONSE), (eos, EOS)]
            if i < len(messages) - 1:
                out.append(("\n", RESPONSE))  # trained: open-instruct masks only non-assistant messages
        else:
            out.append((f"<|{m['role']}|>\n{content}\n", PROMPT))
    return out


_TULU_JINJA = (
    r"{%- for message in messages -%}"
    r"{%- if message['role'] == 'system' -%}{{ '<|system|>\n' + (message['content'] | trim) + '\n' }}"
    r"{%- elif message['role'] == 'user' -%}{{ '<|user|>\n' + (message['content'] | trim) + '\n' }}"
    r"{%- elif message['role'] == 'assistant' -%}"
    r"{{ '<|assistant|>\n' }}{%- generation -%}{{ (message['content'] | trim) + eos_token }}"
    r"{%- if not loop.last -%}{{ '\n' }}{%- endif -%}{%- endgeneration -%}"
    r"{%- endif -%}"
    r"{%- endfor -%}"
    r"{%- if add_generation_prompt -%}{{ '<|assistant|>\n' }}{%- endif -%}"
)

# ---- alpaca -----------------------------------------------------------------------------------------


def _alpaca_pieces(messages, meta, eos):
    system, turns = _split_system(messages)
    single_turn = sum(m["role"] == "assistant" for m in turns) <= 1
    instruction_input = None
    if single_turn and meta.get("instruction"):
        instruction_input = (str(meta["instruction"]).strip(), str(meta.get("input") or "").strip())
    preamble = system
    if preamble is None:
        preamble = (
            ALPACA_PREAMBLE_WITH_INPUT if instruction_input and instruction_input[1] else ALPACA_PREAMBLE
        )
    out: list[Piece] = [(preamble, PROMPT)]
    for m in turns:
        content = m["content"].strip()
        if m["role"] == "user":
            if instruction_input:
                instruction, inp = instruction_input
                text = f"\n\n### Instruction:\n{instruction}" + (f"\n\n### Input:\n{inp}" if inp else "")
            else:
                text = f"\n\n### Instruction:\n{content}"
            out.append((text, PROMPT))
        else:
            out += [("\n\n### Response:\n", PROMPT), (content, RESPONSE), (eos, EOS)]
    return out


_ALPACA_JINJA = (
    r"{%- if messages[0]['role'] == 'system' -%}{{ messages[0]['content'] | trim }}"
    r"{%- else -%}{{ '" + ALPACA_PREAMBLE + r"' }}{%- endif -%}"
    r"{%- for message in messages -%}"
    r"{%- if message['role'] == 'user' -%}{{ '\n\n### Instruction:\n' + (message['content'] | trim) }}"
    r"{%- elif message['role'] == 'assistant' -%}"
    r"{{ '\n\n### Response:\n' }}{%- generation -%}{{ (message['content'] | trim) + eos_token }}{%- endgeneration -%}"
    r"{%- endif -%}"
    r"{%- endfor -%}"
    r"{%- if add_generation_prompt -%}{{ '\n\n### Response:\n' }}{%- endif -%}"
)

# ---- wizardlm ---------------------------------------------------------------------------------------


def _wizardlm_pieces(messages, meta, eos):
    system, turns = _split_system(messages)
    out: list[Piece] = [(system + "\n\n", PROMPT)] if system is not None else []
    for i, m in enumerate(turns):
        content = m["content"].strip()
        if m["role"] == "user":
            out.append((("\n\n" if i else "") + content, PROMPT))
        else:
            out += [("\n\n### Response:\n", PROMPT), (content, RESPONSE), (eos, EOS)]
    return out


_WIZARDLM_JINJA = (
    r"{%- set ns = namespace(first=true) -%}"
    r"{%- for message in messages -%}"
    r"{%- if message['role'] == 'system' -%}{{ (message['content'] | trim) + '\n\n' }}"
    r"{%- elif message['role'] == 'user' -%}"
    r"{%- if not ns.first -%}{{ '\n\n' }}{%- endif -%}{{ message['content'] | trim }}{%- set ns.first = false -%}"
    r"{%- elif message['role'] == 'assistant' -%}"
    r"{{ '\n\n### Response:\n' }}{%- generation -%}{{ (message['content'] | trim) + eos_token }}{%- endgeneration -%}"
    r"{%- endif -%}"
    r"{%- endfor -%}"
    r"{%- if add_generation_prompt -%}{{ '\n\n### Response:\n' }}{%- endif -%}"
)

# ---- vicuna -----------------------------------------------------------------------------------------


def _vicuna_pieces(messages, meta, eos):
    system, turns = _split_system(messages)
    out: list[Piece] = [((VICUNA_SYSTEM if system is None else system) + " ", PROMPT)]
    for m in turns:
        content = m["content"].strip()
        if m["role"] == "user":
            out.append((f"USER: {content} ", PROMPT))
        else:
            out += [("ASSISTANT: ", PROMPT), (content, RESPONSE), (eos, EOS)]
    return out


_VICUNA_JINJA = (
    r"{%- if messages[0]['role'] == 'system' -%}{{ (messages[0]['content'] | trim) + ' ' }}"
    r"{%- else -%}{{ '" + VICUNA_SYSTEM.replace("'", r"\'") + r" ' }}{%- endif -%}"
    r"{%- for message in messages -%}"
    r"{%- if message['role'] == 'user' -%}{{ 'USER: ' + (message['content'] | trim) + ' ' }}"
    r"{%- elif message['role'] == 'assistant' -%}{{ 'ASSISTANT: ' }}"
    r"{%- generation -%}{{ (message['content'] | trim) + eos_token }}{%- endgeneration -%}"
    r"{%- endif -%}"
    r"{%- endfor -%}"
    r"{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

def _model_pieces(messages, meta, eos):
    raise ConfigError("the 'model' chat template renders with the model's tokenizer "
                      "(instructjax.data.encoding.model_template)")


# The built-in templates by name, declared (`register_template` adds yours)
_TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in (
    ChatTemplate("tulu", _tulu_pieces, "<|assistant|>\n", _TULU_JINJA),
    ChatTemplate("alpaca", _alpaca_pieces, "\n\n### Response:\n", _ALPACA_JINJA),
    ChatTemplate("wizardlm", _wizardlm_pieces, "\n\n### Response:\n", _WIZARDLM_JINJA),
    ChatTemplate("vicuna", _vicuna_pieces, "ASSISTANT:", _VICUNA_JINJA),
)}
MODEL = ChatTemplate(MODEL_TEMPLATE, _model_pieces, "", "")  # not among template_names(): it needs a tokenizer
