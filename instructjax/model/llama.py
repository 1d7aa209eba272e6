"""LLaMA decoder in Flax NNX: `logits = model(tokens, positions, segment_ids)`, and with a KV cache for decoding.

Attention is causal and confined to one segment of a packed row (segment 0 is padding), by the
implementation `config.attention` names (`instructjax.model.attention`). Parameter names mirror Hugging
Face LLaMA (`embed_tokens`, `layers.self_attn.q_proj`, ..., `norm`, `lm_head`) and RoPE uses HF's
`rotate_half` layout, so `convert.hf` converts weights with transposes and reshapes only. With
`config.scan_layers` the decoder layers are one module whose parameters carry a leading `layers` axis,
run by `nnx.scan` (compile time does not grow with depth); without it, `layers` is a list of modules.
Parameters carry logical axis names (see instructjax.core.sharding); compute runs in `config.dtype` over
`config.param_dtype` parameters.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from instructjax.core.sharding import with_logical_constraint
from instructjax.model import attention
from instructjax.model.config import LlamaConfig

Array = jax.Array


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], config: LlamaConfig) -> nnx.Param:
    init = jax.nn.initializers.normal(config.initializer_range)
    value = init(rngs.params(), shape, jnp.dtype(config.param_dtype))
    return nnx.Param(value, out_sharding=axes, eager_sharding=False)


class Dense(nnx.Module):
    """Bias-free projection: contracts the last `len(in_shape)` dims of x with kernel[*in_shape, *out_shape]."""

    def __init__(self, in_shape, out_shape, axes: tuple[str, ...], config: LlamaConfig, *, rngs: nnx.Rngs):
        in_shape, out_shape = tuple(np.atleast_1d(in_shape)), tuple(np.atleast_1d(out_shape))
        self.kernel = _param(rngs, in_shape + out_shape, axes, config)
        self.n_in = len(in_shape)
        self.dtype = jnp.dtype(config.dtype)

    def __call__(self, x: Array) -> Array:
        """One 2-D matmul [tokens, in] @ [in, out] with batch and length flattened into tokens: the same
        maths as a tensordot, but XLA:CPU runs the weight gradient as one plain GEMM instead of
        transposing activations first (benchmarks/RESULTS.md)."""
        kernel = self.kernel[...].astype(self.dtype)
        in_size = math.prod(kernel.shape[: self.n_in])
        lead = x.shape[: x.ndim - self.n_in]
        y = x.astype(self.dtype).reshape(-1, in_size) @ kernel.reshape(in_size, -1)
        return y.reshape(*lead, *kernel.shape[self.n_in :])


class Embed(nnx.Module):
    """Token embedding table [vocab, embed]; `attend` is the tied output projection."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.embedding = _param(rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"), config)
        self.dtype = jnp.dtype(config.dtype)

    def __call__(self, tokens: Array) -> Array:
        return jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)

    def attend(self, x: Array) -> Array:
        return jnp.einsum("bte,ve->btv", x.astype(self.dtype), self.embedding[...].astype(self.dtype))


class RMSNorm(nnx.Module):
    """x / rms(x) * scale, normalised in float32 like HF's LlamaRMSNorm."""

    def __init__(self, config: LlamaConfig):
        self.scale = nnx.Param(
            jnp.ones((config.hidden_size,), jnp.dtype(config.param_dtype)), out_sharding=("norm",), eager_sharding=False
        )
        self.eps = config.rms_norm_eps
        self.dtype = jnp.dtype(config.dtype)

    def __call__(self, x: Array) -> Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return normed.astype(self.dtype) * self.scale[...].astype(self.dtype)


# ---- rotary position embedding -------------------------------------------------------------------


