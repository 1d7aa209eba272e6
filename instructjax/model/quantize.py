"""A frozen base stored quantized (`model.quantize_base`, QLoRA): the LoRA-able projections of every layer keep
their kernel as codes and a float32 absmax a block of `BLOCK` values (`Quantized` parameters of a
`layers.QuantizedDense`, the base's own module: a plain `Dense` knows nothing of them), and each dequantizes its kernel
to the compute dtype when it runs. The embedding, the norms and the output head stay as they are, and so do a mixture of
experts' router and experts (bitsandbytes' `load_in_4bit` leaves them too: it quantizes `nn.Linear` modules, and
transformers' router and fused experts are parameters).

The blocks are bitsandbytes' `Linear4bit`'s: it quantizes the HF weight [out, in] flattened row-major in blocks of
64, so a block is 64 consecutive inputs of one output (`in` a multiple of 64). Our kernel is [*in, *out] (a
scanned layer's with the layers first), so a block runs along its last input axis (`OUT_DIMS` out axes after it),
an absmax each (its largest magnitude), and x is scaled as bitsandbytes scales it, x * (1 / absmax).

- ``nf4``: QLoRA's 4-bit NormalFloat: the code of the nearest of bitsandbytes' 16 values (`NF4`; a value on a
  midpoint takes the lower, as its `bucketize`), two codes a byte along the input axis, the first in the high
  nibble: the bytes of a row are the bytes bitsandbytes packs for it.
- ``int8``: symmetric blockwise absmax, round(x / absmax * 127), blocked the same way (bitsandbytes' `load_in_8bit`
  is LLM.int8, a scale a row and outliers kept in 16 bits: not this, so an int8 run has no bitsandbytes twin).

QLoRA's double quantization of the absmax constants (bitsandbytes' `bnb_4bit_use_double_quant`) is refused in one
line (`double_quant_problem`): the absmax stay float32, 0.5 bit a weight.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from instructjax.model import lora
from instructjax.model.adapter_settings import (
    BLOCK,
    QUANTIZE_KINDS,
    double_quant_problem,  # noqa: F401 (re-exported: its old home)
    quantize_problems,
)

KINDS = QUANTIZE_KINDS
problems = quantize_problems  # the checks of `model.quantize_base`, without JAX: model/adapter_settings.py
# bitsandbytes' NF4 values (`functional.get_4bit_type("nf4")`, its CUDA kernels' `nf4_dequantization_lut`): the
# quantiles of N(0, 1) of QLoRA's `create_normal_map(offset=0.9677083)`, divided by the largest, in float32
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], np.float32)
CODES, ABSMAX = "kernel_codes", "kernel_absmax"  # a quantized Dense's parameters, in place of `kernel`
OUT_DIMS = {"q_proj": 2, "k_proj": 2, "v_proj": 2, "o_proj": 1, "gate_proj": 1, "up_proj": 1, "down_proj": 1}


class Quantized(nnx.Param):
    """A frozen base's stored codes or absmax (a `layers.QuantizedDense`'s): a parameter of the model, never trained
    (model/partition.py trains `nnx.LoRAParam`)."""


def quantizes(config: Any, name: str) -> bool:
    """Whether `config` stores our projection `name` quantized: QLoRA's base, the family's LoRA-able modules."""
    return config.quantize_base != "none" and name in lora.module_names(config)


def nf4_table() -> np.ndarray:
    """NF4's 16 values, ascending (bitsandbytes')."""
    return NF4.copy()


def _blocks_last(x: jax.Array, out_dims: int) -> jax.Array:
    """`x` [*in, *out] with its last input axis moved to the end."""
    return jnp.moveaxis(x, x.ndim - out_dims - 1, -1)


def _blocks_back(x: jax.Array, out_dims: int) -> jax.Array:
    return jnp.moveaxis(x, -1, x.ndim - out_dims - 1)


def quantize(kernel: jax.Array, kind: str, out_dims: int) -> tuple[jax.Array, jax.Array]:
    """(codes, absmax) of `kernel` [*in, *out] (float; `out_dims` out axes), blocks of `BLOCK` along its last input
    axis: codes with that axis halved for nf4 (two a byte), absmax with it divided by `BLOCK`."""
    x = _blocks_last(kernel.astype(jnp.float32), out_dims)
    blocks = x.reshape(*x.shape[:-1], x.shape[-1] // BLOCK, BLOCK)
    absmax = jnp.max(jnp.abs(blocks), axis=-1)
    scaled = jnp.clip(blocks * (1.0 / jnp.where(absmax == 0, 1.0, absmax))[..., None], -1, 1).reshape(x.shape)
    if kind == "int8":
        codes = jnp.round(scaled * 127).astype(jnp.int8)
    else:
        table = jnp.asarray(NF4)
        codes = jnp.searchsorted((table[1:] + table[:-1]) / 2, scaled).astype(jnp.uint8)  # midpoints below it
        codes = (codes[..., 0::2] << 4) | codes[..., 1::2]
    return _blocks_back(codes, out_dims), _blocks_back(absmax, out_dims)


def dequantize(codes: jax.Array, absmax: jax.Array, kind: str, out_dims: int, dtype: Any = jnp.float32) -> jax.Array:
    """The kernel `quantize` stored, in `dtype`."""
    codes, absmax = _blocks_last(codes, out_dims), _blocks_last(absmax, out_dims)
    if kind == "int8":
        values = codes.astype(jnp.float32) / 127
    else:
        table = jnp.asarray(NF4)
        values = jnp.stack([table[codes >> 4], table[codes & 15]], axis=-1).reshape(*codes.shape[:-1], -1)
    blocks = values.reshape(*absmax.shape, BLOCK) * absmax[..., None]
    return _blocks_back(blocks.reshape(values.shape), out_dims).astype(dtype)


def without_quantized(tree: Any) -> Any:
    """A params-shaped tree without the quantized kernels' codes and absmax."""
    if not isinstance(tree, dict):
        return tree
    return {k: without_quantized(v) for k, v in tree.items() if k not in (CODES, ABSMAX)}


