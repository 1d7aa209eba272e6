# Derived from open-instruct (https://github.com/allenai/open-instruct), Copyright 2024 AllenAI, Apache-2.0.
# Modified for instructjax. See NOTICE.

"""One request of the Tulu suite: the prompt a reference script sends, in the chat format the model takes.

Each of open-instruct's scripts builds a prompt two ways (`--use_chat_format` or not): a `Turn` holds both, the
user turn, what the script writes after `<|assistant|>\n` (MMLU's "The answer is:", GSM's "Answer:"), and the raw
prompt. `format_prompt` picks one by chat format:

- `tulu`: `<|user|>\n{user}\n<|assistant|>\n{reply_start}`, the format the paper's tuned models were trained in;
- `model`: the model's own chat template for the user turn (with its generation prompt), then `reply_start`, after a
  space where the template does not end in whitespace (open-instruct's later scripts, which added this format);
- `none`: the raw prompt (the paper's vanilla LLaMA models: submit_eval_jobs.py drops --use_chat_format for them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from instructjax.core.errors import ConfigError

CHAT_FORMATS = ("tulu", "model", "none")


@dataclass(frozen=True)
class Turn:
    user: str  # exactly what the script puts between "<|user|>\n" and "\n<|assistant|>\n"
    reply_start: str  # what it writes after "<|assistant|>\n"
    raw: str  # its prompt without --use_chat_format


def format_prompt(turn: Turn, chat_format: str, hf_tokenizer=None) -> str:
    """The prompt of `turn` in `chat_format` (`model`: `hf_tokenizer`'s chat template)."""
    if chat_format == "tulu":
        return "<|user|>\n" + turn.user + "\n<|assistant|>\n" + turn.reply_start
    if chat_format == "model":
        if not getattr(hf_tokenizer, "chat_template", None):
            raise ConfigError("chat format 'model': the model carries no chat template (give --chat-format tulu "
                              "or none)")
        head = hf_tokenizer.apply_chat_template([{"role": "user", "content": turn.user}], tokenize=False,
                                                add_generation_prompt=True)
        # open-instruct's later scripts, which brought model templates (eval/*/run_eval.py at d05effeb4, e.g.
        # gsm L73: `prompt += "Answer:" if prompt[-1] in ["\n", " "] else " Answer:"`)
        return head + (turn.reply_start if head[-1:] in ("\n", " ") else " " + turn.reply_start)
    if chat_format == "none":
        return turn.raw
    raise ValueError(f"chat format must be one of {CHAT_FORMATS}, got {chat_format!r}")


@dataclass(frozen=True)
class Request:
    """What the suite asks the model: a completion of `prompt` (greedy unless `temperature`, cut at the first
    `stop`, at most `max_new_tokens`), or, with `continuations`, which of them the next token is most likely to
    start. `target` is what the answer is scored against; `group` the unit a score is averaged within (a
    subject, a task, a language)."""

    protocol: str
    id: str
    prompt: str
    stop: tuple[str, ...] = ()
    max_new_tokens: int = 0
    continuations: tuple[str, ...] = ()
    target: Any = field(default=None, compare=False)
    group: str = ""
    temperature: float = 0.0
    top_p: float = 1.0
    samples: int = 1

    def record(self) -> dict:
        """The request as requests.jsonl writes it."""
        if self.continuations:
            return {"protocol": self.protocol, "id": self.id, "prompt": self.prompt,
                    "continuations": list(self.continuations)}
        out = {"protocol": self.protocol, "id": self.id, "prompt": self.prompt, "stop": list(self.stop),
               "max_new_tokens": self.max_new_tokens}
        if self.temperature:
            out.update(temperature=self.temperature, top_p=self.top_p, samples=self.samples)
        return out
