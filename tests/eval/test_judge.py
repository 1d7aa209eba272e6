"""The judge client (instructjax.eval.judge) against a real OpenAI-compatible server on 127.0.0.1: `transformers
serve` serving a tiny local model. The reference is the server's own answer to a plain HTTP request; a rerun
is checked to make no request by pointing it at a port where nothing listens."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
import urllib.request

import pytest

pytest.importorskip("openai")
pytest.importorskip("fastapi")

from instructjax.core.errors import ConfigError  # noqa: E402
from instructjax.eval import pairwise as pw  # noqa: E402
from instructjax.eval.config import JudgeEndpoint, eval_section  # noqa: E402
from instructjax.eval.judge import ask  # noqa: E402

PROMPTS = ["Which answer is better, A or B? Reply with two scores.", "Rate the response from 1 to 10.",
           "Compare the two outputs below and explain briefly."]
MAX_TOKENS = 6


@pytest.fixture
def server(openai_server):
    """(base URL, model name) of `transformers serve` serving a tiny LLaMA taught to answer "8 6" (the session's
    `openai_server`)."""
    return openai_server


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
    _Throttle.refuse, _Throttle.seen, _Throttle.upstream = 0, [], base_url  # a proxy in front, closed afterwards
    proxy = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Throttle)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{proxy.server_address[1]}/v1"
    requests = [{"id": f"r{i}", "prompt": p} for i, p in enumerate(PROMPTS)]
    cache = str(tmp_path / "cache.jsonl")
    try:
        endpoint = JudgeEndpoint(base_url=url, model=model, concurrency=2, max_tokens=MAX_TOKENS, max_retries=1)
        replies = ask(requests, endpoint, cache)
    finally:
        proxy.shutdown()
        proxy.server_close()
    expected = [_direct(base_url, model, p) for p in PROMPTS]
    assert [r["id"] for r in replies] == ["r0", "r1", "r2"]
    assert [r["reply"] for r in replies] == expected
    assert any(expected)  # the model said something: the comparison is not of empty strings

    # the rerun: the same endpoint, model and prompts, nothing listening there now: every reply from the cache
    dead = JudgeEndpoint(base_url=url, model=model, max_tokens=MAX_TOKENS, max_retries=0)
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
    assert part["judge"] == {"model": model, "base_url": base_url, "max_tokens": MAX_TOKENS}
    result = part["vs"]["against"]
    requests = pw.read_jsonl(result["requests"])
    replies = {r["id"]: r["reply"] for r in pw.read_jsonl(str(out / "pairwise_vs_against_replies.jsonl"))}
    assert all(r["system"] for r in requests)  # seed 002's Figure 4 has a system prompt: sent as one
    assert replies == {r["id"]: _direct(base_url, model, r["prompt"], r["system"]) for r in requests}
    # the judge gave "8 6" in both orders: the first-shown answer wins each time, so every item is a tie
    assert {reply.splitlines()[0] for reply in replies.values()} == {" 8 6"}
    assert (result["n"], result["win"], result["tie"], result["lose"]) == (2, 0, 2, 0)


class _Scripted(http.server.BaseHTTPRequestHandler):
    """A misbehaving OpenAI-compatible server: each POST gets the next of `bodies` (bytes, HTML where it starts with
    "<"; a float: sleep that long first), `seen` counts them."""

    bodies: list = []
    seen: list = []
    requests: list = []  # the JSON bodies received

    def do_POST(self):  # noqa: N802  (http.server's name)
        type(self).requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        type(self).seen.append(self.path)
        body = type(self).bodies[min(len(type(self).seen), len(type(self).bodies)) - 1]
        if isinstance(body, float):
            time.sleep(body)
            body = b'{"choices": []}'
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if body.startswith(b"<") else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # a client that timed out is gone
            self.wfile.write(body)

    def log_message(self, *args):
        pass


def _scripted(bodies: list):
    class Handler(_Scripted):
        pass

    Handler.bodies, Handler.seen, Handler.requests = bodies, [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, Handler, f"http://127.0.0.1:{server.server_address[1]}/v1"


def _completion(text: str) -> bytes:
    return json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "judge",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}]}).encode()


def test_answers_that_are_not_chat_completions_are_one_line(tmp_path):
    """A body that is not JSON, and one without choices: one line naming the request and what came back."""
    for body, words in ((b"<html>proxy error</html>", "not a chat completion"), (b'{"choices": []}', "no choices")):
        server, _, url = _scripted([body])
        try:
            with pytest.raises(ConfigError) as err:
                ask([{"id": "q1", "prompt": "hi"}], JudgeEndpoint(base_url=url, model="judge", max_retries=0), None)
        finally:
            server.shutdown()
        assert "'q1'" in str(err.value) and words in str(err.value) and "\n" not in str(err.value)


def test_a_judge_that_hangs_times_out_and_is_retried(tmp_path):
    """`eval.judge.timeout` bounds each request; a request that keeps timing out stops after the retries."""
    server, handler, url = _scripted([3.0])
    try:
        endpoint = JudgeEndpoint(base_url=url, model="judge", timeout=0.5, max_retries=1)
        start = time.monotonic()
        with pytest.raises(ConfigError, match="'slow'.*2 attempt.*APITimeoutError"):
            ask([{"id": "slow", "prompt": "hi"}], endpoint, None)
    finally:
        server.shutdown()
    assert len(handler.seen) == 2 and time.monotonic() - start < 6
    assert JudgeEndpoint(base_url=url, model="judge").seconds == 300.0  # the default
    assert JudgeEndpoint(base_url=url, model="judge", timeout_s=7.0).seconds == 7.0  # the old key is still read


def test_unreadable_replies_are_counted_never_cached_and_the_key_holds_the_endpoint(tmp_path):
    """A pairwise reply without two scores: given back, counted as unparsed by the score, not cached, so a rerun
    asks again; the same request at another endpoint is asked there, not answered from the first one's cache."""
    cache = str(tmp_path / "cache.jsonl")
    requests = [{"id": "1:ab", "item": "1", "order": "ab", "prompt": "p1"},
                {"id": "1:ba", "item": "1", "order": "ba", "prompt": "p2"},
                {"id": "2:ab", "item": "2", "order": "ab", "prompt": "p3"},
                {"id": "2:ba", "item": "2", "order": "ba", "prompt": "p4"}]
    server, handler, url = _scripted([_completion("8 6"), _completion("I cannot judge this."),
                                      _completion("9 3"), _completion("4 7")])
    try:
        endpoint = JudgeEndpoint(base_url=url, model="judge", concurrency=1, max_retries=0)
        replies = ask(requests, endpoint, cache, parses=pw.reads_score_pair)
        result = pw.score_pairwise(requests, replies)
        assert (result.win, result.tie, result.lose, result.unparsed) == (1, 1, 0, 1)  # item 1: a tie
        cached = [json.loads(line) for line in open(cache)]
        assert len(cached) == 3 and "I cannot judge this." not in json.dumps(cached)
        handler.bodies, handler.seen = [_completion("7 7")], []
        ask(requests, endpoint, cache, parses=pw.reads_score_pair)
        assert len(handler.seen) == 1  # only the unreadable one asked again
    finally:
        server.shutdown()
    other, other_handler, other_url = _scripted([_completion("1 2")])
    try:
        again = ask(requests[:1], JudgeEndpoint(base_url=other_url, model="judge", max_retries=0), cache)
    finally:
        other.shutdown()
    assert len(other_handler.seen) == 1 and again[0]["reply"] == "1 2"


