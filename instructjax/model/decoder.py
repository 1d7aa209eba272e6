"""One decoder for every family, in Flax NNX: `logits = model(tokens, positions, segment_ids)`, and with a KV
cache for decoding. The families differ by `DecoderConfig`'s switches (model/config.py), never by code
paths of their own.

Attention is causal and confined to one segment of a packed row (segment 0 is padding), by the
implementation `config.attention` names (`instructjax.model.attention`); a layer whose type is `sliding`
sees only the last `sliding_window` keys (its own RoPE base where the family has one). Parameter names
follow Hugging Face LLaMA (`embed_tokens`, `layers.self_attn.q_proj`, ..., `norm`, `lm_head`); the norm
before the MLP is `post_attention_layernorm` in every family, Gemma's norms on the attention's and the MLP's
outputs are `attention_output_norm` and `mlp_output_norm`; a plain MLP has `up_proj` and `down_proj`.
`model.families` maps each family's file names onto these. With `config.scan_layers` the decoder layers are one
module whose parameters carry a leading `layers` axis, run by `nnx.scan` (compile time does not grow with
depth); without it, `layers` is a list of modules. Parameters carry logical axis names (see
instructjax.core.sharding); compute runs in `config.dtype` over `config.param_dtype` parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from instructjax.core.sharding import with_logical_constraint
from instructjax.model import attention, context, lora, rope
from instructjax.model.config import DecoderConfig
from instructjax.model.layers import (  # noqa: F401  (PROJECTIONS: the layer's named activations, imported from here)
    ACTIVATIONS,
    PROJECTIONS,
    Embed,
    Norm,
    dense,
    module_key,
    projections,
    remat_policy,
)
from instructjax.model.moe import RouterStats, SparseMLP, stacked_stats

Array = jax.Array

class Cache(NamedTuple):
    """Keys and values of every layer for decoding, [layers, B, S, K, D] each, the segment of every slot
    (0 = empty or padding: never attended) and the next slot to fill."""

    keys: Array
    values: Array
    segments: Array  # [B, S] int32
    index: Array  # int32 scalar


def init_cache(config: DecoderConfig, batch: int, length: int) -> Cache:
    """An empty cache of `length` slots in the compute dtype."""
    zeros = jnp.zeros((config.num_layers, batch, length, config.num_kv_heads, config.head_dim), config.dtype)
    return Cache(zeros, zeros, jnp.zeros((batch, length), jnp.int32), jnp.int32(0))


def layer_windows(config: DecoderConfig) -> tuple[int | None, ...]:
    """The window of each type of layer the model has (`full` first, then `sliding`): a layer's type is an
    index into this."""
    return tuple(config.sliding_window if kind == "sliding" else None for kind in sorted(set(config.kinds)))


class LayerKinds(NamedTuple):
    """The arrays that differ between a model's types of layer (`layer_windows`), one entry per type: the
    attention mask input and the RoPE cos/sin (one pair when every type shares it); and the real tokens [B, T]
    (segment > 0) a mixture of experts counts its router's statistics over (None when decoding); with rows the train
    step dealt out over a `context` axis, each token's place in its row [T] (model/context.py; None: as they are)."""

    masks: tuple[Array, ...]  # `attention.mask_input` per type (empty when decoding)
    ropes: tuple[tuple[Array, Array] | tuple[None, None], ...]
    real: Array | None = None
    order: Array | None = None

    def rope(self, kind: Array | int) -> tuple[Array | None, Array | None]:
        """cos, sin of a layer of type index `kind` (a traced index selects elementwise)."""
        if len(self.ropes) == 1:
            return self.ropes[0]
        if isinstance(kind, int):
            return self.ropes[kind]
        return tuple(jnp.where(kind == 1, local, full) for full, local in zip(*self.ropes, strict=True))


