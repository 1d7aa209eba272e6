"""Context parallelism: one row's tokens split over the mesh's `context` axis, so a row longer than one device can
hold trains on several (`mesh: {context: N}`; MaxText's `context` axis, open-instruct's and TRL's sequence
parallelism).

Everything but attention works on each device's own tokens as it is (the rules table splits `length` over
`context`). Attention needs the other devices' keys and values, by `model.context_strategy`:

| strategy     | how (inside one `shard_map` over the mesh)                                                          |
|--------------|-----------------------------------------------------------------------------------------------------|
| `all_gather` | keys and values gathered over `context`, queries kept local (MaxText's default)                     |
| `ring`       | key/value blocks passed around the ring (`ppermute`), each met with online softmax: no device ever  |
|              | holds the row's keys                                                                                |
| `ulysses`    | heads exchanged with an all-to-all: each device attends over the whole row for 1/N of the heads     |

Each compares query and key by their place in the row (`order`, the token's index before any reordering) and
their segment, so a packed row's documents never see each other, a causal mask and a sliding window hold
whatever the layout. Causal attention makes a row's later tokens costlier; `model.context_reorder` deals the row's
tokens out before the split (`order_of`: `striped` every N-th token, `dual_chunk_swap` chunks i and 2N - 1 - i of
2N to device i, as MaxText's reorder strategies; on packed rows of several documents only striped balances them),
the train step undoing it on each token's loss (train/step.py `forward`).

On a TPU (`model.attention: auto` or `splash`) every strategy meets the keys by splash attention (`_splash`): for
all_gather and ulysses the keys put back in the row's own order, the kernel's mask comparing each query's place in
the row with each key's (MaxText's load-balanced masks), all_gather's queries split over the devices with the
kernel's mask information; for ring one kernel a turn, its outputs merged by their log-sum-exps and its backward
given the row's (kernels/splash_ring.py). The other platforms, and rows whose share a device is not whole tiles of
128 tokens, use the blocks above (plain JAX).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from instructjax.core.errors import ConfigError
from instructjax.core.sharding import logical_to_spec
from instructjax.model.attention import implementation_for
from instructjax.model.config import CONTEXT_REORDERS, CONTEXT_STRATEGIES  # noqa: F401  (the choices)
from instructjax.model.kernels.common import MASKED, softcapped, whole_groups

Array = jax.Array
AXIS = "context"
QUERY_ROWS = 512  # queries met at once in a block: a [512, block] array of scores a head
KERNELS = ("pallas_gpu", "cudnn")  # model.attention's GPU kernels: neither runs over split rows (splash does)
LANES = 128  # splash tiles: a device's share of a row in whole tiles


def context_size(mesh=None) -> int:
    """The `context` axis's size on `mesh` (default: the mesh set by `jax.set_mesh`; 1 without one)."""
    mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
    if mesh is None or mesh.empty:
        return 1
    return dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True)).get(AXIS, 1)


def order_of(length: int, parts: int, reorder: str) -> np.ndarray:
    """The row's token indices in the order they are split over `parts` devices (each device the next
    length / parts of them): `none` as they are, `dual_chunk_swap` chunks i and 2 parts - 1 - i of 2 parts for
    device i (an early and a late chunk: equal causal work), `striped` tokens i, i + parts, i + 2 parts, ..."""
    index = np.arange(length, dtype=np.int32)
    if parts == 1 or reorder == "none":
        return index
    if reorder == "striped":
        return index.reshape(-1, parts).T.reshape(-1)
    chunks = index.reshape(2 * parts, -1)
    return np.concatenate([np.concatenate([chunks[i], chunks[2 * parts - 1 - i]]) for i in range(parts)])


