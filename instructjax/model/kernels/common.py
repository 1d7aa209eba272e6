"""What the attention kernels share: the platform they run on, padding a row to whole tiles, the heads-first layout, and running a
kernel on each device's shard of batch and heads."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

MASKED = -1e30  # additive bias of a key a query may not see: finite, so a fully masked row gives no NaN
PAD_SEGMENT = -1  # segment of the positions added to fill the last tile: they see only each other


def target_platform() -> str:
    """The platform the computation being traced runs on: the current mesh's devices' (a TPU slice's while a step
    is compiled for it on another machine), else JAX's default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def pad_to_blocks(block: int, q: Array, k: Array, v: Array, segment_ids: Array):
    """Pad the length to a multiple of `block`; added positions get PAD_SEGMENT (they see only each other)."""
    pad = -q.shape[1] % block
    if pad == 0:
        return q, k, v, segment_ids
    widths = ((0, 0), (0, pad), (0, 0), (0, 0))
    segment_ids = jnp.pad(segment_ids, ((0, 0), (0, pad)), constant_values=PAD_SEGMENT)
    return jnp.pad(q, widths), jnp.pad(k, widths), jnp.pad(v, widths), segment_ids


def heads_first(q: Array, k: Array, v: Array) -> tuple[Array, Array, Array]:
    """q [B, T, H, D] -> [B, K, G, T, D] (G = H // K query heads per kv head); k, v [B, S, K, D] -> [B, K, S, D]."""
    b, t, h, d = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, t, kv_heads, h // kv_heads, d).transpose(0, 2, 3, 1, 4)
    return q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)


def heads_last(out: Array) -> Array:
    b, k, g, t, d = out.shape
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, k * g, d)


def softcapped(scores: Array, softcap: float | None) -> Array:
    """cap * tanh(scores / cap) (Gemma-2's attention logits), or the scores themselves."""
    return scores if softcap is None else softcap * jnp.tanh(scores / softcap)


def per_shard(kernel, q: Array, k: Array, v: Array, segment_ids: Array) -> Array:
    """Run `kernel(q, k, v, segment_ids)` on each device's shard of batch and heads (`shard_map` over the
    current mesh; directly without one). Where the kv heads do not split like the query heads, they are
    repeated to one per query head first, so each shard holds whole groups."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return kernel(q, k, v, segment_ids)
    from instructjax.core.sharding import logical_to_spec

    q_spec = logical_to_spec(("batch", "length", "heads", "head_dim"), mesh, q.shape, strict=False)
    kv_spec = logical_to_spec(("batch", "length", "kv_heads", "head_dim"), mesh, k.shape, strict=False)
    k, v, kv_spec = whole_groups(q, k, v, q_spec, kv_spec)
    seg_spec = jax.sharding.PartitionSpec(q_spec[0], None)
    return jax.shard_map(kernel, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, seg_spec), out_specs=q_spec,
                         check_vma=False)(q, k, v, segment_ids)


def whole_groups(q: Array, k: Array, v: Array, q_spec, kv_spec):
    """k, v and their spec such that each device holds whole groups of query heads and their kv head: where the kv
    heads (spec `kv_spec`) do not split like the query heads (`q_spec`), repeated to one per query head."""
    if kv_spec[2] == q_spec[2]:
        return k, v, kv_spec
    group = q.shape[2] // k.shape[2]
    return jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2), q_spec
