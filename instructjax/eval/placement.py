"""Where an evaluated model lies: its parameters sharded by the training rules (core/sharding.py) over every device
of the job, in the evaluation's dtype (bfloat16 on accelerators, float32 on a CPU), with room for the KV cache.

`eval_mesh` takes the mesh a user names (`--mesh fsdp=4,tensor=2`, a run config's `mesh:`) or, by default, data
parallelism where the weights fit on one device and the weights split over fsdp where they do not; `check_fits`
refuses, in one line naming the figures, a model whose weights and smallest cache do not fit the devices even
sharded, before any weight is read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import jax
import numpy as np
from flax import nnx

from instructjax.core import sharding
from instructjax.core.errors import ConfigError
from instructjax.model.batching_memory import cache_bytes_per_device, step_bytes, weight_bytes
from instructjax.model.config import DecoderConfig
from instructjax.model.decoder import with_params
from instructjax.model.decoding import unstacked

CACHE_SHARE = 0.5  # of what the weights leave on a device, the most the KV cache takes


def default_dtype(platform: str | None = None) -> str:
    """bfloat16 on accelerators, float32 on a CPU."""
    return "float32" if (platform or jax.devices()[0].platform) == "cpu" else "bfloat16"


def parse_mesh(text: str | None) -> dict[str, int] | None:
    """`fsdp=4,tensor=2` -> {"fsdp": 4, "tensor": 2} (None for None or `auto`); one line for anything else."""
    if text is None or text == "auto":
        return None
    try:
        sizes = {axis.strip(): int(n) for axis, n in (part.split("=") for part in text.split(",") if part.strip())}
    except ValueError:
        raise ConfigError(f"--mesh {text!r}: give axis sizes as data=N,fsdp=N,tensor=N (one may be -1)") from None
    sharding.mesh_sizes(sizes, jax.device_count())  # unknown axes, sizes that do not divide: one line
    return sizes


def device_bytes() -> int:
    """Memory of one device: its allocator's limit on an accelerator; on a CPU, what the host has available now
    shared by its devices."""
    device = jax.local_devices()[0]
    if device.platform != "cpu":
        limit = (device.memory_stats() or {}).get("bytes_limit")
        if limit:
            return int(limit)
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return available // jax.local_device_count()


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def eval_config(config: DecoderConfig, dtype: str) -> DecoderConfig:
    """The model as evaluated: compute and parameters in `dtype` (never wider than stored), layers as a list."""
    stored = np.dtype(config.param_dtype)
    param = dtype if np.dtype(dtype).itemsize < stored.itemsize else config.param_dtype
    return config.replace(dtype=dtype, param_dtype=param, scan_layers=False)


def eval_mesh(config: DecoderConfig, shape: Mapping[str, int] | None, *, slots: int, where: str):
    """(the mesh, its sizes): `shape` over every device, or by default data parallelism where the weights and a
    cache for `slots` fit one device, else the weights over fsdp; checked to fit (`check_fits`)."""
    count = jax.device_count()
    sizes = default_sizes(config, count, device_bytes(), slots) if shape is None else sharding.mesh_sizes(shape, count)
    if sizes.get("context", 1) != 1:
        folded = sharding.mesh_sizes(sharding.without_experts(sizes), count)
        raise ConfigError(f"{where}: mesh context={sizes['context']} splits training rows (model/context.py); "
                          "generation keeps each sequence's KV cache whole on its devices: give those devices to "
                          f"fsdp instead, --mesh {mesh_text(folded)}")
    check_fits(config, sizes, where=where)
    return sharding.make_mesh(sizes), sizes


def mesh_text(sizes: Mapping[str, int]) -> str:
    """{"data": 1, "fsdp": 8} -> "data=1,fsdp=8" (as --mesh takes it)."""
    return ",".join(f"{axis}={n}" for axis, n in sizes.items())


def default_sizes(config: DecoderConfig, devices: int, memory: int, slots: int, length: int = 1024) -> dict[str, int]:
    """Data parallelism over `devices` where the weights, a cache for `slots` of `length` rows and the steps' own
    buffers for one slot a device (`step_bytes`) fit one device's `memory`, else the weights over fsdp."""
    from instructjax.model.batching_shapes import widest_fill

    sizes = sharding.mesh_sizes({"data": -1}, devices)
    fewest = sizes["data"]
    rows, width = widest_fill(length, slots=fewest, shards=fewest)
    steps = step_bytes(config, sizes, slots=fewest, length=length, width=width, fill_rows=rows)
    if weight_bytes(config, sizes) + cache_bytes_per_device(config, sizes, slots, length) + max(steps.values()) > memory:
        sizes = sharding.mesh_sizes({"fsdp": -1}, devices)
    return sizes