def check(model, sizes: dict[str, int], lengths) -> None:
    """One ConfigError line where rows of `lengths` cannot split over the `context` axis of a mesh of `sizes` for
    `model` (a DecoderConfig): a GPU kernel named for attention, a row length the split (its reorder, splash's
    tiles) does not divide, or ulysses' heads."""
    parts = sizes.get(AXIS, 1)
    if parts == 1:
        return
    if model.attention in KERNELS:
        raise ConfigError(f"model.attention: {model.attention} does not run over rows split by mesh.context={parts}: "
                          "the split rows meet their keys by splash (TPU) or model/context.py's own blocks (plain "
                          "JAX); set model.attention: auto, or mesh.context: 1")
    dual, splash = model.context_reorder == "dual_chunk_swap", model.attention == "splash"
    need = math.lcm(parts * (2 if dual else 1), parts * LANES if splash else 1)
    into = " and ".join([*(["into 2 x context chunks (model.context_reorder: dual_chunk_swap)"] if dual else []),
                         *([f"in whole splash tiles of {LANES} a device (model.attention: splash)"] if splash else [])])
    for length in sorted(set(lengths)):
        if length % need:
            raise ConfigError(f"a row of {length} tokens (data.seq_len) does not split over mesh.context={parts}"
                              + (f" {into}" if into else "") + f": make it a multiple of {need}")
    tensor = sizes.get("tensor", 1)
    heads, kv_heads = model.num_heads // tensor, max(model.num_kv_heads // tensor, 1)
    if model.context_strategy == "ulysses" and (heads % parts or kv_heads % parts):
        raise ConfigError(f"model.context_strategy: ulysses deals each device of mesh.context={parts} a share of the "
                          f"heads: the model's {heads} heads and {kv_heads} kv heads (a tensor device's) must both be "
                          "multiples of it (all_gather and ring split no heads)")


def _block(q, k, v, seg_q, seg_k, ord_q, ord_k, window, softcap, scale):
    """One block of keys met by the local queries: (unnormalised output [b, K, G, t, D], row max and sum [b, K, G, t])
    in float32, masked by segment, causality and window on the tokens' places in the row; `QUERY_ROWS` queries at a
    time (each group's scores recomputed in the backward pass), so [QUERY_ROWS, s] scores a head at most."""
    t = q.shape[1]
    if t > QUERY_ROWS and t % QUERY_ROWS == 0:
        n = t // QUERY_ROWS
        tiles = (jnp.moveaxis(q.reshape(q.shape[0], n, QUERY_ROWS, *q.shape[2:]), 1, 0),
                 jnp.moveaxis(seg_q.reshape(-1, n, QUERY_ROWS), 1, 0), ord_q.reshape(n, QUERY_ROWS))
        one = jax.checkpoint(lambda x: _scores(*x[:2], k, v, seg_k, x[2], ord_k, window, softcap, scale))
        out, top, total = jax.lax.map(one, tiles)  # [n, b, K, G, rows(, D)]
        rows = lambda x: jnp.moveaxis(x, 0, 3).reshape(*x.shape[1:4], t, *x.shape[5:])  # noqa: E731
        return rows(out), rows(top), rows(total)
    return _scores(q, seg_q, k, v, seg_k, ord_q, ord_k, window, softcap, scale)


