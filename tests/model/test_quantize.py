"""A quantized frozen base (`model.quantize_base`, QLoRA; model/quantize.py): NF4's table against the normal
quantiles, codes and absmax against a brute-force re-implementation of bitsandbytes' layout (bitsandbytes itself:
benchmarks/qlora_bitsandbytes.py), and a QLoRA model against LoRA on the dequantized base (logits and three training
steps)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from helpers.bitsandbytes_nf4 import NF4, quantize_4bit

from instructjax.core.config import load_config
from instructjax.core.errors import ConfigError
from instructjax.model import lora, partition, quantize
from instructjax.model.decoder import Decoder, with_params
from instructjax.model.presets import preset
from instructjax.train.optim import make_optimizer
from instructjax.train.step import build_step

BITSANDBYTES_NF4 = NF4.tolist()  # bitsandbytes' published values (tests/helpers/bitsandbytes_nf4.py)


def test_nf4_table_is_the_normal_quantiles():
    """bitsandbytes' published values are QLoRA's construction: 8 positive quantiles of N(0, 1) from 0.9677083 down
    to 0.5 (the last dropped), 0 and 7 negative ones, divided by the largest (float64 here)."""
    from statistics import NormalDist

    ppf, offset = NormalDist().inv_cdf, 0.9677083
    values = sorted([ppf(p) for p in np.linspace(offset, 0.5, 9)[:-1]] + [0.0]
                    + [-ppf(p) for p in np.linspace(offset, 0.5, 8)[:-1]])
    np.testing.assert_allclose(quantize.nf4_table(), np.array(values) / max(values), atol=1e-6)
    np.testing.assert_array_equal(quantize.nf4_table(), np.float32(BITSANDBYTES_NF4))


def as_hf(kernel: np.ndarray, out_dims: int) -> np.ndarray:
    """Our kernel-shaped array [*in, *out] as the HF weight's layout [out, in]."""
    out = int(np.prod(kernel.shape[kernel.ndim - out_dims:]))
    return kernel.reshape(-1, out).T


@pytest.mark.parametrize("kind", ["nf4", "int8"])
@pytest.mark.parametrize("module, shape", [("q_proj", (128, 2, 64)), ("o_proj", (2, 64, 128))])
def test_codes_and_scales_are_bitsandbytes_layout(kind, module, shape):
    """Blocks of 64 inputs of one output, as bitsandbytes' Linear4bit quantizes the HF weight [out, in]: our codes
    and absmax, laid out as HF's weight, are bitsandbytes' bytes and absmax (nf4; int8: round(x / absmax * 127) in the
    same blocks), and dequantize to the brute force's values."""
    out_dims = quantize.OUT_DIMS[module]
    rng = np.random.default_rng(0)
    kernel = rng.normal(0, 0.02, shape).astype(np.float32)
    kernel.reshape(-1)[rng.integers(0, kernel.size, 20)] *= 40  # outliers: their blocks' absmax
    hf = as_hf(kernel, out_dims)  # a view: the zeros below are the kernel's too
    hf[0, :64] = 0.0  # an all-zero block stays zero
    codes, absmax = jax.jit(quantize.quantize, static_argnums=(1, 2))(kernel, kind, out_dims)
    if kind == "nf4":
        want_codes, want_absmax = quantize_4bit(hf)
        np.testing.assert_array_equal(as_hf(np.asarray(codes), out_dims).reshape(-1), want_codes)
        values = np.stack([np.float32(BITSANDBYTES_NF4)[want_codes >> 4], np.float32(BITSANDBYTES_NF4)[want_codes & 15]],
                          -1).reshape(-1, 64)
    else:
        blocks = hf.reshape(-1, 64)
        want_absmax = np.abs(blocks).max(-1)
        want = np.round(blocks / np.where(want_absmax == 0, 1, want_absmax)[:, None] * 127)
        np.testing.assert_array_equal(as_hf(np.asarray(codes), out_dims).reshape(-1, 64), want)
        values = want / 127
    np.testing.assert_array_equal(as_hf(np.asarray(absmax), out_dims).reshape(-1), want_absmax)
    got = as_hf(np.asarray(jax.jit(quantize.dequantize, static_argnums=(2, 3))(codes, absmax, kind, out_dims)), out_dims)
    np.testing.assert_allclose(got, (values * want_absmax[:, None]).reshape(hf.shape), rtol=1e-6, atol=0)
    assert not got[0, :64].any()
    stacked, _ = jax.jit(quantize.quantize, static_argnums=(1, 2))(np.stack([kernel, 2 * kernel]), kind, out_dims)  # a scanned layer's: layers first
    np.testing.assert_array_equal(np.asarray(stacked)[0], np.asarray(codes))


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
    quantizing; on a real model: benchmarks/qlora_bitsandbytes.py)."""
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

    tx, _ = make_optimizer(run.optim, 10)
    steps = {id(model): build_step(model, tx, run, 1, mesh).step for model in (qlora, plain)}  # one compile each

    def losses(model, params):
        opt_state, out = tx.init(partition.of(model).trainable(params)), []
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
    with pytest.raises(ConfigError, match=r"^model.double_quant=True: QLoRA's double quantization .* not supported"):
        preset("tiny", quantize_base="nf4", lora={"rank": 4}, double_quant=True)
    assert preset("tiny", double_quant=False).quantize_base == "none"  # the default said outright