def check_fits(config: DecoderConfig, sizes: Mapping[str, int], *, where: str, memory: int | None = None) -> None:
    """One line when the weights, sharded on a mesh of `sizes`, and a cache of one slot per data-parallel device for
    a single full-context sequence do not fit a device (`memory`, default `device_bytes`)."""
    memory = device_bytes() if memory is None else memory
    weights, cache = _one_sequence(config, sizes)
    if weights + cache > memory:
        devices = int(np.prod(list(sizes.values())))
        wider = next((mesh for mesh in _wider_meshes(devices, sizes.get("tensor", 1))
                      if sum(_one_sequence(config, mesh)) <= memory), None)
        advice = (f"--mesh {mesh_text(wider)} would hold it" if wider else
                  f"no mesh of these {devices} devices holds it (tensor up to 8): use more devices")
        raise ConfigError(f"{where}: the model needs {_gib(weights + cache)} per device to evaluate (weights "
                          f"{_gib(weights)} in {config.param_dtype} sharded over mesh {mesh_text(sizes)}, plus a KV "
                          f"cache of {_gib(cache)} for one {config.max_position_embeddings}-token sequence per "
                          f"data-parallel device) but a device has {_gib(memory)}: {advice}, or --dtype bfloat16")


def _one_sequence(config: DecoderConfig, sizes: Mapping[str, int]) -> tuple[int, int]:
    """A device's bytes for the weights on a mesh of `sizes`, and for the KV cache of one full-context sequence per
    data-parallel device (the least an evaluation holds)."""
    cache = cache_bytes_per_device(config, sizes, sizes["data"] * sizes["fsdp"], config.max_position_embeddings)
    return weight_bytes(config, sizes), cache


def _wider_meshes(devices: int, tensor: int) -> list[dict[str, int]]:
    """The meshes of `devices` devices a sequence that does not fit is offered: all of them over fsdp, then over
    fsdp x tensor for each tensor size (up to 8) above `tensor`, least first."""
    options = [{"data": 1, "fsdp": devices // t, "tensor": t} for t in (1, 2, 4, 8) if devices % t == 0]
    return [mesh for mesh in options if mesh["tensor"] >= tensor]


def as_evaluated(model, config: DecoderConfig):
    """A loaded model (any layout and parameter dtype) as `eval_config` runs it: layers as a list, parameters cast
    to `config.param_dtype`, on the devices they were loaded onto."""
    params = nnx.state(unstacked(model), nnx.Param).to_pure_dict()
    dtype = np.dtype(config.param_dtype)
    params = jax.tree.map(lambda x: x.astype(dtype) if np.issubdtype(x.dtype, np.floating) else x, params)
    return with_params(config, params)


def choose_slots(config: DecoderConfig, sizes: Mapping[str, int], *, length: int, memory: float, most: int) -> int:
    """The most slots (a power of two times the data-parallel devices, at most `most` or those devices) whose cache
    of `length` rows, the weights and the steps' buffers (`step_bytes`) fit `memory` per device; the fewest where
    none do (`check_fits` then says so)."""
    from instructjax.model.batching_shapes import widest_fill

    shards = sizes["data"] * sizes["fsdp"]
    weights, best, slots = weight_bytes(config, sizes), shards, shards
    while slots <= max(most, shards):
        rows, width = widest_fill(length, slots=slots, shards=shards)
        steps = step_bytes(config, sizes, slots=slots, length=length, width=width, fill_rows=rows)
        if weights + cache_bytes_per_device(config, sizes, slots, length) + max(steps.values()) > memory:
            break
        best, slots = slots, slots * 2
    return best
