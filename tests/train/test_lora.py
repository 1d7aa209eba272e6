"""LoRA (`model.lora`, model/lora.py): one adapted projection against numpy, a fresh adapter (B = 0) leaves the
model's logits exactly as the base's, only the adapters train (the base bitwise unchanged, AdamW's state the
adapters' alone), a fused module's group shares one A, `lora.dropout` drops the adapters' input in the train step
alone, and bad input is one line."""

from __future__ import annotations

import collections
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from instructjax.core.config import load_config
from instructjax.core.errors import ConfigError
from instructjax.model import lora
from instructjax.model.decoder import Decoder, with_params
from instructjax.model.layers import Dense
from instructjax.model.partition import Partition
from instructjax.model.presets import preset
from instructjax.train.objectives import objective_for
from instructjax.train.optim import make_optimizer
from instructjax.train.step import build_step, make_step

LORA = {"rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj", "down_proj"]}
ROWS, LENGTH = 4, 32


def lora_config(scan: bool = True, **lora_keys):
    return preset("tiny", dtype="float32", vocab_size=256, scan_layers=scan, lora={**LORA, **lora_keys})


def batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 256, (ROWS, LENGTH + 1)).astype(np.int32)
    return {"tokens": ids[:, :-1], "targets": ids[:, 1:], "positions": np.tile(np.arange(LENGTH, dtype=np.int32),
                                                                               (ROWS, 1)),
            "segment_ids": np.ones((ROWS, LENGTH), np.int32), "loss_weights": np.ones((ROWS, LENGTH), np.float32),
            "source_ids": np.zeros((ROWS, LENGTH), np.int32)}


def test_one_adapted_projection_against_numpy():
    """y = x W + (x A B) * alpha / rank on a q_proj [64 -> (4 heads, 16)], B set random; A drawn as PEFT's
    kaiming-uniform(a=sqrt(5)): within +-1/sqrt(in)."""
    config = lora_config()
    dense = Dense(64, (4, 16), ("embed", "heads", "head_dim"), config, name="q_proj", rngs=nnx.Rngs(0))
    a = np.asarray(dense.lora_a[...])
    assert a.shape == (64, 4) and dense.lora_b[...].shape == (4, 4, 16)
    assert np.abs(a).max() <= 1 / 8 and np.abs(a).max() > 0.1 and not np.asarray(dense.lora_b[...]).any()
    b = np.random.default_rng(1).normal(size=(4, 4, 16)).astype(np.float32)
    dense.lora_b[...] = jnp.asarray(b)
    x = np.random.default_rng(2).normal(size=(2, 3, 64)).astype(np.float32)
    w = np.asarray(dense.kernel[...], np.float64).reshape(64, 64)
    want = (x @ w + (x @ a.astype(np.float64)) @ b.reshape(4, 64) * (8 / 4)).reshape(2, 3, 4, 16)
    np.testing.assert_allclose(np.asarray(dense(jnp.asarray(x))), want, rtol=1e-5, atol=1e-5)
    plain = Dense(64, 64, ("embed", "mlp"), config, name="k_proj", rngs=nnx.Rngs(0))  # not a target
    assert plain.lora_a is None


@pytest.mark.parametrize("scan", [True, False])
def test_fresh_adapters_give_the_base_logits_exactly(scan):
    config = lora_config(scan)
    params = nnx.to_pure_dict(nnx.state(Decoder(config, rngs=nnx.Rngs(0)), nnx.Param))
    adapters = lora.trainable(params)
    layer = adapters["layers"] if scan else adapters["layers"][0]
    assert set(layer["self_attn"]) == {"q_proj", "v_proj"} and set(layer["mlp"]) == {"down_proj"}
    b = batch()
    args = (b["tokens"], b["positions"], b["segment_ids"])
    ours = with_params(config, params)(*args)
    base = with_params(config.replace(lora=None), lora.frozen(params))(*args)
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(base))


