"""Rotary position embeddings as transformers computes them: the plain inverse frequencies, LLaMA-3's and
linear scaling, Phi-3's long-RoPE (short or long factors by the longest position of the call, cos and sin
scaled by its attention factor), a sliding layer's own base (Gemma-3), and rotation of the first
`rotary_dims` of each head only (GPT-NeoX, Phi-4-mini) in HF's `rotate_half` layout."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from instructjax.model.config import DecoderConfig

Array = jax.Array


def _plain(theta: float, dim: int) -> np.ndarray:
    return (1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)))).astype(np.float32)


def _llama3(inv_freq: np.ndarray, s: dict) -> np.ndarray:
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_context = s["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_context / low, old_context / high
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def inv_freqs(config: DecoderConfig, kind: str = "full") -> tuple[np.ndarray, ...]:
    """Inverse frequencies [rotary_dims / 2] (float32) of a layer of `kind`: one array, or for long-RoPE the
    short and the long one."""
    dim = config.rotary_size
    if kind == "sliding" and config.local_rope_theta is not None:
        return (_plain(config.local_rope_theta, dim),)
    inv_freq = _plain(config.rope_theta, dim)
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type")
    if kind == "llama3":
        return (_llama3(inv_freq, scaling),)
    if kind == "linear":
        return ((inv_freq / np.float32(scaling["factor"])).astype(np.float32),)
    if kind == "longrope":
        exponents = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
        base = np.float32(config.rope_theta) ** exponents
        return tuple((1.0 / (np.asarray(scaling[f], np.float32) * base)).astype(np.float32)
                     for f in ("short_factor", "long_factor"))
    return (inv_freq,)


def attention_factor(config: DecoderConfig, kind: str = "full") -> float:
    """What cos and sin are multiplied by (long-RoPE's attention factor; 1 otherwise)."""
    scaling = config.rope_scaling or {}
    if scaling.get("rope_type") != "longrope" or (kind == "sliding" and config.local_rope_theta is not None):
        return 1.0
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    original = scaling["original_max_position_embeddings"]
    factor = scaling.get("factor") or config.max_position_embeddings / original
    return 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))


def cos_sin(positions: Array, config: DecoderConfig, kind: str = "full", last: Array | None = None) -> tuple[Array, Array]:
    """cos and sin [B, T, rotary_dims / 2] (float32) for integer positions [B, T]. Long-RoPE takes its long factors
    once the call reaches past the original context: by its largest position, or each row by its own `last` [B]
    (decoding: a row's padding does not count)."""
    freqs = inv_freqs(config, kind)
    inv_freq = jnp.asarray(freqs[0])
    if len(freqs) == 2:
        original = config.rope_scaling["original_max_position_embeddings"]
        beyond = jnp.max(positions) + 1 > original if last is None else (last + 1 > original)[:, None, None]
        inv_freq = jnp.where(beyond, jnp.asarray(freqs[1]), inv_freq)
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    scale = attention_factor(config, kind)
    return jnp.cos(angles) * scale, jnp.sin(angles) * scale


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate the first 2 * cos.shape[-1] dims of x [B, T, heads, head_dim] (the rest pass through)."""
    half = cos.shape[-1]
    x32 = x.astype(jnp.float32)
    rotated, rest = x32[..., : 2 * half], x32[..., 2 * half:]
    x1, x2 = rotated[..., :half], rotated[..., half:]
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], axis=-1).astype(x.dtype)
