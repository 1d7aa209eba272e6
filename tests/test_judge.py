"""The judge client (instructjax.eval.judge) against a real OpenAI-compatible server on 127.0.0.1: `transformers
serve` serving a tiny local model. The reference is the server's own answer to a plain HTTP request; a rerun
is checked to make no request by pointing it at a port where nothing listens."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

pytest.importorskip("openai")
pytest.importorskip("fastapi")

import pretrained_models as pm  # noqa: E402  (tests/pretrained_models.py)

from instructjax.core.config import JudgeEndpoint, eval_section  # noqa: E402
from instructjax.core.errors import ConfigError  # noqa: E402
from instructjax.eval import pairwise as pw  # noqa: E402
from instructjax.eval.judge import ask  # noqa: E402

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
PROMPTS = ["Which answer is better, A or B? Reply with two scores.", "Rate the response from 1 to 10.",
           "Compare the two outputs below and explain briefly."]
MAX_TOKENS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(base URL, model name) of `transformers serve` serving a tiny LLaMA with a chat template."""
    root = tmp_path_factory.mktemp("judge")
    tok = pm.bpe_tokenizer(str(root / "tokenizer"), vocab_size=600)
    config_file = os.path.join(tok, "tokenizer_config.json")
    with open(config_file) as f:
        config = json.load(f)
    with open(config_file, "w") as f:
        json.dump({**config, "chat_template": CHAT_TEMPLATE}, f)
    from transformers import AutoTokenizer

    # taught to answer every chat with two scores, as a judge does, so judged results come out as numbers
    encode = AutoTokenizer.from_pretrained(tok).encode
    docs = [encode(f"user: {line}\nassistant: 8 6\n") + [0] for line in pm.corpus()[:300]]
    model = pm.hf_model(str(root / "model"), tok, vocab_size=608, bos=None, eos=0, seed=1, pretrain_steps=150,
                        tokens=docs)
    port = _free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "transformers")
    log = open(root / "serve.log", "w")
    proc = subprocess.Popen([exe, "serve", model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"transformers serve did not start: {(root / 'serve.log').read_text()[-2000:]}") from None
                time.sleep(0.5)
        yield url + "/v1", model
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def _direct(base_url: str, model: str, prompt: str, system: str | None = None, messages: list | None = None,
            max_tokens: int = MAX_TOKENS) -> str:
    """The server's reply to a plain HTTP POST: what the client must give back."""
    if messages is None:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    body = json.dumps({"model": model, "messages": messages,
                       "temperature": 0.0, "max_tokens": max_tokens}).encode()
    request = urllib.request.Request(base_url + "/chat/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["choices"][0]["message"]["content"]


def test_replies_equal_the_servers_and_a_rerun_asks_nothing(server, tmp_path):
    base_url, model = server
    endpoint = JudgeEndpoint(base_url=base_url, model=model, concurrency=2, max_tokens=MAX_TOKENS, max_retries=1)
    requests = [{"id": f"r{i}", "prompt": p} for i, p in enumerate(PROMPTS)]
    cache = str(tmp_path / "cache.jsonl")
    replies = ask(requests, endpoint, cache)
    expected = [_direct(base_url, model, p) for p in PROMPTS]
    assert [r["id"] for r in replies] == ["r0", "r1", "r2"]
    assert [r["reply"] for r in replies] == expected
    assert any(expected)  # the model said something: the comparison is not of empty strings

    # the rerun: the same model and prompts at a port where nothing listens; every reply comes from the cache
    dead = JudgeEndpoint(base_url=f"http://127.0.0.1:{_free_port()}/v1", model=model, max_tokens=MAX_TOKENS,
                         max_retries=0)
    assert ask(requests, dead, cache) == replies
    # a prompt the cache lacks goes to the (dead) endpoint: one line naming the request, after the retries
    with pytest.raises(ConfigError) as err:
        ask(requests + [{"id": "new", "prompt": "Something else entirely."}], dead, cache)
    assert "'new'" in str(err.value) and "\n" not in str(err.value)
    # a torn last line of the cache costs that one reply, not the file
    with open(cache, "a") as f:
        f.write('{"key": "abc", "rep')
    assert ask(requests, dead, cache) == replies


def test_a_requests_own_messages_and_sampling_are_sent(server, tmp_path):
    """An alpaca_eval annotator's request (eval/alpacaeval.py): its own chat messages and sampling."""
    base_url, model = server
    endpoint = JudgeEndpoint(base_url=base_url, model=model, max_tokens=MAX_TOKENS, max_retries=1)
    messages = [{"role": "system", "content": "You rank models."}, {"role": "user", "content": PROMPTS[0]}]
    short = {"id": "s", "messages": messages, "sampling": {"max_tokens": 2, "temperature": 0.0}}
    (reply,) = ask([short], endpoint, str(tmp_path / "cache.jsonl"))
    assert reply == {"id": "s", "reply": _direct(base_url, model, "", messages=messages, max_tokens=2)}
    longer = ask([{**short, "sampling": {"max_tokens": MAX_TOKENS, "temperature": 0.0}}], endpoint,
                 str(tmp_path / "cache.jsonl"))[0]["reply"]
    assert longer == _direct(base_url, model, "", messages=messages) and longer != reply  # not the cached one


class _Throttle(http.server.BaseHTTPRequestHandler):
    """In front of the real server: answers the first `refuse` POSTs 429 with Retry-After, forwards the rest."""

    refuse, seen, upstream = 0, [], ""

    def do_POST(self):  # noqa: N802  (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).seen.append(time.monotonic())
        if len(type(self).seen) <= type(self).refuse:
            self.send_response(429)
            self.send_header("Retry-After", "1")
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "rate limited", "type": "rate_limit"}}')
            return
        request = urllib.request.Request(type(self).upstream + self.path.removeprefix("/v1"), body,
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            data = response.read()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_rate_limits_wait_the_servers_retry_after(server, tmp_path):
    base_url, model = server
    _Throttle.refuse, _Throttle.seen, _Throttle.upstream = 2, [], base_url
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Throttle)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        endpoint = JudgeEndpoint(base_url=f"http://127.0.0.1:{proxy.server_address[1]}/v1", model=model,
                                 concurrency=1, max_tokens=MAX_TOKENS, max_retries=3)
        replies = ask([{"id": "x", "prompt": PROMPTS[0]}], endpoint, None)
    finally:
        proxy.shutdown()
    assert replies == [{"id": "x", "reply": _direct(base_url, model, PROMPTS[0])}]
    assert len(_Throttle.seen) == 3
    assert all(b - a >= 0.95 for a, b in zip(_Throttle.seen, _Throttle.seen[1:], strict=False))  # waited as the server said
    # more refusals than retries: one line naming the request
    _Throttle.refuse, _Throttle.seen = 10, []
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Throttle)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        endpoint = JudgeEndpoint(base_url=f"http://127.0.0.1:{proxy.server_address[1]}/v1", model=model,
                                 max_tokens=MAX_TOKENS, max_retries=1)
        with pytest.raises(ConfigError, match="'y'.*2 attempt.*RateLimitError"):
            ask([{"id": "y", "prompt": PROMPTS[1]}], endpoint, None)
    finally:
        proxy.shutdown()
    assert len(_Throttle.seen) == 2


