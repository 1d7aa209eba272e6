"""The embedding lookup under a mesh: each device reads only its own slice of the table, and its gradient stays
that slice.

The table [rows, embed] is sharded by its logical axes (`vocab` -> tensor, `embed` -> fsdp and context) and the
ids [batch, length] by `batch` -> (data, fsdp) and `length` -> context. Left to GSPMD, `jnp.take` on such a table
may gather the table whole along one axis and all-reduce a table-sized gradient every step (Gemma-2's tied 256K x
2304 table on a v4-32: 1.1 GiB each way). Here, inside a `shard_map` over the mesh's axes, a device:

1. gathers the ids of the devices that share its rows but hold the other columns of the table (the axes that shard
   both the batch and `embed`, usually fsdp, and both a row's tokens and `embed`: context; a few bytes a token);
2. looks them up in its own [rows / R, embed / C] slice, scales and casts them (the model's order), and zeroes the
   ids another device's rows hold; their sum over the row axes (R, usually tensor) is then every id's row;
3. sends each device its own tokens' columns (an all-to-all over the shared axes: [tokens, embed / C] pieces in,
   [own tokens, embed] out), and gathers the columns of axes that shard `embed` but not the batch.

The sum over the row axes is in float32 off a TPU (XLA:CPU aborts promoting a bfloat16 all-reduce). The backward is
the same path reversed (all-to-all, then a scatter-add into the device's own slice): no collective
carries the table or its gradient. Outside a mesh, or where the mesh shards nothing, it is `jnp.take`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from instructjax.core.sharding import logical_to_spec
from instructjax.model.kernels.common import target_platform


def _axes(entry) -> tuple[str, ...]:
    return () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)


def lookup(table: jax.Array, ids: jax.Array, *, axes: tuple[str, str], scale: float, dtype) -> jax.Array:
    """`(table[ids] * scale).astype(dtype)` (scaled in the table's dtype): [*ids.shape, embed], the table's dims
    named by `axes` (logical: (rows, embed)); sharded as the module doc says under `jax.set_mesh`."""

    def local(t, i, first_row=None):  # first_row: the id of the slice's first row (the ids of other rows give 0)
        at = i if first_row is None else jnp.clip(i - first_row, 0, t.shape[0] - 1)
        found = jnp.take(t, at, axis=0)
        found = (found if scale == 1.0 else found * jnp.asarray(scale, t.dtype)).astype(dtype)
        if first_row is None:
            return found
        mine = (i >= first_row) & (i < first_row + t.shape[0])
        return jnp.where(mine[..., None], found, jnp.zeros((), dtype))

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return local(table, ids)
    row_entry, col_entry = logical_to_spec(axes, mesh, table.shape, strict=False)
    rows, cols = _axes(row_entry), _axes(col_entry)
    id_entries = logical_to_spec(("batch", "length")[:ids.ndim], mesh, ids.shape[:2], strict=False)
    batch, length = _axes(id_entries[0]), _axes(id_entries[1]) if ids.ndim > 1 else ()
    if not rows and not cols or set(rows) & set(batch + length):
        return local(table, ids)  # nothing to slice, or ids split like the rows (learned positions): GSPMD's take
    shared = tuple(a for a in cols if a in batch)  # the batch and the columns split alike: gather, then all-to-all
    split = tuple(a for a in cols if a in length)  # a row's tokens (context) and the columns alike: the same
    gathered = tuple(a for a in cols if a not in batch + length)  # only the columns split: gather them at the end
    if shared and split and cols.index(split[0]) < cols.index(shared[-1]):
        raise NotImplementedError(f"an embedding table's columns split over {cols}: the length's axes must follow "
                                  "the batch's (core/sharding.py's rules)")

    def sliced(t, i):
        if shared:
            i = jax.lax.all_gather(i, shared, axis=0, tiled=True)
        if split:
            i = jax.lax.all_gather(i, split, axis=1, tiled=True)
        x = local(t, i, jax.lax.axis_index(rows) * t.shape[0]) if rows else local(t, i)
        if rows:  # one device holds each id's row, the others add zeros: exact in any dtype
            x = jax.lax.psum(x if target_platform() == "tpu" else x.astype(jnp.float32), rows).astype(dtype)
        if split:  # the minor columns first: a device's blocks of its major axis's slice, then that axis's
            x = jax.lax.all_to_all(x, split, split_axis=1, concat_axis=x.ndim - 1, tiled=True)
        if shared:
            x = jax.lax.all_to_all(x, shared, split_axis=0, concat_axis=x.ndim - 1, tiled=True)
        if gathered:
            x = jax.lax.all_gather(x, gathered, axis=x.ndim - 1, tiled=True)
        return x

    id_spec = PartitionSpec(batch or None, *((length or None,) if ids.ndim > 1 else ()), *(None,) * (ids.ndim - 2))
    return jax.shard_map(sliced, mesh=mesh, in_specs=(PartitionSpec(row_entry, col_entry), id_spec),
                         out_specs=PartitionSpec(*id_spec, None),
                         axis_names=set(rows + cols + batch + length))(table, ids)
