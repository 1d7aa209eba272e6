"""A LoRA run exported as a PEFT adapter (`export --adapter`: PEFT's names and shapes, loaded by
`peft.PeftModel.from_pretrained` on the HF base) and merged (`export`): both give our model's log-probs."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
peft = pytest.importorskip("peft")

from helpers.models import lora_run_on_hf, make_hf  # noqa: E402

from instructjax.convert.saved import export_checkpoint, import_hf  # noqa: E402
from instructjax.core.checkpoint import load_params  # noqa: E402
from instructjax.model import lora  # noqa: E402
from instructjax.model.config import DecoderConfig  # noqa: E402
from instructjax.model.decoder import with_params  # noqa: E402

LORA = {"rank": 4, "alpha": 16, "targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"]}


def log_probs(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    logits = logits[:, :-1].astype(np.float64)
    z = logits - logits.max(-1, keepdims=True)
    lp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return np.take_along_axis(lp, ids[:, 1:, None], -1)[..., 0]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(our log-probs, the HF base dir, the adapter dir, the merged dir, token ids, our config)."""
    tmp = tmp_path_factory.mktemp("lora_export")
    hf, config, params, run = lora_run_on_hf(tmp, LORA, step=5)
    rng = np.random.default_rng(1)
    export_checkpoint(run, str(tmp / "adapter"), adapter=True)
    export_checkpoint(run, str(tmp / "merged"), tokenizer=hf)
    ids = rng.integers(3, 32000, (2, 24)).astype(np.int32)
    positions, segments = np.tile(np.arange(24, dtype=np.int32), (2, 1)), np.ones_like(ids)
    ours = log_probs(np.asarray(with_params(config, params)(ids, positions, segments)), ids)
    return ours, hf, str(tmp / "adapter"), str(tmp / "merged"), ids, config


def test_adapter_files_are_peft_layout(exported):
    from safetensors.numpy import load_file

    _, hf, adapter, _, _, config = exported
    saved = json.load(open(os.path.join(adapter, "adapter_config.json")))
    assert saved["peft_type"] == "LORA" and saved["r"] == 4 and saved["lora_alpha"] == 16
    assert saved["target_modules"] == LORA["targets"] and saved["base_model_name_or_path"] == hf
    tensors = load_file(os.path.join(adapter, "adapter_model.safetensors"))
    assert len(tensors) == 2 * 6 * config.num_layers
    assert tensors["base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight"].shape == (4, 64)
    assert tensors["base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight"].shape == (32, 4)
    assert tensors["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"].shape == (4, 96)


def test_peft_and_the_merged_export_give_our_log_probs(exported):
    import torch
    from transformers import AutoModelForCausalLM

    ours, hf, adapter, merged, ids, _ = exported
    with torch.no_grad():
        model = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(hf).float(), adapter).eval()
        theirs = log_probs(model(torch.tensor(ids, dtype=torch.long)).logits.numpy(), ids)
        folded = AutoModelForCausalLM.from_pretrained(merged).float().eval()
        merged_lp = log_probs(folded(torch.tensor(ids, dtype=torch.long)).logits.numpy(), ids)
        plain = AutoModelForCausalLM.from_pretrained(hf).float().eval()
        base_lp = log_probs(plain(torch.tensor(ids, dtype=torch.long)).logits.numpy(), ids)
    diff = np.abs(ours - theirs).max()
    print(f"max |log-prob diff| ours vs PEFT: {diff:.2e}; vs merged: {np.abs(ours - merged_lp).max():.2e}")
    assert diff < 2e-3
    assert np.abs(ours - merged_lp).max() < 2e-3
    assert np.abs(ours - base_lp).max() > 1e-2  # the adapters change the model: the comparison means something