def test_a_metric_with_nothing_to_average_is_null_in_json():
    """MT-Bench with every reply unrated: its turn means are null and counted; results never hold NaN."""
    from instructjax.eval import mt_bench
    from instructjax.eval.harness import results_json

    requests = [{"id": "81|1", "turn": 1}, {"id": "81|2", "turn": 2}]
    scored = mt_bench.score(requests, [{"id": "81|1", "reply": "no rating"}, {"id": "81|2", "reply": "none"}])
    assert scored == {"turn_1": None, "turn_2": None, "n": 1, "unrated": 2}
    text = results_json({"mt_bench": scored, "other": float("nan"), "rows": [float("inf"), 1.5]})
    assert json.loads(text) == {"mt_bench": scored, "other": None, "rows": [None, 1.5]} and "NaN" not in text


def test_each_judged_part_asks_its_own_judge(tmp_path):
    """A part's `judge` keys override `eval.judge`'s: pairwise asks the shared endpoint with its own model, MT-Bench
    its own endpoint with FastChat's 2048 max_tokens, FLASK the shared judge as it is; results record each. Without
    `eval.judge`, a part that names only a model reads its replies from files and records the model."""
    from instructjax.eval.judged import _judge, judge_record

    shared, shared_handler, shared_url = _scripted([_completion("8 6")])
    own, own_handler, own_url = _scripted([_completion("Rating: [[7]]")])
    try:
        ev = eval_section({"judge": {"base_url": shared_url, "model": "gpt-4", "max_retries": 0},
                           "pairwise": {"judge": {"model": "gpt-4-turbo"}}, "flask": True,
                           "mt_bench": {"judge": {"base_url": own_url}}})
        for part in ("pairwise", "mt_bench", "flask"):
            _judge(ev, part, [{"id": f"{part}-1", "prompt": "p"}], str(tmp_path / f"{part}.jsonl"), str(tmp_path),
                   recorded=False)
    finally:
        shared.shutdown()
        own.shutdown()
    assert [(r["model"], r["max_tokens"]) for r in shared_handler.requests] == [("gpt-4-turbo", 1024), ("gpt-4", 1024)]
    assert [(r["model"], r["max_tokens"]) for r in own_handler.requests] == [("gpt-4", 2048)]
    assert judge_record(ev, "mt_bench") == {"model": "gpt-4", "base_url": own_url, "max_tokens": 2048}
    offline = eval_section({"alpaca_eval": {"judge": {"model": "gpt-4-0314"}}})
    assert offline.judge_of("alpaca_eval") is None
    assert judge_record(offline, "alpaca_eval") == {"model": "gpt-4-0314", "replies": "read from files"}
    with pytest.raises(ConfigError, match="eval.flask.judge"):  # no endpoint to take the other keys from
        eval_section({"flask": {"judge": {"base_url": own_url}}}).judge_of("flask")


