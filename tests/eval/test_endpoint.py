"""Generation by an OpenAI-compatible server (instructjax.eval.endpoint) against a real one: `transformers serve`
(the session's `openai_server`, tests/helpers/openai_server.py) serving a tiny LLaMA. The reference is this
package's own engine on the same model: greedy answers must be the same, request for request. `transformers serve`
ignores `echo` and `logprobs` (its completions handler lists them as unsupported): log-likelihood protocols are
refused there, in one line. A prompt's text is checked against the tokenizer's own encoding."""

from __future__ import annotations

import csv
import http.server
import json
import threading

import pytest

pytest.importorskip("openai")
pytest.importorskip("fastapi")

from helpers.openai_server import free_port  # noqa: E402

from instructjax.cli import main  # noqa: E402
from instructjax.core.errors import ConfigError  # noqa: E402
from instructjax.eval import tulu  # noqa: E402
from instructjax.eval.endpoint import Endpoint  # noqa: E402
from instructjax.eval.engines import load_engine  # noqa: E402
from instructjax.eval.generate import Sampling, load_generator  # noqa: E402

SETTINGS = ("gsm_direct", "bbh_direct")  # long prompts (8 shots), stops "\n" and "\n\n", 512 new tokens


def _data_dir(root) -> str:
    """A small data_dir laid out as open-instruct's data/eval (every set the suite reads)."""
    words = "the value of a field over the ring is twice the order of its group".split()

    def text(i: int, n: int) -> str:
        return " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(n))

    (root / "mmlu" / "dev").mkdir(parents=True)
    (root / "mmlu" / "test").mkdir(parents=True)
    for split, n in (("dev", 1), ("test", 2)):
        with open(root / "mmlu" / split / f"anatomy_{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([[text(i, 6) + "?", *(text(i + k, 2) for k in range(4)), "ABCD"[i % 4]]
                                     for i in range(n)])
    (root / "gsm").mkdir()
    (root / "gsm" / "test.jsonl").write_text("".join(json.dumps({"question": text(i, 8) + "?", "answer": "x\n#### 4"})
                                                     + "\n" for i in range(3)))
    (root / "bbh" / "bbh").mkdir(parents=True)
    (root / "bbh" / "cot-prompts").mkdir(parents=True)
    examples = [{"input": text(i, 5) + "?", "target": "Yes"} for i in range(3)]
    (root / "bbh" / "bbh" / "navigate.json").write_text(json.dumps({"examples": examples}))
    (root / "bbh" / "cot-prompts" / "navigate.txt").write_text("canary\n-----\nNavigate.\n\nQ: go?\nA: So the "
                                                               "answer is Yes.")
    (root / "tydiqa").mkdir()
    for split in ("dev", "train"):
        qas = [{"id": f"english-{split}-{i}", "question": text(i, 4) + "?", "answers": [{"text": "the",
                                                                                          "answer_start": 0}]}
               for i in range(2)]
        (root / "tydiqa" / f"tydiqa-goldp-v1.1-{split}.json").write_text(json.dumps(
            {"data": [{"paragraphs": [{"context": text(9, 12), "qas": qas}]}]}))
    return str(root)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return _data_dir(tmp_path_factory.mktemp("eval_data"))


@pytest.fixture(scope="module")
def in_job(openai_server):
    """This package's engine on the served model: the reference."""
    return load_generator(openai_server[1], batch_size=4)[0]


