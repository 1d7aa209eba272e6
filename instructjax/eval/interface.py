"""The one interface every evaluation protocol calls, and every engine implements.

An engine answers two kinds of request:

- **generation**: `generate(prompts, sampling, until)`: prompts (text, tokenized with the tokenizer's BOS, or token
  ids as they are) -> one completion text each. A completion stops at the engine's `stop_ids` (EOS and the chat
  template's end of turn: `eval.generate.turn_end_ids`), after `sampling.max_new_tokens` new tokens, and is cut
  before the first of the `until` strings; special tokens are left out of the text. `chat(conversations,
  sampling)` is the next assistant turn of each conversation (the chat template's prompt, `encode_chat`), stripped.
  Greedy when `sampling.temperature` is 0; otherwise prompt i of a call draws from its own key,
  `fold_in(key(sampling.seed), i)`, so a seed gives the same completions whatever order they are run in.
- **log-likelihood**: `score(sequences)` -> `TokenScores` per token-id sequence (log p of every token after the
  first, and whether it was the argmax); `next_token_logprobs(sequences, candidates)` -> [n, len(candidates)],
  the next token's log-probabilities over the candidates alone (softmax over their logits: MMLU's answer letter).

`tokenizer` is the HF tokenizer (with the chat template) the protocols build and encode their prompts with;
`describe()` is what results.json records of the engine ({"name", "version"}, and "endpoint", "model" for a server).

Implementations: the model in this job (`eval.generate.Generator`: continuous batching on the job's mesh,
model/batching.py) and an OpenAI-compatible server (`eval.endpoint.EndpointEngine`, `--endpoint`, which scores no
whole sequences); `eval.engines.load_engine` picks one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from instructjax.core.errors import ConfigError, DataError
from instructjax.model.batching import Sampling  # continuous batching's: what every protocol passes

GREEDY = Sampling()  # the default: greedy, up to 256 new tokens


@dataclass(frozen=True)
class TokenScores:
    """For a sequence of n ids: `logprobs[i]` = log p(ids[i+1] | ids[:i+1]) and whether that id was the argmax."""

    logprobs: np.ndarray  # float32 [n - 1]
    is_greedy: np.ndarray  # bool [n - 1]


@runtime_checkable
class Engine(Protocol):
    """What the protocols call (see the module's docstring)."""

    tokenizer: Any
    stop_ids: list[int]

    def generate(self, prompts: Sequence[str | Sequence[int]], sampling: Sampling = GREEDY,
                 until: Sequence[str] = ()) -> list[str]: ...

    def chat(self, conversations: Sequence[list[dict[str, str]]], sampling: Sampling = GREEDY) -> list[str]: ...

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...

    def score(self, sequences: Sequence[Sequence[int]]) -> list[TokenScores]: ...

    def next_token_logprobs(self, sequences: Sequence[Sequence[int]], candidates: Sequence[int]) -> np.ndarray: ...

    def describe(self) -> dict[str, str]: ...


def encode_chat(hf_tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """The chat template's prompt asking for the next assistant turn, tokenized as transformers does
    (`apply_chat_template(tokenize=True)`: the template itself starts with BOS where the tokenizer adds one, as in
    training): every engine's `encode_chat`. A template that does not compile or refuses the messages: one line."""
    import jinja2

    try:
        ids = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(f"the model's chat template does not compile (line {e.lineno}: {e.message})") from None
    except jinja2.TemplateError as e:
        raise DataError(f"the model's chat template refuses the prompt ({e})", reason="template") from None
    return list(ids["input_ids"] if isinstance(ids, Mapping) else ids)
