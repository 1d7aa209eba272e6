"""Device mesh and the one logical-axis rules table.

Model code names array dimensions logically (`batch`, `length`, `embed`, `mlp`, `heads`, ...); the
`LOGICAL_AXIS_RULES` table below maps each name onto mesh axes of a mesh with axes (data, fsdp, expert, context,
tensor).
Changing the parallelism is changing the mesh shape, never the model.

Resolution follows flax's `logical_to_mesh_axes`: dimensions are resolved left to right and a mesh axis
already used by an earlier dimension is skipped (so activations `[batch, length, embed]` shard batch over
(data, fsdp, expert) and leave embed whole, while weights `[embed, mlp]` shard embed over fsdp).

Activation constraints (`with_logical_constraint`) apply only under `jax.set_mesh(mesh)`; outside a mesh
they are no-ops, so the model also runs unsharded on one device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from instructjax.core.errors import ConfigError

# `expert` splits a mixture of experts' experts (model/moe.py); for everything else its devices are data-parallel,
# as fsdp's are (MaxText's layout): the batch is split over it too. Size 1 (every dense model): nothing changes.
# `context` splits each row's tokens (model/context.py: long rows); size 1, every row whole on its device. Its
# devices each hold the whole model's computation for their tokens, so the weights shard over it as over fsdp.
MESH_AXES = ("data", "fsdp", "expert", "context", "tensor")
BATCH_AXES = ("data", "fsdp", "expert")  # the data-parallel axes: each device of them holds its own rows
OPTIONAL_AXES = ("expert", "context")  # left out of resolved sizes where 1

# logical name -> mesh axes (None: replicated). Like T5X's standard_logical_axis_rules.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("length", "context"),  # a row's tokens: split only by a context axis (model/context.py)
    ("embed", ("fsdp", "context")),  # weights over the context devices too (MaxText's): rows split, not weights
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("norm", None),
    ("expert", "expert"),  # a mixture of experts' experts (model/moe.py): each expert device holds its own
    ("layers", None),  # the stacked axis of scanned layers: every device holds its shard of every layer
    # a LoRA adapter's rank (model/lora.py): over fsdp where fsdp is free and divides it, so that an adapter whose
    # other axis is not fsdp's (B of q/k/v/gate/up, A of o/down) is not whole on every device
    ("lora_rank", "fsdp"),
)
# dimensions sharded only where their mesh axes divide them (whole otherwise, never an error)
WHERE_DIVISIBLE = frozenset({"lora_rank"})


def mesh_sizes(shape: Mapping[str, int], device_count: int) -> dict[str, int]:
    """The mesh shape resolved for `device_count` devices: axes missing from `shape` have size 1, one
    axis may be -1 (the rest); an axis of `OPTIONAL_AXES` is left out where it is 1 (a dense run's mesh reads as it
    always did). The one resolution the trainer (`make_mesh`) and `plan` both use."""
    if isinstance(shape, str):  # `mesh: auto` is resolved to sizes by train.meshes.choose_mesh first
        raise ConfigError(f"mesh {shape!r} must be resolved to axis sizes before a mesh is made")
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ConfigError(f"unknown mesh axes {sorted(unknown)}; the mesh axes are {MESH_AXES}")
    sizes = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
    free = [axis for axis, n in sizes.items() if n == -1]
    if len(free) > 1 or any(n == 0 or n < -1 for n in sizes.values()):
        raise ConfigError(f"mesh shape {dict(shape)}: sizes must be positive, with at most one -1")
    if free:
        rest = math.prod(n for n in sizes.values() if n != -1)
        if device_count % rest:
            raise ConfigError(f"mesh shape {dict(shape)} does not divide {device_count} devices")
        sizes[free[0]] = device_count // rest
    if math.prod(sizes.values()) != device_count:
        raise ConfigError(f"mesh shape {sizes} needs {math.prod(sizes.values())} devices, but there are {device_count}")
    return {axis: n for axis, n in sizes.items() if axis not in OPTIONAL_AXES or n != 1}


def resolve_mesh(config, device_count: int, process_count: int = 1, *, experts: int | None = None) -> dict[str, int]:
    """The run's mesh sizes on `device_count` devices and `process_count` hosts, with the batch checked
    against them: every host feeds whole rows, every micro-batch splits over the data-parallel devices; and with
    `experts` (the model's `num_experts`, 0 for a dense model) the expert axis against the model (`check_experts`)."""
    sizes = mesh_sizes(config.mesh, device_count)
    if experts is not None:
        check_experts(experts, sizes)
    batch, micro = config.data.global_batch, config.optim.micro_batches
    if batch % process_count:
        raise ConfigError(f"data.global_batch={batch} is not divisible by the {process_count} host(s)")
    shards = batch_shards(sizes)
    if (batch // micro) % shards:
        raise ConfigError(f"a micro-batch of {batch // micro} rows (data.global_batch={batch} / optim.micro_batches="
                          f"{micro}) does not divide over the mesh's {'*'.join(a for a in BATCH_AXES if a in sizes)}="
                          f"{shards} devices")
    return sizes


def batch_shards(sizes: Mapping[str, int]) -> int:
    """How many ways a mesh of `sizes` splits the batch (its data-parallel devices: data x fsdp x expert)."""
    return math.prod(sizes.get(axis, 1) for axis in BATCH_AXES)


def without_experts(shape: Mapping[str, int]) -> dict[str, int]:
    """A mesh shape with its expert and context axes folded into fsdp: the same devices, the experts split over fsdp
    instead and each row whole on its device (the evaluation engine's mesh for a run trained with them: eval/run.py;
    its KV cache holds a prompt's tokens together)."""
    shape = dict(shape)
    for axis in ("expert", "context"):
        size = shape.pop(axis, 1)
        if size != 1:
            fsdp = shape.get("fsdp", 1)
            shape["fsdp"] = -1 if -1 in (size, fsdp) else fsdp * size
    return shape


def check_experts(num_experts: int, sizes: Mapping[str, int]) -> None:
    """One ConfigError line where the mesh's expert axis cannot split the model's experts (a dense model's: none)."""
    split = sizes.get("expert", 1)
    if split == 1:
        return
    if not num_experts:
        raise ConfigError(f"mesh.expert={split} splits a mixture of experts' experts; this model is dense (no "
                          "experts): set mesh.expert: 1")
    if num_experts % split:
        raise ConfigError(f"model has {num_experts} experts; mesh.expert={split} does not divide them")
    if sizes.get("tensor", 1) != 1:  # the dispatch's shard_map with tensor left to the compiler: XLA:CPU aborts
        raise ConfigError(f"mesh.expert={split} with mesh.tensor={sizes['tensor']}: the experts' dispatch runs without "
                          "tensor parallelism; set mesh.tensor: 1 (or mesh.expert: 1)")


def row_multiple(config, sizes: Mapping[str, int], process_count: int = 1) -> int:
    """What every step's row count must be a multiple of on this mesh: whole rows per host, and each of the
    `optim.micro_batches` micro-batches split evenly over the data-parallel (data x fsdp x expert) devices."""
    return math.lcm(config.optim.micro_batches * batch_shards(sizes), process_count)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh with axes `MESH_AXES` over `devices` (default all), sized by `mesh_sizes`."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = mesh_sizes(shape, len(devices))
    return Mesh(np.asarray(devices).reshape(tuple(sizes.get(axis, 1) for axis in MESH_AXES)), MESH_AXES)


def logical_to_spec(
    logical_axes: Sequence[str | None],
    mesh: Mesh | jax.sharding.AbstractMesh,
    shape: Sequence[int] | None = None,
    *,
    strict: bool = True,
    what: str = "array",
    rules: Sequence[tuple[str, Any]] = LOGICAL_AXIS_RULES,
) -> PartitionSpec:
    """The mesh PartitionSpec for logical dimension names.

    With `shape`, a dimension not divisible by its mesh axes raises ConfigError (`strict`) or is left
    unsharded along the axes that do not divide it (`strict=False`, used for activation constraints; always for
    the names in `WHERE_DIVISIBLE`).
    """
    table = dict(rules)
    mesh_sizes = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True))
    used: set[str] = set()
    spec = []
    for dim, name in enumerate(logical_axes):
        if name is not None and name not in table:
            raise ConfigError(f"{what}: logical axis {name!r} has no rule; known: {sorted(table)}")
        target = table.get(name) if name is not None else None
        axes = (target,) if isinstance(target, str) else tuple(target or ())
        axes = tuple(a for a in axes if mesh_sizes.get(a, 1) > 1 and a not in used)  # size-1 axes shard nothing
        if shape is not None and axes:
            size = math.prod(mesh_sizes[a] for a in axes)
            if shape[dim] % size:
                if strict and name not in WHERE_DIVISIBLE:
                    raise ConfigError(
                        f"{what}: dimension {dim} ({name}) of shape {tuple(shape)} is not divisible by mesh axes "
                        f"{axes} of total size {size}; change the mesh shape"
                    )
                axes = tuple(a for a in axes if shape[dim] % mesh_sizes[a] == 0)[:1]
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else (axes or None))
    return PartitionSpec(*spec)


