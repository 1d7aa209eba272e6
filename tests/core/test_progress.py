"""Logs stay readable off a terminal: the real CLI writing to a pipe prints plain progress lines (no carriage
returns), and the libraries' own bars (transformers, lm-eval) are off; `Lines` counts, rates and ETAs."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
from helpers import REPO
from helpers.host_devices import xla_flags

from instructjax.core.progress import Lines


@pytest.mark.slow
def test_train_and_eval_off_a_terminal_print_plain_lines(tmp_path):
    env = {**os.environ, "INSTRUCTJAX_PROGRESS_SECONDS": "0"}  # a line at every step
    env.pop("TQDM_DISABLE", None)
    # one CPU device, not the suite's 8: the lines are the same, the steps not sharded 8 ways (half the run's CPU)
    env["XLA_FLAGS"] = xla_flags(1)
    run = subprocess.run([sys.executable, "-m", "instructjax.cli", "train", "--config", "/dev/null",
                          "model.preset=tiny", "data.mixture=acp_ACP_n10000_builtin", "data.seq_len=128",
                          "data.global_batch=8", "max_steps=5", f"run_dir={tmp_path / 'run'}"],
                         capture_output=True, text=True, env=env, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "\r" not in run.stderr + run.stdout
    lines = [line for line in run.stderr.splitlines() if line.startswith("train: ")]
    assert len(lines) == 5, run.stderr
    for step, line in enumerate(lines, 1):
        assert re.fullmatch(rf"train: {step}/5 step \({step * 20}%\), loss \d+\.\d{{4}}, tokens/s [\d,]+, .*", line), line
    assert "ETA" in lines[0] and "ETA" not in lines[-1]

    from helpers.models import make_hf_dir

    from instructjax.data.encoding.tokenizer import Tokenizer

    model = make_hf_dir(tmp_path / "hf")
    Tokenizer.load().save(model)
    ev = subprocess.run([sys.executable, "-m", "instructjax.cli", "eval", "--model", model, "--tasks", "ij_mc",
                         "--include-path", str(REPO / "instructjax" / "eval" / "offline_tasks"), "--limit", "2"],
                        capture_output=True, text=True, env=env, cwd=REPO, timeout=600)  # fmt: skip
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "\r" not in ev.stderr and "it/s]" not in ev.stderr  # no bar of transformers or lm-eval


def test_lines_count_rate_and_time_left(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("instructjax.core.progress.time.monotonic", lambda: clock[0])
    out = io.StringIO()
    lines = Lines(total=10, desc="train", unit="step", initial=2, stream=out, seconds=5)
    for _ in range(4):  # 4 steps in 4 s: under the interval, nothing printed
        clock[0] += 1
        lines.update(1)
    assert out.getvalue() == ""
    clock[0] += 1
    lines.set_postfix({"loss": "1.5000"})
    lines.update(1)  # 5 s: steps 3-7 at 1 step/s, 3 left
    assert out.getvalue() == "train: 7/10 step (70%), loss 1.5000, 1.00 step/s, ETA 0:03, elapsed 0:05\n"
    clock[0] += 3
    lines.update(3)
    lines.close()
    assert out.getvalue().splitlines()[-1] == "train: 10/10 step (100%), loss 1.5000, 1.00 step/s, elapsed 0:08"
