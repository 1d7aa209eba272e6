"""XLA_FLAGS for a test's child process: its own count of CPU devices, compiled as the session's other programs are."""

from __future__ import annotations

import os


def xla_flags(devices: int) -> str:
    """This process's XLA_FLAGS (tests/conftest.py's cheap compiler flags) with `devices` host-platform devices."""
    kept = [flag for flag in os.environ.get("XLA_FLAGS", "").split()
            if not flag.startswith("--xla_force_host_platform_device_count")]  # fmt: skip
    return " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])
