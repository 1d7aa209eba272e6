"""Every family against transformers' own modeling code (tests/helpers/families.py builds a tiny random model
with transformers, windows and soft-caps small enough to matter at these lengths, and imports its directory):
the config read, logits within float32 tolerance (scanned layers and a Python loop of layers), export writing
the imported tensors byte for byte, and import -> train -> export -> score through the CLI. Gradients:
test_families_gradients.py; packed rows, generation and routing: test_families_decoding.py."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from helpers.families import (
    CAUSAL_LM,
    FAMILIES,
    MOE,
    SMALL,
    WINDOW,
    positions_of,
    randomise,
)
from safetensors.numpy import load_file

from instructjax.convert.hf import HFTensors, params_from_tensors, params_to_hf
from instructjax.model.decoder import with_params


def test_config_reads_the_family(family):
    name, hf_model, _, config, _ = family
    switches = {"gemma2": ("attention_softcap", 2.0), "gemma3": ("qk_norm", True), "qwen3": ("qk_norm", True),
                "opt": ("positions", "learned"), "gpt_neox": ("rotary_dims", 8), "phi3": ("rotary_dims", 8),
                "mistral": ("sliding_window", WINDOW), "qwen2": ("layer_types", ("full", "sliding", "sliding"))}
    if name in switches:
        key, value = switches[name]
        assert getattr(config, key) == value
    assert sum(p.numel() for p in hf_model.parameters()) == sum(
        x.size for x in jax.tree.leaves(nnx.state(family[2], nnx.Param)))


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "loop"])
def test_logits_match_transformers(family, scan):
    name, hf_model, ours, config, path = family
    if not scan:
        loop = config.replace(scan_layers=False)
        ours = with_params(loop, params_from_tensors(HFTensors(str(path)), loop))
    tokens = np.random.default_rng(0).integers(3, config.vocab_size, size=(2, 24))
    with torch.no_grad():
        expected = hf_model(torch.tensor(tokens)).logits.numpy()
    got = np.asarray(ours(jnp.asarray(tokens), positions_of(tokens), jnp.ones_like(tokens)))
    assert np.abs(got - expected).max() <= 2e-4 * max(1.0, np.abs(expected).max()), np.abs(got - expected).max()


def test_export_writes_the_imported_tensors_byte_for_byte(family, tmp_path):
    name, _, ours, config, path = family
    params = nnx.state(ours, nnx.Param).to_pure_dict()
    params_to_hf(params, config, str(tmp_path), dtype="float32")
    original, exported = load_file(str(path / "model.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    assert sorted(exported) == sorted(n for n in original if n in exported)
    missing = set(original) - set(exported)
    assert missing <= {"lm_head.weight"} and (not missing or config.tie_embeddings)
    for n, tensor in exported.items():
        assert tensor.dtype == original[n].dtype and tensor.tobytes() == original[n].tobytes(), n


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    from helpers import pretrained_models as pm  # tests/helpers/pretrained_models.py

    return pm.bpe_tokenizer(str(tmp_path_factory.mktemp("bpe")), vocab_size=250)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma2", "phi3", "gpt_neox", "qwen3_moe"])
def test_import_train_export_score_through_the_cli(name, bpe_dir, tmp_path):
    """`instructjax import` of the family's HF directory (with its own tokenizer), a training step from it,
    `export`, and transformers reading the export: its logits equal the trained checkpoint's, and `score`
    gives transformers' log-probabilities."""
    import shutil

    import yaml
    from helpers import pretrained_models as pm

    from instructjax import cli
    from instructjax.convert.saved import load_model
    from instructjax.eval.score import score_ids

    config_class, extra = FAMILIES[name]
    hf_config = config_class(**{**SMALL, **extra, "vocab_size": 272, "eos_token_id": 0, "bos_token_id": None,
                                "pad_token_id": None})
    hf_config._attn_implementation = "eager"
    hf_model = (CAUSAL_LM.get(name) or transformers.AutoModelForCausalLM).from_config(hf_config).eval()
    randomise(hf_model, seed=3)
    hf_model.save_pretrained(tmp_path / "hf")
    shutil.copytree(bpe_dir, tmp_path / "hf", dirs_exist_ok=True)  # the model's own tokenizer beside it
    assert cli.main(["import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in pm.ALPACA_ROWS))
    run = {"run_dir": str(tmp_path / "run"), "max_steps": 2, "log_every": 1, "seed": 0,
           "model": {"init_from": str(tmp_path / "ckpt"), "dtype": "float32", "attention": "xla"},
           "data": {"mixture": "rows", "seq_len": 128, "global_batch": 8, "pack": False},
           "optim": {"lr": 1e-3, "loss_chunk": 64},
           "define": {"tasks": {"rows": {"source": "alpaca", "data_files": [str(rows)], "template": "tulu"}},
                      "mixtures": {"rows": {"mode": "epoch", "counts": {"rows": None}}}}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    assert cli.main(["train", "--config", str(tmp_path / "run.yaml")]) == 0
    if name in MOE:  # the router's losses and each sparse layer's expert shares, logged
        from instructjax.train.metrics import read_metrics

        last = read_metrics(str(tmp_path / "run"))[-1]
        assert last["moe/aux_loss"] > 0 and last["moe/z_loss"] > 0
        for layer in (0, 1):  # the two sparse layers of three (mlp_only_layers=[1])
            assert 0 <= last[f"moe/layer_{layer}/min_share"] <= 0.25 <= last[f"moe/layer_{layer}/max_share"] <= 1
    assert cli.main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "export")]) == 0
    ours = load_model(str(tmp_path / "run"), dtype="float32")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32).eval()
    assert type(theirs) is type(hf_model)
    ids = np.random.default_rng(5).integers(3, 250, (1, 30))
    with torch.no_grad():
        expected = theirs(torch.tensor(ids)).logits.numpy()
    got = np.asarray(ours(jnp.asarray(ids), positions_of(ids), jnp.ones_like(jnp.asarray(ids))))
    assert np.abs(got - expected).max() <= 2e-4 * max(1.0, np.abs(expected).max())
    assert np.abs(expected - hf_model(torch.tensor(ids)).logits.detach().numpy()).max() > 1e-4  # it trained
    (scored,) = score_ids(ours, [ids[0].tolist()])
    log_probs = torch.log_softmax(torch.tensor(expected[0]), -1)[np.arange(29), ids[0, 1:]].numpy()
    np.testing.assert_allclose(scored.logprobs, log_probs, atol=1e-4)