def test_judge_bodies_that_are_not_chat_completions_through_eval_config(tmp_path, capsys):
    """`instructjax eval --config` whose pairwise judge answers an HTML page and whose FLASK judge answers no
    choices: each part is one line naming it, the request and what came back, then one line saying which failed;
    exit 2, never a traceback."""
    import dataclasses

    import jax
    import numpy as np
    from flax import nnx

    from instructjax.cli import main
    from instructjax.core.checkpoint import save_params
    from instructjax.data.encoding.tokenizer import Tokenizer, default_tokenizer_path
    from instructjax.model.decoder import Decoder
    from instructjax.model.presets import preset

    config = preset("tiny", dtype="float32")
    shapes = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))))
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: (0.02 * rng.standard_normal(a.shape)).astype(a.dtype), shapes)
    tokenizer = {"files": Tokenizer.load(default_tokenizer_path()).files(), "template": "tulu"}
    save_params(tmp_path / "run", params, dataclasses.asdict(config), step=1, tokenizer=tokenizer)
    prompts = [{"id": str(i), "instruction": f"Say {w}.", "skills": ["Factuality"]} for i, w in enumerate(("hi", "no"))]
    pw.write_jsonl(tmp_path / "p.jsonl", prompts)
    pw.write_jsonl(tmp_path / "b.jsonl", [{**r, "output": "B"} for r in prompts])
    html, html_handler, html_url = _scripted([b"<html>proxy error</html>"])
    empty, empty_handler, empty_url = _scripted([b'{"choices": []}'])
    try:
        (tmp_path / "run.yaml").write_text(f"""name: tiny
run_dir: {tmp_path / 'run'}
eval:
  batch_size: 2
  out_dir: {tmp_path / 'out'}
  pairwise: {{prompts: {tmp_path / 'p.jsonl'}, against: {{b: {tmp_path / 'b.jsonl'}}}, max_new_tokens: 2,
              judge: {{base_url: {html_url}, model: j, max_retries: 0, concurrency: 1}}}}
  flask: {{prompts: {tmp_path / 'p.jsonl'}, max_new_tokens: 2,
           judge: {{base_url: {empty_url}, model: j, max_retries: 0, concurrency: 1}}}}
""")
        capsys.readouterr()
        assert main(["eval", "--config", str(tmp_path / "run.yaml")]) == 2
    finally:
        html.shutdown()
        empty.shutdown()
    assert html_handler.seen and empty_handler.seen  # each judge was asked
    err = [line for line in capsys.readouterr().err.splitlines() if "note:" not in line]
    assert len(err) == 3 and all(line.startswith("instructjax: ") for line in err), err
    by_part = {line.split(":")[1].strip(): line for line in err[:2]}
    assert "not a chat completion" in by_part["eval pairwise"], err
    assert "no choices" in by_part["eval flask"], err
    assert err[2].startswith("instructjax: error: eval: ") and "pairwise" in err[2] and "flask" in err[2], err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["errors"]) == {"pairwise", "flask"} and results["parts"] == []