def test_a_peft_adapter_imports_to_peft_log_probs_and_exports_back(tmp_path):
    """`import --hf BASE --adapter DIR` of an adapter PEFT made (both A and B random): our model gives PEFT's
    log-probs, and `export --adapter` writes PEFT's tensors back."""
    import torch
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    hf = make_hf(str(tmp_path), "gqa")
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                             lora_dropout=0.0, init_lora_weights=False)  # B random too: the adapter does something
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(hf).float(), config).eval()
    model.save_pretrained(tmp_path / "peft")
    ids = np.random.default_rng(1).integers(3, 32000, (2, 20)).astype(np.int32)
    with torch.no_grad():
        theirs = log_probs(model(torch.tensor(ids, dtype=torch.long)).logits.numpy(), ids)
        base_lp = log_probs(AutoModelForCausalLM.from_pretrained(hf).float()(torch.tensor(ids)).logits.numpy(), ids)

    import_hf(hf, str(tmp_path / "ours"), adapter=str(tmp_path / "peft"))
    params, stored, _, _ = load_params(str(tmp_path / "ours"))
    ours_config = DecoderConfig.from_dict(stored).replace(dtype="float32")
    assert ours_config.lora == {"rank": 4, "alpha": 8, "dropout": 0.0,
                                "targets": ["down_proj", "q_proj", "up_proj", "v_proj"]}
    positions, segments = np.tile(np.arange(20, dtype=np.int32), (2, 1)), np.ones_like(ids)
    ours = log_probs(np.asarray(with_params(ours_config, params)(ids, positions, segments)), ids)
    assert np.abs(ours - base_lp).max() > 1e-2
    assert np.abs(ours - theirs).max() < 2e-3, np.abs(ours - theirs).max()

    export_checkpoint(str(tmp_path / "ours"), str(tmp_path / "back"), adapter=True)
    saved, back = (load_file(os.path.join(d, "adapter_model.safetensors")) for d in (tmp_path / "peft", tmp_path / "back"))
    assert sorted(saved) == sorted(back)
    assert max(np.abs(saved[k] - back[k]).max() for k in saved) < 1e-6