def test_only_the_adapters_train():
    """Three steps on a one-device mesh: the base bitwise as it was, every adapter matrix changed (B from 0, A
    through B's gradient), the optimizer's arrays exactly two moments of the adapters."""
    config = lora_config()
    run = load_config(None, ["model.preset=tiny", f"data.seq_len={LENGTH}", f"data.global_batch={ROWS}",
                             "optim.lr=1e-2", "optim.warmup_ratio=0"])
    tx, _ = make_optimizer(run.optim, 10)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    build = build_step(config, tx, run, 1, mesh)
    params = nnx.to_pure_dict(nnx.state(Decoder(config, rngs=nnx.Rngs(0)), nnx.Param))
    before = jax.tree.map(np.array, params)
    opt_state = build.init_optimizer(params)
    n_adapters, n_all = lora.adapter_count(params), sum(x.size for x in jax.tree.leaves(params))
    n_opt = sum(x.size for x in jax.tree.leaves(opt_state) if x.ndim)
    assert n_opt == 2 * n_adapters  # AdamW's mu and nu, for the adapters alone
    assert n_adapters == 2 * (64 * 4 + 4 * 64 + 64 * 4 + 4 * 32 + 128 * 4 + 4 * 64)
    assert n_adapters / n_all < 0.1  # layers x (q: 64x4 + 4x64, v: 64x4 + 4x32, down: 128x4 + 4x64)
    losses = []
    for _ in range(3):
        params, opt_state, metrics = build.step(params, opt_state, batch())
        losses.append(float(metrics["loss"]))
    after = jax.tree.map(np.array, params)
    for was, now in zip(jax.tree.leaves(lora.frozen(before)), jax.tree.leaves(lora.frozen(after)), strict=True):
        np.testing.assert_array_equal(was, now)
    for was, now in zip(jax.tree.leaves(lora.trainable(before)), jax.tree.leaves(lora.trainable(after)), strict=True):
        assert not np.array_equal(was, now)
    assert losses[-1] < losses[0]


def test_a_bfloat16_base_keeps_its_adapters_in_float32_as_peft_does():
    """`model.param_dtype: bfloat16` with LoRA: the frozen base in bfloat16 (half a float32 base's bytes), the
    adapters float32, as PEFT's `get_peft_model` keeps them on a base loaded in bfloat16 (`autocast_adapter_dtype`),
    and one step trains them."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2)).to(torch.bfloat16)
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    dtypes = {("lora" if "lora_" in n else "base"): str(p.dtype).removeprefix("torch.")
              for n, p in theirs.named_parameters()}
    config = lora_config().replace(param_dtype="bfloat16")
    params = nnx.to_pure_dict(nnx.state(Decoder(config, rngs=nnx.Rngs(0)), nnx.Param))
    ours = {("lora" if any(getattr(k, "key", k) in lora.ADAPTERS for k in path) else "base"): str(leaf.dtype)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    assert ours == dtypes == {"base": "bfloat16", "lora": "float32"}
    run = load_config(None, ["model.preset=tiny", f"data.seq_len={LENGTH}", f"data.global_batch={ROWS}",
                             "optim.lr=1e-2", "optim.warmup_ratio=0"])
    tx, _ = make_optimizer(run.optim, 10)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    build = build_step(config, tx, run, 1, mesh)
    after, _, metrics = build.step(params, build.init_optimizer(params), batch())
    assert np.isfinite(float(metrics["loss"]))
    for was, now in zip(jax.tree.leaves(lora.trainable(params)), jax.tree.leaves(lora.trainable(after)), strict=True):
        assert now.dtype == np.float32 and not np.array_equal(was, now)


def test_bad_lora_is_one_line():
    with pytest.raises(ConfigError, match=r"family's modules are q_proj, k_proj, v_proj, o_proj, gate_proj, "
                                          r"up_proj, down_proj \(or all-linear\)") as e:
        lora_config(targets=["qkv_proj"])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="model.lora.rank must be a positive integer, got 0"):
        lora_config(rank=0)
    with pytest.raises(ConfigError, match=r"model.lora.dropout must be a number in \[0, 1\), got 1.0"):
        lora_config(dropout=1.0)
    with pytest.raises(ConfigError, match="query_key_value, dense, dense_h_to_4h, dense_4h_to_h"):
        preset("tiny", family="gpt_neox", lora={"rank": 2, "targets": ["q_proj"]})
    with pytest.raises(ConfigError, match="out_proj, fc1, fc2"):
        preset("tiny", family="opt", lora={"rank": 2, "targets": ["gate_proj"]})
    assert lora.spec(lora_config(targets="all-linear")).targets == tuple(lora.LLAMA_MODULES)


def fused_model(dropout: float, scan: bool = True, **overrides):
    """(graphdef, params) of a tiny Phi-3 (fused qkv and gate_up) with every adapter's B random."""
    config = preset("tiny", family="phi3", dtype="float32", vocab_size=256, scan_layers=scan,
                    lora={"rank": 4, "alpha": 8, "dropout": dropout}, **overrides)
    graphdef, state = nnx.split(Decoder(config, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(5)
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: rng.normal(0, 0.1, x.shape).astype(np.float32) if p[-1].key == "lora_b" else np.asarray(x),
        nnx.to_pure_dict(state))
    return graphdef, params


def test_a_fused_group_shares_one_a_and_trains_through_it():
    """Phi-3: k/v and up hold lora_b alone (their group's first module holds the one A, as PEFT's single lora_A);
    trainable / frozen / combine and the adapters-only optimizer handle them; an update moves every adapter."""
    graphdef, params = fused_model(0.0)
    adapters = lora.trainable(params)
    attn, mlp = adapters["layers"]["self_attn"], adapters["layers"]["mlp"]
    assert set(attn["q_proj"]) == {"lora_a", "lora_b"} and set(attn["k_proj"]) == set(attn["v_proj"]) == {"lora_b"}
    assert set(mlp["gate_proj"]) == {"lora_a", "lora_b"} and set(mlp["up_proj"]) == {"lora_b"}
    assert jax.tree.structure(lora.combine(adapters, lora.frozen(params))) == jax.tree.structure(params)
    run = load_config(None, ["model.preset=tiny", "optim.lr=1e-2", "optim.warmup_ratio=0"])
    tx, _ = make_optimizer(run.optim, 10)
    b = batch()

    def loss(adapters):
        model = nnx.merge(graphdef, lora.combine(adapters, lora.frozen(params)))
        logits = model(b["tokens"], b["positions"], b["segment_ids"])
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), b["targets"][..., None], -1).mean()

    grads = jax.grad(loss)(adapters)
    trains = Partition.of_state(nnx.state(nnx.merge(graphdef, params), nnx.Param))  # the adapters, by their type
    assert jax.tree.structure(trains.trainable(params)) == jax.tree.structure(adapters)
    updates, _ = tx.update(grads, tx.init(trains.trainable(params)), trains.trainable(params))
    assert jax.tree.structure(updates) == jax.tree.structure(adapters)
    assert all(np.abs(np.asarray(u)).max() > 0 for u in jax.tree.leaves(updates))


