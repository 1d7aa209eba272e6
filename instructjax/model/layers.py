"""The decoder's building blocks in Flax NNX: parameters with logical axis names (`param`), a projection
(`Dense`, with LoRA adapters where `config.lora` targets it: model/lora.py; its kernel stored quantized under
`config.quantize_base`: model/quantize.py), projections of one input (`projections`: a fused HF module's share
one LoRA A), the embedding table (`Embed`, also the tied output projection) and the family's norm (`Norm`).
Compute runs in `config.dtype` over `config.param_dtype` parameters."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from instructjax.core.sharding import with_logical_constraint
from instructjax.model import lora, quantize
from instructjax.model.config import DecoderConfig
from instructjax.model.lookup import lookup

Array = jax.Array

ACTIVATIONS = {"silu": jax.nn.silu, "relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
               "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True)}


def param(rngs: nnx.Rngs | None, shape: tuple[int, ...], axes: tuple[str, ...], config: DecoderConfig,
           fill: float | None = None) -> nnx.Param:
    """A parameter: normal(initializer_range) from `rngs`, or filled with `fill`."""
    dtype = jnp.dtype(config.param_dtype)
    if fill is not None:
        value = jnp.full(shape, fill, dtype)
    else:
        value = jax.nn.initializers.normal(config.initializer_range)(rngs.params(), shape, dtype)
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class Dense(nnx.Module):
    """Projection contracting the last `len(in_shape)` dims of x with kernel[*in_shape, *out_shape], plus a
    bias[*out_shape] where the family has one."""

    def __init__(self, in_shape, out_shape, axes: tuple[str, ...], config: DecoderConfig, *, bias: bool = False,
                 name: str = "", rngs: nnx.Rngs):
        in_shape, out_shape = tuple(np.atleast_1d(in_shape)), tuple(np.atleast_1d(out_shape))
        self.kernel = param(rngs, in_shape + out_shape, axes, config)
        self.quantized = None  # QLoRA: a frozen base projection kept as codes + absmax (model/quantize.py)
        if config.quantize_base != "none" and name in lora.module_names(config):
            codes, absmax = quantize.quantize(self.kernel[...], config.quantize_base, len(out_shape))
            self.quantized, self.kernel = config.quantize_base, None
            self.kernel_codes = nnx.Param(codes, out_sharding=axes, eager_sharding=False)
            self.kernel_absmax = nnx.Param(absmax, out_sharding=axes, eager_sharding=False)
        self.bias = param(rngs, out_shape, axes[len(in_shape):], config, fill=0.0) if bias else None
        self.n_in = len(in_shape)
        self.dtype = jnp.dtype(config.dtype)
        spec = lora.spec(config)
        lora_a = lora_b = None
        if spec is not None and name in spec.targets:  # PEFT: A kaiming-uniform(a=sqrt(5)) = U(+-1/sqrt(in)), B 0
            if spec.holds_a(name):  # not the later modules of a fused group: they use its first one's A
                bound = 1.0 / math.sqrt(math.prod(in_shape))
                a = jax.random.uniform(rngs.params(), (*in_shape, spec.rank), jnp.dtype(config.param_dtype), -bound,
                                       bound)
                lora_a = nnx.Param(a, out_sharding=(*axes[:self.n_in], "lora_rank"), eager_sharding=False)
            lora_b = param(None, (spec.rank, *out_shape), ("lora_rank", *axes[self.n_in:]), config, fill=0.0)
        self.lora_a, self.lora_b = nnx.data(lora_a), nnx.data(lora_b)
        self.axes = tuple(axes)
        self.lora_scale = spec.scale if lora_b is not None else 0.0
        self.lora_dropout = spec.dropout if lora_b is not None else 0.0
        self.name = name

    def lora_input(self, x: Array, key: Array | None = None) -> Array:
        """The LoRA branch's dropout(x) A [tokens, rank] for x [..., *in]. With `key` (the train step's alone) and
        `lora_dropout` p > 0, x flattened to [tokens, in] keeps the elements where jax.random.bernoulli(key, 1 - p,
        [tokens, in]) is true, divided by 1 - p (PEFT's nn.Dropout, but not torch's masks)."""
        in_size = math.prod(self.lora_a.shape[: self.n_in])
        flat = x.astype(self.dtype).reshape(-1, in_size)
        if key is not None and self.lora_dropout > 0:
            keep = jax.random.bernoulli(key, 1.0 - self.lora_dropout, flat.shape)
            flat = jnp.where(keep, flat / (1.0 - self.lora_dropout), jnp.zeros((), flat.dtype))
        # stored split over fsdp by its rank where its input axis is not (core.sharding), used whole over the rank
        # like a base kernel: gathered, not a matmul split over the rank
        a = with_logical_constraint(self.lora_a[...], (*self.axes[: self.n_in], None))
        return flat @ a.astype(self.dtype).reshape(in_size, -1)

    def __call__(self, x: Array, key: Array | None = None, lora_x: Array | None = None) -> Array:
        """One 2-D matmul [tokens, in] @ [in, out] with batch and length flattened into tokens: the same
        maths as a tensordot, but XLA:CPU runs the weight gradient as one plain GEMM instead of
        transposing activations first (benchmarks/RESULTS.md). The LoRA branch adds `lora_x` B * scale, `lora_x`
        the fused group's shared `lora_input` (needed where this module holds no A) or this one's from `key`."""
        if self.quantized is None:
            kernel = self.kernel[...].astype(self.dtype)
        else:
            kernel = quantize.dequantize(self.kernel_codes[...], self.kernel_absmax[...], self.quantized,
                                         len(self.axes) - self.n_in, self.dtype)
        in_size = math.prod(kernel.shape[: self.n_in])
        lead = x.shape[: x.ndim - self.n_in]
        flat = x.astype(self.dtype).reshape(-1, in_size)
        y = flat @ kernel.reshape(in_size, -1)
        if self.lora_b is not None:  # + (dropout(x) A B) * alpha / rank
            xa = self.lora_input(x, key) if lora_x is None else lora_x
            b = with_logical_constraint(self.lora_b[...], (None, *self.axes[self.n_in :])).astype(self.dtype)
            y = y + xa @ b.reshape(b.shape[0], -1) * jnp.asarray(self.lora_scale, self.dtype)
        y = y.reshape(*lead, *kernel.shape[self.n_in :])
        return y if self.bias is None else y + self.bias[...].astype(self.dtype)


def module_key(key: Array | None, name: str) -> Array | None:
    """A layer's LoRA dropout key for its module `name` (each module its own masks), None without one."""
    return None if key is None else jax.random.fold_in(key, tuple(lora.LLAMA_MODULES).index(name))