class Attention(nnx.Module):
    """Self-attention with grouped-query heads: projections (with the family's biases), q/k norms, RoPE, the
    kernel; with `kv` (a layer's cached keys and values) it writes the new ones at `index` and attends over
    the cache."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        e, h, k, d = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        bias = config.qkv_bias
        self.q_proj = dense(e, (h, d), ("embed", "heads", "head_dim"), config, bias=bias, name="q_proj", rngs=rngs)
        self.k_proj = dense(e, (k, d), ("embed", "kv_heads", "head_dim"), config, bias=bias, name="k_proj", rngs=rngs)
        self.v_proj = dense(e, (k, d), ("embed", "kv_heads", "head_dim"), config, bias=bias, name="v_proj", rngs=rngs)
        self.o_proj = dense((h, d), e, ("heads", "head_dim", "embed"), config, bias=config.o_bias, name="o_proj", rngs=rngs)
        # q/k norms over each head, or over all heads at once (OLMoE's `qk_norm_whole`)
        q_norm, k_norm = ((h, d), ("heads", "head_dim")), ((k, d), ("kv_heads", "head_dim"))
        if not config.qk_norm_whole:
            q_norm = k_norm = (d, ("head_dim",))
        self.q_norm = Norm(q_norm[0], config, q_norm[1]) if config.qk_norm else None
        self.k_norm = Norm(k_norm[0], config, k_norm[1]) if config.qk_norm else None
        self.implementation, self.block = config.attention, config.attention_block
        self.backward_block, self.context_strategy = config.attention_backward_block, config.context_strategy
        self.context_reorder = config.context_reorder
        self.scale, self.softcap = config.query_scale or d ** -0.5, config.attention_softcap
        self.windows = layer_windows(config)

    def qkv(self, x: Array, cos: Array | None, sin: Array | None,
            key: Array | None = None) -> tuple[Array, Array, Array]:
        """Projected, normed and rotated q [B, T, H, D], k and v [B, T, K, D] (the projections named for remat;
        `key`: the layer's LoRA dropout key, the train step's alone)."""
        q, k, v = projections(x, [self.q_proj, self.k_proj, self.v_proj], key)
        q, k, v = checkpoint_name(q, "q_proj"), checkpoint_name(k, "k_proj"), checkpoint_name(v, "v_proj")
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if cos is not None:
            q, k = rope.apply_rope(q, cos, sin), rope.apply_rope(k, cos, sin)
        q = with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
        k = with_logical_constraint(k, ("batch", "length", "kv_heads", "head_dim"))
        return q, k, with_logical_constraint(v, ("batch", "length", "kv_heads", "head_dim"))

    def __call__(self, x: Array, kind: Array | int, kinds: LayerKinds, key: Array | None = None) -> Array:
        """Training / prefill without a cache, for a layer of type `self.windows[kind]` (a traced index under a
        scan of layers: the kernel call alone is switched, every projection and its residuals are shared)."""
        q, k, v = self.qkv(x, *kinds.rope(kind), key)

        def kernel(i: int):
            if kinds.order is not None or context.context_size() > 1:  # the row split over the mesh's context axis
                return lambda q, k, v: context.attention(
                    q, k, v, kinds.masks[i], kinds.order, self.context_strategy, window=self.windows[i],
                    reorder=self.context_reorder if kinds.order is not None else "none", softcap=self.softcap,
                    kernel=attention.implementation_for(self.implementation), block=self.block, scale=self.scale)
            return lambda q, k, v: attention.self_attention(
                q, k, v, kinds.masks[i], attention.implementation_for(self.implementation), self.block, self.backward_block,
                window=self.windows[i], softcap=self.softcap, scale=self.scale)

        if isinstance(kind, int) or len(self.windows) == 1:
            out = kernel(kind if isinstance(kind, int) else 0)(q, k, v)
        else:
            out = jax.lax.switch(kind, [kernel(i) for i in range(len(self.windows))], q, k, v)
        return checkpoint_name(self.o_proj(checkpoint_name(out, "attention"), module_key(key, "o_proj")), "o_proj")

    def decode(self, x: Array, kind: Array, kinds: LayerKinds, bias: Array, kv: tuple[Array, Array],
               index: Array) -> tuple[Array, tuple[Array, Array]]:
        """Decoding: `bias` is the additive bias over the cache's slots (`attention.cached_mask`)."""
        q, k, v = self.qkv(x, *kinds.rope(kind))
        keys = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), (0, index, 0, 0))
        values = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), (0, index, 0, 0))
        out = attention.attend(q, keys, values, bias, scale=self.scale, softcap=self.softcap)
        return self.o_proj(out), (keys, values)


