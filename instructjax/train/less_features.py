"""LESS's features on disk: a selection directory's `features/` (what `train/less_select.py` scores from).

    features/manifest.json          what the features are of: the pool's digest (ids, tokens, trained tokens), the
                                    warm-up's (its run's config and share), the projection (dim, seed) and the
                                    gradient type; features of another pool or warm-up here are refused, naming
                                    what differs, never mixed or overwritten
    features/ckpt-N/pool.npy        [pool, dim] float32: each pool example's projected, normalised features under
                                    the warm-up's step N (examples with no trained token: zeros, never selected)
    features/ckpt-N/pool/part-K.npy while the pass runs: a chunk of the pool's rows each; a preempted pass goes on
                                    from the chunks written (each written whole: a reader sees all of it or none)
    features/ckpt-N/target-D.npy    the target's features (D: the target's digest), beside the pool's: one pass
                                    over the pool serves every target

Examples go through the model a batch at a time, sorted by length and padded to one of four widths an octave, the
output head run once over a device's rows' trained tokens alone, end to end (`less.gradients`); the parameters over
fsdp on every device (every host's) and a batch's rows split over them, each host then given every row's features
and host 0 writing them; a batch holds its own gradients and no more.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable

import jax
import numpy as np

from instructjax.core import hosts, sharding, storage
from instructjax.core.errors import ConfigError
from instructjax.data.batches.packing import SequencePacker
from instructjax.train import less

CHUNK_BATCHES = 16  # batches a part file holds: what a preempted pass may redo
MIN_WIDTH = 16
MATRIX_BYTES = 1 << 30  # a projection matrix at most this large is drawn once and kept (float32)


def digest_examples(examples: list[dict], labels: list[str] | None = None) -> str:
    """The sha256 of examples' ids, tokens and trained tokens (and labels): what their features are a function of."""
    h = hashlib.sha256()
    for i, ex in enumerate(examples):
        h.update(json.dumps(json.loads(ex["conversation"]).get("id")).encode())
        h.update(np.asarray(ex["tokens"], np.int32).tobytes())
        h.update(np.asarray(ex["loss_mask"], np.int8).tobytes())
        if labels is not None:
            h.update(labels[i].encode())
    return h.hexdigest()


