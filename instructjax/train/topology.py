"""Where a job runs: a TPU slice by its Cloud name, GPUs, or this machine, as `plan` and `plan --compile` see it.

A slice's name (`v4-64`, `v5e-16` or `v5litepod-16`, `v5p-128`, `v6e-8`) counts TensorCores for v4 and v5p (two a
chip, one JAX device a chip: megacore) and chips for v5e and v6e. Each name maps to the slice's physical shape,
the way its chips sit on hosts, and its host count (`SLICE_SHAPES`, `HOST_BOUNDS`, from Cloud TPU's documentation
of each generation's slice shapes): what `jax.experimental.topologies.get_topology_desc` needs to give a slice's
devices on a machine that has none (`train.compile`).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import jax

from instructjax.core.errors import ConfigError

GIB = 2**30
# chip -> (HBM GiB, TensorCores a chip as the slice name counts them, libtpu's name, its chip config)
TPU_CHIPS = {"v4": (32, 2, "v4", "megacore"), "v5e": (16, 1, "v5e", "default"),
             "v5p": (95, 2, "v5p", "megacore"), "v6e": (32, 1, "v6e", "default")}
# chips -> physical shape: 3-D tori for v4 and v5p, 2-D for v5e and v6e
CUBES = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4), 128: (4, 4, 8), 256: (4, 8, 8),
         512: (8, 8, 8), 1024: (8, 8, 16), 2048: (8, 16, 16), 4096: (16, 16, 16)}
SQUARES = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16), 256: (16, 16)}
SLICE_SHAPES = {"v4": CUBES, "v5p": CUBES, "v5e": SQUARES, "v6e": SQUARES}
GPU_HBM = {"h100": 80, "h200": 141, "a100": 80, "a100-80": 80, "a100-40": 40}
GPUS_PER_NODE = 8


@dataclass(frozen=True)
class Topology:
    """Where a job runs: `devices` accelerators (one JAX device each) of `hbm_gib`, on `hosts` hosts; a TPU slice
    also has its physical `shape`, `chip_config` and chips per host (`host_bounds`) for libtpu."""

    name: str
    devices: int
    hbm_gib: float
    hosts: int
    platform: str = "tpu"  # which attention `auto` stands for
    generation: str = ""  # v4, v5e, v5p, v6e
    shape: tuple[int, ...] = ()
    chip_config: str = ""
    host_bounds: tuple[int, int, int] = (1, 1, 1)
    part: tuple[int, ...] = ()  # a part of the slice (a grpo run's learner or rollout engine): its devices' positions

    @property
    def libtpu_name(self) -> str:
        """The physical topology as libtpu names it: `v4:2x4x4`, `v5e:2x4`."""
        return f"{self.generation}:{'x'.join(map(str, self.shape))}"


def host_bounds(generation: str, chips: int) -> tuple[int, int, int]:
    """The chips one host of the slice holds, as (x, y, z): four (2x2) a host, except the single-host v5e and v6e
    slices of one and eight chips (`v5e-8`: one host of 2x4)."""
    if generation in ("v5e", "v6e") and chips in (1, 8):
        return (1, 1, 1) if chips == 1 else (2, 4, 1)
    return (2, 2, 1)


def tpu_topology(name: str) -> Topology:
    """The slice `name` (see the module doc): `v4-64` is 32 chips on 8 hosts, a 2x4x4 torus."""
    m = re.fullmatch(r"(v4|v5e|v5litepod|v5p|v6e)-(\d+)", name.strip().lower())
    if not m:
        raise ConfigError(f"unknown TPU topology {name!r}; e.g. v4-64, v5e-16, v5p-128, v6e-8")
    generation = "v5e" if m.group(1) == "v5litepod" else m.group(1)
    hbm, per_chip, _, chip_config = TPU_CHIPS[generation]
    cores = int(m.group(2))
    chips = cores // per_chip
    shapes = SLICE_SHAPES[generation]
    if cores % per_chip or chips not in shapes:
        sizes = ", ".join(f"{generation}-{c * per_chip}" for c in shapes)
        raise ConfigError(f"unknown TPU topology {name!r}: {generation} slices are {sizes}")
    bounds = host_bounds(generation, chips)
    return Topology(name.strip().lower(), chips, hbm, max(1, chips // math.prod(bounds)), "tpu", generation,
                    shapes[chips], chip_config, bounds)


def local_topology() -> Topology:
    """This machine's JAX devices: an accelerator's memory as its runtime reports it; on the CPU, the memory the
    machine has available, shared by its devices (`XLA_FLAGS=--xla_force_host_platform_device_count` splits it)."""
    devices = jax.local_devices()
    platform = devices[0].platform
    limit = (devices[0].memory_stats() or {}).get("bytes_limit") if platform != "cpu" else None
    if limit is None:
        limit = available_memory() / len(devices)
    return Topology(f"this machine ({platform})", len(devices) * jax.process_count(), limit / GIB, jax.process_count(),
                    "gpu" if platform == "gpu" else platform)


def available_memory() -> int:
    """Bytes of memory this machine has available now (Linux's MemAvailable; else physical memory)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gpu_topology(count: int, gpu: str = "h100") -> Topology:
    """`count` GPUs of type `gpu` (h100, h200, a100-40, a100-80), 8 per node."""
    if gpu.lower() not in GPU_HBM:
        raise ConfigError(f"unknown GPU type {gpu!r}; one of {', '.join(GPU_HBM)}")
    if count < 1:
        raise ConfigError(f"--gpus must be >= 1, got {count}")
    return Topology(f"{count}x{gpu.lower()}", count, GPU_HBM[gpu.lower()], math.ceil(count / GPUS_PER_NODE), "gpu")