@pytest.mark.slow
def test_the_suite_and_chats_through_the_server_are_the_in_job_engines(openai_server, in_job, data_dir, tmp_path,
                                                                       monkeypatch):
    """The Tulu suite's generated settings (tulu chat format: prompts without BOS, stops "\\n" and "\\n\\n", 512 new
    tokens) and chats in the model's template: the same answers from the server as from our engine; a rerun
    answers from the cache and asks the server nothing."""
    url, model = openai_server
    cache = str(tmp_path / "cache.jsonl")
    served = load_engine(model, endpoint=Endpoint(url, max_retries=1, cache=cache))[0]
    assert served.describe() == {"name": "transformers serve", "version": None, "endpoint": url, "model": model}
    samples = {name: str(tmp_path / f"{name}.jsonl") for name in ("served", "in_job")}
    got = tulu.run(served, data_dir, "tulu", SETTINGS, samples_out=samples["served"])
    want = tulu.run(in_job, data_dir, "tulu", SETTINGS, samples_out=samples["in_job"])
    answers = {k: [json.loads(line)["answer"] for line in open(path)] for k, path in samples.items()}
    assert answers["served"] == answers["in_job"] and got == want
    assert len(set(answers["served"])) > 3  # the tiny model says different things: not a comparison of blanks
    chats = [[{"role": "user", "content": "Rate the answer."}],
             [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "8 6"},
              {"role": "user", "content": "And this one?"}]]
    sampling = Sampling(max_new_tokens=8)
    assert served.chat(chats, sampling) == in_job.chat(chats, sampling)

    again = load_engine(model, endpoint=Endpoint(url, max_retries=1, cache=cache))[0]

    def asked(**body):
        raise AssertionError(f"asked the server again: {body}")

    monkeypatch.setattr(again.client.completions, "create", asked)
    assert tulu.run(again, data_dir, "tulu", SETTINGS) == got


def test_a_prompt_goes_as_text_only_where_the_servers_tokens_are_ours(tmp_path):
    """With a tokenizer that adds BOS (LLaMA-like SentencePiece): a chat prompt (BOS in the rendered template) goes
    as text without it; a Tulu prompt (no BOS, as open-instruct) as text without special tokens to vLLM, as ids to
    another server. The tokenizer's own encoding of what is sent is the in-job tokens."""
    from helpers.pretrained_models import spm_tokenizer

    from instructjax.data.encoding.templates import jinja_template
    from instructjax.data.encoding.tokenizer import Tokenizer
    from instructjax.eval.endpoint import EndpointEngine

    tok = Tokenizer.load(spm_tokenizer(str(tmp_path / "spm"))).to_hf(jinja_template("tulu", bos=True))
    generator = EndpointEngine.__new__(EndpointEngine)  # its prompt rule alone: no server to ask
    generator.tokenizer, generator._added, generator._bare_text = tok, [tok.bos_token_id], False
    chat = generator.encode_chat([{"role": "user", "content": "What is the order of the group?"}])
    assert chat[0] == tok.bos_token_id
    sent = generator.prompt(chat)
    assert list(sent) == ["prompt"] and sent["prompt"].startswith("<|user|>")
    assert tok(sent["prompt"], add_special_tokens=True)["input_ids"] == chat
    tulu_prompt = tok("<|user|>\nWhat is 2+2?\n<|assistant|>\nAnswer:", add_special_tokens=False)["input_ids"]
    assert tulu_prompt[0] != tok.bos_token_id and generator.prompt(tulu_prompt) == {"prompt": tulu_prompt}
    generator._bare_text = True  # vLLM
    sent = generator.prompt(tulu_prompt)
    assert sent["add_special_tokens"] is False and tok(sent["prompt"], add_special_tokens=False)["input_ids"] == \
        tulu_prompt