def test_dropout_drops_the_lora_input_against_numpy():
    """lora.dropout p: with keys the LoRA branch reads x * mask / (1 - p), each token's mask
    jax.random.bernoulli(fold_in(fold_in(key, row), place), 1 - p, [in]) (the base path undropped); without keys
    (eval, score, generate) no dropout."""
    config = lora_config(dropout=0.25)
    dense = Dense(64, (4, 16), ("embed", "heads", "head_dim"), config, name="q_proj", rngs=nnx.Rngs(0))
    b = np.random.default_rng(1).normal(size=(4, 4, 16)).astype(np.float32)
    dense.lora_b[...] = jnp.asarray(b)
    x = np.random.default_rng(2).normal(size=(2, 3, 64)).astype(np.float32)
    key = jax.random.key(7)
    mask = np.asarray([[jax.random.bernoulli(jax.random.fold_in(jax.random.fold_in(key, r), p), 0.75, (64,))
                        for p in range(3)] for r in range(2)])
    key = lora.token_keys(key, 2, 3)
    assert 0 < mask.mean() < 1
    a, w = np.asarray(dense.lora_a[...], np.float64), np.asarray(dense.kernel[...], np.float64).reshape(64, 64)

    def want(lora_in):
        return (x @ w + (lora_in @ a) @ b.reshape(4, 64) * 2.0).reshape(2, 3, 4, 16)

    np.testing.assert_allclose(np.asarray(dense(jnp.asarray(x), key)), want(x * mask / 0.75), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dense(jnp.asarray(x))), want(x), rtol=1e-5, atol=1e-5)
    assert np.abs(want(x * mask / 0.75) - want(x)).max() > 1e-2


