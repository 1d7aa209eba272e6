"""DPO anchors to the model it starts from (`objective.reference_model`, train/reference.py): after a LoRA SFT run,
a DPO run on it compares with that run's model as trained, its adapters included. At the first step the policy is
its reference: the loss is log 2 and every reward 0, whether the run goes on training the SFT adapters (`start`, the
default) or trains fresh ones on them merged (`base`), with the reference's log-probs cached before step 1 or
computed live in every step; and once the policy has moved, cached and live give the same numbers. The DPO run's
adapter exports onto the SFT run's Hugging Face base; fresh adapters on the merged SFT model have none (one line)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from instructjax import cli

SFT = ["model.dtype=float32", "model.lora.rank=4", "model.lora.alpha=16", "data.mixture=acp_ACP_builtin",
       "data.seq_len=256", "data.global_batch=4", "data.pack_window=64", "optim.lr=3e-2", "optim.warmup_ratio=0",
       "max_steps=1", "log_every=1", "checkpoint.async_save=false"]
DPO = ["model.dtype=float32", "data.mixture=preference_builtin", "data.seq_len=256", "data.global_batch=4",
       "data.pack_window=16", "optim.lr=1e-2", "optim.warmup_ratio=0", "log_every=1", "max_steps=2",
       "objective.loss=dpo", "objective.dpo.beta=0.1", "checkpoint.async_save=false"]
REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/margins")


def records(run_dir) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_dpo_after_a_lora_sft_run_starts_at_log_2_whatever_the_reference(tmp_path, on_one_device):
    """The SFT run: LoRA on an imported model (its adapters saved alone, on that base), one step."""
    from helpers.models import make_hf

    hf = make_hf(str(tmp_path), "gqa")
    assert cli.main(["import", "--hf", hf, "--out", str(tmp_path / "base")]) == 0
    sft = tmp_path / "sft"
    assert cli.main(["train", "--config", "/dev/null", *SFT, f"model.init_from={tmp_path / 'base'}",
                     f"run_dir={sft}"]) == 0
    runs = {}
    for model, where in [("start", "cached"), ("start", "live"), ("base", "live")]:
        run = tmp_path / f"{model}-{where}"
        assert cli.main(["train", "--config", "/dev/null", *DPO, f"model.init_from={sft}", f"run_dir={run}",
                         f"objective.dpo.reference_model={model}", f"objective.dpo.reference={where}"]) == 0
        runs[model, where] = records(run)
    for (model, where), steps in runs.items():
        first = steps[1]
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-6), (model, where, first)
        for key in REWARDS:
            assert abs(first[key]) < 1e-6, (model, where, key, first[key])
        assert steps[2]["loss"] != first["loss"]  # the policy moved off its reference
    cached, live = runs["start", "cached"], runs["start", "live"]
    for key in ("loss", "grad_norm", *REWARDS):
        np.testing.assert_allclose(cached[2][key], live[2][key], rtol=1e-4, atol=1e-6, err_msg=key)

    # the DPO run's adapter (start) sits on the SFT run's HF base; fresh adapters on the merged SFT model (base) have
    # no HF base: one line, nothing written
    assert cli.main(["export", "--checkpoint", str(tmp_path / "start-live"), "--out", str(tmp_path / "a"),
                     "--adapter"]) == 0
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["base_model_name_or_path"] == hf
    assert cli.main(["export", "--checkpoint", str(tmp_path / "base-live"), "--out", str(tmp_path / "b"),
                     "--adapter"]) == 2
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("keys, words", [
    (["objective.loss=dpo", "objective.dpo.reference=start"],
     r"objective.dpo.reference must be one of \('cached', 'live'\).*objective.dpo.reference_model: start \| base"),
    (["objective.loss=simpo", "objective.simpo.reference_model=base"], "objective.simpo.reference_model: unknown key"),
    (["objective.loss=grpo", "objective.grpo.beta=0", "objective.grpo.reference_model=base"],
     "objective.grpo.reference_model=base: this grpo has no reference model"),
    (["objective.loss=dpo", "objective.dpo.reference_model=sft"], "objective.dpo.reference_model must be one of"),
])
def test_a_reference_model_that_cannot_be_is_one_line(keys, words):
    from instructjax.core.config import load_config
    from instructjax.core.errors import ConfigError

    with pytest.raises(ConfigError, match=words):
        load_config(None, ["model.preset=tiny", *keys])