class MLP(nnx.Module):
    """Gated: down(act(gate(x)) * up(x)) (SwiGLU, GeGLU); plain: down(act(up(x))) (OPT, GPT-NeoX)."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        e, m, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = dense(e, m, ("embed", "mlp"), config, bias=bias, name="gate_proj", rngs=rngs) if config.gated_mlp else None
        self.up_proj = dense(e, m, ("embed", "mlp"), config, bias=bias, name="up_proj", rngs=rngs)
        self.down_proj = dense(m, e, ("mlp", "embed"), config, bias=bias, name="down_proj", rngs=rngs)
        self.activation = ACTIVATIONS[config.activation]

    def __call__(self, x: Array, key: Array | None = None) -> Array:
        if self.gate_proj is None:
            hidden = self.activation(checkpoint_name(self.up_proj(x, module_key(key, "up_proj")), "up_proj"))
        else:
            gate, up = projections(x, [self.gate_proj, self.up_proj], key)
            hidden = self.activation(checkpoint_name(gate, "gate_proj")) * checkpoint_name(up, "up_proj")
        hidden = with_logical_constraint(hidden, ("batch", "length", "mlp"))
        return checkpoint_name(self.down_proj(hidden, module_key(key, "down_proj")), "down_proj")


class DecoderLayer(nnx.Module):
    """Pre-norm block. Sequential: x + attn(norm(x)), then + mlp(norm(.)) (Gemma: each output normed too);
    parallel (GPT-NeoX): x + attn(norm1(x)) + mlp(norm2(x)). Layer `index`'s MLP is a mixture of experts where
    `config.sparse_layer(index)` (model/moe.py); each call returns its router's stats beside x (None: dense)."""

    def __init__(self, config: DecoderConfig, index: int = 0, *, rngs: nnx.Rngs):
        e = config.hidden_size
        self.input_layernorm = Norm(e, config)
        self.self_attn = Attention(config, rngs=rngs)
        self.post_attention_layernorm = Norm(e, config)
        self.mlp = SparseMLP(config, rngs=rngs) if config.sparse_layer(index) else MLP(config, rngs=rngs)
        self.attention_output_norm = Norm(e, config) if config.sandwich_norms else None
        self.mlp_output_norm = Norm(e, config) if config.sandwich_norms else None
        self.parallel = config.residual == "parallel"

    def _attention_output(self, attended: Array) -> Array:
        return attended if self.attention_output_norm is None else self.attention_output_norm(attended)

    def _mlp(self, x: Array, key: Array | None, real: Array | None) -> tuple[Array, RouterStats | None]:
        if isinstance(self.mlp, SparseMLP):
            return self.mlp(x, real)
        return self.mlp(x, key), None

    def _rest(self, x: Array, attended: Array, key: Array | None = None,
              real: Array | None = None) -> tuple[Array, RouterStats | None]:
        """The residual additions and the MLP, after the attention's output (and the router's stats)."""
        if self.parallel:
            out, stats = self._mlp(self.post_attention_layernorm(x), key, real)
            x = out + attended + x
        else:
            x = x + self._attention_output(attended)
            out, stats = self._mlp(self.post_attention_layernorm(x), key, real)
            x = x + (out if self.mlp_output_norm is None else self.mlp_output_norm(out))
        return with_logical_constraint(x, ("batch", "length", "embed")), stats

    def __call__(self, x: Array, kind: Array | int, kinds: LayerKinds,
                 key: Array | None = None) -> tuple[Array, RouterStats | None]:
        """`key`: this layer's LoRA dropout key (the train step's alone)."""
        return self._rest(x, self.self_attn(self.input_layernorm(x), kind, kinds, key), key, kinds.real)

    def decode(self, x: Array, kind: Array, kinds: LayerKinds, bias: Array, kv: tuple[Array, Array],
               index: Array) -> tuple[Array, tuple[Array, Array]]:
        attended, kv = self.self_attn.decode(self.input_layernorm(x), kind, kinds, bias, kv, index)
        return self._rest(x, attended)[0], kv


def stacked_layers(config: DecoderConfig, rngs: nnx.Rngs) -> DecoderLayer:
    """`num_layers` decoder layers as one module whose parameters have a leading `layers` axis."""

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make(rngs: nnx.Rngs) -> DecoderLayer:
        return DecoderLayer(config, 0, rngs=rngs)  # every layer alike (DecoderConfig refuses a mix under a scan)

    return make(rngs)