def test_dropout_reaches_every_adapter_in_both_layouts_and_never_eval(monkeypatch):
    """A key reaches each A (a fused group draws one mask) in scanned and looped layers alike (layer i's key
    fold_in(key, i): the same hidden states); without a key the logits are dropout 0's."""
    graphdef, params = fused_model(0.3)
    model = nnx.merge(graphdef, params)
    b = batch()
    args = (b["tokens"], b["positions"], b["segment_ids"])
    keyed = []
    original = Dense.lora_input
    monkeypatch.setattr(Dense, "lora_input", lambda self, x, key=None: (keyed.append((self.name, key is not None)),
                                                                        original(self, x, key))[1])
    dropped, _ = model.hidden_states(*args, lora_key=jax.random.key(1))
    assert set(keyed) == {(n, True) for n in ("q_proj", "o_proj", "gate_proj", "down_proj")}
    monkeypatch.setattr(Dense, "lora_input", original)
    plain, _ = model.hidden_states(*args)
    assert np.abs(np.asarray(dropped) - np.asarray(plain)).max() > 1e-3
    loop_graphdef, _ = fused_model(0.3, scan=False)
    layers = {i: jax.tree.map(lambda x, i=i: x[i], params["layers"]) for i in range(2)}
    looped, _ = nnx.merge(loop_graphdef, {**params, "layers": layers}).hidden_states(*args, lora_key=jax.random.key(1))
    np.testing.assert_allclose(np.asarray(looped), np.asarray(dropped), rtol=1e-5, atol=1e-5)
    no_dropout = nnx.merge(fused_model(0.0)[0], params)
    np.testing.assert_array_equal(np.asarray(model(*args)), np.asarray(no_dropout(*args)))
    package = pathlib.Path(lora.__file__).parents[1]  # score, generate and eval never pass a key
    assert sorted(str(p.relative_to(package)) for p in package.rglob("*.py") if "lora_key=" in p.read_text()) == [
        "train/step.py"]


def test_dropout_steps_are_their_own_and_repeat_bitwise():
    """Two train steps with dropout 0.3 (remat full: the recomputed forward gets the layer's key as an argument)
    update the adapters otherwise than dropout 0 and rerun bitwise the same (the keys from the seed and the
    optimizer's count)."""
    run = load_config(None, ["model.preset=tiny", f"data.seq_len={LENGTH}", f"data.global_batch={ROWS}",
                             "optim.lr=1e-2", "optim.warmup_ratio=0", "optim.micro_batches=2"])
    tx, _ = make_optimizer(run.optim, 10)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))

    steps = {}

    def two_steps(dropout: float, remat: str = "none"):
        graphdef, params = fused_model(dropout, remat=remat)
        if (dropout, remat) not in steps:  # a rerun reuses the compiled step
            steps[dropout, remat] = jax.jit(make_step(objective_for(run, 1), graphdef, tx, run, mesh))
        trains = Partition.of_state(nnx.state(nnx.merge(graphdef, params), nnx.Param))
        step, opt_state = steps[dropout, remat], tx.init(trains.trainable(params))
        for _ in range(2):
            params, opt_state, _ = step(params, opt_state, batch())
        return jax.tree.map(np.asarray, lora.trainable(params))

    dropped, again, plain = two_steps(0.3, "full"), two_steps(0.3, "full"), two_steps(0.0)
    for x, y, z in zip(jax.tree.leaves(dropped), jax.tree.leaves(again), jax.tree.leaves(plain), strict=True):
        np.testing.assert_array_equal(x, y)
        assert np.abs(x - z).max() > 1e-6


