"""The model's own chat template (`template: model`): the tokenizer's Jinja `chat_template`, rendered as
transformers renders it, into the `Rendered` the built-in templates give (text, trained spans, special tokens).

- **Rendering**: a sandboxed Jinja environment with transformers' settings (`trim_blocks`, `lstrip_blocks`,
  loop controls, its `tojson`, `raise_exception`, `strftime_now`) and the tokenizer's special tokens as
  variables (`bos_token`, `eos_token`, ...). `{% generation %}` blocks are marked where they render.
- **Special tokens**: the template's own special tokens (`<|im_start|>`, `<start_of_turn>`, `<|eot_id|>`,
  BOS, ...: every added token of the tokenizer) become the model's ids, as `apply_chat_template(tokenize=True)`
  gives them (with the whitespace a token strips, Phi-3's `<|end|>\\n`), while the same text typed inside a
  message stays text. The template is rendered a second time with each message's content replaced by a
  placeholder: where the placeholders fall is where the messages are, and the real text around them must be
  the template's own (a message may come out verbatim or trimmed, as templates write it; anything else is
  one error naming the conversation).
- **The loss mask**: where the template has `{% generation %}`, its blocks (transformers'
  `return_assistant_tokens_mask`). Otherwise each reply of the conversation as the template renders it whole,
  as open-instruct and LLaMA-Factory derive it by prefix rendering: from the end of the conversation before it
  with the generation prompt (where that render is the start of the whole text; where it is not, as in Qwen3,
  whose earlier replies render otherwise once later turns follow, from the end of the generation prompt's last
  appearance before the reply) through what the template writes after the reply when it is the last turn, as
  far as the whole text agrees, never ending inside a special token (a template that closes a render, as Phi-3's
  `{{ eos_token }}` after the last turn, trains that closing after the last turn only). Qwen3's empty
  `<think>` block before its last reply is the model's to write, and trained.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import datetime

from instructjax.core.errors import ConfigError, DataError
from instructjax.data.encoding.templates import Rendered
from instructjax.data.encoding.tokenizer import Tokenizer
from instructjax.data.schema import Conversation

OPEN, CLOSE = "\ue000", "\ue001"  # where a {% generation %} block's output starts and ends
PLACEHOLDER = "\ue002{}\ue003"  # message i's content in the structure render
_PLACEHOLDER = re.compile("\ue002(\\d+)\ue003")
_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


def _tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise(message: str):
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


@functools.lru_cache(maxsize=16)
def _compiled(source: str):
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

        def _mark(self, caller) -> str:
            return OPEN + caller() + CLOSE

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.TemplateError as e:
        raise ConfigError(f"template 'model': the tokenizer's chat_template does not compile ({e})") from None


def check_compiles(source: str, *, where: str) -> None:
    """One ConfigError line naming `where` when chat template `source` does not compile."""
    try:
        _compiled(source)
    except ConfigError as e:
        detail = str(e).removeprefix("template 'model': the tokenizer's ")
        raise ConfigError(f"{where}: {detail}") from None


def _source(tokenizer: Tokenizer) -> str:
    if not tokenizer.chat_template:
        raise ConfigError(f"template 'model': {tokenizer.words} has no chat_template of its own")
    return tokenizer.chat_template


def render_text(messages: list[dict], tokenizer: Tokenizer, add_generation_prompt: bool = False,
                where: str = "", source: str | None = None) -> tuple[str, list[tuple[int, int]]]:
    """(text, the `{% generation %}` spans in it) of `messages` by the tokenizer's chat template (or `source`)."""
    import jinja2

    names = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token, "unk_token": tokenizer.unk_token,
             "pad_token": tokenizer.pad_token}
    try:
        marked = _compiled(source or _source(tokenizer)).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            **{k: v for k, v in names.items() if v is not None})
    except jinja2.TemplateError as e:
        raise DataError(f"template 'model' refuses {where or 'the conversation'}: {e}", reason="template") from None
    text, spans, start = [], [], None
    length = 0
    for piece in re.split(f"([{OPEN}{CLOSE}])", marked):
        if piece == OPEN:
            start = length
        elif piece == CLOSE:
            spans.append((start, length))
        else:
            text.append(piece)
            length += len(piece)
    return "".join(text), [s for s in spans if s[1] > s[0]]


def _content_spans(text: str, structure: str, contents: list[str]) -> list[tuple[int, int]] | None:
    """Where each placeholder of `structure` lies in `text` (the message it stands for, verbatim or trimmed),
    with everything around them equal; None when they cannot be aligned."""
    parts = _PLACEHOLDER.split(structure)  # [template, index, template, index, ..., template]
    if not text.startswith(parts[0]):
        return None
    pos, spans = len(parts[0]), []
    for k in range(1, len(parts), 2):
        content, after, last = contents[int(parts[k])], parts[k + 1], k + 2 == len(parts)
        for form in dict.fromkeys((content, content.strip(), content.lstrip(), content.rstrip())):
            end = pos + len(form)
            if text.startswith(form, pos) and text.startswith(after, end) and (not last or end + len(after) == len(text)):
                break
        else:
            return None
        spans.append((pos, end))
        pos = end + len(after)
    return spans