def test_export_says_the_adapters_size_and_a_failed_one_leaves_nothing(exported, tmp_path, capsys):
    """The line `export --adapter` prints counts the adapter's elements (PEFT's trainable parameters), not the
    model's; a checkpoint without adapters is one line, exit 2, and no output directory."""
    from instructjax import cli

    _, hf, adapter, _, _, config = exported
    run = os.path.join(os.path.dirname(adapter), "run")
    assert cli.main(["export", "--checkpoint", run, "--out", str(tmp_path / "again"), "--adapter"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    from safetensors.numpy import load_file

    elements = sum(t.size for t in load_file(os.path.join(adapter, "adapter_model.safetensors")).values())
    assert f"a LoRA adapter of {elements:,} parameters" in line, line
    base = os.path.join(os.path.dirname(adapter), "base")  # imported without adapters
    assert cli.main(["export", "--checkpoint", base, "--out", str(tmp_path / "none"), "--adapter"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was not trained with model.lora" in err[0], err
    assert not (tmp_path / "none").exists()


def test_export_over_an_earlier_export_is_refused_or_replaces_it_whole(exported, tmp_path, capsys):
    """A merged export over an earlier --adapter export: one line naming --force, nothing touched; with --force the
    directory holds the merged export's files alone (a stale adapter_config.json beside them made transformers load
    the base plus that adapter). An --out that holds the checkpoint itself is never emptied."""
    from instructjax import cli

    _, hf, adapter, merged, _, _ = exported
    run = os.path.join(os.path.dirname(adapter), "run")
    out = tmp_path / "out"
    assert cli.main(["export", "--checkpoint", run, "--out", str(out), "--adapter"]) == 0
    before = {name: (out / name).stat().st_mtime_ns for name in os.listdir(out)}
    assert "adapter_config.json" in before
    capsys.readouterr()
    again = ["export", "--checkpoint", run, "--out", str(out), "--tokenizer", hf]
    assert cli.main(again) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--out {out} is not empty" in err[0] and "--force" in err[0], err
    assert {name: (out / name).stat().st_mtime_ns for name in os.listdir(out)} == before
    assert cli.main([*again, "--force"]) == 0
    assert sorted(os.listdir(out)) == sorted(os.listdir(merged))
    parent = os.path.dirname(run)
    assert cli.main(["export", "--checkpoint", run, "--out", parent, "--force"]) == 2
    assert "holds the checkpoint" in capsys.readouterr().err and os.path.isdir(os.path.join(run, "checkpoints"))


def test_an_adapter_imported_onto_another_base_is_a_warning(exported, tmp_path, capsys):
    """An adapter made on one model imported onto another of the same shapes: a warning naming both; onto its own
    base: none."""
    _, hf, adapter, _, _, _ = exported
    other = make_hf(str(tmp_path), "gqa", seed=1)  # the same shapes, other weights
    import_hf(other, str(tmp_path / "other"), adapter=adapter)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warning" in err[0] and hf in err[0] and other in err[0], err
    import_hf(hf, str(tmp_path / "own"), adapter=adapter)
    assert "warning" not in capsys.readouterr().err


def test_an_adapter_we_cannot_run_is_one_line(tmp_path):
    from instructjax.core.errors import ConfigError

    hf = make_hf(str(tmp_path), "gqa")
    os.makedirs(tmp_path / "peft")
    json.dump({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"], "use_dora": True},
              open(tmp_path / "peft" / "adapter_config.json", "w"))
    with pytest.raises(ConfigError, match="use_dora=True is not supported"):
        import_hf(hf, str(tmp_path / "ours"), adapter=str(tmp_path / "peft"))


TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0)
# family -> (config class, its own keys, PEFT's target_modules): the fused modules among them
FUSED = {"phi3": ("Phi3Config", dict(num_key_value_heads=2), ["qkv_proj", "gate_up_proj", "down_proj"]),
         "gpt_neox": ("GPTNeoXConfig", dict(rotary_pct=0.5), "all-linear")}


@pytest.mark.parametrize("family", list(FUSED))
def test_a_peft_adapter_on_fused_modules_imports_exports_and_merges(tmp_path, family):
    """Phi-3's qkv_proj / gate_up_proj and GPT-NeoX's query_key_value are one PEFT module each (one lora_A shared
    by q, k and v, or gate and up; lora_B cut like the fused weight, per head for GPT-NeoX): an adapter PEFT made
    with A and B random imports to PEFT's log-probs, merged too; `export --adapter` writes PEFT's tensors back; our
    parameter count is PEFT's trainable count."""
    import torch
    import transformers
    from safetensors.numpy import load_file

    name, keys, targets = FUSED[family]
    torch.manual_seed(0)
    hf_model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, name)(**TINY, **keys)).float()
    with torch.no_grad():
        for n, p in hf_model.named_parameters():  # larger than the init's, norms around 1: a misplaced piece shows
            p.copy_((1.0 if "norm" in n and n.endswith("weight") else 0.0) + 0.08 * torch.randn_like(p))
    hf_model.save_pretrained(tmp_path / "hf")
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0, init_lora_weights=False)
    model = peft.get_peft_model(hf_model, config).eval()
    model.save_pretrained(tmp_path / "peft")
    ids = np.random.default_rng(1).integers(3, 256, (2, 20)).astype(np.int32)
    with torch.no_grad():
        theirs = log_probs(model(torch.tensor(ids, dtype=torch.long)).logits.numpy(), ids)
        with model.disable_adapter():
            base_lp = log_probs(model(torch.tensor(ids, dtype=torch.long)).logits.numpy(), ids)

    import_hf(str(tmp_path / "hf"), str(tmp_path / "ours"), adapter=str(tmp_path / "peft"))
    params, stored, _, _ = load_params(str(tmp_path / "ours"))
    ours_config = DecoderConfig.from_dict(stored).replace(dtype="float32")
    assert ours_config.family == family
    assert lora.adapter_params(ours_config) == lora.adapter_count(params) == model.get_nb_trainable_parameters()[0]
    positions, segments = np.tile(np.arange(20, dtype=np.int32), (2, 1)), np.ones_like(ids)
    ours = log_probs(np.asarray(with_params(ours_config, params)(ids, positions, segments)), ids)
    assert np.abs(ours - base_lp).max() > 1e-2
    assert np.abs(ours - theirs).max() < 2e-3, np.abs(ours - theirs).max()
    folded = with_params(ours_config.replace(lora=None), lora.merged(jax.device_get(params), ours_config))
    assert np.abs(log_probs(np.asarray(folded(ids, positions, segments)), ids) - theirs).max() < 2e-3

    export_checkpoint(str(tmp_path / "ours"), str(tmp_path / "back"), adapter=True)
    saved, back = (load_file(os.path.join(d, "adapter_model.safetensors")) for d in (tmp_path / "peft", tmp_path / "back"))
    assert sorted(saved) == sorted(back)
    assert max(np.abs(saved[k] - back[k]).max() for k in saved) < 1e-6
    written = json.load(open(tmp_path / "back" / "adapter_config.json"))["target_modules"]  # all-linear: full names
    assert set(written) == {t.rsplit(".", 1)[-1] for t in model.peft_config["default"].target_modules}
