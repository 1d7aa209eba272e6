"""LESS's gradient features and scores (instructjax/train/less.py) against LESS's own code, pinned in tests/assets/less
and run here on a tiny LLaMA in transformers with the PEFT LoRA our adapters export to: the same weights, examples
and Adam moments. Each example's gradient (`obtain_gradients`), sign (`obtain_sign_gradients`) and Adam features
(`obtain_gradients_with_adam`) within 1e-5 (relative, in norm); with one projection matrix, the scores of LESS's
matching (`calculate_influence_score`, the checkpoints' weighting, the subtasks' mean and max) within 1e-5, and the
same examples on top."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from helpers import pinned
from helpers.models import lora_run_on_hf

from instructjax.convert.adapter import adapter_tensors
from instructjax.convert.saved import export_checkpoint
from instructjax.model import lora
from instructjax.train import less

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")

LORA = {"rank": 4, "alpha": 16, "targets": ["q_proj", "v_proj"]}
LENGTH = 12


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(our config and parameters, the PEFT model on the HF base with the same adapters)."""
    from transformers import AutoModelForCausalLM

    tmp = tmp_path_factory.mktemp("less")
    hf, config, params, run = lora_run_on_hf(tmp, LORA, step=1)
    export_checkpoint(run, str(tmp / "adapter"), adapter=True)
    theirs = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hf).float(), str(tmp / "adapter"),
                                            is_trainable=True)
    return config, params, theirs


def examples(seed: int, n: int):
    """`n` examples: token ids [n, LENGTH + 1] and HF labels (-100 on each example's prompt)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 32000, (n, LENGTH + 1))
    labels = ids.copy()
    for i in range(n):
        labels[i, : rng.integers(2, LENGTH - 2)] = -100
    return ids, labels


def our_rows(ids, labels) -> dict[str, np.ndarray]:
    n = ids.shape[0]
    return {"tokens": ids[:, :-1].astype(np.int32), "targets": ids[:, 1:].astype(np.int32),
            "loss_weights": (labels[:, 1:] != -100).astype(np.float32),
            "positions": np.tile(np.arange(LENGTH, dtype=np.int32), (n, 1)),
            "segment_ids": np.ones((n, LENGTH), np.int32)}  # fmt: skip


def ours_in_peft_order(config, params, theirs, ids, labels) -> np.ndarray:
    """Our per-example gradients [n, D], each laid out as LESS flattens PEFT's: its trainable parameters in order."""
    grads = less.gradients(*less.model_parts(config), params, our_rows(ids, labels))
    names = [n for n, p in theirs.named_parameters() if p.requires_grad]
    per_example = []
    for i in range(ids.shape[0]):
        one = jax.tree.map(lambda g, i=i: np.asarray(g[i]), grads)
        tensors = adapter_tensors(lora.combine(one, lora.frozen(jax.tree.map(np.asarray, params))), config)
        per_example.append(np.concatenate([tensors[n.replace(".default", "")].reshape(-1) for n in names]))
    return np.stack(per_example)


def theirs_each(theirs, ids, labels, fn, *args) -> np.ndarray:
    out = []
    for i in range(ids.shape[0]):
        batch = {"input_ids": torch.tensor(ids[i : i + 1]), "labels": torch.tensor(labels[i : i + 1]),
                 "attention_mask": torch.ones(1, ids.shape[1], dtype=torch.long)}
        out.append(fn(theirs, batch, *args).detach().numpy().copy())
        theirs.zero_grad()
    return np.stack(out)


def close(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_each_examples_gradient_sign_and_adam_features_are_less_own(models):
    config, params, theirs = models
    with pinned("less"):
        from less.data_selection.grads_extract import (
            obtain_gradients,
            obtain_gradients_with_adam,
            obtain_sign_gradients,
        )
    ids, labels = examples(0, 4)
    ours = ours_in_peft_order(config, params, theirs, ids, labels)
    plain = theirs_each(theirs, ids, labels, obtain_gradients)
    assert close(ours, plain) < 1e-5 and np.abs(plain).max() > 0
    signs = theirs_each(theirs, ids, labels, obtain_sign_gradients)
    agree = np.asarray(less.features(ours, "sign")) == signs
    assert agree[np.abs(plain) > 1e-6].all()  # a sign is only defined away from 0
    rng = np.random.default_rng(1)
    m = rng.normal(0, 1e-3, ours.shape[1]).astype(np.float32)
    v = rng.uniform(1e-8, 1e-5, ours.shape[1]).astype(np.float32)
    adam = theirs_each(theirs, ids, labels, obtain_gradients_with_adam, torch.tensor(m), torch.tensor(v))
    assert close(np.asarray(less.features(ours, "adam", m, v)), adam) < 1e-5


def test_scores_under_one_projection_are_less_matching_and_pick_the_same_examples(models):
    """Two checkpoints (two sets of Adam moments), 6 train and 4 target examples in 2 subtasks of 2."""
    config, params, theirs = models
    with pinned("less"):
        from less.data_selection.grads_extract import obtain_gradients, obtain_gradients_with_adam
        from less.data_selection.matching_extract import calculate_influence_score
    train_ids, train_labels = examples(2, 6)
    target_ids, target_labels = examples(3, 4)
    ours_train = ours_in_peft_order(config, params, theirs, train_ids, train_labels)
    ours_target = ours_in_peft_order(config, params, theirs, target_ids, target_labels)
    matrix = less.rademacher(ours_train.shape[1], 32, seed=0)
    rng = np.random.default_rng(4)
    moments = [(rng.normal(0, 1e-3, ours_train.shape[1]).astype(np.float32),
                rng.uniform(1e-8, 1e-5, ours_train.shape[1]).astype(np.float32)) for _ in range(2)]
    weights = [2e-5, 1e-5]  # LESS weighs each checkpoint by its learning rate

    ours_c, theirs_c = [], []
    for m, v in moments:
        ours_c.append((less.project(less.features(ours_train, "adam", m, v), matrix),
                       less.project(less.features(ours_target, "sgd"), matrix)))
        full_train = theirs_each(theirs, train_ids, train_labels, obtain_gradients_with_adam, torch.tensor(m),
                                 torch.tensor(v))
        full_target = theirs_each(theirs, target_ids, target_labels, obtain_gradients)
        p = torch.tensor(np.asarray(matrix))
        theirs_c.append((torch.nn.functional.normalize(torch.tensor(full_train) @ p, dim=1),
                         torch.nn.functional.normalize(torch.tensor(full_target) @ p, dim=1)))
    scores, best = less.influence([np.asarray(a) for a, _ in ours_c], [np.asarray(b) for _, b in ours_c], weights,
                                  ["x", "x", "y", "y"])
    # matching.py's script body, line for line: weights renormalised, the weighted sum, the subtasks' mean and max
    checkpoint_weights = [w / sum(weights) for w in weights] if sum(weights) != 1 else weights
    influence_score = 0
    for i, (train_info, validation_info) in enumerate(theirs_c):
        influence_score += checkpoint_weights[i] * calculate_influence_score(
            training_info=train_info.float(), validation_info=validation_info.float())
    expected = influence_score.reshape(influence_score.shape[0], 2, -1).mean(-1).max(-1)
    np.testing.assert_allclose(scores, expected[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(best, expected[1].numpy())
    assert list(less.top(scores, 3)) == list(torch.argsort(expected[0], descending=True)[:3].numpy())
