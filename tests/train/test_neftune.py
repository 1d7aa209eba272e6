"""NEFTune (`optim.neftune_alpha`, train.step): uniform noise in [-a, a], a = alpha / sqrt(length x hidden), on the
token embeddings of the train step alone, as transformers' `neftune_post_forward_hook`; drawn from the step's key
(the run's seed and the optimizer's update count), so a resumed step draws the same noise."""

from __future__ import annotations

import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from instructjax.core.config import load_config
from instructjax.core.errors import ConfigError
from instructjax.eval.generate import Sampling, generate_ids
from instructjax.eval.score import score_ids
from instructjax.model.decoder import Decoder
from instructjax.model.presets import preset
from instructjax.train import step as train_step
from instructjax.train.objectives import objective_for
from instructjax.train.optim import make_optimizer
from instructjax.train.step import make_step, neftune_keys, neftune_noise

ALPHA = 5.0
ROWS, LENGTH, HIDDEN = 4, 128, 64
LENGTHS = (40, 77, 128, 9)  # each row one example of this many tokens, padded to LENGTH


def config(alpha: float, *overrides: str):
    return load_config(None, ["model.preset=tiny", "model.dtype=float32", f"data.seq_len={LENGTH}",
                              f"data.global_batch={ROWS}", f"optim.neftune_alpha={alpha}", *overrides])


def batch() -> dict[str, np.ndarray]:
    """Unpacked rows (one example each from position 0, then padding), the second half of each trained."""
    rng = np.random.default_rng(0)
    rows = {k: np.zeros((ROWS, LENGTH), np.int32) for k in ("tokens", "targets", "positions", "segment_ids")}
    rows["loss_weights"] = np.zeros((ROWS, LENGTH), np.float32)
    rows["source_ids"] = np.full((ROWS, LENGTH), -1, np.int32)
    for r, n in enumerate(LENGTHS):
        ids = rng.integers(3, 32000, n)
        rows["tokens"][r, :n], rows["targets"][r, : n - 1] = ids, ids[1:]
        rows["positions"][r, :n], rows["segment_ids"][r, :n], rows["source_ids"][r, :n] = np.arange(n), 1, 0
        rows["loss_weights"][r, n // 2 : n - 1] = 1.0
    return rows


@pytest.fixture(scope="module")
def model_parts():
    graphdef, state = nnx.split(Decoder(preset("tiny", dtype="float32"), rngs=nnx.Rngs(1)))
    return graphdef, nnx.to_pure_dict(state)


_STEPS: dict = {}  # (alpha, overrides) -> (jitted step, optimizer): each step compiled once for the module


def one_step(model_parts, alpha: float, *overrides: str, opt_state=None, fresh: bool = False):
    """(metrics, opt_state before) of one jitted train step on one device (the state is not donated); `fresh`
    traces the step anew (and keeps it to itself), for a test that watches the trace."""
    graphdef, params = model_parts
    built = None if fresh else _STEPS.get((alpha, overrides))
    if built is None:
        run = config(alpha, *overrides)
        tx, _ = make_optimizer(run.optim, 10)
        mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
        built = jax.jit(make_step(objective_for(run, 1), graphdef, tx, run, mesh)), tx
        if not fresh:
            _STEPS[alpha, overrides] = built
    step, tx = built
    opt_state = tx.init(params) if opt_state is None else opt_state
    return jax.device_get(step(params, opt_state, batch())[2]), opt_state


def test_noise_scale_matches_transformers_hook():
    """On [4, 128, 64] zeros: our noise and transformers' hook's (on a torch tensor of that shape, module in
    training) stay within a = alpha / sqrt(128 * 64) (float64 numpy), reach it, have mean 0 and variance a^2 / 3,
    and are one distribution (two-sample KS); the hook adds nothing in eval mode, as our eval paths."""
    torch = pytest.importorskip("torch")
    scipy_stats = pytest.importorskip("scipy.stats")
    from transformers.integrations.neftune import neftune_post_forward_hook

    a = np.float64(ALPHA) / np.sqrt(np.float64(LENGTH) * np.float64(HIDDEN))
    ours = np.asarray(neftune_noise(ALPHA, jax.random.key(0))(jnp.zeros((ROWS, LENGTH, HIDDEN))), np.float64)
    module = torch.nn.Embedding(8, HIDDEN)
    module.neftune_noise_alpha = ALPHA
    torch.manual_seed(0)
    theirs = neftune_post_forward_hook(module.train(), None, torch.zeros(ROWS, LENGTH, HIDDEN)).double().numpy()
    n = ours.size
    for noise in (ours, theirs):
        assert np.abs(noise).max() <= a * (1 + 1e-6)
        assert np.abs(noise).max() >= a * 0.999
        assert abs(noise.mean()) < 5 * a / np.sqrt(3 * n)  # 5 standard errors
        assert noise.var() == pytest.approx(a**2 / 3, rel=0.03)
    assert scipy_stats.ks_2samp(ours.ravel(), theirs.ravel()).pvalue > 1e-3
    eval_out = neftune_post_forward_hook(module.eval(), None, torch.ones(ROWS, LENGTH, HIDDEN))
    assert torch.equal(eval_out, torch.ones(ROWS, LENGTH, HIDDEN))
    # the embeddings' dtype is kept, the noise added to them
    x = jnp.full((ROWS, LENGTH, HIDDEN), 0.5, jnp.bfloat16)
    noisy = neftune_noise(ALPHA, jax.random.key(1))(x)
    assert noisy.dtype == jnp.bfloat16 and float(jnp.abs(noisy.astype(jnp.float32) - 0.5).max()) <= a + 2**-8


def test_the_step_noises_the_padded_row_length_from_its_key(model_parts, monkeypatch):
    """The step's noise takes the row length the batch is padded to (transformers' padded `output.size(1)`) and
    the model's hidden size, its keys one a micro-batch from (seed, update count): the step's loss is the loss of
    the model given exactly that noise."""
    seen = []

    def recording(alpha, key):
        add = neftune_noise(alpha, key)
        return lambda x: (seen.append((alpha, x.shape)), add(x))[1]

    monkeypatch.setattr(train_step, "neftune_noise", recording)
    metrics, opt_state = one_step(model_parts, ALPHA, fresh=True)
    assert seen == [(ALPHA, (ROWS, LENGTH, HIDDEN))] * len(seen) and seen
    graphdef, params = model_parts
    model, b = nnx.merge(graphdef, params), batch()
    noise = neftune_noise(ALPHA, neftune_keys(config(ALPHA).seed, opt_state, 1)[0])
    hidden, _ = model.hidden_states(b["tokens"], b["positions"], b["segment_ids"], embed_noise=noise)
    logp = jax.nn.log_softmax(model.logits(hidden).astype(jnp.float32), axis=-1)
    nll = -np.take_along_axis(np.asarray(logp), b["targets"][..., None], axis=-1)[..., 0]
    expected = (nll * b["loss_weights"]).sum() / b["loss_weights"].sum()
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)