def test_log_likelihood_without_prompt_logprobs_is_said_before_the_suite_starts_and_skip_runs_the_rest(
        openai_server, data_dir, tmp_path, capsys):
    """MMLU's answer letters need the server's prompt log-probs: `transformers serve` gives none. The suite asks
    once and says so before it starts (one line naming MMLU's settings and --skip); `--skip` leaves them out (a
    note names what will not run) and the rest runs through the server."""
    url, model = openai_server
    out = tmp_path / "results.json"
    capsys.readouterr()
    eval_tulu = ["eval", "--model", model, "--suite", "tulu", "--data-dir", data_dir, "--chat-format", "tulu",
                 "--endpoint", url, "--endpoint-retries", "1", "--out", str(out)]
    code = main(eval_tulu)
    lines = capsys.readouterr().err.splitlines()
    err = [line for line in lines if line.startswith("instructjax: error")]
    assert code == 2 and len(err) == 1 and "gives no prompt log-probs" in err[0] and "MMLU" in err[0], err
    assert "mmlu_0shot, mmlu_5shot" in err[0] and "(--skip mmlu)" in err[0], err
    assert not any("Tulu suite in chat format" in line for line in lines), lines  # said before the suite starts
    assert not out.exists()

    code = main([*eval_tulu, "--skip", "mmlu,gsm,bbh,tydiqa_no_context_1shot,codex"])
    notes = [line for line in capsys.readouterr().err.splitlines() if "will not run" in line]
    assert code == 0 and len(notes) == 1 and "mmlu_0shot, mmlu_5shot" in notes[0] and "codex" in notes[0], notes
    results = json.loads(out.read_text())
    assert set(results["suite"]) == {"tydiqa_goldp_1shot", "chat_format"} and "codex" not in results
    assert main([*eval_tulu, "--skip", "mmlu,nope"]) == 2
    assert "--skip 'nope': not a benchmark" in capsys.readouterr().err

    (tmp_path / "run.yaml").write_text(f"name: ep\nrun_dir: {tmp_path / 'run'}\nmax_steps: 0\nmodel: {{init_from: "
                                       f"{model}}}\neval: {{suite: tulu, chat_format: tulu, data_dir: {data_dir}, "
                                       f"out_dir: {tmp_path / 'out'}}}\n")
    assert main(["eval", "--config", str(tmp_path / "run.yaml"), "--endpoint", url]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("instructjax: error")]
    assert len(err) == 1 and "mmlu_0shot, mmlu_5shot" in err[0] and "(--only the other parts)" in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_server_that_answered_is_retried_and_the_endpoint_is_an_engine_of_its_own(openai_server, monkeypatch):
    """A server that fails a request (a server error, then a dropped connection) and then answers: the request
    succeeds on its third attempt. The endpoint implements the engine interface without being the in-job
    generator; scoring whole sequences through it is one line."""
    from instructjax.eval import judge
    from instructjax.eval.endpoint import EndpointError
    from instructjax.eval.generate import Generator
    from instructjax.eval.interface import Engine

    monkeypatch.setattr(judge, "_retry_after", lambda exc, attempt: 0.0)
    _Flaky.posts = []
    flaky = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=flaky.serve_forever, daemon=True).start()
    try:
        served = load_engine(openai_server[1], endpoint=Endpoint(f"http://127.0.0.1:{flaky.server_address[1]}",
                                                                  max_retries=2))[0]
        assert served.generate(["Hi"], Sampling(max_new_tokens=4)) == [" fine"]
    finally:
        flaky.shutdown()
    assert _Flaky.posts == ["/v1/completions"] * 3
    assert isinstance(served, Engine) and not isinstance(served, Generator)
    with pytest.raises(EndpointError, match="^endpoint .*: scoring whole sequences .* without --endpoint$"):
        served.score([[1, 2, 3]])