def _specials(text: str, contents: list[tuple[int, int]], tokenizer: Tokenizer) -> list[tuple[int, int, str]]:
    """The added tokens in the template's own text (outside every message), with the whitespace each strips on
    its left or right (into a message too, as the tokenizer strips it there)."""
    tokens = tokenizer.added_tokens
    if not tokens:
        return []
    pattern = re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))
    regions, pos = [], 0
    for a, b in sorted(contents):
        regions.append((pos, a))
        pos = max(pos, b)
    regions.append((pos, len(text)))
    found = [m for a, b in regions for m in pattern.finditer(text, a, b)]
    out = []
    for k, match in enumerate(found):
        start, end = match.span()
        lstrip, rstrip = tokens[match.group()]
        floor = out[-1][1] if out else 0
        ceiling = found[k + 1].start() if k + 1 < len(found) else len(text)
        while lstrip and start > floor and text[start - 1].isspace():
            start -= 1
        while rstrip and end < ceiling and text[end].isspace():
            end += 1
        out.append((start, end, match.group()))
    return out


def _turn_spans(messages: list[dict], text: str, contents: list[tuple[int, int]], specials: list[tuple[int, int, str]],
                tokenizer: Tokenizer, where: str) -> list[tuple[int, int]]:
    """Each assistant reply's trained span in the whole conversation's `text` (see the module doc): from the end of the
    generation prompt before it to the end of what the template writes after it when it is the last turn, as far
    as `text` agrees, never ending inside one of `text`'s special tokens."""
    spans, reply = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        reply += 1
        (c0, c1), floor = contents[i], contents[i - 1][1] if i else 0
        before, _ = render_text(messages[:i], tokenizer, add_generation_prompt=True, where=where)
        if text.startswith(before) and len(before) <= c0:  # the turns before render as a prefix of the whole
            start = len(before)
        else:  # earlier turns render otherwise once later ones follow (Qwen3): find the generation prompt
            plain, _ = render_text(messages[:i], tokenizer, where=where)
            prompt = before[len(plain):] if before.startswith(plain) else ""
            found = text.rfind(prompt, floor, c0) if prompt else -1
            start = found + len(prompt) if found >= 0 else c0
        upto, _ = render_text(messages[: i + 1], tokenizer, where=where)
        structure, _ = render_text([{**m, "content": PLACEHOLDER.format(k)} for k, m in enumerate(messages[: i + 1])],
                                   tokenizer, where=where)
        alone = _content_spans(upto, structure, [m["content"] for m in messages[: i + 1]])
        tail = upto[alone[-1][1]:] if alone else ""
        agree = next((k for k, (x, y) in enumerate(zip(tail, text[c1:], strict=False)) if x != y),
                     min(len(tail), len(text) - c1))
        end = c1 + agree
        end = next((a for a, b, _ in specials if a < end < b), end)
        if end <= start:
            raise DataError(f"template 'model': {where}: assistant reply {reply} (message {i + 1}) cannot be told apart "
                            "from the template's text; give the template {% generation %} blocks", reason="template")
        spans.append((start, end))
    return spans


_PROBE = "\ue004reply\ue005"  # an assistant reply no template writes itself


def turn_end_token(tokenizer: Tokenizer, source: str) -> str | None:
    """The special token chat template `source` closes an assistant reply with (Qwen's `<|im_end|>`, Gemma's
    `<end_of_turn>`, Phi-3's `<|end|>`, Llama-3's `<|eot_id|>`): the first of the tokenizer's added tokens after a
    reply; None where the template writes none there or refuses the probe."""
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": _PROBE}]
    try:
        text, _ = render_text(messages, tokenizer, source=source)
    except (DataError, ConfigError):
        return None
    tail = text.split(_PROBE, 1)[-1].lstrip()
    return next((t for t in sorted(tokenizer.added_tokens, key=len, reverse=True) if tail.startswith(t)), None)


def render_model(conv: Conversation, tokenizer: Tokenizer) -> Rendered:
    """`conv` rendered by the tokenizer's own chat template: text, trained spans, the template's special tokens."""
    conv.validate()
    where = f"conversation {conv.id!r}"
    messages = [{"role": m["role"], "content": m["content"]} for m in conv.messages]
    text, generation = render_text(messages, tokenizer, where=where)
    structure, _ = render_text([{**m, "content": PLACEHOLDER.format(i)} for i, m in enumerate(messages)], tokenizer,
                               where=where)
    contents = _content_spans(text, structure, [m["content"] for m in messages])
    if contents is None:
        raise DataError(f"template 'model': {where}: the rendered text cannot be aligned with its messages (the "
                        "template changes a message beyond trimming it)", reason="template")
    specials = _specials(text, contents, tokenizer)
    if _GENERATION.search(_source(tokenizer)):
        trained = generation
    else:
        trained = _turn_spans(messages, text, contents, specials, tokenizer, where)
    return Rendered(text, trained, specials, adds_bos=False)


def render_model_prompt(conv: Conversation, tokenizer: Tokenizer) -> Rendered:
    """A prompt (messages ending on a user turn) rendered by the tokenizer's own chat template with
    `add_generation_prompt=True`: its text, its special tokens, no trained span."""
    where = f"prompt {conv.id!r}"
    messages = [{"role": m["role"], "content": m["content"]} for m in conv.messages]
    text, _ = render_text(messages, tokenizer, add_generation_prompt=True, where=where)
    structure, _ = render_text([{**m, "content": PLACEHOLDER.format(i)} for i, m in enumerate(messages)], tokenizer,
                               add_generation_prompt=True, where=where)
    contents = _content_spans(text, structure, [m["content"] for m in messages])
    if contents is None:
        raise DataError(f"template 'model': {where}: the rendered text cannot be aligned with its messages (the "
                        "template changes a message beyond trimming it)", reason="template")
    return Rendered(text, [], _specials(text, contents, tokenizer), adds_bos=False)
