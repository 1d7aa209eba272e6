"""libtpu, the TPU compiler and runtime (the `jax[tpu]` extra), on a machine with no TPU chips.

Installed everywhere by the set-up, so that `plan --compile` can build a step for a TPU slice on any machine. Where
there are no chips, JAX still tries the TPU backend and libtpu prints warnings about the accelerator type and
worker hostnames it cannot find; `quiet_without_tpu` (called by the CLI before JAX starts, never on import) names
a placeholder slice and this host so it stays quiet, and lets several processes load it at once (its lock
guards chips there are none of). A TPU VM (Google's PCI devices present) is left alone.
"""

from __future__ import annotations

import glob
import importlib.util
import os

GOOGLE_PCI_VENDOR = "0x1ae0"
MISSING = ("libtpu is not installed: `pip install 'jax[tpu]'` at this JAX's version (the README's set-up does it) "
           "to build a step for a TPU slice on this machine")


def tpu_chips_here() -> int:
    """The TPU chips attached to this machine (Google's PCI devices; JAX's own test, without importing JAX)."""
    count = 0
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor) as f:
                count += f.read().strip() == GOOGLE_PCI_VENDOR
        except OSError:
            continue
    return count


def quiet_without_tpu(environ: dict | None = None) -> None:
    """Where this machine has no TPU chips: the variables that keep libtpu from looking for a TPU VM's metadata
    (what it does not find it prints); values the user set are kept."""
    environ = os.environ if environ is None else environ
    if tpu_chips_here():
        return
    environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    environ.setdefault("TPU_ACCELERATOR_TYPE", "v4-8")
    environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # no chips to share: processes need not take turns


def installed() -> bool:
    """Whether the libtpu package is importable (without loading it)."""
    return importlib.util.find_spec("libtpu") is not None
