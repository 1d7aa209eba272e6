"""The hosts of a run, as the data layer sees them: a key-value store and barriers, handed in from `train/`
(JAX's distributed runtime, `train.coordinator`), never imported here (the data layer has no jax).

`use(coordinator)` installs it; with none, or with one host, nothing here does anything and every host works
alone. Every collective (`all_gather`, `first_then_others`, `sees_one_directory`) is entered by every host in
the same order (every host runs the same data code on the same config), so each one takes the next name of a
sequence that is the same on every host. Waiting for another host is bounded: after
`INSTRUCTJAX_SHARED_TIMEOUT` seconds (default 3600) it is a one-line error naming the host.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from instructjax.core.errors import InstructJaxError

T = TypeVar("T")
DEFAULT_TIMEOUT = 3600.0


class Coordinator(Protocol):
    """What the hosts of a run share: `set` a key once, `get` one (waiting at most `timeout_s`; TimeoutError
    after), and `barrier` (every host waits until all arrive, at most `timeout_s`)."""

    process_index: int
    process_count: int

    def set(self, key: str, value: str) -> None: ...

    def get(self, key: str, timeout_s: float) -> str: ...

    def barrier(self, name: str, timeout_s: float) -> None: ...


class HostsTimeout(InstructJaxError):
    """Another host did not arrive in time (it stopped, or it is much slower)."""

    host_lost = True  # the CLI exits at once: a clean exit would wait for that host


_COORDINATOR: Coordinator | None = None
_SEQUENCE = 0
_SHARED_DIRS: dict[str, bool] = {}


def use(coordinator: Coordinator | None) -> None:
    """Install the run's hosts (None: this process works alone)."""
    global _COORDINATOR, _SEQUENCE
    _COORDINATOR, _SEQUENCE = coordinator, 0
    _SHARED_DIRS.clear()


def current() -> Coordinator | None:
    """The installed coordinator when there are several hosts, else None."""
    return _COORDINATOR if _COORDINATOR is not None and _COORDINATOR.process_count > 1 else None


def timeout() -> float:
    said = os.environ.get("INSTRUCTJAX_SHARED_TIMEOUT")
    return float(said) if said else DEFAULT_TIMEOUT


def next_name(what: str) -> str:
    """A fresh key prefix for one collective, the same on every host (its sequence number; `what`, a constant
    naming the step, only helps reading: nothing host-specific goes in it)."""
    global _SEQUENCE
    _SEQUENCE += 1
    return f"instructjax/{_SEQUENCE}/{what}"


def get(coordinator: Coordinator, key: str, host: int, doing: str) -> str:
    """`coordinator.get(key)`, or a one-line HostsTimeout naming `host` and what it was `doing`."""
    try:
        return coordinator.get(key, timeout())
    except TimeoutError:
        raise HostsTimeout(f"host {host} did not finish {doing} within {timeout():.0f} s "
                           "(INSTRUCTJAX_SHARED_TIMEOUT): did it stop?") from None


def all_gather(coordinator: Coordinator, name: str, value: Any, doing: str) -> list[Any]:
    """Every host's `value` (JSON), in host order."""
    me = coordinator.process_index
    coordinator.set(f"{name}/{me}", json.dumps(value))
    return [value if h == me else json.loads(get(coordinator, f"{name}/{h}", h, doing))
            for h in range(coordinator.process_count)]  # fmt: skip


def first_then_others(make: Callable[[], T], doing: str) -> T:
    """`make()` on host 0, then on the others once host 0 is done (what host 0 made, e.g. converted files in a
    shared directory, the others then find). Host 0 failing lets the others go on: they fail alike."""
    coordinator = current()
    if coordinator is None:
        return make()
    name = next_name("first")
    if coordinator.process_index == 0:
        try:
            return make()
        finally:
            coordinator.set(name, "done")
    get(coordinator, name, 0, doing)
    return make()


def sees_one_directory(directory: Path | Any) -> bool:
    """Whether every host sees `directory` as one (each writes a marker there, then looks for the others'),
    asked once per directory; with one host, True. When not, host 0 prints one note line."""
    coordinator = current()
    if coordinator is None:
        return True
    key = str(directory)
    if key not in _SHARED_DIRS:
        name = next_name("shared-dir")
        token = all_gather(coordinator, f"{name}/token", uuid.uuid4().hex, "checking the cache directory")[0]
        markers = directory / f".hosts-{token}"
        try:
            markers.mkdir(parents=True, exist_ok=True)
            (markers / str(coordinator.process_index)).write_text("here")
            coordinator.barrier(f"{name}/written", timeout())
            seen = all(_appears(markers / str(h)) for h in range(coordinator.process_count))
        except OSError:
            seen = False
        views = all_gather(coordinator, f"{name}/seen", seen, "checking the cache directory")
        _SHARED_DIRS[key] = all(views)
        if coordinator.process_index == 0:
            remove_tree(markers)
            if not all(views):
                blind = [h for h, v in enumerate(views) if not v]
                print(f"instructjax: note: the tokenized cache {directory} is not one directory for all "
                      f"{coordinator.process_count} hosts (host {blind[0]} cannot see the others' files): every "
                      "host tokenizes every task itself", file=sys.stderr, flush=True)
    return _SHARED_DIRS[key]


def _appears(path, wait_s: float = 2.0) -> bool:
    """Whether `path` exists, looking again for `wait_s` (a network file system may show it late)."""
    deadline = time.monotonic() + wait_s
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def remove_tree(path) -> None:
    """Remove a directory, local or remote, if it is there."""
    try:
        if hasattr(path, "rmtree"):
            path.rmtree()
        else:
            shutil.rmtree(path)
    except (FileNotFoundError, OSError):
        pass
