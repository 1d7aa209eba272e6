"""DoReMi online (`data.reweighting: {method: doremi, ...}`) on the built-in A/C/P blend with a tiny LLaMA: each
step's domain weights are DoReMi's own `update_domain_weights` (pinned in tests/assets/doremi, run in torch) on the
excess of that step's per-token losses over the reference run's model (float64 numpy from each model's logits, the
proxy's as its previous checkpoint holds it), and the step's loss is DoReMi's reweighted loss under the new weights;
RUN_DIR/doremi.yaml proposes their running mean; a run stopped and resumed logs, trains and proposes what the
uninterrupted run does; a reference that is not the run's model, or not a run, is one line."""

from __future__ import annotations

import json
import types

import jax
import numpy as np
import pytest
import torch
import yaml
from flax import nnx
from helpers import pinned

from instructjax import cli
from instructjax.convert.saved import load_model
from instructjax.core.config import load_config
from instructjax.data.batches.pipeline import DataPipeline
from instructjax.model.decoder import Decoder
from instructjax.model.presets import preset
from instructjax.train import setup as run_setup
from instructjax.train.trainer import Trainer

BASE = [
    "model.preset=tiny", "model.dtype=float32", "data.mixture=acp_ACP_n10000_builtin", "data.seq_len=128",
    "data.global_batch=4", "data.pack_window=32", "optim.lr=3e-3", "optim.epochs=1", "log_every=1",
]  # fmt: skip
STEPS = 3
ETA = 2.0  # not DoReMi's default (1): the config's value is the one used


def config(run_dir, *overrides):
    return load_config(None, [*BASE, f"run_dir={run_dir}", *overrides])


def proxy_args(root) -> list[str]:
    return [f"max_steps={STEPS}", f"data.reweighting.reference={root / 'ref'}", f"data.reweighting.eta={ETA}"]


def train(run_dir, *overrides, stop_at=None, resume=False):
    return Trainer(config(run_dir, *overrides), resume=resume, devices=jax.devices()[:1]).run(stop_at=stop_at)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The reference run (2 steps), then the proxy (3 steps, every step saved) and its losses."""
    root = tmp_path_factory.mktemp("doremi")
    train(root / "ref", "max_steps=2")
    proxy = train(root / "proxy", *proxy_args(root), "checkpoint.every=1", "checkpoint.keep=10")
    return root, proxy.losses


def records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def logged(record: dict, kind: str) -> np.ndarray:
    return np.array([v for k, v in record.items() if k.startswith(f"doremi/{kind}/")])


def nll64(model, batch) -> np.ndarray:
    """Each token's negative log-likelihood of its target under `model`, in float64 from its logits."""
    logits = np.asarray(model(batch["tokens"], batch["positions"], batch["segment_ids"]), np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]


@pytest.fixture(scope="module")
def theirs():
    import wandb

    with pinned("doremi"):
        from doremi.trainer_update import DoReMiTrainer
    run = wandb.init(mode="disabled")
    yield DoReMiTrainer()
    run.finish()  # no W&B run left active for the tests after these