def test_a_qlora_run_saves_its_adapters_alone_resumes_on_its_base_and_exports_what_it_computed(tmp_path, capsys,
                                                                                                on_one_device):
    """A QLoRA (`model.lora` on an imported model, `quantize_base: nf4`): its checkpoints hold the adapters alone and
    the base they were trained on; resumed from step 2 (its last checkpoint removed), steps 3-4 give the losses the
    run had going straight on (whose loss falls); the merged export (the dequantized base + the adapters) gives our model's logits
    in transformers, and the PEFT adapter on the base dequantized as bitsandbytes does gives `score`'s log-probs; a
    base replaced under the run is one line. (LoRA without quantization trains through the same
    trainer path: tests/train/test_multihost.py runs one on several hosts.)"""
    import json
    import shutil

    import torch
    import transformers
    import yaml
    from helpers.models import make_hf

    from instructjax import cli
    from instructjax.convert.saved import load_model
    from instructjax.core.checkpoint import load_params

    hf = make_hf(str(tmp_path), "blocks64")
    base = str(tmp_path / "base")
    assert cli.main(["import", "--hf", hf, "--out", base]) == 0

    def train(name: str, *extra: str) -> list[float]:
        config = {"run_dir": str(tmp_path / name), "max_steps": 4, "log_every": 1, "seed": 0,
                  "model": {"init_from": base, "dtype": "float32", "lora": {"rank": 4, "alpha": 8},
                            "quantize_base": "nf4"},
                  "data": {"mixture": "acp_ACP_builtin", "seq_len": 256, "global_batch": 8, "pack_window": 256},
                  "optim": {"lr": 1e-2, "warmup_ratio": 0.0}, "checkpoint": {"every": 2, "async_save": False}}
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
        assert cli.main(["train", "--config", str(tmp_path / f"{name}.yaml"), *extra]) == 0
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, lines) if "loss" in r]

    straight = train("straight")
    assert straight[-1] < straight[0]
    saved, _, _, _ = load_params(str(tmp_path / "straight"), 2)
    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(saved)[0]]
    assert paths and all(p[-1].key in lora.ADAPTERS for p in paths)  # the base is not saved again
    shutil.rmtree(tmp_path / "straight" / "checkpoints" / "4")  # as a run that stopped after saving step 2
    import orbax.checkpoint as ocp  # the resumed command reads each checkpoint's JSON items (meta, tokenizer) once

    reads, restore_json = collections.Counter(), ocp.JsonCheckpointHandler.restore
    def counted(handler, directory, *args, **kwargs):
        reads[str(directory).removeprefix(str(tmp_path))] += 1
        return restore_json(handler, directory, *args, **kwargs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ocp.JsonCheckpointHandler, "restore", counted)
        resumed = train("straight", "--resume")
    assert {"/base/checkpoints/0/meta", "/straight/checkpoints/2/meta"} <= set(reads) and max(reads.values()) == 1, reads
    np.testing.assert_allclose(resumed[-2:], straight[-2:], rtol=1e-6)

    assert cli.main(["export", "--checkpoint", str(tmp_path / "straight"), "--out", str(tmp_path / "merged")]) == 0
    ids = np.random.default_rng(0).integers(3, 32000, (1, 16)).astype(np.int32)
    ours = np.asarray(load_model(str(tmp_path / "straight"))(ids, np.arange(16, dtype=np.int32)[None], np.ones_like(ids)))
    with torch.no_grad():
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged")(torch.tensor(ids)).logits
        plain = transformers.AutoModelForCausalLM.from_pretrained(hf)(torch.tensor(ids)).logits
    assert np.abs(ours - theirs.numpy()).max() < 1e-3 < np.abs(ours - plain.numpy()).max()

    # the PEFT adapter: on the base dequantized as bitsandbytes does (what PEFT computes on a `load_in_4bit` base),
    # `score` of the run's own tokens within 1e-3 a token; it names its HF base, its quantization as transformers'
    # BitsAndBytesConfig writes it, and carries the run's tokenizer
    from helpers.bitsandbytes_nf4 import dequantize_projections
    from peft import AutoPeftModelForCausalLM, PeftModel

    adapter = str(tmp_path / "adapter")
    assert cli.main(["export", "--checkpoint", str(tmp_path / "straight"), "--out", adapter, "--adapter"]) == 0
    assert json.load(open(f"{adapter}/adapter_config.json"))["base_model_name_or_path"] == hf
    card = [line[2:].split(": ", 1) for line in open(f"{adapter}/README.md").read().splitlines() if line[:2] == "- "]
    quantization = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                   bnb_4bit_compute_dtype=torch.float32).to_dict()
    # PEFT's `- key: value` lines, each value as transformers writes it in config.json (quant_method: bitsandbytes)
    assert dict(card) == {k: str(v) for k, v in json.loads(json.dumps(quantization)).items()}
    tokenizer = transformers.AutoTokenizer.from_pretrained(adapter)
    text = "Write a haiku about the sea, then explain it in two sentences."
    ids = tokenizer(text)["input_ids"]
    capsys.readouterr()
    assert cli.main(["score", "--model", str(tmp_path / "straight"), "--text", text]) == 0
    scored = np.array([lp for _, lp in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tokens"]])
    AutoPeftModelForCausalLM.from_pretrained(adapter)  # its base found by name, as PEFT users load it
    with torch.no_grad():
        four_bit = transformers.AutoModelForCausalLM.from_pretrained(hf)
        dequantize_projections(four_bit)
        peft_lp = torch.log_softmax(PeftModel.from_pretrained(four_bit, adapter)(torch.tensor([ids])).logits[0, :-1], -1)
        peft_lp = peft_lp.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0].numpy()
    print(f"QLoRA adapter in PEFT on the NF4 base vs score: {np.abs(peft_lp - scored).max():.2e} a token")
    assert len(scored) == len(ids) - 1 and np.abs(peft_lp - scored).max() < 1e-3

    shutil.rmtree(base)  # another model where the base was
    assert cli.main(["import", "--hf", make_hf(str(tmp_path / "other"), "blocks64", seed=1), "--out", base]) == 0
    with pytest.raises(ConfigError, match="now holds another model"):
        load_model(str(tmp_path / "straight"))
