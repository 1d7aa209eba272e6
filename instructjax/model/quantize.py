"""A frozen base stored quantized (`model.quantize_base`, QLoRA): the LoRA-able projections of every layer keep
their kernel as codes and a float32 absmax a block of `BLOCK` values along the kernel's last axis, and each
Dense dequantizes its kernel to the compute dtype when it runs. The embedding, the norms and the output head stay
as they are (bitsandbytes' `load_in_4bit` leaves them too).

- ``nf4``: QLoRA's 4-bit NormalFloat, two codes a byte (high nibble first, as bitsandbytes packs them); a code is
  the nearest of the 16 values `nf4_table()` builds the way bitsandbytes' `create_normal_map` does (the normal's
  quantiles, the outermost at QLoRA's offset 0.9677083, scaled to [-1, 1]).
- ``int8``: symmetric blockwise absmax, round(x / absmax * 127) (bitsandbytes' 8-bit blockwise type maps through
  its dynamic table instead).

Not done: QLoRA's double quantization of the absmax constants (0.5 byte a block of 64 more here).
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("none", "nf4", "int8")
BLOCK = 64
NF4_OFFSET = 0.9677083  # QLoRA: the quantile of the outermost values (bitsandbytes `create_normal_map`)
CODES, ABSMAX = "kernel_codes", "kernel_absmax"  # a quantized Dense's parameters, in place of `kernel`


def nf4_table() -> np.ndarray:
    """NF4's 16 values, ascending: 8 positive quantiles of N(0, 1) from `NF4_OFFSET` down to 0.5 (the last
    dropped), 0, and 7 negative ones, divided by the largest (bitsandbytes' `create_normal_map`,
    `use_extra_value=True`)."""
    ppf = NormalDist().inv_cdf
    positive = [ppf(p) for p in np.linspace(NF4_OFFSET, 0.5, 9)[:-1]]
    negative = [-ppf(p) for p in np.linspace(NF4_OFFSET, 0.5, 8)[:-1]]
    values = np.sort(np.array(positive + [0.0] + negative))
    return (values / values.max()).astype(np.float32)


def stored_shapes(shape: tuple[int, ...], kind: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(codes, absmax) shapes of a kernel of `shape` stored as `kind`."""
    *lead, last = shape
    return (*lead, last // 2 if kind == "nf4" else last), (*lead, last // BLOCK)


def quantize(kernel: jax.Array, kind: str) -> tuple[jax.Array, jax.Array]:
    """(codes, absmax) of `kernel` (float), blocks of `BLOCK` along its last axis."""
    *lead, last = kernel.shape
    blocks = kernel.astype(jnp.float32).reshape(*lead, last // BLOCK, BLOCK)
    absmax = jnp.max(jnp.abs(blocks), axis=-1)
    scaled = blocks / jnp.where(absmax == 0, 1.0, absmax)[..., None]
    if kind == "int8":
        return jnp.round(scaled * 127).astype(jnp.int8).reshape(kernel.shape), absmax
    table = jnp.asarray(nf4_table())
    midpoints = (table[1:] + table[:-1]) / 2  # the nearest value: how many midpoints lie below
    codes = jnp.searchsorted(midpoints, scaled.reshape(*lead, last)).astype(jnp.uint8)
    return (codes[..., 0::2] << 4) | codes[..., 1::2], absmax


def dequantize(codes: jax.Array, absmax: jax.Array, kind: str, dtype: Any = jnp.float32) -> jax.Array:
    """The kernel `quantize` stored, in `dtype`."""
    if kind == "int8":
        values = codes.astype(jnp.float32) / 127
    else:
        table = jnp.asarray(nf4_table())
        values = jnp.stack([table[codes >> 4], table[codes & 15]], axis=-1).reshape(*codes.shape[:-1], -1)
    *lead, last = values.shape
    blocks = values.reshape(*lead, last // BLOCK, BLOCK) * absmax[..., None]
    return blocks.reshape(*lead, last).astype(dtype)


def problems(config: Any) -> list[str]:
    """What is wrong with `config.quantize_base` (a DecoderConfig's), one phrase each."""
    kind = config.quantize_base
    if kind not in KINDS:
        return [f"model.quantize_base must be one of {KINDS}, got {kind!r}"]
    if kind == "none":
        return []
    if config.lora is None:
        return [f"model.quantize_base={kind} stores a frozen base: it needs model.lora (QLoRA)"]
    lasts = {"head_dim": config.head_dim, "hidden_size": config.hidden_size,
             "intermediate_size": config.intermediate_size}
    return [f"model.quantize_base={kind} quantizes blocks of {BLOCK} along each kernel's last axis: {name}="
            f"{size} is not a multiple of {BLOCK}" for name, size in lasts.items() if size % BLOCK]


def without_quantized(tree: Any) -> Any:
    """A params-shaped tree without the quantized kernels' codes and absmax."""
    if not isinstance(tree, dict):
        return tree
    return {k: without_quantized(v) for k, v in tree.items() if k not in (CODES, ABSMAX)}


def dequantized(params: Any, config: Any) -> Any:
    """`params` (host arrays, nested dicts) with every quantized kernel restored as `kernel` in float32 (the
    model a QLoRA run trained; what `export` writes and merges the adapters into)."""
    if not isinstance(params, dict):
        return params
    out = {k: dequantized(v, config) for k, v in params.items() if k not in (CODES, ABSMAX)}
    if CODES in params:
        out["kernel"] = np.asarray(dequantize(jnp.asarray(params[CODES]), jnp.asarray(params[ABSMAX]),
                                              config.quantize_base))
    return out


def quantized(params: Any, config: Any, shardings: Any = None) -> Any:
    """`params` (a base's, nested dicts with `kernel`s) with the kernels of the modules `config` quantizes
    stored as codes and absmax, one kernel at a time on the devices `shardings` (the quantized model's) names."""
    from instructjax.model import lora

    modules = lora.module_names(config)

    def walk(node: dict, shard: Any, name: str) -> dict:
        out = {}
        for key, value in node.items():
            sub = shard.get(key) if isinstance(shard, dict) else None
            if isinstance(value, dict):
                out[key] = walk(value, sub, key)
            elif key == "kernel" and name in modules:  # placed like its codes (the same axes), then quantized
                shards = (shard[CODES], shard[ABSMAX]) if isinstance(shard, dict) else None
                value = value if shards is None else jax.device_put(value, shards[0])
                codes, absmax = jax.jit(quantize, static_argnums=1, out_shardings=shards)(value, config.quantize_base)
                out[CODES], out[ABSMAX] = codes, absmax
            else:
                out[key] = value if sub is None else jax.device_put(value, sub)
        return out

    return walk(params, shardings, "")
