"""LoRA and QLoRA on the tiny mixtures of experts (tests/helpers/families.py): the experts adapted as PEFT's
`target_parameters` (one A and B an expert, PEFT's `ParamWrapper`), an adapter PEFT made imported to PEFT's logits
and exported back to PEFT's tensors, which PEFT loads; what `all-linear` covers; a QLoRA step and its adapter in
PEFT on the base dequantized as bitsandbytes does."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from helpers.families import FAMILIES, SMALL, build_family, positions_of, randomise

from instructjax.convert.adapter import write_adapter
from instructjax.convert.hf import HFTensors, abstract_params, params_from_tensors, read_hf_config
from instructjax.convert.saved import export_checkpoint, import_hf
from instructjax.core.checkpoint import load_params
from instructjax.core.config import load_config
from instructjax.core.errors import ConfigError
from instructjax.model import lora, quantize
from instructjax.model.config import DecoderConfig
from instructjax.model.decoder import Decoder, with_params
from instructjax.train.optim import make_optimizer
from instructjax.train.step import build_step

peft = pytest.importorskip("peft")

EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


_jitted_call = nnx.jit(lambda model, *args: model(*args))


def our_logits(model, ids: np.ndarray) -> np.ndarray:
    """Our model's logits on `ids` (every position attended), run jitted: one program a shape, not the layers' ops
    one by one."""
    return np.asarray(_jitted_call(model, ids, positions_of(ids), np.ones_like(ids)))


def peft_logits(model, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.numpy()


def test_a_peft_expert_adapter_imports_to_peft_logits_and_exports_back(tmp_path):
    """PEFT's LoRA (A and B random) on the attention and the experts' fused parameters:
    `import --adapter` gives PEFT's logits within 1e-5 (float32), `export --adapter` writes PEFT's tensors back,
    and PEFT loads that export to the same logits (Qwen3-MoE, one layer dense: a loop of layers; the QLoRA test below
    exports a scanned Mixtral)."""
    name = "qwen3_moe"
    _, hf_model, _, _, hf_dir = build_family(name, tmp_path / "hf")
    modules = ["q_proj", "v_proj"]
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=modules, target_parameters=EXPERTS,
                             init_lora_weights=False)  # B random too: every adapter does something
    model = peft.get_peft_model(hf_model.float(), config).eval()
    model.save_pretrained(tmp_path / "peft")
    ids = np.random.default_rng(1).integers(3, SMALL["vocab_size"], (2, 20))
    theirs = peft_logits(model, ids)
    with model.disable_adapter():
        base = peft_logits(model, ids)

    import_hf(str(hf_dir), str(tmp_path / "ours"), adapter=str(tmp_path / "peft"))
    params, stored, _, _ = load_params(str(tmp_path / "ours"))
    ours_config = DecoderConfig.from_dict(stored).replace(dtype="float32", attention="xla")
    assert ours_config.lora["targets"] == sorted(modules) + EXPERTS
    ours = our_logits(with_params(ours_config, params), ids)
    diff = np.abs(ours - theirs).max()
    print(f"{name}: max |logit diff| ours vs PEFT's target_parameters: {diff:.2e}")
    assert diff < 1e-5 < np.abs(theirs - base).max()
    without_experts = lora.combine(jax.tree_util.tree_map_with_path(  # the experts' adapters alone zeroed
        lambda p, x: np.zeros_like(x) if any(str(getattr(k, "key", "")).endswith(lora.EXPERT_SUFFIX) for k in p)
        else x, lora.trainable(params)), lora.frozen(params))
    assert np.abs(our_logits(with_params(ours_config, without_experts), ids) - ours).max() > 1e-3  # the experts' adapters took part

    export_checkpoint(str(tmp_path / "ours"), str(tmp_path / "back"), adapter=True)
    from safetensors.numpy import load_file

    saved, back = (load_file(os.path.join(d, "adapter_model.safetensors")) for d in (tmp_path / "peft", tmp_path / "back"))
    assert sorted(saved) == sorted(back)
    assert max(np.abs(saved[k] - back[k]).max() for k in saved) < 1e-6
    written = json.loads((tmp_path / "back" / "adapter_config.json").read_text())
    assert written["target_parameters"] == EXPERTS
    fresh = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    loaded = peft.PeftModel.from_pretrained(fresh, str(tmp_path / "back")).eval()
    assert np.abs(peft_logits(loaded, ids) - theirs).max() < 1e-5


def test_all_linear_on_a_mixture_of_experts_says_what_it_covers(tmp_path):
    """`all-linear`: the attention and the experts' fused parameters, never the router nor Qwen3-MoE's dense MLP; the adapters' size as the model holds them; a dropout with the experts targeted (PEFT's
    ParamWrapper has none) is one line."""
    for name in ("qwen3_moe", "mixtral"):
        config_class, extra = FAMILIES[name]
        config_class(**{**SMALL, **extra}).save_pretrained(tmp_path / name)
        config = read_hf_config(str(tmp_path / name)).replace(lora={"rank": 2, "targets": "all-linear"})
        spec = lora.spec(config)
        assert spec.hf_targets == ("q_proj", "k_proj", "v_proj", "o_proj")  # not Qwen3-MoE's dense MLP (layer 1)
        dense = [i for i in range(SMALL["num_hidden_layers"]) if i in extra.get("mlp_only_layers", ())]
        assert (lora.unadapted(config) is None) == (not dense)  # said in one line (the trainer warns with it)
        assert not dense or f"dense MLPs of layer(s) {', '.join(map(str, dense))} " in lora.unadapted(config)
        assert lora.unadapted(config.replace(lora={"rank": 2, "targets": ["q_proj"]})) is None  # what was asked
        assert spec.hf_parameters == tuple(EXPERTS) and spec.expert_groups == (("gate_proj", "up_proj"),
                                                                                  ("down_proj",))
        assert lora.adapter_count(abstract_params(config)) == lora.adapter_params(config)
        with pytest.raises(ConfigError, match=r"dropout=0.05 with the experts targeted \(mlp.experts.gate_up_proj, "
                                              r"mlp.experts.down_proj, by all-linear\)") as e:
            config.replace(lora={"rank": 2, "dropout": 0.05})
        assert "\n" not in str(e.value)
    attention_only = config.replace(lora={"rank": 2, "dropout": 0.05, "targets": ["q_proj"]})  # no experts: fine
    assert lora.spec(attention_only).experts == ()


def test_qlora_on_a_mixture_of_experts_trains_a_step_and_its_adapter_loads_in_peft(tmp_path):
    """A tiny Mixtral (one 64-wide head: NF4's blocks of 64) with its attention stored NF4 and every linear and
    expert adapted: one step moves the adapters alone (the experts' too); the adapter exported gives our logits
    in PEFT on the base dequantized as bitsandbytes' `load_in_4bit` does (its nn.Linear alone: the experts stay)."""
    from helpers.bitsandbytes_nf4 import dequantize_projections

    hf_config = transformers.MixtralConfig(**{**SMALL, "num_hidden_layers": 2, "num_attention_heads": 1,
                                              "num_key_value_heads": 1, "head_dim": 64, "num_local_experts": 4,
                                              "num_experts_per_tok": 2})
    hf_model = transformers.MixtralForCausalLM(hf_config).eval()
    randomise(hf_model, seed=2)
    hf_model.save_pretrained(tmp_path / "hf")
    base_config = read_hf_config(str(tmp_path / "hf")).replace(dtype="float32", attention="xla")
    config = base_config.replace(lora={"rank": 4, "alpha": 8}, quantize_base="nf4")
    base = params_from_tensors(HFTensors(str(tmp_path / "hf")), base_config)
    fresh = nnx.to_pure_dict(nnx.state(Decoder(config.replace(quantize_base="none"), rngs=nnx.Rngs(0)), nnx.Param))
    params = lora.combine(lora.trainable(fresh), quantize.quantized(base, config))
    assert quantize.CODES in params["layers"]["self_attn"]["q_proj"] and "gate_proj" in params["layers"]["mlp"]

    run = load_config(None, ["data.seq_len=32", "data.global_batch=4", "optim.lr=1e-2", "optim.warmup_ratio=0"])
    tx, _ = make_optimizer(run.optim, 10)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    build = build_step(config, tx, run, 1, mesh)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 256, (4, 33)).astype(np.int32)
    batch = {"tokens": ids[:, :-1], "targets": ids[:, 1:], "positions": np.tile(np.arange(32, dtype=np.int32), (4, 1)),
             "segment_ids": np.ones((4, 32), np.int32), "loss_weights": np.ones((4, 32), np.float32),
             "source_ids": np.zeros((4, 32), np.int32)}
    before = jax.tree.map(np.array, params)
    params, _, metrics = build.step(params, build.init_optimizer(params), batch)
    after = jax.tree.map(np.array, params)
    assert np.isfinite(float(metrics["loss"]))
    for was, now in zip(jax.tree.leaves(lora.frozen(before)), jax.tree.leaves(lora.frozen(after)), strict=True):
        np.testing.assert_array_equal(was, now)
    experts = after["layers"]["mlp"]
    assert all(not np.array_equal(experts[f"{n}_lora"]["lora_b"], before["layers"]["mlp"][f"{n}_lora"]["lora_b"])
               for n in ("gate_proj", "up_proj", "down_proj"))

    write_adapter(lora.trainable(after), config, str(tmp_path / "adapter"), base=str(tmp_path / "hf"))
    ours = our_logits(with_params(config, after), ids)
    four_bit = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    dequantize_projections(four_bit)
    theirs = peft_logits(peft.PeftModel.from_pretrained(four_bit, str(tmp_path / "adapter")).eval(), ids)
    print(f"QLoRA MoE adapter in PEFT on the NF4 base vs ours: {np.abs(ours - theirs).max():.2e}")
    assert np.abs(ours - theirs).max() < 1e-4


@pytest.mark.slow
def test_a_lora_dpo_on_qwen3_moe_resumes_exports_scores_and_generates(tmp_path, capsys, on_one_device):
    """Through the CLI on a tiny Qwen3-MoE (one layer dense) with its own BPE tokenizer: `import`; a LoRA DPO
    (`all-linear`: the attention and the experts) with `pack: per_step`, resumed from its step 1 (its last checkpoint
    removed), whose step 2 is the uninterrupted run's again; `export --adapter`, which PEFT loads to our logits;
    `score`, PEFT's log-probs; greedy generation, PEFT's `generate`."""
    import shutil

    import yaml
    from helpers import pretrained_models as pm

    from instructjax import cli
    from instructjax.convert.saved import load_model
    from instructjax.eval.generate import Sampling, generate_ids

    config_class, extra = FAMILIES["qwen3_moe"]
    hf_config = config_class(**{**SMALL, **extra, "vocab_size": 272, "eos_token_id": 0, "bos_token_id": None,
                                "pad_token_id": None})
    hf_model = transformers.Qwen3MoeForCausalLM(hf_config).eval()
    randomise(hf_model, seed=3)
    hf_model.save_pretrained(tmp_path / "hf")
    pm.bpe_tokenizer(str(tmp_path / "hf"), vocab_size=250)  # the model's own tokenizer beside it
    assert cli.main(["import", "--hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ckpt")]) == 0

    def dpo(name: str, *extra: str) -> int:
        config = {"run_dir": str(tmp_path / name), "max_steps": 2, "log_every": 1, "seed": 0,
                  "model": {"init_from": str(tmp_path / "ckpt"), "dtype": "float32", "attention": "xla",
                            "lora": {"rank": 4, "alpha": 8, "targets": "all-linear"}},
                  "data": {"mixture": "preference_builtin", "seq_len": 512, "global_batch": 8, "pack": "per_step"},
                  "optim": {"lr": 1e-2, "warmup_ratio": 0.0, "loss_chunk": 64},
                  "objective": {"loss": "dpo", "dpo": {"beta": 0.1, "reference": "cached"}},
                  "checkpoint": {"every": 1, "async_save": False}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        return cli.main(["train", "--config", str(tmp_path / f"{name}.yaml"), *extra])

    def losses(name: str) -> list[float]:
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, lines) if "loss" in r]

    assert dpo("straight") == 0
    straight = losses("straight")
    assert len(straight) == 2 and straight[0] == pytest.approx(np.log(2), abs=1e-6) and straight[-1] != straight[0]
    shutil.rmtree(tmp_path / "straight" / "checkpoints" / "2")  # as a run that stopped after saving step 1
    assert dpo("straight", "--resume") == 0
    np.testing.assert_allclose(losses("straight")[-1:], straight[-1:], rtol=1e-6)

    adapter = str(tmp_path / "adapter")
    assert cli.main(["export", "--checkpoint", str(tmp_path / "straight"), "--out", adapter, "--adapter"]) == 0
    assert json.loads(open(f"{adapter}/adapter_config.json").read())["target_parameters"] == EXPERTS
    ours = load_model(str(tmp_path / "straight"), dtype="float32")
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    theirs = peft.PeftModel.from_pretrained(base, adapter).eval()
    ids = np.random.default_rng(5).integers(3, 250, (1, 30))
    expected = peft_logits(theirs, ids)
    got = our_logits(ours, ids)
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())
    with theirs.disable_adapter():
        assert np.abs(peft_logits(theirs, ids) - expected).max() > 1e-3  # the adapters trained

    text = "Write a haiku about the sea."
    capsys.readouterr()
    assert cli.main(["score", "--model", str(tmp_path / "straight"), "--text", text]) == 0
    scored = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    tokens = transformers.AutoTokenizer.from_pretrained(adapter)(text)["input_ids"]
    log_probs = torch.log_softmax(torch.tensor(peft_logits(theirs, np.array([tokens]))[0, :-1]), -1)
    want = log_probs[np.arange(len(tokens) - 1), tokens[1:]].numpy()
    np.testing.assert_allclose([lp for _, lp in scored["tokens"]], want, atol=1e-4)

    prompts = [[17, 99, 42], [250, 7]]
    generated = generate_ids(ours, prompts, Sampling(max_new_tokens=6), stop_ids=[-1])
    for prompt, new in zip(prompts, generated, strict=True):
        with torch.no_grad():
            hf = theirs.generate(input_ids=torch.tensor([prompt]), max_new_tokens=6, do_sample=False,
                                 eos_token_id=None, pad_token_id=0, attention_mask=torch.ones(1, len(prompt),
                                                                                              dtype=torch.long))
        assert new == hf[0, len(prompt):].tolist()