def with_logical_constraint(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Constrain an activation's sharding by logical names; a no-op outside `jax.set_mesh(mesh)`."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    spec = logical_to_spec(logical_axes, mesh, x.shape, strict=False, what="activation")
    return jax.lax.with_sharding_constraint(x, spec)


def replicated(x: jax.Array) -> jax.Array:
    """x whole on every device of the mesh (`jax.set_mesh`'s; a no-op outside one): a small result every host reads
    (a decode step's ids, a batch's log-probs) with no gather after the call."""
    mesh = jax.sharding.get_abstract_mesh()
    return x if mesh.empty else jax.lax.with_sharding_constraint(x, PartitionSpec())


def _path_str(path: tuple) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def state_shardings(state: Any, mesh: Mesh) -> Any:
    """NamedShardings for an nnx State (or any pytree of Variables/arrays), from each Variable's logical axes.

    Variables without `out_sharding` metadata and plain arrays (optimizer step counters, ...) are replicated.
    """

    def one(path, leaf):
        if isinstance(leaf, nnx.Variable):
            names = leaf.get_metadata().get("out_sharding")
            shape = np.shape(leaf.get_value())
            spec = logical_to_spec(names, mesh, shape, what=_path_str(path)) if names else PartitionSpec()
            return leaf.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree_util.tree_map_with_path(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a `[batch, length]` batch array: batch over (data, fsdp, expert), length whole."""
    return NamedSharding(mesh, logical_to_spec(("batch", "length"), mesh))


def batch_shardings(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, NamedSharding]:
    """Shardings for a dict of `[batch, length, ...]` arrays; ConfigError if the batch does not divide."""
    shardings = {}
    for key, array in batch.items():
        names = ("batch", "length") + (None,) * (np.ndim(array) - 2)
        spec = logical_to_spec(names, mesh, np.shape(array), what=f"batch[{key!r}] (global batch size)")
        shardings[key] = NamedSharding(mesh, spec)
    return shardings


def place(arrays: Mapping[str, Any], sharding: NamedSharding, *, whole: bool) -> dict[str, jax.Array]:
    """Host arrays as global `jax.Array`s laid out by `sharding` (batch axis first): the one place a host's arrays go
    onto the mesh. `whole`: every host holds every row (a rollout, a batch each host built alike), and each feeds
    only its own devices' rows; else each host holds just its own rows, in process order (the trainer's batches)."""
    if whole:
        return {k: jax.make_array_from_callback(np.shape(v), sharding, lambda index, v=v: np.asarray(v)[index])
                for k, v in arrays.items()}
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in arrays.items()}


def host_rows(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """A `[batch, ...]` host array that every host holds whole, on the mesh with its rows over (data, fsdp, expert): each
    host feeds only the rows of its own devices (any number of processes)."""
    names = ("batch",) + (None,) * (array.ndim - 1)
    return place({"rows": array}, NamedSharding(mesh, logical_to_spec(names, mesh, array.shape)), whole=True)["rows"]


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """A batch every host holds whole, on the mesh (each array laid out by `batch_shardings`)."""
    shardings = batch_shardings(batch, mesh)
    return {k: place({k: v}, shardings[k], whole=True)[k] for k, v in batch.items()}


def create_sharded_model(make_model: Callable[[], nnx.Module], mesh: Mesh) -> nnx.Module:
    """Build a model with every parameter created directly in its sharded layout (no host copy)."""
    abstract = nnx.eval_shape(make_model)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh)

    @jax.jit
    def init():
        state = nnx.state(make_model())
        return jax.lax.with_sharding_constraint(state, shardings)

    return nnx.merge(graphdef, init())


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Move an existing model's state (e.g. just loaded from HF weights) onto `mesh`, in place."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, state_shardings(state, mesh)))
    return model
