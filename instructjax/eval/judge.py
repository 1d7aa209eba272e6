"""Judges called directly: any OpenAI-compatible endpoint (OpenAI, a vLLM or `transformers serve` server, a
gateway) through the `openai` client, with retries, rate-limit backoff and a reply cache.

A config names the endpoint once (`eval.judge`): its base URL, the model, the environment variable that holds the
key, how many requests may be in flight. `ask(requests, endpoint, cache)` sends each judge request (`{"id",
"system"?, "prompt"}`, as `eval/pairwise.py` writes them) as a system message, where it has one, and a user
message (or its own `messages`), and gives back `{"id", "reply"}` rows, the replies the files route reads. A
request's `sampling` (max_tokens, temperature, logprobs, top_logprobs: what an `alpaca_eval` annotator asks)
overrides the endpoint's; with `logprobs` the row also holds the choice's `logprobs` as OpenAI gives them. Every reply is kept in a cache file keyed by (model, sampling, prompt): a rerun
pays for nothing it already has. A request that keeps failing past the retries stops with one line naming it (the
first request is asked alone: where nothing answers, that is one line at once, no retries);
the replies got before it stay in the cache. A reply the protocol cannot read is counted there and never cached
(`parses`), and an answer that is not a chat completion (no JSON, no choices) is one line naming the request.

The client, the retries and the cache are also what a generation endpoint (eval/endpoint.py) is asked through.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

from instructjax.core import storage
from instructjax.core.errors import ConfigError, InstructJaxError
from instructjax.eval.config import JudgeEndpoint

RETRIABLE = ("RateLimitError", "APIConnectionError", "APITimeoutError", "InternalServerError")


def messages(request: Mapping) -> list[dict[str, str]]:
    """The chat messages of a judge request: its `messages`, or its `system` message where it has one, then its
    `prompt`."""
    if "messages" in request:
        return [dict(m) for m in request["messages"]]
    system = [{"role": "system", "content": request["system"]}] if request.get("system") else []
    return [*system, {"role": "user", "content": request["prompt"]}]


def sampling(endpoint: JudgeEndpoint, request: Mapping) -> dict:
    """The request's sampling: the endpoint's temperature and max_tokens, overridden by the request's `sampling`."""
    return {"temperature": endpoint.temperature, "max_tokens": endpoint.max_tokens, **request.get("sampling", {})}


def cache_key(endpoint: JudgeEndpoint, request: Mapping) -> str:
    """What makes a reply the same: the endpoint that served it, the model, its sampling and the messages."""
    more = sampling(endpoint, request)
    key = [endpoint.base_url.rstrip("/"), endpoint.model, more.pop("temperature"), more.pop("max_tokens"),
           messages(request)] + ([more] if more else [])
    return hashlib.sha256(json.dumps(key).encode()).hexdigest()


class ReplyCache:
    """A JSONL file of {"key", "reply"}, read whole. A new reply is appended to a local file at once; a file in a
    bucket (which takes no appends) is written whole at most every `BUCKET_SECONDS` and at `flush`."""

    BUCKET_SECONDS = 30.0

    def __init__(self, path: str | None):
        self.path, self.replies, self._lock = path, {}, threading.Lock()
        self._remote, self._written, self._unsaved = bool(path) and storage.is_remote(path), time.monotonic(), 0
        if path and storage.path(path).exists():
            text = storage.path(path).read_text()
            for line in text.splitlines():
                try:
                    row = json.loads(line)
                    self.replies[row["key"]] = row["reply"]
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line: that reply is asked again
            if text and not text.endswith("\n"):
                self._write()  # the next append starts on a line of its own

    def get(self, key: str):
        return self.replies.get(key)

    def put(self, key: str, reply) -> None:
        with self._lock:
            self.replies[key] = reply
            if not self.path:
                return
            if not self._remote:
                storage.path(self.path).parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "a") as f:
                    f.write(json.dumps({"key": key, "reply": reply}) + "\n")
                return
            self._unsaved += 1
            if time.monotonic() - self._written >= self.BUCKET_SECONDS:
                self._write()

    def flush(self) -> None:
        """A bucket's file written whole with every reply so far (a local file is up to date already)."""
        with self._lock:
            if self._unsaved:
                self._write()

    def _write(self) -> None:
        lines = (json.dumps({"key": k, "reply": v}) + "\n" for k, v in self.replies.items())
        storage.write_text(self.path, "".join(lines))
        self._written, self._unsaved = time.monotonic(), 0


def client(endpoint: JudgeEndpoint, user: str = "eval.judge"):
    """The `openai` client of an endpoint: its key from `endpoint.api_key_env` ("EMPTY" unset), its timeout, no
    retries of its own (`with_retries` does them)."""
    try:
        import openai
    except ImportError:
        raise ConfigError(f"{user} needs the `openai` package (pip install openai)") from None
    key = os.environ.get(endpoint.api_key_env) or "EMPTY"
    return openai.OpenAI(base_url=endpoint.base_url, api_key=key, max_retries=0, timeout=endpoint.seconds)


