"""cuDNN's fused flash attention (GPU, bfloat16 or float16): each row's runs of equal segment ids handed to
cuDNN as a packed (THD) batch of sequences (offsets and lengths), so no mask array exists; grouped kv heads
run natively; a sliding window is cuDNN's own. cuDNN has no logit soft-cap."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from instructjax.model.kernels.common import per_shard

Array = jax.Array

MAX_SEGMENTS = 64  # runs of equal segment ids (padding included) a row may hold


def segment_runs(segment_ids: Array, max_segments: int) -> tuple[Array, Array]:
    """(offsets [B, M+1], lengths [B, M]) of each row's runs of equal segment ids (padding is a run too),
    -1 past a row's last run: the packed (THD) description cuDNN takes. Runs past `max_segments` are not
    described (the caller checks the count)."""
    b, t = segment_ids.shape
    starts = jnp.concatenate([jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
    offsets = jax.vmap(lambda row: jnp.nonzero(row, size=max_segments + 1, fill_value=-1)[0])(starts)
    ends = jnp.where(offsets[:, 1:] >= 0, offsets[:, 1:], t)
    lengths = jnp.where(offsets[:, :-1] >= 0, ends - offsets[:, :-1], -1)
    return offsets.astype(jnp.int32), lengths.astype(jnp.int32)


def cudnn_attention(q: Array, k: Array, v: Array, segment_ids: Array, *, block: int = 0, scale: float,
                    window: int | None = None, softcap: float | None = None,
                    max_segments: int = MAX_SEGMENTS) -> Array:
    """Causal attention within each run of a row's segment ids by cuDNN. A row with more than `max_segments`
    runs is an error (checked on the host where the ids are concrete; the packer's rows hold far fewer)."""
    from jax._src.cudnn.fused_attention_stablehlo import MaskType
    from jax._src.cudnn.fused_attention_stablehlo import dot_product_attention as cudnn_dpa

    if q.dtype not in (jnp.bfloat16, jnp.float16):
        raise ValueError(f"cudnn attention runs in bfloat16 or float16, not {q.dtype} (model.dtype)")
    if softcap is not None:
        raise ValueError("cudnn attention has no logit soft-cap; use model.attention=pallas_gpu for this model")
    segment_ids = segment_ids.astype(jnp.int32)
    if not isinstance(segment_ids, jax.core.Tracer):
        runs = int((segment_ids[:, 1:] != segment_ids[:, :-1]).sum(1).max()) + 1
        if runs > max_segments:
            raise ValueError(f"cudnn attention: a row holds {runs} segments, more than {max_segments}")

    def kernel(q, k, v, segment_ids):
        offsets, lengths = segment_runs(segment_ids, max_segments)
        return cudnn_dpa(q, k, v, q_seqlen=lengths, kv_seqlen=lengths, q_offsets=offsets, kv_offsets=offsets,
                         scale=scale, mask_type=MaskType.CAUSAL, qkv_layout="BTNH", sliding_window_length=window)

    return per_shard(kernel, q, k, v, segment_ids)