def test_the_reply_cache_appends_locally_and_writes_a_bucket_whole(tmp_path, bucket, monkeypatch):
    """A local cache gets each reply as a line at once (a torn last line is dropped first, so the next line starts
    clean); one in a bucket, which takes no appends, is written whole at `flush` (and every BUCKET_SECONDS)."""
    from instructjax.core import storage
    from instructjax.eval.judge import ReplyCache

    local = tmp_path / "sub" / "cache.jsonl"
    cache = ReplyCache(str(local))
    cache.put("a", "one")
    assert ReplyCache(str(local)).replies == {"a": "one"}  # there before any flush
    with open(local, "a") as f:
        f.write('{"key": "b", "rep')  # a killed writer's last line
    cache = ReplyCache(str(local))
    cache.put("c", {"text": "three", "logprobs": None})
    assert ReplyCache(str(local)).replies == {"a": "one", "c": {"text": "three", "logprobs": None}}

    remote = f"{bucket}/eval/cache.jsonl"
    monkeypatch.setattr(ReplyCache, "BUCKET_SECONDS", 3600.0)
    cache = ReplyCache(remote)
    cache.put("a", "one")
    cache.put("b", 2.5)
    assert not storage.path(remote).exists()  # not yet: a whole write per reply would be quadratic
    cache.flush()
    assert ReplyCache(remote).replies == {"a": "one", "b": 2.5}


def test_a_judge_nothing_answers_at_is_one_line_at_once(monkeypatch):
    """A refused first request (nothing listens at the port) is not retried: one line naming the address; the
    retries (6 here) are for a server that answered."""
    from helpers.openai_server import free_port

    from instructjax.eval import judge

    waits = []
    monkeypatch.setattr(judge, "_retry_after", lambda exc, attempt: waits.append(attempt) or 0.0)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    endpoint = JudgeEndpoint(base_url=dead, model="m", max_retries=6)
    with pytest.raises(ConfigError, match=f"^judge m at {dead}: request 'a' failed: nothing answers at {dead} "):
        ask([{"id": "a", "prompt": "p"}, {"id": "b", "prompt": "q"}], endpoint, None)
    assert waits == []
