"""A pod's hosts (model/batching.py, eval/score.py, cli/eval.py): `generate` and `score` on 2 JAX processes of 4 CPU
devices each (gloo collectives), the model sharded over all 8, every host feeding its own devices' rows and one
writing the results, against one process on one device."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
from helpers import TESTS  # noqa: E402
from helpers.host_devices import xla_flags  # noqa: E402
from helpers.models import make_hf  # noqa: E402

from instructjax.convert.saved import load_model, saved_tokenizer  # noqa: E402
from instructjax.eval.generate import Generator, Sampling, chat_tokenizer, complete  # noqa: E402
from instructjax.eval.score import score_texts  # noqa: E402

pytestmark = pytest.mark.slow
WORKER = TESTS / "helpers" / "eval_hosts_worker.py"
ROWS = [{"id": str(i), "instruction": text} for i, text in enumerate(
    ["Name a colour.", "What is two plus two?", "Write a haiku about rain, please.", "Hi", "Say something long."])]
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello", "One, two, three."]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_generate_and_score_on_two_hosts_equal_one_device(tmp_path):
    path = make_hf(tmp_path, "llama3_rope", seed=3)
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "out.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    mesh = ["--mesh", "data=2,fsdp=2,tensor=2", "--slots", "4", "--dtype", "float32"]
    generate = ["generate", "--model", path, "--prompts", str(prompts), "--out", str(out), "--max-new-tokens", "10",
                *mesh]
    score = ["score", "--model", path, "--text", *TEXTS, *mesh]
    port, procs = _free_port(), []
    for i in range(2):
        env = {**os.environ, "XLA_FLAGS": xla_flags(4), "JAX_PLATFORMS": "cpu",
               "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}
        procs.append(subprocess.Popen([sys.executable, str(WORKER), json.dumps(generate), json.dumps(score)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path))
    results = []
    for p in procs:
        try:
            results.append(p.communicate(timeout=300))
        finally:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]

    saved, template = saved_tokenizer(path)
    hf_tok = chat_tokenizer(path, saved, template)
    alone = Generator(load_model(path, dtype="float32"), hf_tok, slots=4)  # one process, one device
    expected = complete(alone, [dict(r) for r in ROWS], Sampling(max_new_tokens=10))
    assert [json.loads(line) for line in out.read_text().splitlines()] == expected
    printed = [json.loads(line) for line in results[0][0].splitlines() if line.startswith("{")]
    assert [line["text"] for line in printed] == TEXTS
    for line, reference in zip(printed, score_texts(alone, hf_tok, TEXTS), strict=True):
        assert [t for t, _ in line["tokens"]] == [t for t, _ in reference]
        np.testing.assert_allclose([lp for _, lp in line["tokens"]], [lp for _, lp in reference], atol=2e-5)
    assert not any(line.startswith("{") for line in results[1][0].splitlines())  # the second host writes nothing