def rope_inv_freq(config: LlamaConfig) -> np.ndarray:
    """Inverse RoPE frequencies [head_dim/2] in float32, incl. LLaMA-3 scaling, as transformers computes them."""
    dim = config.head_dim
    inv_freq = (1.0 / (config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))).astype(
        np.float32
    )
    if config.rope_scaling is None:
        return inv_freq
    s = config.rope_scaling
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_context = s["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rope_cos_sin(positions: Array, inv_freq: np.ndarray) -> tuple[Array, Array]:
    """cos and sin [B, T, head_dim/2] (float32) for integer positions [B, T]."""
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate x [B, T, heads, head_dim] in HF's rotate_half layout (first half / second half pairs)."""
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


class Cache(NamedTuple):
    """Keys and values of every layer for decoding, [layers, B, S, K, D] each, the segment of every slot
    (0 = empty or padding: never attended) and the next slot to fill."""

    keys: Array
    values: Array
    segments: Array  # [B, S] int32
    index: Array  # int32 scalar


def init_cache(config: LlamaConfig, batch: int, length: int) -> Cache:
    """An empty cache of `length` slots in the compute dtype."""
    zeros = jnp.zeros((config.num_layers, batch, length, config.num_kv_heads, config.head_dim), config.dtype)
    return Cache(zeros, zeros, jnp.zeros((batch, length), jnp.int32), jnp.int32(0))


class Attention(nnx.Module):
    """LLaMA self-attention with RoPE and grouped-query heads; with `kv` (a layer's cached keys and
    values) it writes the new ones at `index` and attends over the cache."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        e, h, k, d = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        self.q_proj = Dense(e, (h, d), ("embed", "heads", "head_dim"), config, rngs=rngs)
        self.k_proj = Dense(e, (k, d), ("embed", "kv_heads", "head_dim"), config, rngs=rngs)
        self.v_proj = Dense(e, (k, d), ("embed", "kv_heads", "head_dim"), config, rngs=rngs)
        self.o_proj = Dense((h, d), e, ("heads", "head_dim", "embed"), config, rngs=rngs)
        self.implementation, self.block = config.attention, config.attention_block
        self.backward_block = config.attention_backward_block

    def qkv(self, x: Array, cos: Array, sin: Array) -> tuple[Array, Array, Array]:
        """Projected and rotated q [B, T, H, D], k and v [B, T, K, D] (the projections named for remat)."""
        q = apply_rope(checkpoint_name(self.q_proj(x), "q_proj"), cos, sin)
        k = apply_rope(checkpoint_name(self.k_proj(x), "k_proj"), cos, sin)
        v = checkpoint_name(self.v_proj(x), "v_proj")
        q = with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
        k = with_logical_constraint(k, ("batch", "length", "kv_heads", "head_dim"))
        return q, k, with_logical_constraint(v, ("batch", "length", "kv_heads", "head_dim"))

    def __call__(self, x: Array, cos: Array, sin: Array, mask: Array, kv: tuple[Array, Array] | None = None,
                 index: Array | None = None) -> tuple[Array, tuple[Array, Array] | None]:
        """Training / prefill without a cache: `mask` is `attention.mask_input` of the segment ids. Decoding:
        `mask` is the additive bias over the cache's slots."""
        q, k, v = self.qkv(x, cos, sin)
        if kv is None:
            out = attention.self_attention(q, k, v, mask, attention.resolve(self.implementation), self.block,
                                           self.backward_block)
            return checkpoint_name(self.o_proj(checkpoint_name(out, "attention")), "o_proj"), None
        keys = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), (0, index, 0, 0))
        values = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), (0, index, 0, 0))
        return self.o_proj(attention.attend(q, keys, values, mask)), (keys, values)


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        e, m = config.hidden_size, config.intermediate_size
        self.gate_proj = Dense(e, m, ("embed", "mlp"), config, rngs=rngs)
        self.up_proj = Dense(e, m, ("embed", "mlp"), config, rngs=rngs)
        self.down_proj = Dense(m, e, ("mlp", "embed"), config, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        gate, up = checkpoint_name(self.gate_proj(x), "gate_proj"), checkpoint_name(self.up_proj(x), "up_proj")
        hidden = jax.nn.silu(gate) * up
        return checkpoint_name(self.down_proj(with_logical_constraint(hidden, ("batch", "length", "mlp"))), "down_proj")


class DecoderLayer(nnx.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.))."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(config)
        self.self_attn = Attention(config, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x: Array, cos: Array, sin: Array, mask: Array, kv: tuple[Array, Array] | None = None,
                 index: Array | None = None) -> tuple[Array, tuple[Array, Array] | None]:
        attended, kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, kv, index)
        x = x + attended
        x = x + self.mlp(self.post_attention_layernorm(x))
        return with_logical_constraint(x, ("batch", "length", "embed")), kv


# Named activations of a layer (checkpoint_name above): every projection's output and the attention output.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


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


def stacked_layers(config: LlamaConfig, rngs: nnx.Rngs) -> DecoderLayer:
    """`num_layers` decoder layers as one module whose parameters have a leading `layers` axis."""

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs: nnx.Rngs) -> DecoderLayer:
        return DecoderLayer(config, rngs=rngs)

    return make(rngs)


