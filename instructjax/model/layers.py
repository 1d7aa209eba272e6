"""The decoder's building blocks in Flax NNX: parameters with logical axis names (`param`), a projection (`Dense`,
plus the adapter method's branch where `config.lora` targets it: model/lora.py), the same projection over a frozen
base stored quantized (`QuantizedDense`, QLoRA: model/quantize.py), `dense` picking between them, projections of one
input (`projections`: a fused HF module's share one LoRA A), the embedding table (`Embed`, also the tied output
projection) and the family's norm (`Norm`). Compute runs in `config.dtype` over `config.param_dtype` parameters."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from instructjax.model import lora, quantize
from instructjax.model.config import DecoderConfig
from instructjax.model.families.record import PROJECTIONS
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
    bias[*out_shape] where the family has one, plus the LoRA branch where this module holds adapters (`lora_a`,
    `lora_b`: nnx.LoRAParam, made by model/lora.py's `adapters`)."""

    def __init__(self, in_shape, out_shape, axes: tuple[str, ...], config: DecoderConfig, *, bias: bool = False,
                 name: str = "", rngs: nnx.Rngs):
        in_shape, out_shape = tuple(np.atleast_1d(in_shape)), tuple(np.atleast_1d(out_shape))
        self.n_in, self.axes, self.name = len(in_shape), tuple(axes), name
        self.dtype = jnp.dtype(config.dtype)
        self.keep_kernel(param(rngs, in_shape + out_shape, axes, config), config)
        self.bias = param(rngs, out_shape, axes[len(in_shape):], config, fill=0.0) if bias else None
        lora_a, lora_b = lora.adapters(config, name, in_shape, out_shape, self.axes, rngs)
        self.lora_a, self.lora_b = nnx.data(lora_a), nnx.data(lora_b)
        spec = lora.spec(config) if lora_b is not None else None
        self.lora_scale = spec.scale if spec is not None else 0.0
        self.lora_dropout = spec.dropout if spec is not None else 0.0

    def keep_kernel(self, kernel: nnx.Param, config: DecoderConfig) -> None:
        """Store the freshly drawn kernel (a frozen quantized base stores its codes instead: `QuantizedDense`)."""
        self.kernel = kernel

    def weight(self) -> Array:
        """The kernel [*in, *out] in the compute dtype."""
        return self.kernel[...].astype(self.dtype)

    def lora_input(self, x: Array, key: Array | None = None) -> Array:
        """The LoRA branch's dropout(x) A [tokens, rank] for x [..., *in] (`lora.branch_input`; dropout with `key`,
        the train step's alone)."""
        return lora.branch_input(x, self.lora_a[...], self.axes, self.n_in, self.dtype, self.lora_dropout, key)

    def __call__(self, x: Array, key: Array | None = None, lora_x: Array | None = None) -> Array:
        """One 2-D matmul [tokens, in] @ [in, out] with batch and length flattened into tokens: the same
        maths as a tensordot, but XLA:CPU runs the weight gradient as one plain GEMM instead of
        transposing activations first (benchmarks/RESULTS.md). The LoRA branch adds `lora_x` B * scale, `lora_x`
        the fused group's shared `lora_input` (needed where this module holds no A) or this one's from `key`."""
        kernel = self.weight()
        in_size = math.prod(kernel.shape[: self.n_in])
        lead = x.shape[: x.ndim - self.n_in]
        flat = x.astype(self.dtype).reshape(-1, in_size)
        y = flat @ kernel.reshape(in_size, -1)
        if self.lora_b is not None:  # + (dropout(x) A B) * alpha / rank
            xa = self.lora_input(x, key) if lora_x is None else lora_x
            y = y + lora.branch(xa, self.lora_b[...], self.axes, self.n_in, self.lora_scale, self.dtype)
        y = y.reshape(*lead, *kernel.shape[self.n_in :])
        return y if self.bias is None else y + self.bias[...].astype(self.dtype)


