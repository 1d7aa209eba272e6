"""`instructjax mix table` on a real swarm: two tiny proxies of the A/C/P blend drawn by `mix swarm` and trained by
`train`, each one's held-out loss on a task none trains on checked against the model's logits in float64 numpy (every
example alone, unpadded), its logged loss against its metrics.jsonl; the table `mix fit` reads; a proxy not trained yet
is one line naming it, nothing written."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from helpers.host_devices import one_device

from instructjax.cli import main

HELD_OUT = "dolly_builtin"  # not one of the A/C/P blend's tasks (alpaca, code_alpaca, p3)
EXAMPLES = 3


def reference_loss(run_dir: str, config_path: str) -> float:
    """The proxy's loss on HELD_OUT's first EXAMPLES examples: the model's logits for each example alone, log-softmax
    in float64, the negative log-probability of each trained token averaged over those tokens."""
    import jax.numpy as jnp

    from instructjax.cli import load_run_config
    from instructjax.convert.saved import load_model
    from instructjax.core.context import Context, current
    from instructjax.data.binding import bind
    from instructjax.data.tokenized.examples import encoded_examples
    from instructjax.train import setup as run_setup

    with Context(parent=current()):
        config = load_run_config(config_path)
        run_setup.run_registry(config)
        bound = bind(HELD_OUT, tokenizer=run_setup.tokenizer_path(config), template=config.template,
                     max_length=config.data.seq_len)
        examples = encoded_examples(bound.tasks[0])[:EXAMPLES]
    model = load_model(run_dir)
    total = count = 0.0
    for ex in examples:
        tokens = np.asarray(ex["tokens"])
        positions = jnp.arange(len(tokens))[None]
        logits = np.asarray(model(jnp.asarray(tokens[None]), positions, jnp.ones((1, len(tokens)), jnp.int32)),
                            np.float64)[0, :-1]
        logp = logits - logits.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        trained = np.asarray(ex["loss_mask"])[1:] != 0
        total -= logp[np.arange(len(tokens) - 1), tokens[1:]][trained].sum()
        count += trained.sum()
    return total / count


def test_mix_table_measures_each_proxy_and_names_those_not_trained(tmp_path, capsys):
    with one_device():  # nothing here is about sharding
        measured(tmp_path, capsys)


def measured(tmp_path, capsys) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({
        "name": "tiny_acp", "run_dir": str(tmp_path / "runs" / "tiny_acp"), "model": {"preset": "tiny"},
        "data": {"mixture": "acp_ACP_builtin", "seq_len": 128, "global_batch": 4, "pack_window": 16},
        "optim": {"lr": 3e-3, "warmup_ratio": 0, "schedule": "constant"}, "log_every": 1}))
    swarm = tmp_path / "swarm"
    assert main(["mix", "swarm", "--config", str(base), "--runs", "2", "--seed", "1", "--out", str(swarm),
                 "--max-repetition", "8", "max_steps=1"]) == 0
    proxies = list(csv.DictReader((swarm / "weights.csv").open()))
    out = tmp_path / "table.csv"
    capsys.readouterr()
    assert main(["mix", "table", str(swarm), "--target", "accuracy", "--out", str(out)]) == 2
    assert "target 'accuracy': write KIND:NAME" in capsys.readouterr().err and not out.exists()
    manifest = (swarm / "swarm.json").read_text()
    assert main(["mix", "table", str(swarm), "--target", "metric:loss", "--out", str(swarm / "swarm.csv")]) == 2
    assert "would write over the swarm's own" in capsys.readouterr().err
    assert (swarm / "swarm.json").read_text() == manifest and not (swarm / "swarm.csv").exists()
    targets = ["--target", f"loss:{HELD_OUT}", "--target", "metric:loss"]
    assert main(["train", "--config", str(swarm / proxies[0]["config"])]) == 0
    capsys.readouterr()

    assert main(["mix", "table", str(swarm), *targets, "--out", str(out), "--examples", str(EXAMPLES)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"instructjax: error: {swarm / 'weights.csv'}: 1 of 2 proxies lack a target: "
                            f"{proxies[1]['proxy']} (loss:{HELD_OUT}: no checkpoint in ")
    assert "metric:loss: never logged)" in error and "\n" not in error and not out.exists()

    assert main(["train", "--config", str(swarm / proxies[1]["config"])]) == 0
    assert main(["mix", "table", str(swarm), *targets, "--out", str(out), "--examples", str(EXAMPLES)]) == 0
    rows = list(csv.DictReader(out.open()))
    weights = [c for c in rows[0] if c.startswith("weight.")]
    assert [r["proxy"] for r in rows] == [p["proxy"] for p in proxies]
    assert weights == [c for c in proxies[0] if c.startswith("weight.")]
    for row, proxy in zip(rows, proxies, strict=True):
        assert [float(row[c]) for c in weights] == [float(proxy[c]) for c in weights]
        run_dir = yaml.safe_load((swarm / proxy["config"]).read_text())["run_dir"]
        assert float(row[f"loss:{HELD_OUT}"]) == pytest.approx(reference_loss(run_dir, str(swarm / proxy["config"])),
                                                               rel=1e-5)
        logged = [json.loads(line) for line in open(f"{run_dir}/metrics.jsonl")]
        assert float(row["metric:loss"]) == [m["loss"] for m in logged if "loss" in m][-1]
    losses = [float(r[f"loss:{HELD_OUT}"]) for r in rows]
    assert len(set(losses)) == 2  # each proxy trained on its own mixture
    assert json.loads((tmp_path / "table.json").read_text())["targets"] == [f"loss:{HELD_OUT}", "metric:loss"]

    from instructjax.mix.table import read_table

    table = read_table(str(out), "weight.", [f"loss:{HELD_OUT}"])
    assert np.array_equal(table.targets[f"loss:{HELD_OUT}"], losses)
