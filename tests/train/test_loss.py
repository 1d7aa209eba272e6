"""Loss normalisation, per-source sums, accumulation and AdamW + schedule against numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from instructjax.core.config import OptimSection
from instructjax.core.errors import ConfigError
from instructjax.core.optimizer import warmup_linear_decay
from instructjax.model.decoder import abstract_model
from instructjax.model.presets import preset
from instructjax.train.loss import accumulate_gradients, loss_sums, per_source_sums, reduce_loss, token_nll
from instructjax.train.optim import make_optimizer


def random_model(config, seed=0, std=0.05):
    """A Decoder with numpy-random weights: no RNG compile, so tests stay fast."""
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(abstract_model(config))
    state = jax.tree.map(lambda x: jnp.asarray(rng.normal(0, std, x.shape), x.dtype), state)
    return nnx.merge(graphdef, state)


def numpy_nll(logits, targets):
    logits = np.asarray(logits, np.float64)
    logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_loss_sums_match_numpy(dtype):
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(3, 7, 50)) * 4, dtype)
    targets = rng.integers(0, 50, (3, 7))
    weights = rng.integers(0, 2, (3, 7)) * rng.uniform(0.5, 2, (3, 7))
    total, weight = loss_sums(logits, jnp.asarray(targets), jnp.asarray(weights))
    expected = (numpy_nll(np.asarray(logits.astype(jnp.float32)), targets) * weights).sum()
    assert total.dtype == jnp.float32
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)
    np.testing.assert_allclose(float(weight), weights.sum(), rtol=1e-6)
    np.testing.assert_allclose(float(reduce_loss(total, weight)), expected / weights.sum(), rtol=1e-5)
    assert float(reduce_loss(total, weight, "sum")) == float(total)
    assert float(reduce_loss(jnp.float32(0), jnp.float32(0))) == 0.0  # an all-prompt batch gives 0, not NaN


def test_per_source_sums_match_a_loop():
    rng = np.random.default_rng(1)
    nll = rng.uniform(0, 5, (4, 9)).astype(np.float32)
    weights = rng.integers(0, 2, (4, 9)).astype(np.float32)
    sources = rng.integers(0, 3, (4, 9))
    sums, counts = per_source_sums(jnp.asarray(nll), jnp.asarray(weights), jnp.asarray(sources), 3)
    for s in range(3):
        np.testing.assert_allclose(float(sums[s]), sum(
            nll[b, t] * weights[b, t] for b in range(4) for t in range(9) if sources[b, t] == s), rtol=1e-5)
        assert float(counts[s]) == weights[sources == s].sum()
    np.testing.assert_allclose(float(sums.sum()), float((token_nll_ref := nll * weights).sum()), rtol=1e-5)
    assert token_nll_ref.shape == (4, 9)


def _tiny_batch(rng, rows, width, vocab, weight_density):
    tokens = rng.integers(0, vocab, (rows, width))
    return {
        "tokens": tokens,
        "targets": rng.integers(0, vocab, (rows, width)),
        "positions": np.broadcast_to(np.arange(width), (rows, width)),
        "segment_ids": np.ones((rows, width), np.int32),
        "loss_weights": (rng.uniform(size=(rows, width)) < weight_density).astype(np.float32),
    }


def test_accumulating_uneven_micro_batches_equals_one_big_batch():
    config = preset("tiny", dtype="float32", vocab_size=256, num_layers=1)
    graphdef, params = nnx.split(random_model(config, std=0.3))  # peaked logits: token losses vary
    rng = np.random.default_rng(2)
    # two micro-batches with very different numbers of loss tokens
    a, b = _tiny_batch(rng, 2, 10, 256, 0.9), _tiny_batch(rng, 2, 10, 256, 0.15)
    assert a["loss_weights"].sum() > 3 * b["loss_weights"].sum()

    def sums_fn(p, batch):
        logits = nnx.merge(graphdef, p)(batch["tokens"], batch["positions"], batch["segment_ids"])
        return loss_sums(logits, batch["targets"], batch["loss_weights"])

    big = {k: jnp.asarray(np.concatenate([a[k], b[k]])) for k in a}
    big_loss, big_grads = jax.jit(jax.value_and_grad(lambda p: reduce_loss(*sums_fn(p, big))))(params)
    micro = {k: jnp.asarray(np.stack([a[k], b[k]])) for k in a}
    loss, grads, aux, weight = jax.jit(lambda p, mb: accumulate_gradients(sums_fn, p, mb))(params, micro)
    np.testing.assert_allclose(float(loss), float(big_loss), rtol=1e-5)
    np.testing.assert_allclose(float(aux), float(big["loss_weights"].sum()), rtol=1e-6)  # aux sums add up
    assert float(weight) == float(big["loss_weights"].sum())
    for g, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(big_grads), strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(ref), rtol=1e-4, atol=1e-7)
    # the naive mean of per-micro-batch means (what optax.MultiSteps does) is different
    mean_loss = jax.jit(lambda p, batch: reduce_loss(*sums_fn(p, batch)))
    naive = np.mean([float(mean_loss(params, {k: jnp.asarray(v) for k, v in m.items()})) for m in (a, b)])
    assert abs(naive - float(big_loss)) > 1e-3


def hf_linear_lr(step, peak, total, ratio):
    """transformers' get_linear_schedule_with_warmup, written out."""
    warmup = math.ceil(ratio * total)
    if step < warmup:
        return peak * step / warmup
    return peak * max(0.0, (total - step) / max(1, total - warmup))