class _Outputs:
    """A generator whose outputs are fixed, so the judge requests are known before the judge is asked."""

    def chat(self, conversations, sampling):
        return [f"Answer to {c[-1]['content']}" for c in conversations]


def test_eval_calls_the_judge_named_in_the_config(server, tmp_path):
    from instructjax.eval.run import run_judged

    base_url, model = server
    rows = [{"id": str(i), "instruction": f"Question {i}?"} for i in range(2)]
    (tmp_path / "pairwise").mkdir()
    pw.write_jsonl(tmp_path / "pairwise" / "prompts.jsonl", rows)
    pw.write_jsonl(tmp_path / "pairwise" / "against.jsonl", [{**r, "output": "Other."} for r in rows])
    ev = eval_section({"pairwise": {"max_new_tokens": 8}, "data_dir": str(tmp_path),
                       "judge": {"base_url": base_url, "model": model, "max_tokens": MAX_TOKENS}})
    out = tmp_path / "out"
    part = run_judged(_Outputs, ev, "pairwise", str(out))
    assert part["judge"] == {"model": model, "base_url": base_url}
    result = part["vs"]["against"]
    requests = pw.read_jsonl(result["requests"])
    replies = {r["id"]: r["reply"] for r in pw.read_jsonl(str(out / "pairwise_vs_against_replies.jsonl"))}
    assert all(r["system"] for r in requests)  # seed 002's Figure 4 has a system prompt: sent as one
    assert replies == {r["id"]: _direct(base_url, model, r["prompt"], r["system"]) for r in requests}
    # the judge gave "8 6" in both orders: the first-shown answer wins each time, so every item is a tie
    assert {reply.splitlines()[0] for reply in replies.values()} == {" 8 6"}
    assert (result["n"], result["win"], result["tie"], result["lose"]) == (2, 0, 2, 0)