def dequantized(params: Any, config: Any, name: str = "") -> Any:
    """`params` (host arrays, nested dicts) with every quantized kernel restored as `kernel` in float32 (the
    model a QLoRA run trained; what `export` writes and merges the adapters into)."""
    if not isinstance(params, dict):
        return params
    out = {k: dequantized(v, config, k) for k, v in params.items() if k not in (CODES, ABSMAX)}
    if CODES in params:
        out["kernel"] = np.asarray(dequantize(jnp.asarray(params[CODES]), jnp.asarray(params[ABSMAX]),
                                              config.quantize_base, OUT_DIMS[name]))
    return out


def quantized(params: Any, config: Any, shardings: Any = None) -> Any:
    """`params` (a base's, nested dicts with `kernel`s) with the kernels of the modules `config` quantizes
    stored as codes and absmax, one kernel at a time on the devices `shardings` (the quantized model's) names."""

    def walk(node: dict, shard: Any, name: str) -> dict:
        out = {}
        for key, value in node.items():
            sub = shard.get(key) if isinstance(shard, dict) else None
            if isinstance(value, dict):
                out[key] = walk(value, sub, key)
            elif key == "kernel" and quantizes(config, name):  # placed like its codes (the same axes), then quantized
                shards = (shard[CODES], shard[ABSMAX]) if isinstance(shard, dict) else None
                value = value if shards is None else jax.device_put(value, shards[0])
                codes, absmax = jax.jit(quantize, static_argnums=(1, 2), out_shardings=shards)(
                    value, config.quantize_base, OUT_DIMS[name])
                out[CODES], out[ABSMAX] = codes, absmax
            else:
                out[key] = value if sub is None else jax.device_put(value, sub)
        return out

    return walk(params, shardings, "")
