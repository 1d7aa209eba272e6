"""A prompt -> the token ids that ask the model for the next assistant turn (a verifiable prompt's, RL's rollouts
start from them): what `templates.render_prompt` renders (the generation prompt after the turns), or the model's own
template with `add_generation_prompt=True`, tokenized as `encode` tokenizes a training example (BOS the same, the
template's special tokens as their ids). No token is trained: the loss mask is all 0."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from instructjax.data.encoding.encode import Encoded, Segments, encode_rendered
from instructjax.data.encoding.model_template import render_model_prompt
from instructjax.data.encoding.templates import MODEL_TEMPLATE, ChatTemplate, Rendered, get_template, render
from instructjax.data.encoding.tokenizer import Tokenizer
from instructjax.data.schema import Conversation


def _as_prompt(conv: Conversation) -> Conversation:
    """`conv` checked to be a prompt (its turns in order, the last a user turn)."""
    prompt = Conversation(conv.messages, conv.source, conv.id, {"prompt_turns": len(conv.messages)})
    return prompt.validate(prompt_only=True)


def prompt_rendered(conv: Conversation, template: str | ChatTemplate, tokenizer: Tokenizer) -> Rendered:
    """The prompt's text with the generation prompt after it, its special tokens, no trained span."""
    prompt = _as_prompt(conv)
    if getattr(template, "name", template) != MODEL_TEMPLATE:
        rendered = render(prompt, template, eos_token=tokenizer.eos_token)
        return replace(rendered, text=rendered.text + get_template(template).generation_prompt, trained_spans=[])
    return render_model_prompt(prompt, tokenizer)


def encode_prompts(convs: Sequence[Conversation], template: str | ChatTemplate, tokenizer: Tokenizer,
                   max_length: int | None = None, segments: Segments | None = None) -> list[Encoded]:
    """Each prompt's ids (`encode_prompt`) as an Encoded example with no trained token, as one batch; `truncated` is
    set where the prompt is longer than `max_length` (its first `max_length` ids kept: a caller leaves it out)."""
    return encode_rendered([prompt_rendered(c, template, tokenizer) for c in convs], tokenizer, max_length, segments)


def encode_prompt(conversation: Conversation, template: str | ChatTemplate, tokenizer: Tokenizer) -> list[int]:
    """The ids that ask the model for the next assistant turn after `conversation` (its messages end on a user
    turn): the generation prompt rendered by `template` ("model": the tokenizer's own), tokenized as `encode`
    tokenizes a training example."""
    return encode_prompts([conversation], template, tokenizer)[0].tokens.tolist()