def check_manifest(directory: str, manifest: dict) -> None:
    """Write DIR/features/manifest.json, or check the one there is this one (one line naming what differs)."""
    where = storage.join(directory, "features", "manifest.json")
    found = hosts.agree(f"less/{where}", storage.path(where).exists() and json.loads(storage.path(where).read_text()),
                        "reading the features' manifest")
    if found:
        differ = [k for k in sorted(set(found) | set(manifest)) if found.get(k) != manifest.get(k)]
        if differ:
            raise ConfigError(f"{where}: features of another {', '.join(differ)} (found {found.get(differ[0])!r}, "
                              f"this selection's {manifest.get(differ[0])!r}): pick another directory, or remove "
                              f"{storage.join(directory, 'features')} to compute them again")
        return
    if hosts.is_first():
        storage.write_text(where, json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def _save(path: str, array: np.ndarray) -> None:
    """Written by host 0 alone (every host holds the same features: `feature_fn` gives each all of them)."""
    if not hosts.is_first():
        return
    buffer = io.BytesIO()
    np.save(buffer, array)
    storage.write_bytes(path, buffer.getvalue())


def _load(path: str) -> np.ndarray:
    return np.load(io.BytesIO(storage.path(path).read_bytes()))


def _there(path: str) -> bool:
    """Whether `path` is there, as host 0 sees it (every host then reads it, or every host makes it: alike)."""
    return hosts.agree(f"less/{path}", storage.path(path).exists(), "reading the features")


def layer_values(model) -> int:
    """A decoder layer's weight matrices' values: q, k, v and o, and the MLP's (gate,) up and down."""
    return model.head_dim * model.hidden_size * (2 * model.num_heads + 2 * model.num_kv_heads) + (
        (2 if model.gated_mlp else 1) + 1) * model.hidden_size * model.intermediate_size


def batches(examples: list[dict], batch: int) -> list[list[int]]:
    """The examples' indices in batches of `batch`, longest first (similar lengths share a padded width)."""
    ranked = sorted(range(len(examples)), key=lambda i: (len(examples[i]["tokens"]), -i), reverse=True)
    return [ranked[i : i + batch] for i in range(0, len(ranked), batch)]


def width_of(longest: int) -> int:
    """`longest` rounded up to a quarter of the power of two above it (four widths an octave: few programs, at most a
    quarter of padding)."""
    step = max(MIN_WIDTH, (1 << (longest - 1).bit_length()) // 4)
    return -(-longest // step) * step


def rows_of(examples: list[dict], batch: int, groups: int = 1) -> dict[str, np.ndarray]:
    """`batch` rows of one example each (the rest padding), as wide as the longest (`width_of`), and the trained
    tokens of each of `groups` groups of rows (a device's: `batch` divides into them) end to end, as their row in
    the group and position, then -1s, as many as a group's most (`width_of`): `less.HEAD_ROWS`."""
    width = width_of(max(len(ex["tokens"]) for ex in examples))
    rows, _ = SequencePacker(width, pack=False).pack_window(examples)
    rows = {k: v for k, v in rows.items() if k != "source_ids"}
    short = batch - len(rows["tokens"])
    rows = {k: np.concatenate([v, np.zeros((short, width), v.dtype)]) for k, v in rows.items()}
    if batch % groups:
        raise ValueError(f"{batch} rows do not split into {groups} groups (a device's rows each)")
    each = batch // groups
    at = [[(i, p) for i in range(each) for p in np.flatnonzero(rows["loss_weights"][g * each + i] > 0)]
          for g in range(groups)]
    head = np.full((2, groups, width_of(max([1, *map(len, at)]))), -1, np.int32)
    for g, pairs in enumerate(at):
        head[:, g, : len(pairs)] = np.asarray(pairs, np.int32).reshape(-1, 2).T
    return rows | dict(zip(less.HEAD_ROWS, head, strict=True))


KERNELS_IN_A_PASS = ("xla", "blockwise")  # attention a pass of per-example gradients runs (see `feature_model`)


def feature_mesh(devices) -> jax.sharding.Mesh:
    """The feature pass's mesh: fsdp over `devices` (every host's), the parameters split over it by the training rules
    and each batch's rows over the same devices (a 7B's parameters need not fit one chip)."""
    from instructjax.core.sharding import make_mesh

    return make_mesh({"data": 1, "fsdp": -1}, devices)


def feature_model(model):
    """`model` as the feature pass runs it: attention by XLA (`blockwise`: no [T, T] scores) where it names a fused
    kernel or `auto` (splash, Pallas, cuDNN), which XLA cannot split over the mesh inside `vmap` over examples."""
    return model if model.attention in KERNELS_IN_A_PASS else model.replace(attention="blockwise")


def feature_program(model, kind: str, projection: less.Projection | Callable, mesh, kept_matrix: bool):
    """The jitted `(params, first, second, matrix, rows) -> [rows, dim]` of a batch's `kind` features under a warm-up
    step of `model`, projected (by `matrix`, kept, or `projection` inside); the parameters laid out by the training
    rules on `mesh`, the moments and matrix whole, the rows over the batch axes, every row's features on every device
    (each host reads them all). Also what `plan --less --compile` lowers (train/less_plan.py)."""
    from jax.sharding import NamedSharding, PartitionSpec

    graphdef, partition = less.model_parts(feature_model(model))
    whole = NamedSharding(mesh, PartitionSpec())

    def run(params, first, second, matrix, rows):
        grads = less.flatten(less.gradients(graphdef, partition, params, rows))
        if kept_matrix:
            return less.project(less.features(grads, kind, first, second), matrix)
        if isinstance(projection, less.Projection):  # a block of features at a time: never all of them
            return less.features_projected(grads, kind, first, second, projection.dim, projection.seed)
        return projection(less.features(grads, kind, first, second))

    return jax.jit(run, in_shardings=(param_shardings(model, mesh), whole, whole, whole if kept_matrix else None,
                                      sharding.batch_sharding(mesh)), out_shardings=whole)


def param_shardings(model, mesh):
    """The parameters' shardings on `mesh` (a pure dict, as `load_params_as` gives them), by the training rules."""
    from flax import nnx

    from instructjax.model.decoder import Decoder

    state = nnx.state(nnx.eval_shape(lambda: Decoder(feature_model(model), rngs=nnx.Rngs(0))), nnx.Param)
    return nnx.to_pure_dict(sharding.state_shardings(state, mesh))


def keeps_matrix(size: int, projection) -> bool:
    """Whether the projection of `size` trained values is drawn once and kept (at most MATRIX_BYTES), else a block
    at a time in every batch."""
    return isinstance(projection, less.Projection) and size * projection.dim * 4 <= MATRIX_BYTES


def feature_fn(model, kind: str, projection: less.Projection | Callable, mesh) -> Callable:
    """`(warm, rows) -> [rows, dim]`: a batch's `kind` features under a warm-up step of `model`, projected, the
    parameters and rows split over `mesh` (`feature_mesh`); one program for every step (`feature_program`: its
    parameters and moments are arguments, placed once a step). The projection matrix is drawn once and kept when it
    is at most MATRIX_BYTES (a small model's), else a block at a time in every batch (`less.project_streamed`: the
    same matrix)."""
    from jax.sharding import NamedSharding, PartitionSpec

    whole = NamedSharding(mesh, PartitionSpec())
    programs, kept, placed = {}, {}, {}  # by the trained size: program and matrix; the last step's state placed

    def apply(warm: less.WarmupStep, rows: dict[str, np.ndarray]) -> np.ndarray:
        size = warm.first.size
        if size not in programs:
            keep = keeps_matrix(size, projection)
            programs[size] = feature_program(model, kind, projection, mesh, keep)
            kept[size] = (jax.jit(lambda: less.rademacher(size, projection.dim, projection.seed),
                                  out_shardings=whole)() if keep else None)
        if placed.get("step") is not warm:  # a 7B's parameters go onto the mesh once a step, not once a batch
            placed.clear()
            placed.update(step=warm, state=(_on(warm.params, param_shardings(model, mesh)),
                                            *_on((warm.first, warm.second), whole)))
        rows = sharding.place(rows, sharding.batch_sharding(mesh), whole=True)
        return np.asarray(programs[size](*placed["state"], kept[size], rows))

    return apply


def _on(tree, shardings):
    """`tree`'s host arrays (the same on every host) as arrays laid out by `shardings` (one for every leaf, or a tree
    of them), on one host or several (`core.sharding.place`, a leaf at a time)."""
    def one(x, on):
        return sharding.place({"x": x}, on, whole=True)["x"]

    if isinstance(shardings, jax.sharding.Sharding):
        return jax.tree.map(lambda x: one(x, shardings), tree)
    return jax.tree.map(one, tree, shardings)


def compute(examples: list[dict], fn: Callable, batch: int, parts: str | None = None, dim: int = 0,
            desc: str = "less features", groups: int = 1) -> np.ndarray:
    """[examples, dim]: `fn(rows)`'s features of every example (zeros for one with no trained token), a batch at a
    time (`rows_of`'s, in `groups`: the devices a batch splits over), a progress bar over the examples; `parts`: a
    directory where each chunk of CHUNK_BATCHES batches is written as it is made and read back when there (a
    preempted pass goes on)."""
    from instructjax.core import progress

    trained = [i for i, ex in enumerate(examples) if np.asarray(ex["loss_mask"])[1:].any()]
    out = np.zeros((len(examples), dim), np.float32)
    ranked = batches([examples[i] for i in trained], batch)
    bar = progress.bar(total=len(trained), desc=desc, unit="example", disable=not hosts.is_first())  # host 0 says
    try:
        for chunk in range(0, len(ranked), CHUNK_BATCHES):
            part = storage.join(parts, f"part-{chunk // CHUNK_BATCHES:05d}.npy") if parts else None
            done = [trained[i] for group in ranked[chunk : chunk + CHUNK_BATCHES] for i in group]
            if part is not None and _there(part):
                made = _load(part)
                bar.update(len(done))
            else:
                made = []
                for group in ranked[chunk : chunk + CHUNK_BATCHES]:
                    made.append(fn(rows_of([examples[trained[i]] for i in group], batch, groups))[: len(group)])
                    bar.update(len(group))
                made = np.concatenate(made)
                if part is not None:
                    _save(part, made)
            out[done] = made
    finally:
        bar.close()
    return out


def features_at(directory: str, warm: less.WarmupStep, name: str, examples: list[dict], fn: Callable, dim: int,
                batch: int, *, resumable: bool, groups: int = 1) -> np.ndarray:
    """DIR/features/ckpt-N/NAME.npy of warm-up step N (`fn`: `feature_fn`'s): read when there, else made (see the
    module doc) and written."""
    where = storage.join(directory, "features", f"ckpt-{warm.step}")
    path = storage.join(where, f"{name}.npy")
    if _there(path):
        return _load(path)
    parts = storage.join(where, name) if resumable else None
    made = compute(examples, lambda rows: fn(warm, rows), batch, parts, dim, f"less features ckpt-{warm.step} {name}",
                   groups)
    _save(path, made)
    if parts is not None and hosts.is_first():
        storage.remove_tree(parts)
    return made