def test_alpha_zero_is_the_plain_step(model_parts):
    """neftune_alpha 0 traces no random number at all (the step as it was before NEFTune) and its loss is the
    noiseless forward's."""
    graphdef, params = model_parts
    run = config(0.0)
    tx, _ = make_optimizer(run.optim, 10)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    jaxpr = str(jax.make_jaxpr(make_step(objective_for(run, 1), graphdef, tx, run, mesh))(params, tx.init(params), batch()))
    assert "random_bits" not in jaxpr and "threefry" not in jaxpr and "random_wrap" not in jaxpr
    noisy = str(jax.make_jaxpr(make_step(objective_for(config(ALPHA), 1), graphdef, tx, config(ALPHA), mesh))(
        params, tx.init(params), batch()))
    assert "random_bits" in noisy  # the check above could see the noise
    plain, _ = one_step(model_parts, 0.0)
    model, b = nnx.merge(graphdef, params), batch()
    logp = jax.nn.log_softmax(model(b["tokens"], b["positions"], b["segment_ids"]).astype(jnp.float32), axis=-1)
    nll = -np.take_along_axis(np.asarray(logp), b["targets"][..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(plain["loss"], (nll * b["loss_weights"]).sum() / b["loss_weights"].sum(), rtol=1e-5)


def test_noise_changes_the_training_loss_but_not_score_or_generate(model_parts):
    """alpha 5 moves the step's loss; `score_ids` and greedy `generate_ids` of the same parameters give the noiseless
    loss (from the scored log-probs) and the noiseless forward's tokens. Nothing outside train/step.py passes the
    model an embedding hook."""
    plain, _ = one_step(model_parts, 0.0)
    noisy, _ = one_step(model_parts, ALPHA)
    assert abs(float(noisy["loss"]) - float(plain["loss"])) > 1e-4
    graphdef, params = model_parts
    model, b = nnx.merge(graphdef, params), batch()
    scores = score_ids(model, [b["tokens"][r, :n].tolist() for r, n in enumerate(LENGTHS)], batch_size=ROWS)
    nll = np.concatenate([-s.logprobs[n // 2 : n - 1] for s, n in zip(scores, LENGTHS, strict=True)])
    np.testing.assert_allclose(plain["loss"], nll.mean(), rtol=1e-5)
    prompt = b["tokens"][0, :8].tolist()
    generated = generate_ids(model, [prompt], Sampling(temperature=0.0, max_new_tokens=4), stop_ids=[2])[0]
    ids = list(prompt)
    for _ in range(len(generated)):
        logits = model(jnp.asarray([ids]), jnp.arange(len(ids))[None], jnp.ones((1, len(ids)), jnp.int32))
        ids.append(int(jnp.argmax(logits[0, -1])))
    assert generated == ids[len(prompt):]
    package = pathlib.Path(train_step.__file__).parents[1]
    callers = sorted(str(p.relative_to(package)) for p in package.rglob("*.py") if "embed_noise=" in p.read_text())
    assert callers == ["train/step.py"]


def test_the_step_key_makes_resume_exact(model_parts):
    """The same step (same seed, same update count: a resumed run's restored optimizer state) draws the same noise
    and gives the same loss, bit for bit; another update count or seed draws other noise; micro-batches each their own
    key. An optimizer without an update count is refused with one line."""
    first, opt_state = one_step(model_parts, ALPHA)
    again, _ = one_step(model_parts, ALPHA, opt_state=opt_state)
    assert float(first["loss"]) == float(again["loss"])
    later = jax.tree.map(lambda x: x + 1 if getattr(x, "dtype", None) == jnp.int32 and x.ndim == 0 else x, opt_state)
    moved, _ = one_step(model_parts, ALPHA, opt_state=later)
    reseeded, _ = one_step(model_parts, ALPHA, "seed=7")
    assert float(moved["loss"]) != float(first["loss"]) and float(reseeded["loss"]) != float(first["loss"])
    keys = jax.random.key_data(neftune_keys(0, opt_state, 2))
    assert not np.array_equal(keys[0], keys[1])
    with pytest.raises(ConfigError, match="neftune_alpha"):
        neftune_keys(0, (), 1)


def test_neftune_alpha_is_checked_and_is_a_training_key():
    from instructjax.core.run_identity import training_values

    assert config(0.0).optim.neftune_alpha == 0.0 and config(5).optim.neftune_alpha == 5.0
    with pytest.raises(ConfigError, match="neftune_alpha"):
        config(-1.0)
    assert "optim.neftune_alpha" in training_values(config(5.0), not_training=())


def test_a_resumed_run_draws_the_same_noise(tmp_path):
    """4 steps straight with neftune_alpha 5; its last checkpoint removed, the run resumed from step 2 gives steps
    3-4 their losses again, bit for bit; the trainer passes the noise on: step 1's loss is off the noiseless run's."""
    from instructjax.train.trainer import Trainer

    def run(name, *overrides, resume=False):
        run_config = load_config(None, [
            "model.preset=tiny", "model.dtype=float32", "data.mixture=acp_ACP_n10000_builtin", "data.seq_len=128",
            "data.global_batch=8", "data.pack_window=64", "optim.lr=3e-3", "optim.epochs=1", "log_every=1",
            "max_steps=4", "checkpoint.every=2", f"run_dir={tmp_path / name}", *overrides])  # fmt: skip
        return Trainer(run_config, resume=resume, devices=jax.devices()[:1]).run().losses

    straight = run("straight", "optim.neftune_alpha=5")
    shutil.rmtree(tmp_path / "straight" / "checkpoints" / "4")  # as a run that stopped after saving step 2
    resumed = run("straight", "optim.neftune_alpha=5", resume=True)
    assert sorted(resumed) == [3, 4] and [resumed[s] for s in (3, 4)] == [straight[s] for s in (3, 4)]
    plain = run("plain", "max_steps=1")  # step 1's loss is taken before any update: the noise alone moves it
    assert plain[1] != straight[1]