def _retry_after(exc: Exception, attempt: int) -> float:
    """Seconds to wait: the server's Retry-After where it says, else exponential backoff with jitter (max 60 s)."""
    response = getattr(exc, "response", None)
    header = response.headers.get("retry-after") if response is not None else None
    try:
        return min(60.0, float(header))
    except (TypeError, ValueError):
        return min(60.0, 2.0 ** attempt) * (0.5 + random.random() / 2)


def with_retries(endpoint: JudgeEndpoint, call: Callable[[], object], what: str,
                 error: type[InstructJaxError] = ConfigError, *, first_contact: bool = False):
    """`call()`, tried again after rate limits, dropped connections, timeouts and server errors (up to
    `endpoint.max_retries` more times, waiting as the server says); past them, or on any other failure, one line:
    "`what` failed after N attempt(s): ..." as `error`. `first_contact`: the first request to a server, which has
    answered nothing yet: a connection that cannot be made (refused, no such host) fails at once, as nothing
    listens there; retries are for a server that answered and then failed."""
    for attempt in range(endpoint.max_retries + 1):
        try:
            return call()
        except InstructJaxError:
            raise
        except Exception as exc:  # noqa: BLE001  the openai client's errors, by name (no import at module level)
            if first_contact and type(exc).__name__ == "APIConnectionError":  # not APITimeoutError: it answered
                cause = exc.__cause__ or exc.__context__
                line = " ".join(f"{what} failed: nothing answers at {endpoint.base_url} ({type(cause or exc).__name__}: "
                                f"{cause or exc}): is the server running there?".split())
                raise error(line[:400]) from None
            if type(exc).__name__ not in RETRIABLE or attempt == endpoint.max_retries:
                line = " ".join(f"{what} failed after {attempt + 1} attempt(s): {type(exc).__name__}: {exc}".split())
                raise error(line[:400]) from None
            time.sleep(_retry_after(exc, attempt))
    raise AssertionError("unreachable")


def _ask_one(client, endpoint: JudgeEndpoint, request: Mapping, first_contact: bool = False) -> str | dict:
    """The reply's text, or {"text", "logprobs"} when the request asks for logprobs (`first_contact`: the first
    request, where a server nothing answers at is one line at once: `with_retries`)."""

    def call() -> str | dict:
        out = client.chat.completions.create(model=endpoint.model, messages=messages(request),
                                             **sampling(endpoint, request))
        choices = getattr(out, "choices", None)
        if not isinstance(choices, list) or not choices:
            what = f"{type(out).__name__} {str(out)[:80]!r}" if choices is None else "no choices"
            raise ConfigError(f"judge {endpoint.model} at {endpoint.base_url}: request {request['id']!r}: the "
                              f"server's answer is not a chat completion ({what})")
        choice = choices[0]
        text = choice.message.content or ""
        if not request.get("sampling", {}).get("logprobs"):
            return text
        return {"text": text, "logprobs": choice.logprobs.model_dump() if choice.logprobs else None}

    return with_retries(endpoint, call, f"judge {endpoint.model} at {endpoint.base_url}: request {request['id']!r}",
                        first_contact=first_contact)


def run_all(work: Callable[[object], None], items: Sequence, concurrency: int) -> None:
    """`work(item)` for every item, `concurrency` at a time; the first failure stops the rest (those not started
    are dropped, not tried one by one past a server that is down) and is raised."""
    failed = threading.Event()

    def guarded(item) -> None:
        if failed.is_set():
            return
        try:
            work(item)
        except BaseException:
            failed.set()
            raise

    pool = ThreadPoolExecutor(concurrency)
    try:
        for done in as_completed([pool.submit(guarded, item) for item in items]):
            done.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def ask(requests: Sequence[Mapping], endpoint: JudgeEndpoint, cache_path: str | None = None,
        parses: Callable[[Mapping, str], bool] | None = None) -> list[dict]:
    """{"id", "reply"} (and "logprobs" where asked) for every request, in order: cached replies as they are, the
    rest asked of the endpoint, `endpoint.concurrency` at a time. `parses(request, reply text)`: whether the
    protocol can read a reply; one it cannot is given back (and counted by the protocol) but not cached, so a
    rerun asks again."""
    cache = ReplyCache(cache_path)
    keys = [cache_key(endpoint, r) for r in requests]
    todo = [(r, k) for r, k in zip(requests, keys, strict=True) if cache.get(k) is None]
    unread: dict[str, str | dict] = {}
    if todo:
        judge = client(endpoint)

        def one(item, first_contact: bool = False):
            request, key = item
            reply = _ask_one(judge, endpoint, request, first_contact)
            if parses is None or parses(request, reply["text"] if isinstance(reply, dict) else reply):
                cache.put(key, reply)
            else:
                unread[key] = reply

        try:
            one(todo[0], first_contact=True)  # alone: a server nothing answers at is one line, no retries
            run_all(one, todo[1:], endpoint.concurrency)
        finally:
            cache.flush()
    return [_row(r["id"], unread[k] if cache.get(k) is None else cache.get(k))
            for r, k in zip(requests, keys, strict=True)]


def _row(request_id: str, reply: str | dict) -> dict:
    if isinstance(reply, dict):
        return {"id": request_id, "reply": reply["text"], "logprobs": reply["logprobs"]}
    return {"id": request_id, "reply": reply}
