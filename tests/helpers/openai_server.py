"""A real OpenAI-compatible server on 127.0.0.1 for the tests: `transformers serve` (the `transformers[serving]`
extra) pinned to a tiny local LLaMA, the judge tests' and the generation endpoint's (tests/conftest.py's
`openai_server` fixture starts one per session: the start is the cost)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

from helpers import pretrained_models as pm

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def judge_model(root: str) -> str:
    """A tiny LLaMA (byte-level BPE, no BOS, EOS id 0) with a chat template, taught to answer every chat with two
    scores ("8 6"), as a judge does, so judged results come out as numbers; its directory."""
    tok = pm.bpe_tokenizer(os.path.join(root, "tokenizer"), vocab_size=600)
    config_file = os.path.join(tok, "tokenizer_config.json")
    with open(config_file) as f:
        config = json.load(f)
    with open(config_file, "w") as f:
        json.dump({**config, "chat_template": CHAT_TEMPLATE}, f)
    from transformers import AutoTokenizer

    encode = AutoTokenizer.from_pretrained(tok).encode
    docs = [encode(f"user: {line}\nassistant: 8 6\n") + [0] for line in pm.corpus()[:300]]
    return pm.hf_model(os.path.join(root, "model"), tok, vocab_size=608, bos=None, eos=0, seed=1, pretrain_steps=150,
                       tokens=docs)


@contextlib.contextmanager
def serve(model: str, log: str) -> Iterator[str]:
    """`transformers serve MODEL` on a free port, on the CPU, offline; yields its base URL (".../v1")."""
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "transformers")
    with open(log, "w") as out:
        proc = subprocess.Popen([exe, "serve", model, "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 180
            while True:
                try:
                    urllib.request.urlopen(url + "/health", timeout=2).read()
                    break
                except OSError:
                    if proc.poll() is not None or time.time() > deadline:
                        with open(log) as f:
                            raise RuntimeError(f"transformers serve did not start: {f.read()[-2000:]}") from None
                    time.sleep(0.5)
            yield url + "/v1"
        finally:
            proc.terminate()
            proc.wait(30)