def _scores(q, seg_q, k, v, seg_k, ord_q, ord_k, window, softcap, scale):
    """`_block` of queries q [b, t, K, G, D] at once."""
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * scale
    scores = softcapped(scores, softcap)
    see = (seg_q[:, :, None] == seg_k[:, None, :]) & (ord_k[None, None, :] <= ord_q[None, :, None])
    if window is not None:
        see = see & (ord_q[None, :, None] - ord_k[None, None, :] < window)
    see = see[:, None, None]  # [b, 1, 1, t, s]
    scores = jnp.where(see, scores, MASKED)
    top = jnp.max(scores, axis=-1)
    probs = jnp.where(see, jnp.exp(scores - top[..., None]), 0.0)
    out = jnp.einsum("bkgts,bskd->bkgtd", probs.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return out, top, jnp.sum(probs, axis=-1)


def _merge(acc, new):
    """Two blocks' online-softmax partial results as one."""
    (o1, m1, l1), (o2, m2, l2) = acc, new
    top = jnp.maximum(m1, m2)
    a, b = jnp.exp(m1 - top), jnp.exp(m2 - top)
    return o1 * a[..., None] + o2 * b[..., None], top, l1 * a + l2 * b


def _local(q, k, v, seg, order, strategy, parts, window, softcap, scale):
    """One device's attention (inside the shard_map): its queries q [b, t, h, D] against the row's keys, met a block
    of t keys at a time (the key block's scores recomputed in the backward pass: `jax.checkpoint`), so no device
    holds more than a [t, t] block of scores a head."""
    b, t, h, d = q.shape
    if strategy == "ulysses":  # [b, t, h, D] -> [b, T, h / parts, D]: the whole row for some heads
        q, k, v = (jax.lax.all_to_all(x, AXIS, 2, 1, tiled=True) for x in (q, k, v))
        seg, order = jax.lax.all_gather(seg, AXIS, axis=1, tiled=True), jax.lax.all_gather(order, AXIS, tiled=True)
    seg_q, ord_q, groups = seg, order, q.shape[2] // k.shape[2]
    q = q.reshape(*q.shape[:2], k.shape[2], groups, d)

    @jax.checkpoint
    def meet(acc, kv):  # the queries against one block of keys, merged into what the earlier blocks gave
        return _merge(acc, _block(q, kv[0], kv[1], seg_q, kv[2], ord_q, kv[3], window, softcap, scale))

    zeros = jnp.moveaxis(q.astype(jnp.float32) * 0, 1, 3)  # [b, K, G, t, D], varying over the mesh as q does
    start = (zeros, zeros[..., 0] + MASKED, zeros[..., 0])
    if strategy == "ring":  # each device's block passed on to the next, `parts` turns
        ring = [(i, (i + 1) % parts) for i in range(parts)]

        def turn(carry, _):
            acc, kv = carry
            return (meet(acc, kv), tuple(jax.lax.ppermute(x, AXIS, ring) for x in kv)), None

        (acc, _), _ = jax.lax.scan(turn, (start, (k, v, seg, order)), None, length=parts)
    else:  # the row's keys here already (ulysses), or gathered now (all_gather): `parts` blocks of them
        if strategy == "all_gather":
            k, v = (jax.lax.all_gather(x, AXIS, axis=1, tiled=True) for x in (k, v))
            seg, order = jax.lax.all_gather(seg, AXIS, axis=1, tiled=True), jax.lax.all_gather(order, AXIS, tiled=True)
        size = k.shape[1] // parts
        blocks = (*(jnp.moveaxis(x.reshape(b, parts, size, *x.shape[2:]), 1, 0) for x in (k, v, seg)),
                  order.reshape(parts, size))
        acc, _ = jax.lax.scan(lambda acc, kv: (meet(acc, kv), None), start, blocks)
    out, _, total = acc
    out = (out / total[..., None]).astype(v.dtype)  # [b, K, G, t, D]
    out = jnp.moveaxis(out, 3, 1).reshape(b, out.shape[3], -1, d)  # [b, t, h, D]
    if strategy == "ulysses":
        out = jax.lax.all_to_all(out, AXIS, 1, 2, tiled=True)
    return out


def attention(q: Array, k: Array, v: Array, segment_ids: Array, order: Array | None, strategy: str, *,
              reorder: str = "none", kernel: str = "blocks", block: int | None = None, window: int | None = None,
              softcap: float | None = None, scale: float | None = None) -> Array:
    """Causal same-segment attention of rows split over the mesh's `context` axis: q [B, T, H, D], k and v
    [B, T, K, D], `segment_ids` [B, T] and `order` [T] (each token's place in the row: `order_of(T, context,
    reorder)`; None for rows split as they are) laid out as the split lays them; -> [B, T, H, D] (see the module
    doc). `kernel`: model.attention's implementation, splash (`uses_splash`) or our blocks."""
    mesh = jax.sharding.get_abstract_mesh()
    parts = context_size(mesh)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    spec = lambda names, x: logical_to_spec(names, mesh, x.shape, strict=False)  # noqa: E731
    heads = spec(("batch", "length", "heads", "head_dim"), q)
    kv_heads = spec(("batch", "length", "kv_heads", "head_dim"), k)
    rows = spec(("batch", "length"), segment_ids)
    if uses_splash(kernel, q.shape[1] // parts):
        k, v, kv_heads = whole_groups(q, k, v, heads, kv_heads)
        local_heads = jax.sharding.NamedSharding(mesh, heads).shard_shape(q.shape)[2]
        return _splash(q, k, v, segment_ids, strategy, reorder, local_heads, (heads, kv_heads, rows), block or 512,
                       window, softcap, scale)
    order = jnp.arange(q.shape[1], dtype=jnp.int32) if order is None else order

    def body(q, k, v, seg, order):
        return _local(q, k, v, seg, order, strategy, parts, window, softcap, scale)

    return jax.shard_map(body, mesh=mesh, in_specs=(heads, kv_heads, kv_heads, rows, PartitionSpec(AXIS)),
                         out_specs=heads)(q, k, v, segment_ids, order)


def uses_splash(kernel: str, tokens: int) -> bool:
    """Whether rows split with a device's `tokens` of each meet their keys by TPU splash attention (every strategy):
    model.attention splash (`auto` on a TPU) and whole splash tiles of 128 tokens a device."""
    return kernel == "splash" and tokens % LANES == 0


def _splash(q, k, v, segment_ids, strategy, reorder, heads, specs, block, window, softcap, scale):
    """`attention` by splash: the row's keys, values and segment ids gathered (all_gather) or each device's share of
    the heads over the whole row (ulysses, an all-to-all), put back in the row's own order, the queries staying in
    the split's order and the kernel's mask comparing each query's place in the row with each key's; or each
    device's block passed around the ring, a kernel a turn (ring, kernels/splash_ring.py). all_gather and ring split
    the queries over the devices as the kernel's mask information (MaxText's splash with context)."""
    from instructjax.model.kernels.common import target_platform
    from instructjax.model.kernels.splash import attend_rows, kernel
    from instructjax.model.kernels.splash_ring import attend_ring, ring_kernels

    mesh, (q_spec, kv_spec, rows), interpret = jax.sharding.get_abstract_mesh(), specs, target_platform() != "tpu"
    length, parts = q.shape[1], context_size()
    order, by_query = order_of(length, parts, reorder), jax.sharding.NamedSharding(mesh, PartitionSpec(None, AXIS))
    back = None if np.array_equal(order, np.arange(length)) else np.argsort(order)
    in_row = lambda x: x if back is None else jnp.take(x, back, axis=1)  # noqa: E731  the row in its own order
    gathered = lambda x: in_row(jax.lax.all_gather(x, AXIS, axis=1, tiled=True))  # noqa: E731
    if strategy == "all_gather":
        run = kernel(length, heads, _tile(length // parts, block), window, softcap, interpret, query_order=order,
                     query_shards=parts)
        run_spec = run.manual_sharding_spec(by_query)

        def body(q, k, v, seg, run):
            return attend_rows(run, q, gathered(k), gathered(v), seg, gathered(seg), scale)
    elif strategy == "ring":
        run = ring_kernels(order, parts, reorder, heads, _tile(length // parts, block), window, softcap, interpret)
        run_spec = tuple(turn.manual_sharding_spec(by_query) for turn in run)

        def body(q, k, v, seg, runs):
            return attend_ring(runs, q, k, v, seg, scale)
    else:  # ulysses: [b, t, h, D] -> [b, T, h / parts, D] and back
        run = kernel(length, heads // parts, _tile(length, block), window, softcap, interpret, query_order=order)
        run_spec = PartitionSpec()

        def body(q, k, v, seg, run):
            q, k, v = (jax.lax.all_to_all(x, AXIS, 2, 1, tiled=True) for x in (q, k, v))
            seg = jax.lax.all_gather(seg, AXIS, axis=1, tiled=True)
            out = attend_rows(run, q, in_row(k), in_row(v), seg, in_row(seg), scale)
            return jax.lax.all_to_all(out, AXIS, 1, 2, tiled=True)

    return jax.shard_map(body, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, rows, run_spec), out_specs=q_spec,
                         check_vma=False)(q, k, v, segment_ids.astype(jnp.int32), run)


def _tile(tokens: int, block: int) -> int:
    """The largest splash tile (a multiple of 128 tokens, at most `block`) that divides `tokens`."""
    return next(size for size in range(min(block, tokens) // LANES * LANES, 0, -LANES) if tokens % size == 0)


def with_split_attention(acts: dict, model, rows: int, seq_len: int, parts: int, tensor: int,
                         platform: str = "tpu") -> dict:
    """A plan's activation figures (train/memory.py `activation_bytes`, for a device's share of each row) with one
    layer's attention over rows split `parts` ways (`layer_bytes`) in the recomputed layer's working set, and with
    `remat: full` what the compiler keeps of each layer's keys and values around our blocks (`kept_bytes`; nothing
    around splash) beside its saved input; as they are for whole rows."""
    if parts == 1:
        return acts
    splash = uses_splash(implementation_for(model.attention, platform), seq_len // parts)
    recompute = acts["recompute"] + layer_bytes(model, rows, seq_len, parts, tensor, splash)
    kept = model.remat == "full" and not splash
    saved = acts["saved"] + (kept_bytes(model, rows, seq_len // parts, tensor, parts) if kept else 0)
    return {**acts, "saved": saved, "recompute": recompute, "layers": saved + recompute,
            "total": saved + max(recompute, acts["logits"]),
            "attention": f"context-split ({model.context_strategy}{' by splash' if splash else ''}, 1/{parts} of "
                         "each row a device)"}


def kept_bytes(model, rows: int, tokens: int, tensor: int, parts: int) -> int:
    """What XLA:TPU keeps of every layer for the backward pass around the split attention under `remat: full`
    beyond its input, for a device's `tokens` of each of `rows` rows split `parts` ways: with `all_gather`, about
    one of the row's gathered keys or values a layer; fitted to the compiler's figures for Llama-3.1-8B on a
    v5p-64, a v4-64 and a v5e-32 with context 1, 2, 4 and 8 (benchmarks/context_plan.py: plan within 0.91-1.07 of
    the compiler in 11 of 12 steps, 1.12 in one), the mechanism not established. `ring` and `ulysses`: a device's own
    keys and values a layer (32K over fsdp 8 x context 4 of a v5e-32: 0.92 and 1.02 of the compiler)."""
    kv = max(model.num_kv_heads / tensor, 1)
    held = parts if model.context_strategy == "all_gather" else 2  # tokens' worth of one kv head's width
    return int(model.num_layers * rows * tokens * held * kv * model.head_dim * np.dtype(model.dtype).itemsize)


def layer_bytes(model, rows: int, seq_len: int, parts: int, tensor: int, splash: bool = False) -> int:
    """A device's bytes for one layer's attention over rows split `parts` ways (model/context.py; 0 unsplit): the
    keys and values it meets at once (all_gather: the row's; ring: its own block and the one arriving; ulysses: the
    row's queries, keys and values for its share of the heads), and with our blocks (not `splash`, whose tiles stay
    on chip) one tile of scores [rows, heads, QUERY_ROWS, t] in float32 with its probabilities (t = seq_len / parts;
    ulysses' heads / parts)."""
    if parts == 1:
        return 0
    c, t = np.dtype(model.dtype).itemsize, seq_len // parts
    heads, kv = model.num_heads / tensor, max(model.num_kv_heads / tensor, 1)
    queries = min(seq_len if model.context_strategy == "ulysses" else t, QUERY_ROWS)
    scores = 0 if splash else 8 * rows * heads * queries * t / (parts if model.context_strategy == "ulysses" else 1)
    if model.context_strategy == "all_gather":
        return int(2 * c * rows * seq_len * kv * model.head_dim + scores)
    if model.context_strategy == "ring":
        return int(4 * c * rows * t * kv * model.head_dim + scores)
    return int(c * rows * seq_len * (heads + 2 * kv) * model.head_dim / parts + scores)