@pytest.mark.parametrize("total,ratio", [(100, 0.03), (1000, 0.03), (10, 0.0), (7, 0.5)])
def test_schedule_matches_transformers_formula(total, ratio):
    schedule = warmup_linear_decay(2e-5, total, ratio)
    for step in range(total + 2):
        np.testing.assert_allclose(float(schedule(step)), hf_linear_lr(step, 2e-5, total, ratio), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("schedule,total,ratio", [("cosine", 100, 0.03), ("cosine", 50, 0.1), ("constant", 50, 0.1),
                                                   ("constant", 20, 0.0)])
def test_cosine_and_constant_schedules_match_transformers(schedule, total, ratio):
    """Seed 003's schedule and grpo's (open-instruct's `--lr_scheduler_type constant`) against transformers' own
    get_cosine_schedule_with_warmup and get_constant_schedule_with_warmup."""
    import torch
    import transformers

    from instructjax.core.optimizer import lr_schedule

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2e-5)
    warmup = math.ceil(ratio * total)
    hf = (transformers.get_cosine_schedule_with_warmup(opt, warmup, total) if schedule == "cosine" else
          transformers.get_constant_schedule_with_warmup(opt, warmup))
    ours = lr_schedule(2e-5, total, ratio, schedule=schedule)
    for step in range(total):
        np.testing.assert_allclose(float(ours(step)), hf.get_last_lr()[0], rtol=1e-5, atol=1e-12)
        opt.step()
        hf.step()


def numpy_adamw(params, grads_per_step, lr_fn, *, b1, b2, eps, wd, clip):
    """Reference AdamW (decoupled decay on matrices only) with global-norm clipping."""
    params = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    for t, grads in enumerate(grads_per_step):
        norm = math.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))
        factor = min(1.0, clip / norm)
        lr = lr_fn(t)
        for k in params:
            g = grads[k] * factor
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            m_hat, v_hat = m[k] / (1 - b1 ** (t + 1)), v[k] / (1 - b2 ** (t + 1))
            decay = wd * params[k] if params[k].ndim >= 2 else 0.0
            params[k] = params[k] - lr * (m_hat / (np.sqrt(v_hat) + eps) + decay)
    return params


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_steps_match_numpy(weight_decay):
    rng = np.random.default_rng(3)
    params = {"kernel": rng.normal(size=(6, 5)).astype(np.float32), "scale": rng.normal(size=(5,)).astype(np.float32)}
    grads = [{k: (rng.normal(size=p.shape) * 3).astype(np.float32) for k, p in params.items()} for _ in range(5)]
    total, ratio, peak = 10, 0.2, 1e-2
    tx, _ = make_optimizer(OptimSection(lr=peak, warmup_ratio=ratio, weight_decay=weight_decay, grad_clip=1.0), total)
    state, ours = tx.init(params), {k: jnp.asarray(v) for k, v in params.items()}
    for g in grads:
        updates, state = tx.update({k: jnp.asarray(v) for k, v in g.items()}, state, ours)
        ours = jax.tree.map(jnp.add, ours, updates)
    expected = numpy_adamw(params, grads, lambda t: hf_linear_lr(t, peak, total, ratio),
                           b1=0.9, b2=0.999, eps=1e-8, wd=weight_decay, clip=1.0)
    for k in params:
        np.testing.assert_allclose(np.asarray(ours[k]), expected[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert not np.allclose(np.asarray(ours["kernel"]), params["kernel"])  # it did move


def test_bad_settings_raise_config_error():
    with pytest.raises(ConfigError, match="reduction"):
        reduce_loss(jnp.float32(1), jnp.float32(1), "median")
    with pytest.raises(ConfigError, match="warmup_ratio"):
        warmup_linear_decay(1e-5, 100, warmup_ratio=1.5)
    with pytest.raises(ConfigError, match="total_steps"):
        make_optimizer(OptimSection(lr=1e-5), 0)
    with pytest.raises(ConfigError, match="optim.warmup_ratio"):
        OptimSection(warmup_ratio=1.5)
    with pytest.raises(ConfigError, match="optim.loss_reduction"):
        OptimSection(loss_reduction="median")
    assert token_nll(jnp.zeros((1, 2, 4)), jnp.zeros((1, 2), jnp.int32)).shape == (1, 2)