def test_each_steps_weights_are_doremis_update_on_its_excess_over_the_reference(runs, theirs):
    root, losses = runs
    data = run_setup.bind_data(config(root / "check", *proxy_args(root)), None).config  # as the trainer binds it
    pipeline = DataPipeline(data)
    sampling = np.array([len(examples) for examples in pipeline.stream.examples], np.float64)
    sampling /= sampling.sum()  # epoch mode: each task's share of the examples drawn
    theirs.args = types.SimpleNamespace(doremi_optimizer="doremiv1", reweight_eta=ETA, reweight_eps=1e-4)
    theirs.domain_list = list(pipeline.task_names)
    theirs.model = types.SimpleNamespace(train_domain_weights=torch.tensor(sampling, dtype=torch.float32),
                                         avg_domain_weights=torch.zeros(len(sampling)),
                                         perdomain_scores=torch.zeros(len(sampling)), update_counter=0)
    reference = load_model(str(root / "ref"))
    before = Decoder(preset("tiny", dtype="float32"), rngs=nnx.Rngs(0))  # the run's seed: its starting model
    logs = records(root / "proxy")
    assert [r["step"] for r in logs] == list(range(1, STEPS + 1))
    for step, batch in zip(range(1, STEPS + 1), pipeline, strict=False):
        nll, trained, domains = nll64(before, batch), batch["loss_weights"] > 0, batch["source_ids"]
        real = domains >= 0  # a padding token is no domain's
        excess = (nll - nll64(reference, batch))[real]
        # DoReMi's rows are one domain each: here every token is a row of its own
        theirs.update_domain_weights(torch.tensor(excess[:, None]), torch.tensor(trained[real][:, None]),
                                     torch.tensor(domains[real]))
        weights = theirs.model.train_domain_weights.numpy().astype(np.float64)
        np.testing.assert_allclose(logged(logs[step - 1], "weight"), weights, rtol=0, atol=2e-5)
        np.testing.assert_allclose(logged(logs[step - 1], "score"), theirs.model.perdomain_scores.numpy(), atol=2e-5)
        w = weights / sampling  # DoReMi's training_step: over the sampling rates, renormalised, at each trained token
        per_token = np.where(trained & real, (w / w.sum())[np.maximum(domains, 0)], 0.0)
        assert losses[step] == pytest.approx((nll * per_token).sum() / per_token.sum(), rel=2e-5)
        before = load_model(str(root / "proxy" / "checkpoints" / str(step)))
    assert not np.allclose(theirs.model.train_domain_weights.numpy(), sampling, atol=1e-3)  # the weights moved
    proposed = yaml.safe_load((root / "proxy" / "doremi.yaml").read_text())
    rates = proposed["define"]["mixtures"][proposed["data"]["mixture"]]["rates"]
    np.testing.assert_allclose(list(rates.values()), theirs.model.avg_domain_weights.numpy(), atol=2e-5)
    assert (root / "proxy" / "doremi.png").stat().st_size > 0


def test_a_stopped_and_resumed_proxy_is_the_uninterrupted_one(runs):
    root, losses = runs
    run_dir = root / "resumed"
    first = train(run_dir, *proxy_args(root), stop_at=1)
    rest = train(run_dir, *proxy_args(root), resume=True)
    assert {**first.losses, **rest.losses} == pytest.approx(losses, rel=1e-6)
    for mine, straight in zip(records(run_dir), records(root / "proxy"), strict=True):
        for kind in ("weight", "average", "score"):
            np.testing.assert_allclose(logged(mine, kind), logged(straight, kind), rtol=1e-6)
    resumed, straight = (yaml.safe_load((d / "doremi.yaml").read_text())["define"]["mixtures"]
                         for d in (run_dir, root / "proxy"))
    assert list(resumed) == list(straight)
    for name in resumed:
        np.testing.assert_allclose(list(resumed[name]["rates"].values()), list(straight[name]["rates"].values()),
                                   rtol=1e-6)


@pytest.mark.parametrize("case, words", [
    ("missing", "no intact checkpoint"),
    ("model", "its model is not this run's"),
    ("tasks", "trained on the tasks alpaca_builtin, code_alpaca_builtin, p3_builtin, not this run's alpaca_builtin, "
              "p3_builtin"),
    ("tokenizer", "trained with another tokenizer"),
])  # fmt: skip
def test_a_reference_that_is_not_the_runs_model_tasks_or_tokenizer_is_one_line(runs, tmp_path, capsys, case, words):
    root, _ = runs
    file = tmp_path / "c.yaml"
    file.write_text(f"run_dir: {tmp_path / 'bad'}\n")
    reference = root / ("missing" if case == "missing" else "ref")
    args = ["train", "--config", str(file), *BASE, "max_steps=1", "data.global_batch=8",
            f"data.reweighting.reference={reference}"]
    if case == "model":
        args.append("model.overrides.intermediate_size=96")  # another shape than the reference's
    if case == "tasks":  # two of the reference's three domains
        args += ["data.mixture=ap", "define.mixtures.ap.mode=rate", "define.mixtures.ap.rates.alpaca_builtin=1",
                 "define.mixtures.ap.rates.p3_builtin=1"]
    if case == "tokenizer":
        from helpers.pretrained_models import bpe_tokenizer

        args += [f"tokenizer={bpe_tokenizer(str(tmp_path / 'tokenizer'), vocab_size=600)}", "data.seq_len=512"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0] and str(reference) in err[0]
    assert not (tmp_path / "bad" / "checkpoints").exists()
