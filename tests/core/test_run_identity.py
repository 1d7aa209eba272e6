"""What a run's training depends on: the model's runs-only fields are the ones DecoderConfig declares (a resume may
change them), every other model field is trained on (a resume refuses a change), and the digest is that of the
keys as they were listed by hand before the declaration (DONE markers written then still match)."""

from __future__ import annotations

import dataclasses

from helpers import REPO

from instructjax.core.config import load_config, to_dict
from instructjax.core.run_identity import digest, training_changes, training_digest, training_values
from instructjax.model.config import DecoderConfig, runs_only_keys
from instructjax.model.presets import preset

# the hand list core/config.py held before the fields declared themselves
LISTED_BEFORE = ("model.overrides.attention", "model.overrides.attention_block",
                 "model.overrides.attention_backward_block", "model.overrides.scan_layers", "model.overrides.remat")


def _changes(key: str, old, new) -> list[str]:
    """What a resume saved with `key=old` and continued with `key=new` would be told changed."""
    before = to_dict(load_config(None, ["model.preset=tiny", f"{key}={old}"]))
    return training_changes(before, load_config(None, ["model.preset=tiny", f"{key}={new}"]),
                            not_training=runs_only_keys())


ADDED_SINCE = ("model.overrides.context_strategy", "model.overrides.context_reorder")  # in no config of then


def test_runs_only_fields_may_change_and_every_other_model_field_may_not():
    assert set(runs_only_keys()) == {*LISTED_BEFORE, *ADDED_SINCE}
    tiny = preset("tiny")
    for field in dataclasses.fields(DecoderConfig):
        key = f"model.overrides.{field.name}"
        value = getattr(tiny, field.name)
        other = {bool: lambda v: not v, int: lambda v: (v or 0) + 8, str: lambda v: v}.get(type(value))
        if other is None or other(value) == value:
            continue  # only a value the test can change simply (ints, bools)
        changed = _changes(key, str(value).lower(), str(other(value)).lower())
        assert (changed == []) == (key in runs_only_keys()), (key, changed)
    for key, old, new in (("model.overrides.attention", "xla", "blockwise"), ("model.remat", "none", "full"),
                          ("model.overrides.attention_block", "null", "256"), ("model.overrides.norm", "rms", "layer")):
        assert (_changes(key, old, new) == []) == (key.replace("model.remat", "model.overrides.remat")
                                                    in runs_only_keys()), key


def test_the_digest_is_that_of_the_hand_listed_keys():
    config = load_config(None, ["model.preset=tiny", "model.remat=full", "model.overrides.attention=xla"])
    listed = ("name", "run_dir", "log_every", "mesh", "distributed", "checkpoint", "eval", "wandb", "data.prefetch",
              "compiled", *LISTED_BEFORE, "optim.loss_chunk",
              "experiment")  # a key added since (the report's record of the run): not in the configs of then
    flat = {}

    def walk(prefix, value):  # the walk as core/config.py did it, over its own list
        if any(prefix == k or prefix.startswith(k + ".") for k in listed):
            return
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            flat[prefix] = value

    then = to_dict(config)
    del then["optim"]["neftune_alpha"]  # a key added since (NEFTune, off at 0.0): not in the configs of then
    del then["objective"]  # added since too (preference losses; `sft` is the loss of then)
    walk("", then)
    assert training_values(config, not_training=runs_only_keys()) == flat
    assert training_digest(config, not_training=runs_only_keys()) == digest(flat)


def test_the_experiment_record_is_not_what_a_run_trains():
    """`experiment:` (what the report reads: the paper's row) may be added or changed on resume, and leaves the
    digest a DONE marker records as it was."""
    assert _changes("experiment.family", "seed000", "seed002") == []
    plain = load_config(None, ["model.preset=tiny"])
    recorded = load_config(None, ["model.preset=tiny", "experiment.family=seed000", "experiment.ratio=1.5"])
    assert recorded.experiment == {"family": "seed000", "ratio": 1.5}
    assert training_digest(plain, not_training=runs_only_keys()) == training_digest(recorded, not_training=runs_only_keys())
    assert training_changes(to_dict(plain), recorded, not_training=runs_only_keys()) == []


def test_a_key_added_since_changes_the_digest_only_when_on():
    """NEFTune's `optim.neftune_alpha` came after runs were finished: at 0.0 (off) a run's digest is the one its DONE
    marker recorded before the key existed; on, it is a training change."""
    off = load_config(None, ["model.preset=tiny"])
    then = to_dict(off)
    del then["optim"]["neftune_alpha"], then["objective"]
    assert training_digest(off, not_training=runs_only_keys()) == digest(training_values(then, not_training=runs_only_keys()))
    dpo = load_config(None, ["model.preset=tiny", "objective.loss=dpo"])  # the objective came after them too
    assert training_changes(then, dpo, not_training=runs_only_keys()) == ["objective.loss: 'sft' -> 'dpo'"]
    on = load_config(None, ["model.preset=tiny", "optim.neftune_alpha=5"])
    assert training_digest(on, not_training=runs_only_keys()) != training_digest(off, not_training=runs_only_keys())
    assert _changes("optim.neftune_alpha", 0.0, 5.0) == ["optim.neftune_alpha: 0.0 -> 5.0"]
    assert training_changes(then, on, not_training=runs_only_keys()) == ["optim.neftune_alpha: 0.0 -> 5.0"]
    assert training_changes(then, off, not_training=runs_only_keys()) == []


# a grpo run's `objective:` as config.yaml and the checkpoint's meta stored it before the objectives had subsections:
# every option of every objective, flat (the Tulu 3 RLVR config's values)
FLAT_RLVR = {"loss": "grpo", "beta": 0.01, "gamma": 0.5, "reference": "cached", "reference_model": "start",
             "prompts_per_rollout": 48, "samples_per_prompt": 16, "temperature": 1.0, "response_length": 2048,
             "loss_fn": "dapo", "clip_lower": 0.2, "clip_higher": 0.2, "kl_estimator": 2,
             "advantage_normalization": "standard", "verification_reward": 10.0, "filter_zero_std": True,
             "verifier_errors": "zero", "use_rho_correction": False, "rho_clamp_lower_bound": 0.0,
             "rho_clamp_upper_bound": 2.0, "rho_mask_lower_bound": 0.0, "rho_mask_upper_bound": 0.0,
             "rho_mask_sequence_level": False, "rho_mask_tv_divergence": False, "async_steps": 0, "rollout_devices": 0}


def test_a_run_saved_with_the_flat_objective_keys_keeps_its_identity():
    """A run saved before `objective.<loss>:` existed resumes without a change and stays done (its DONE marker's
    digest); a change of an objective's option is named as it is typed now."""
    config = load_config(str(REPO / "configs/rlvr/tulu3_rlvr_llama3_8b.yaml"), ["model.preset=tiny",
                                                                                "model.init_from=null"])
    then = {**to_dict(config), "objective": dict(FLAT_RLVR)}
    assert training_changes(then, config, not_training=runs_only_keys()) == []
    assert training_digest(config, not_training=runs_only_keys()) == digest(training_values(
        then, not_training=runs_only_keys()))
    hotter = load_config(str(REPO / "configs/rlvr/tulu3_rlvr_llama3_8b.yaml"),
                         ["model.preset=tiny", "model.init_from=null", "objective.grpo.beta=0.02"])
    assert training_changes(then, hotter, not_training=runs_only_keys()) == ["objective.grpo.beta: 0.01 -> 0.02"]
    assert training_changes(to_dict(config), hotter, not_training=runs_only_keys()) == [
        "objective.grpo.beta: 0.01 -> 0.02"]
