"""A preference fine-tune equals TRL's, loss for loss (benchmarks/trl_dpo.py, small): the same tiny Qwen2, the same
UltraFeedback-schema pairs in the same order, the model's own chat template. DPO with the reference cached against
TRL's DPOTrainer (loss_type sigmoid), SimPO against its CPOTrainer (loss_type simpo): the token ids and trained
positions of every side are TRL's, and the loss and the rewards of every step within 1e-4 (8 pairs a step: one a device)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
pytest.importorskip("trl")

import trl_dpo  # noqa: E402


@pytest.mark.parametrize("loss", ["dpo", "simpo"])
def test_a_preference_run_is_trls_loss_for_loss(loss):
    summary = trl_dpo.main(["--loss", loss, "--steps", "3", "--pairs", "16", "--batch", "8", "--no-append"])
    assert summary["same_tokens"]
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert summary[f"worst_{key}"] < 1e-4, key
