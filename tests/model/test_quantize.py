"""A quantized frozen base (`model.quantize_base`, QLoRA; model/quantize.py): NF4's table against bitsandbytes'
published one, codes against a brute-force nearest value, and a QLoRA model against LoRA on the dequantized base
(logits and three training steps)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from instructjax.core.config import load_config
from instructjax.core.errors import ConfigError
from instructjax.model import lora, quantize
from instructjax.model.config import preset
from instructjax.model.decoder import Decoder, with_params
from instructjax.train.optim import make_optimizer
from instructjax.train.step import build_step

# bitsandbytes' NF4 values as its CUDA kernels hard-code them (csrc/kernels.cu, `nf4_dequantization_lut`)
BITSANDBYTES_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                    0.7229568362236023, 1.0]


def test_nf4_table_is_bitsandbytes():
    np.testing.assert_allclose(quantize.nf4_table(), BITSANDBYTES_NF4, atol=1e-6)


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_codes_are_the_nearest_value_of_each_block(kind):
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 0.02, (3, 5, 128)).astype(np.float32)
    kernel[0, 0, :64] = 0.0  # an all-zero block stays zero
    codes, absmax = quantize.quantize(kernel, kind)
    assert codes.shape == quantize.stored_shapes(kernel.shape, kind)[0] and absmax.shape == (3, 5, 2)
    assert codes.dtype == (np.uint8 if kind == "nf4" else np.int8)
    got = np.asarray(quantize.dequantize(codes, absmax, kind))
    blocks = kernel.astype(np.float64).reshape(3, 5, 2, 64)
    scale = np.abs(blocks).max(-1, keepdims=True)
    scaled = blocks / np.where(scale == 0, 1, scale)
    if kind == "nf4":  # brute force: the table value nearest to each scaled weight
        table = np.asarray(BITSANDBYTES_NF4)
        nearest = table[np.abs(scaled[..., None] - table).argmin(-1)]
    else:
        nearest = np.round(scaled * 127) / 127
    want = (nearest * scale).reshape(kernel.shape)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert np.all(got[0, 0, :64] == 0)
    error = np.abs(got - kernel).max() / np.abs(kernel).max()
    assert error < (0.15 if kind == "nf4" else 0.01)


def config(**keys):
    return preset("tiny", dtype="float32", vocab_size=256, hidden_size=128, num_heads=2, num_kv_heads=1,
                  head_dim=64, intermediate_size=256, lora={"rank": 4, "alpha": 8}, **keys)


def batch() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    ids = rng.integers(3, 256, (8, 33)).astype(np.int32)
    return {"tokens": ids[:, :-1], "targets": ids[:, 1:], "positions": np.tile(np.arange(32, dtype=np.int32), (8, 1)),
            "segment_ids": np.ones((8, 32), np.int32), "loss_weights": np.ones((8, 32), np.float32),
            "source_ids": np.zeros((8, 32), np.int32)}


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_qlora_is_lora_on_the_dequantized_base(kind):
    """The same base and adapters: the QLoRA model's logits (and, for nf4, three steps' losses) equal LoRA's on
    the base dequantized once (float32, 1e-5); the gap to LoRA on the original base is printed (the cost of
    quantizing: 1.4e-3 at the first step for nf4 here)."""
    plain = config()
    base = nnx.to_pure_dict(nnx.state(Decoder(plain, rngs=nnx.Rngs(0)), nnx.Param))
    rng = np.random.default_rng(2)  # trained adapters, so they take part
    base = jax.tree_util.tree_map_with_path(
        lambda p, x: rng.normal(0, 0.05, x.shape).astype(np.float32) if p[-1].key == "lora_b" else np.asarray(x), base)
    qlora = config(quantize_base=kind)
    stored = quantize.quantized(base, qlora)
    assert all(quantize.CODES in stored["layers"]["mlp"][m] for m in ("gate_proj", "up_proj", "down_proj"))
    assert "kernel" in stored["lm_head"] and "embedding" in stored["embed_tokens"]  # left as they were
    rounded = quantize.dequantized(jax.tree.map(np.asarray, stored), qlora)
    b = batch()
    args = (b["tokens"], b["positions"], b["segment_ids"])
    ours = np.asarray(with_params(qlora, stored)(*args))
    np.testing.assert_allclose(ours, np.asarray(with_params(plain, rounded)(*args)), atol=1e-5)
    if kind != "nf4":
        return  # the training steps once: QLoRA's own type

    run = load_config(None, ["model.preset=tiny", "data.seq_len=32", "data.global_batch=8", "optim.lr=1e-2",
                             "optim.warmup_ratio=0"])
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))

    tx, _ = make_optimizer(run.optim, 10, adapters=True)
    steps = {id(model): build_step(model, tx, run, 1, mesh).step for model in (qlora, plain)}  # one compile each

    def losses(model, params):
        opt_state, out = tx.init(params), []
        for _ in range(3):
            params, opt_state, metrics = steps[id(model)](params, opt_state, b)
            out.append(float(metrics["loss"]))
        return out

    quantized_run, dequantized_run = losses(qlora, stored), losses(plain, rounded)
    original = losses(plain, base)
    print(f"{kind}: QLoRA {quantized_run}, LoRA on the dequantized base {dequantized_run}, on the original "
          f"{original}")
    np.testing.assert_allclose(quantized_run, dequantized_run, rtol=1e-5)
    assert lora.adapter_count(stored) == lora.adapter_count(base)


def test_bad_quantize_base_is_one_line():
    with pytest.raises(ConfigError, match="needs model.lora"):
        preset("tiny", quantize_base="nf4")
    with pytest.raises(ConfigError, match="head_dim=16 is not a multiple of 64"):
        preset("tiny", quantize_base="nf4", lora={"rank": 4})
    with pytest.raises(ConfigError, match="must be one of"):
        preset("tiny", quantize_base="fp4", lora={"rank": 4})