@pytest.mark.slow
def test_eval_config_generates_through_the_endpoint_and_records_it(openai_server, in_job, tmp_path):
    """`eval --config --endpoint`: MT-Bench's two turns answered by the server as by our engine; results.json
    records the engine, its version and the endpoint; the replies are cached beside it."""
    from instructjax.eval import mt_bench

    url, model = openai_server
    data = tmp_path / "eval_data" / "mt_bench"
    data.mkdir(parents=True)
    questions = [{"question_id": i, "category": "extraction", "turns": [f"List {w}.", "Now shorter."]}
                 for i, w in enumerate(("three colours", "the planets"))]
    (data / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    out = tmp_path / "out"
    (tmp_path / "run.yaml").write_text(f"name: ep\nrun_dir: {tmp_path / 'run'}\nmax_steps: 0\n"
                                       f"model: {{init_from: {model}}}\neval: {{data_dir: {tmp_path / 'eval_data'}, "
                                       f"mt_bench: {{max_new_tokens: 8}}, out_dir: {out}}}\n")
    assert main(["eval", "--config", str(tmp_path / "run.yaml"), "--endpoint", url, "--endpoint-model", model]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["engine"] == {"name": "transformers serve", "version": None, "endpoint": url, "model": model}
    turns = [json.loads(line)["turns"] for line in (out / "mt_bench_outputs.jsonl").read_text().splitlines()]
    assert turns == mt_bench.answer(in_job, mt_bench.read_questions(str(data / "question.jsonl")), 8)
    assert len((out / "endpoint_cache.jsonl").read_text().splitlines()) == 4  # two questions, two turns


class _Failing(http.server.BaseHTTPRequestHandler):
    """An OpenAI-compatible server that lists its model and answers every completion with a server error."""

    posts: list = []

    def do_GET(self):  # noqa: N802  (http.server's name)
        self._send(200, {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": "me"}]})

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).posts.append(self.path)
        self._send(500, {"error": {"message": "out of memory", "type": "server_error"}})

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_an_endpoint_down_or_failing_and_prompts_only_are_one_line(openai_server, tmp_path, capsys):
    """Unreachable, or failing past the retries (the other prompts are not tried one by one after it), or asked
    with --prompts-only: one line, exit 2, nothing written."""
    url, model = openai_server
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "instruction": f"Question {i}?"}) + "\n" for i in range(3)))
    out = tmp_path / "out.jsonl"
    generate = ["generate", "--model", model, "--prompts", str(prompts), "--out", str(out), "--endpoint-retries", "1",
                "--batch-size", "1", "--endpoint"]
    failing = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Failing)
    threading.Thread(target=failing.serve_forever, daemon=True).start()
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: one line at once, none of the 6 retries
    cases = [([*generate, dead, "--endpoint-retries", "6"], f"endpoint {dead}: listing its models failed: nothing "
                                                            f"answers at {dead} (ConnectError"),
             ([*generate, f"http://127.0.0.1:{failing.server_address[1]}"], "failed after 2 attempt(s): "
                                                                            "InternalServerError"),
             (["eval", "--model", model, "--suite", "tulu", "--prompts-only", "--out", str(tmp_path / "req"),
               "--endpoint", url], "--endpoint and --prompts-only"),
             (["eval", "--model", model, "--tasks", "x", "--endpoint", url], "lm-eval's tasks"),
             (["generate", "--model", model, "--prompts", str(prompts), "--out", str(out), "--endpoint-model", "m"],
              "--endpoint-model needs --endpoint")]
    try:
        for argv, words in cases:
            capsys.readouterr()
            code = main(argv)
            err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("instructjax: note")
                   and not line.startswith("instructjax: generating")]
            assert code == 2 and len(err) == 1 and err[0].startswith("instructjax: error: ") and words in err[0], err
            assert "attempt(s)" not in err[0] or "InternalServerError" in err[0], err  # refused: not retried
    finally:
        failing.shutdown()
    assert _Failing.posts == ["/v1/completions"] * 2  # one prompt, retried once; the others never sent
    assert not out.exists() and not (tmp_path / "req").exists()
    with pytest.raises(ConfigError, match="not an http"):
        Endpoint("localhost:8000")


class _Flaky(_Failing):
    """A server whose first completion is a server error, whose second drops the connection unanswered, and whose
    third answers."""

    posts: list = []

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).posts.append(self.path)
        if len(self.posts) == 1:
            self._send(500, {"error": {"message": "busy", "type": "server_error"}})
        elif len(self.posts) == 2:
            self.close_connection = True  # no answer: the client sees the connection dropped
        else:
            self._send(200, {"id": "c", "object": "text_completion", "created": 0, "model": "m",
                             "choices": [{"index": 0, "text": " fine", "finish_reason": "stop", "logprobs": None}]})