def projections(x: Array, denses: list[Dense], key: Array | None = None) -> list[Array]:
    """Each of `denses` on the same x; where the later ones hold `lora_b` alone (a fused HF module: model/lora.py)
    the group's dropout(x) A is computed once, by the first, and shared, as PEFT's single lora_A."""
    first, shared = denses[0], None
    if any(d.lora_b is not None and d.lora_a is None for d in denses[1:]):
        shared = first.lora_input(x, module_key(key, first.name))
    return [d(x, module_key(key, d.name), shared if d is first or d.lora_a is None else None) for d in denses]


class Embed(nnx.Module):
    """A table [rows, embed] looked up by id, times `scale` in the table's dtype (Gemma's sqrt(hidden_size));
    `attend` is the tied output projection."""

    def __init__(self, rows: int, config: DecoderConfig, *, axes=("vocab", "embed"), scale: float = 1.0,
                 rngs: nnx.Rngs):
        self.embedding = param(rngs, (rows, config.hidden_size), axes, config)
        self.dtype, self.scale, self.axes = jnp.dtype(config.dtype), scale, axes

    def __call__(self, ids: Array) -> Array:
        return lookup(self.embedding[...], ids, axes=self.axes, scale=self.scale, dtype=self.dtype)

    def attend(self, x: Array) -> Array:
        return jnp.einsum("bte,ve->btv", x.astype(self.dtype), self.embedding[...].astype(self.dtype))


class Norm(nnx.Module):
    """The family's norm over the last axis, in float32 like transformers: `rms` (LLaMA: normalised, cast,
    times w), `rms_plus_one` (Gemma: times (1 + w), then cast), `layer` (LayerNorm with a bias)."""

    def __init__(self, size: int, config: DecoderConfig, axes: tuple[str, ...] = ("norm",)):
        self.kind, self.eps, self.dtype = config.norm, config.norm_eps, jnp.dtype(config.dtype)
        self.scale = param(None, (size,), axes, config, fill=0.0 if self.kind == "rms_plus_one" else 1.0)
        self.bias = param(None, (size,), axes, config, fill=0.0) if self.kind == "layer" else None

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        scale = self.scale[...]
        if self.kind == "layer":
            centred = x32 - jnp.mean(x32, axis=-1, keepdims=True)
            normed = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + self.eps)
            return (normed * scale.astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(self.dtype)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.kind == "rms_plus_one":
            return (normed * (1.0 + scale.astype(jnp.float32))).astype(self.dtype)
        return normed.astype(self.dtype) * scale.astype(self.dtype)