class Decoder(nnx.Module):
    """A causal LM of any family (`config.family`'s switches). `config.remat` picks the per-layer
    rematerialisation policy, `config.scan_layers` stacked layers under a scan or a list of layers."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = Embed(config.vocab_size, config, scale=config.hidden_size ** 0.5 if config.embed_scale
                                  else 1.0, rngs=rngs)
        self.embed_positions = Embed(config.max_position_embeddings + config.position_offset, config,
                                     axes=("length", "embed"), rngs=rngs) if config.positions == "learned" else None
        if config.scan_layers:
            self.layers = stacked_layers(config, rngs)
        else:
            self.layers = nnx.List([DecoderLayer(config, i, rngs=rngs) for i in range(config.num_layers)])
        self.norm = Norm(config.hidden_size, config)
        self.lm_head = None if config.tie_embeddings else dense(
            config.hidden_size, config.vocab_size, ("embed", "vocab"), config, rngs=rngs
        )

    def __call__(self, tokens: Array, positions: Array, segment_ids: Array, cache: Cache | None = None):
        """Logits [B, T, vocab] in `config.dtype` (float32 where the family caps them) for int arrays [B, T]
        (segment 0 marks padding); with a `cache`, (logits, the cache with these tokens written at its index)."""
        x, cache = self.hidden_states(tokens, positions, segment_ids, cache)
        logits = self.logits(x)
        return logits if cache is None else (logits, cache)

    def output_head(self) -> tuple[Array, bool]:
        """The output projection and whether it is the [vocab, embed] embedding table (tied) or [embed, vocab]."""
        if self.lm_head is None:
            return self.embed_tokens.embedding[...], True
        return self.lm_head.kernel[...], False

    def logits(self, x: Array) -> Array:
        """Logits of final hidden states [B, T, hidden] (with the family's final soft-cap, in float32)."""
        logits = self.embed_tokens.attend(x) if self.lm_head is None else self.lm_head(x)
        logits = with_logical_constraint(logits, ("batch", "length", "vocab"))
        cap = self.config.final_softcap
        return logits if cap is None else cap * jnp.tanh(logits.astype(jnp.float32) / cap)

    def hidden_states(self, tokens: Array, positions: Array, segment_ids: Array, cache: Cache | None = None,
                      embed_noise: Callable[[Array], Array] | None = None,
                      lora_key: Array | None = None) -> tuple[Array, Cache | None]:
        """The last hidden layer [B, T, hidden] after the final norm (HF's `hidden_states[-1]`), and the
        updated cache when decoding. `embed_noise` maps the token embeddings (after the family's scale, before
        learned positions: HF's `embed_tokens` output) to what the layers get: only the train step passes one
        (NEFTune, `train.step.neftune_noise`). `lora_key` draws the LoRA dropout masks (model/lora.py), layer i's
        from fold_in(lora_key, i) in either layout: only the train step passes one, never with a cache."""
        if cache is None:
            return self.routed_hidden_states(tokens, positions, segment_ids, embed_noise, lora_key)[0], None
        x = self._embeddings(tokens, positions, embed_noise)
        kinds = self._kinds(positions, segment_ids, decoding=True)
        segments = jax.lax.dynamic_update_slice(cache.segments, segment_ids.astype(jnp.int32), (0, cache.index))
        x, keys, values = self._cached_layers(x, self._kind_ids(), kinds, segment_ids, segments, cache)
        return self.norm(x), Cache(keys, values, segments, cache.index + tokens.shape[1])

    def routed_hidden_states(self, tokens: Array, positions: Array, segment_ids: Array,
                             embed_noise: Callable[[Array], Array] | None = None,
                             lora_key: Array | None = None, order: Array | None = None
                             ) -> tuple[Array, RouterStats | None]:
        """`hidden_states` without a cache, with the sparse layers' router stats over the real tokens (a leading
        layers axis; None for a dense model): what the train step's router losses and metrics are made from. `order`:
        each token's place in its row [T] where the rows are split over a `context` axis (model/context.py)."""
        x = self._embeddings(tokens, positions, embed_noise)
        kinds = self._kinds(positions, segment_ids, decoding=False, order=order)
        x, stats = self._train_layers(x, self._kind_ids(), kinds, lora_key)
        return self.norm(x), stats

    def _embeddings(self, tokens: Array, positions: Array, embed_noise: Callable[[Array], Array] | None) -> Array:
        x = self.embed_tokens(tokens)
        if embed_noise is not None:
            x = embed_noise(x)
        if self.embed_positions is not None:
            x = x + self.embed_positions(positions + self.config.position_offset)
        return with_logical_constraint(x, ("batch", "length", "embed"))

    def _kind_ids(self) -> np.ndarray:
        types = sorted(set(self.config.kinds))  # "full" before "sliding", as layer_windows
        return np.asarray([types.index(kind) for kind in self.config.kinds], np.int32)

    def _kinds(self, positions: Array, segment_ids: Array, decoding: bool, order: Array | None = None) -> LayerKinds:
        config, types, windows = self.config, sorted(set(self.config.kinds)), layer_windows(self.config)
        if config.positions != "rope":
            ropes = ((None, None),)
        elif config.local_rope_theta is None:  # every type rotates alike
            ropes = (rope.cos_sin(positions, config),)
        else:
            ropes = tuple(rope.cos_sin(positions, config, kind) for kind in types)
        implementation = attention.implementation_for(config.attention)
        if not decoding and (order is not None or context.context_size() > 1):  # split (as they are: order None)
            implementation = "context"  # model/context.py meets the keys by their segment ids and places
        masks = () if decoding else tuple(attention.mask_input(implementation, segment_ids, w) for w in windows)
        return LayerKinds(masks, ropes, None if decoding else segment_ids > 0, order)

    def _train_layers(self, x: Array, kind_ids: np.ndarray, kinds: LayerKinds,
                      key: Array | None) -> tuple[Array, RouterStats | None]:
        """The layers without a cache, and the sparse layers' router stats (stacked); a `key` reaches each layer as
        an argument, a key a token made of it there (remat's recompute draws the same dropout masks)."""
        def run_layer(layer: DecoderLayer, x: Array, kind: Array | int, kinds: LayerKinds,
                      key: Array | None) -> tuple[Array, RouterStats | None]:
            return layer(x, kind, kinds, key if key is None else lora.token_keys(key, *x.shape[:2], kinds.order))

        def remat(fn):
            return nnx.remat(fn, policy=remat_policy(self.config.remat)) if self.config.remat != "none" else fn

        keys = None if key is None else jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(len(kind_ids)))
        if not self.config.scan_layers:  # each layer's type is known here: no switch
            runs = {kind: remat(lambda layer, x, kinds, key, kind=kind: run_layer(layer, x, kind, kinds, key))
                    for kind in set(kind_ids.tolist())}
            stats = []
            for i, (layer, kind) in enumerate(zip(self.layers, kind_ids.tolist(), strict=True)):
                x, layer_stats = runs[kind](layer, x, kinds, None if keys is None else keys[i])
                stats.append(layer_stats)
            return x, stacked_stats(stats)

        @nnx.scan(in_axes=(0, nnx.Carry, 0, None, None if keys is None else 0), out_axes=(nnx.Carry, 0))
        def scan(layer: DecoderLayer, x: Array, kind: Array, kinds: LayerKinds,
                 key: Array | None) -> tuple[Array, RouterStats | None]:
            return remat(run_layer)(layer, x, kind, kinds, key)

        return scan(self.layers, x, jnp.asarray(kind_ids), kinds, keys)

    def _cached_layers(self, x: Array, kind_ids: np.ndarray, kinds: LayerKinds, query_segments: Array,
                       segments: Array, cache: Cache) -> tuple[Array, Array, Array]:
        """Decoding: each layer's window is a value (the bias is built per layer), its RoPE chosen by its type."""
        big = segments.shape[1] + 1  # a full layer's "window": every slot
        windows = jnp.asarray([window or big for window in layer_windows(self.config)], jnp.int32)

        def step(layer, x, k, v, kind):
            bias = attention.attention_bias(attention.cached_mask(query_segments, segments, cache.index,
                                                                  windows[kind]))
            return layer.decode(x, kind, kinds, bias, (k, v), cache.index)

        if not self.config.scan_layers:
            keys, values = [], []
            for i, layer in enumerate(self.layers):
                x, (k, v) = step(layer, x, cache.keys[i], cache.values[i], jnp.int32(kind_ids[i]))
                keys.append(k)
                values.append(v)
            return x, jnp.stack(keys), jnp.stack(values)

        @nnx.scan(in_axes=(0, nnx.Carry, 0, 0, 0), out_axes=(nnx.Carry, 0, 0))
        def scan(layer, x, k, v, kind):
            x, (k, v) = step(layer, x, k, v, kind)
            return x, k, v

        return scan(self.layers, x, cache.keys, cache.values, jnp.asarray(kind_ids))


def abstract_model(config: DecoderConfig) -> Decoder:
    """A Decoder whose parameters are shape/dtype placeholders (no memory, no RNG), a model of its own (callers fill
    it in). Traced once per config: tracing a deep model's construction takes a good part of a second."""
    key = repr(config)
    if key not in _ABSTRACT:
        _ABSTRACT[key] = nnx.split(nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0))))
    graphdef, state = _ABSTRACT[key]
    return nnx.merge(graphdef, jax.tree.map(lambda x: x, state))  # the placeholders in containers of its own


_ABSTRACT: dict[str, tuple] = {}  # repr(config) -> (graphdef, abstract state)


def with_params(config: DecoderConfig, params: dict) -> Decoder:
    """A Decoder holding `params` (a pure dict as `nnx.state(model, nnx.Param).to_pure_dict()` gives)."""
    model = abstract_model(config)
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(model, state)
    return model
