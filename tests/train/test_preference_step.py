"""The step on preference pairs (train/step.py `make_preference_step`): one DPO step on the same pairs laid out one a
row and packed several a row (data/batches/packing.py), against a brute force that runs each completion alone through
the model and applies the DPO formula in float64: the loss and rewards equal it, both layouts move the parameters
alike (the loss is exact whatever the packing; no token sees another segment's), and `pack_segments` (per_step) keeps
each pair's two sides in one row."""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from instructjax.core.config import load_config
from instructjax.data.batches.packing import SequencePacker, pack_segments
from instructjax.model.config import preset
from instructjax.model.decoder import Decoder, with_params
from instructjax.train.step import build_step

SEQ = 64
BETA = 0.5


def pairs(n: int = 6) -> list[dict]:
    """Random pairs: a shared prompt (untrained) then each side's completion (trained)."""
    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        prompt = rng.integers(3, 120, rng.integers(3, 8))
        sides = [np.concatenate([prompt, rng.integers(3, 120, rng.integers(2, 9))]) for _ in range(2)]
        masks = [np.concatenate([np.zeros(len(prompt)), np.ones(len(s) - len(prompt))]) for s in sides]
        out.append({"tokens": np.concatenate(sides).astype(np.int32), "loss_mask": np.concatenate(masks).astype(np.int32),
                    "rejected_at": len(sides[0])})
    return out


def side_logp(model_config, params, tokens: np.ndarray, mask: np.ndarray) -> float:
    """A completion's summed log-prob, the sequence alone in its row (float64 from the float32 logits)."""
    logits = with_params(model_config, params)(tokens[None, :-1], np.arange(len(tokens) - 1)[None],
                                               np.ones((1, len(tokens) - 1), np.int32))
    logps = jax.nn.log_softmax(np.asarray(logits, np.float64)[0], axis=-1)
    return float(sum(logps[t, tokens[t + 1]] for t in range(len(tokens) - 1) if mask[t + 1]))


@pytest.fixture(scope="module")
def setting():
    model = preset("tiny", dtype="float32", vocab_size=128, hidden_size=64, num_heads=2, num_kv_heads=1,
                   head_dim=32, intermediate_size=128, num_layers=2)
    params = nnx.to_pure_dict(nnx.state(Decoder(model, rngs=nnx.Rngs(0)), nnx.Param))
    reference = nnx.to_pure_dict(nnx.state(Decoder(model, rngs=nnx.Rngs(1)), nnx.Param))
    run = load_config(None, ["objective.loss=dpo", f"objective.beta={BETA}", "objective.reference=live",
                             f"data.seq_len={SEQ}", "optim.micro_batches=2"])
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    tx = optax.sgd(1.0)  # the update is the gradient: the layouts' gradients compared, not Adam's signs of them
    return model, params, reference, build_step(model, tx, run, 1, mesh), tx


def test_a_dpo_step_is_the_brute_force_whatever_the_packing(setting):
    model, params, reference, build, tx = setting
    assert build.takes_reference
    examples = pairs()
    want_losses, rewards = [], []
    for ex in examples:
        at, tokens, mask = ex["rejected_at"], ex["tokens"], ex["loss_mask"]
        sides = [(tokens[:at], mask[:at]), (tokens[at:], mask[at:])]
        ratio = [side_logp(model, params, t, m) - side_logp(model, reference, t, m) for t, m in sides]
        want_losses.append(np.logaddexp(0.0, -BETA * (ratio[0] - ratio[1])))  # -log sigmoid
        rewards.append([BETA * r for r in ratio])
    rewards = np.asarray(rewards)

    results = {}
    for layout, pack in (("one pair a row", False), ("packed", True)):
        rows, _ = SequencePacker(SEQ, pack=pack).pack_window(examples)
        rows = {k: np.concatenate([v, np.zeros((-len(v) % 2, SEQ), v.dtype)]) for k, v in rows.items()}  # even rows
        if layout == "packed":
            assert np.max(rows["segment_ids"]) >= 4, "several pairs share a row"
        copy = jax.tree.map(np.array, params)
        new, _, metrics = build.step(copy, tx.init(copy), rows, reference)
        np.testing.assert_allclose(float(metrics["loss"]), np.mean(want_losses), rtol=1e-4, err_msg=layout)
        assert float(metrics["pairs"]) == len(examples)
        np.testing.assert_allclose(float(metrics["rewards/chosen"]), rewards[:, 0].sum(), rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(float(metrics["rewards/margins"]), (rewards[:, 0] - rewards[:, 1]).sum(), rtol=1e-3,
                                   atol=1e-5)
        assert float(metrics["rewards/accuracies"]) == np.sum(rewards[:, 0] > rewards[:, 1])
        results[layout] = new
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6),
                 results["one pair a row"], results["packed"])


def test_per_step_packing_keeps_a_pairs_two_sides_in_one_row():
    rows, _ = SequencePacker(SEQ, pack=False).pack_window(pairs(5))
    packed = pack_segments(rows, capacity=SEQ, segments_per_row=2)
    for r, row in enumerate(rows["segment_ids"]):  # each pair: its tokens, positions and targets by side
        for side in (1, 2):
            where = np.nonzero(row == side)[0]
            found = [(i, np.nonzero(packed["segment_ids"][i] == s)[0]) for i in range(len(packed["tokens"]))
                     for s in range(1, packed["segment_ids"][i].max() + 1)]
            match = [(i, at) for i, at in found if len(at) == len(where)
                     and np.array_equal(packed["tokens"][i, at], rows["tokens"][r, where])
                     and np.array_equal(packed["positions"][i, at], rows["positions"][r, where])]
            assert match, f"pair {r} side {side} is not whole in the packed rows"
    segs = packed["segment_ids"]
    assert all(segs[i].max() % 2 == 0 for i in range(len(segs)) if segs[i].max())  # whole pairs a row
