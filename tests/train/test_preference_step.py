"""The step on preference pairs (train/step.py `make_step` of a DPO objective): one DPO step on the same pairs laid out one a
row and packed several a row (data/batches/packing.py), against a brute force that runs each completion alone through
the model and applies the DPO formula in float64 (a LLaMA and a Gemma-2, its sliding windows and capped logits): the loss and rewards equal it, both layouts move the parameters
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
from instructjax.model.config import DecoderConfig
from instructjax.model.decoder import Decoder, with_params
from instructjax.model.presets import preset
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


def side_logps(model_config, params, sides: list[tuple[np.ndarray, np.ndarray]]) -> list[float]:
    """Each completion's summed log-prob, each sequence alone in its row (padded after its end: causal attention
    never looks there), float64 from the float32 logits."""
    width = max(len(t) for t, _ in sides) - 1
    tokens = np.stack([np.pad(t[:-1], (0, width - len(t) + 1)) for t, _ in sides])
    logits = with_params(model_config, params)(tokens, np.tile(np.arange(width), (len(sides), 1)),
                                               np.ones((len(sides), width), np.int32))
    logps = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
    return [float(sum(logps[i, t, tok[t + 1]] for t in range(len(tok) - 1) if mask[t + 1]))
            for i, (tok, mask) in enumerate(sides)]


# Gemma-2 in small: sliding windows across the packed pairs, capped scores and logits, tied embeddings
GEMMA = DecoderConfig(family="gemma2", vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=16, norm="rms_plus_one", activation="gelu_tanh", sandwich_norms=True,
                      embed_scale=True, tie_embeddings=True, query_scale=24 ** -0.5, attention_softcap=2.0,
                      final_softcap=3.0, sliding_window=12, layer_types=("sliding", "full"),
                      max_position_embeddings=512, dtype="float32")
FAMILIES = {"llama": lambda: preset("tiny", dtype="float32", vocab_size=128, hidden_size=64, num_heads=2,
                                    num_kv_heads=1, head_dim=32, intermediate_size=128, num_layers=2),
            "gemma2": lambda: GEMMA}


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def setting(request):
    model = FAMILIES[request.param]()
    params = nnx.to_pure_dict(nnx.state(Decoder(model, rngs=nnx.Rngs(0)), nnx.Param))
    reference = nnx.to_pure_dict(nnx.state(Decoder(model, rngs=nnx.Rngs(1)), nnx.Param))
    run = load_config(None, ["objective.loss=dpo", f"objective.dpo.beta={BETA}", "objective.dpo.reference=live",
                             f"data.seq_len={SEQ}", "optim.micro_batches=2"])
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    tx = optax.sgd(1.0)  # the update is the gradient: the layouts' gradients compared, not Adam's signs of them
    return model, params, reference, build_step(model, tx, run, 1, mesh), tx


def test_a_dpo_step_is_the_brute_force_whatever_the_packing(setting):
    model, params, reference, build, tx = setting
    assert build.takes_reference
    examples = pairs()
    sides = [(ex["tokens"][a:b], ex["loss_mask"][a:b]) for ex in examples
             for a, b in ((0, ex["rejected_at"]), (ex["rejected_at"], len(ex["tokens"])))]
    ratios = (np.asarray(side_logps(model, params, sides)) - side_logps(model, reference, sides)).reshape(-1, 2)
    want_losses = np.logaddexp(0.0, -BETA * (ratios[:, 0] - ratios[:, 1]))  # -log sigmoid
    rewards = BETA * ratios

    layouts = {layout: SequencePacker(SEQ, pack=pack).pack_window(examples)[0]
               for layout, pack in (("one pair a row", False), ("packed", True))}
    count = len(layouts["one pair a row"]["tokens"])
    count += count % 2  # even rows; the packed rows padded with empty ones to as many (one compiled step for both)
    assert len(layouts["packed"]["tokens"]) < count and np.max(layouts["packed"]["segment_ids"]) >= 4, \
        "several pairs share a row"
    results = {}
    for layout, rows in layouts.items():
        rows = {k: np.concatenate([v, np.zeros((count - len(v), SEQ), v.dtype)]) for k, v in rows.items()}
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