class Llama(nnx.Module):
    """LLaMA-family causal LM. `config.remat` picks the per-layer rematerialisation policy,
    `config.scan_layers` stacked layers under a scan or a list of layers."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = Embed(config, rngs=rngs)
        if config.scan_layers:
            self.layers = stacked_layers(config, rngs)
        else:
            self.layers = nnx.List([DecoderLayer(config, rngs=rngs) for _ in range(config.num_layers)])
        self.norm = RMSNorm(config)
        self.lm_head = None if config.tie_embeddings else Dense(
            config.hidden_size, config.vocab_size, ("embed", "vocab"), config, rngs=rngs
        )

    def __call__(self, tokens: Array, positions: Array, segment_ids: Array, cache: Cache | None = None):
        """Logits [B, T, vocab] in `config.dtype` for int arrays [B, T] (segment 0 marks padding); with a
        `cache`, (logits, the cache with these tokens written at its index)."""
        x, cache = self.hidden_states(tokens, positions, segment_ids, cache)
        logits = self.embed_tokens.attend(x) if self.lm_head is None else self.lm_head(x)
        logits = with_logical_constraint(logits, ("batch", "length", "vocab"))
        return logits if cache is None else (logits, cache)

    def hidden_states(self, tokens: Array, positions: Array, segment_ids: Array, cache: Cache | None = None
                      ) -> tuple[Array, Cache | None]:
        """The last hidden layer [B, T, hidden] after the final norm (HF's `hidden_states[-1]`), and the
        updated cache when decoding."""
        x = with_logical_constraint(self.embed_tokens(tokens), ("batch", "length", "embed"))
        cos, sin = rope_cos_sin(positions, rope_inv_freq(self.config))
        if cache is None:
            mask = attention.mask_input(attention.resolve(self.config.attention), segment_ids)
            return self.norm(self._train_layers(x, cos, sin, mask)), None
        segments = jax.lax.dynamic_update_slice(cache.segments, segment_ids.astype(jnp.int32), (0, cache.index))
        bias = attention.attention_bias(attention.cached_mask(segment_ids, segments, cache.index))
        x, keys, values = self._cached_layers(x, cos, sin, bias, cache)
        return self.norm(x), Cache(keys, values, segments, cache.index + tokens.shape[1])

    def _train_layers(self, x: Array, cos: Array, sin: Array, mask: Array) -> Array:
        def run_layer(layer: DecoderLayer, x: Array, cos: Array, sin: Array, mask: Array) -> Array:
            return layer(x, cos, sin, mask)[0]

        if self.config.remat != "none":
            run_layer = nnx.remat(run_layer, policy=remat_policy(self.config.remat))
        if not self.config.scan_layers:
            for layer in self.layers:
                x = run_layer(layer, x, cos, sin, mask)
            return x

        @nnx.scan(in_axes=(0, nnx.Carry, None, None, None), out_axes=nnx.Carry)
        def scan(layer: DecoderLayer, x: Array, cos: Array, sin: Array, mask: Array) -> Array:
            return run_layer(layer, x, cos, sin, mask)

        return scan(self.layers, x, cos, sin, mask)

    def _cached_layers(self, x: Array, cos: Array, sin: Array, bias: Array, cache: Cache
                       ) -> tuple[Array, Array, Array]:
        if not self.config.scan_layers:
            keys, values = [], []
            for i, layer in enumerate(self.layers):
                x, (k, v) = layer(x, cos, sin, bias, (cache.keys[i], cache.values[i]), cache.index)
                keys.append(k)
                values.append(v)
            return x, jnp.stack(keys), jnp.stack(values)

        @nnx.scan(in_axes=(0, nnx.Carry, 0, 0, None, None, None, None), out_axes=(nnx.Carry, 0, 0))
        def scan(layer, x, k, v, cos, sin, bias, index):
            x, (k, v) = layer(x, cos, sin, bias, (k, v), index)
            return x, k, v

        return scan(self.layers, x, cache.keys, cache.values, cos, sin, bias, cache.index)


def abstract_model(config: LlamaConfig) -> Llama:
    """A Llama whose parameters are shape/dtype placeholders (no memory, no RNG)."""
    return nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))


def with_params(config: LlamaConfig, params: dict) -> Llama:
    """A Llama holding `params` (a pure dict as `nnx.state(model, nnx.Param).to_pure_dict()` gives)."""
    model = abstract_model(config)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model
