"""The CPU devices a test's run sees: XLA_FLAGS for a child process (its own count of CPU devices, compiled as the
session's other programs are), or one device in this process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest


def xla_flags(devices: int) -> str:
    """This process's XLA_FLAGS (tests/conftest.py's cheap compiler flags) with `devices` host-platform devices."""
    kept = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
            if not flag.startswith("--xla_force_host_platform_device_count")]  # fmt: skip
    return " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])


@contextmanager
def one_device() -> Iterator[None]:
    """In this process, `jax.devices()` and `jax.local_devices()` are the first of the session's 8 CPU devices alone,
    and `jax.device_count()` and `jax.local_device_count()` are 1 (what a run builds its mesh from, what `score`,
    `generate` and `eval` size theirs by: eval/placement.py): for a run whose claim is not about sharding, its programs
    not sharded 8 ways. Every one of the four, or a mesh sized by a count lands on one device: "mesh shape data 8 needs
    8 devices, but there are 1"."""
    import jax

    one = jax.devices()[:1]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jax, "devices", lambda *args, **kwargs: one)
        patch.setattr(jax, "local_devices", lambda *args, **kwargs: one)
        patch.setattr(jax, "device_count", lambda *args, **kwargs: 1)
        patch.setattr(jax, "local_device_count", lambda *args, **kwargs: 1)
        yield


def host_envs(hosts: int, devices: int) -> list[dict[str, str]]:
    """The environments of `hosts` local processes that form one JAX distributed runtime (gloo collectives on the CPU,
    a free port of this machine for its coordinator), `devices` CPU devices each."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [{**os.environ, "XLA_FLAGS": xla_flags(devices), "JAX_PLATFORMS": "cpu",
             "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(hosts), "JAX_PROCESS_ID": str(i)}
            for i in range(hosts)]  # fmt: skip
