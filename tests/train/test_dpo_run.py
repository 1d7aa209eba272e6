"""`instructjax train` with a preference loss (`objective:`): a DPO run on the built-in UltraFeedback-schema pairs
starts at log 2 (the policy is its reference) and moves off it, logs TRL's rewards, and `pack: per_step` with the
reference's log-probs cached, stopped mid-run and resumed, gives the unpacked run's losses and rewards with the
reference live, step for step (the pairs of each step are the same; a pair is never cut across rows or
micro-batches); the objective and the mixture disagreeing is one line before anything is read, in train and plan."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from instructjax import cli
from instructjax.core.config import load_config
from instructjax.core.errors import ConfigError
from instructjax.train.trainer import Trainer

BASE = ["model.preset=tiny", "model.dtype=float32", "data.mixture=preference_builtin", "data.seq_len=256",
        "data.global_batch=16", "data.pack_window=32", "optim.lr=1e-3", "optim.warmup_ratio=0", "log_every=1",
        "max_steps=2", "optim.micro_batches=2", "checkpoint.every=2", "objective.loss=dpo", "objective.dpo.beta=0.1",
        "objective.dpo.reference=live"]  # fmt: skip
REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")


def records(run_dir) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def test_cached_per_step_resumed_is_the_live_unpacked_dpo_run(tmp_path, capsys):
    """The unpacked run with the reference live in every step, against per_step with the reference's log-probs
    cached before step 1 (stored in the run), stopped after step 1 and resumed (read back, not recomputed: step 2, the
    policy moved off its reference, against the live run's); each run trains 2 steps, as per_step makes each step its
    own program to compile. A resume
    from another starting model than the one they were made with is one line. The progress line and loss.png show
    the preference loss, the rewards' accuracy and margin as metrics.jsonl logs them."""
    from instructjax.train.metrics import loss_figure, read_metrics

    assert cli.main(["train", "--config", "/dev/null", *BASE, "data.pack=false", f"run_dir={tmp_path / 'a'}"]) == 0
    last = [line for line in capsys.readouterr().err.splitlines() if line.startswith("train: 2/2 step")][-1]
    logged = records(tmp_path / "a")
    assert (f"loss {logged[2]['loss']:.4f}, acc {logged[2]['rewards/accuracies']:.3f}, "
            f"margin {logged[2]['rewards/margins']:.4f}") in last, last
    assert (tmp_path / "a" / "loss.png").stat().st_size > 1000
    figure = loss_figure(read_metrics(tmp_path / "a"), "a")  # loss.png's
    assert figure.axes[0].get_ylabel() == "preference loss (nats/pair)"
    lines = {line.get_label().split()[0]: list(line.get_ydata()) for ax in figure.axes for line in ax.get_lines()}
    for key in ("loss", "rewards/accuracies", "rewards/margins"):
        assert lines[key] == [logged[step][key] for step in range(1, 3)], key
    cached = [*BASE, "data.pack=per_step", "objective.dpo.reference=cached", f"run_dir={tmp_path / 'b'}"]
    first = Trainer(load_config(None, cached))
    assert first.run(stop_at=1).step == 1
    stored = sorted((tmp_path / "b" / "reference_logps").iterdir())
    assert len(stored) == 1
    stamp = stored[0].stat().st_mtime_ns
    other = Trainer(load_config(None, [*cached, f"model.init_from={tmp_path / 'a'}"]), resume=True)
    with pytest.raises(ConfigError, match="holds the log-probs of the reference .*seed.*not of this run's starting"):
        other.run()  # another starting model than the stored log-probs': one line, nothing trained
    assert cli.main(["train", "--resume", "--config", "/dev/null", *cached]) == 0
    assert stored[0].stat().st_mtime_ns == stamp  # read back on resume
    want, got = records(tmp_path / "a"), records(tmp_path / "b")
    assert sorted(want) == sorted(got) == [1, 2]
    assert want[1]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at the first step
    assert want[1]["loss_reduction"] == "pairs" and all(k in want[2] for k in REWARDS)
    assert want[2]["loss"] != want[1]["loss"] and want[2]["rewards/margins"] != 0  # the policy moved off its reference
    for step in (1, 2):
        assert got[step]["tokens"] == want[step]["tokens"]
        for key in ("loss", "grad_norm", *REWARDS):
            np.testing.assert_allclose(got[step][key], want[step][key], rtol=2e-4, atol=1e-5, err_msg=f"{step} {key}")


@pytest.mark.parametrize("changes, words", [
    (["objective.loss=sft"], "holds preference pairs: set objective.loss to dpo"),
    (["objective.loss=orpo"], "objective.dpo: objective.loss is orpo, which reads only objective.orpo"),
    (["data.mixture=alpaca_builtin"], "has no preference task"),
])
def test_an_objective_the_mixture_disagrees_with_is_one_line(tmp_path, changes, words, capsys):
    base = [a for a in BASE if not a.startswith("objective.dpo.")] if "objective.loss=sft" in changes else BASE
    with pytest.raises(ConfigError, match=words):
        Trainer(load_config(None, [*base, *changes, f"run_dir={tmp_path / 'r'}"]))
    assert not (tmp_path / "r").exists()
    # plan (and plan --compile, which plans first) refuses what the trainer refuses, in the same words
    assert cli.main(["plan", "--config", "/dev/null", *base, *changes, "--topology", "v5e-8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(words, err[0]), err