class QuantizedDense(Dense):
    """A projection of QLoRA's frozen base: its kernel kept as codes and a float32 absmax a block
    (`kernel_codes`, `kernel_absmax`: quantize.Quantized, never trained), dequantized to the compute dtype when it
    runs (model/quantize.py)."""

    def keep_kernel(self, kernel: nnx.Param, config: DecoderConfig) -> None:
        self.kind = config.quantize_base
        codes, absmax = quantize.quantize(kernel[...], self.kind, len(self.axes) - self.n_in)
        self.kernel_codes = quantize.Quantized(codes, out_sharding=self.axes, eager_sharding=False)
        self.kernel_absmax = quantize.Quantized(absmax, out_sharding=self.axes, eager_sharding=False)

    def weight(self) -> Array:
        return quantize.dequantize(self.kernel_codes[...], self.kernel_absmax[...], self.kind,
                                   len(self.axes) - self.n_in, self.dtype)


def dense(in_shape, out_shape, axes: tuple[str, ...], config: DecoderConfig, *, bias: bool = False, name: str = "",
          rngs: nnx.Rngs) -> Dense:
    """The model's projection `name`: over a quantized kernel where `config.quantize_base` stores the frozen base's
    projections so (`quantize.quantizes`), else a plain one."""
    kind = QuantizedDense if quantize.quantizes(config, name) else Dense
    return kind(in_shape, out_shape, axes, config, bias=bias, name=name, rngs=rngs)


def module_key(key: Array | None, name: str) -> Array | None:
    """A layer's LoRA dropout keys (a key a token: model/lora.py `token_keys`) for its module `name` (each module
    its own masks), None without them."""
    if key is None:
        return None
    return jax.vmap(lambda k: jax.random.fold_in(k, PROJECTIONS.index(name)))(key.reshape(-1)).reshape(key.shape)


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
    """The family's norm over the last axis (the last axes of a `size` tuple), in float32 like transformers: `rms` (LLaMA: normalised, cast,
    times w), `rms_plus_one` (Gemma: times (1 + w), then cast), `layer` (LayerNorm with a bias)."""

    def __init__(self, size: int | tuple[int, ...], config: DecoderConfig, axes: tuple[str, ...] = ("norm",)):
        self.kind, self.eps, self.dtype = config.norm, config.norm_eps, jnp.dtype(config.dtype)
        shape = tuple(np.atleast_1d(size))
        self.over = tuple(range(-len(shape), 0))  # the trailing axes normalised together (OLMoE's q/k: heads too)
        self.scale = param(None, shape, axes, config, fill=0.0 if self.kind == "rms_plus_one" else 1.0)
        self.bias = param(None, shape, axes, config, fill=0.0) if self.kind == "layer" else None

    def __call__(self, x: Array) -> Array:
        x32, over = x.astype(jnp.float32), self.over
        scale = self.scale[...]
        if self.kind == "layer":
            centred = x32 - jnp.mean(x32, axis=over, keepdims=True)
            normed = centred * jax.lax.rsqrt(jnp.mean(centred * centred, axis=over, keepdims=True) + self.eps)
            return (normed * scale.astype(jnp.float32) + self.bias[...].astype(jnp.float32)).astype(self.dtype)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=over, keepdims=True) + self.eps)
        if self.kind == "rms_plus_one":
            return (normed * (1.0 + scale.astype(jnp.float32))).astype(self.dtype)
        return normed.astype(self.dtype) * scale.astype(self.dtype)


def remat_policy(name: str):
    """The jax.checkpoint policy of `config.remat` (not `none`): what a layer keeps for its backward pass.
    `minimal_with_context` is MaxText's GPU choice: every projection's output and the attention output are
    kept, the rest (norms, RoPE, activations, the attention kernel's own residuals) recomputed."""
    policies = jax.checkpoint_policies
    return {
        "full": None,  # save nothing, recompute the whole layer
        "dots_saveable": policies.dots_saveable,
        "dots_with_no_batch_dims_saveable": policies.dots_with_no_batch_dims_saveable,
        "save_attention": policies.save_only_these_names("attention"),
        "minimal_with_context": policies.save_only_these_names(*PROJECTIONS, "attention"),
    }[name]
