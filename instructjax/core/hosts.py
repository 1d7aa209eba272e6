"""The hosts of a run: JAX's distributed runtime set up once (`initialize`), its key-value store as the data
layer's collectives and the checkpoint seal's exchange, and a lost host as one line.

Collectives are named by what the hosts agree on (`enter("have/<cache file>")`, `enter("plan")`), never by a
count of collectives. Every host enters the same collectives in the same order (it runs the same code on the
same config), and each checks it: a host records the name of the n-th collective it entered (`at/<host>/<n>`)
and reads the others' n-th; a host that skipped one, or entered another (a step that failed on that host
alone), stops every host at once with one line naming both. Keys live under a session named by what the hosts
run (`install(session=...)`: the command and its run directory), so a process that installs again (a sweep of
distributed configs) never meets its earlier keys, and hosts on different runs never share one.

Waiting for another host is bounded by `INSTRUCTJAX_SHARED_TIMEOUT` seconds (default 3600: a slow host, e.g. one
tokenizing a large piece). A host that dies is seen by JAX's heartbeat (`INSTRUCTJAX_HEARTBEAT_SECONDS`, default
100, JAX's own), which stops the others at once when host 0 (the coordinator) dies and after the heartbeat
timeout otherwise; JAX reports that on stderr in many lines and aborts, so a run of several processes sends its
stderr through a small relay process (`core/stderr_relay.py`) that turns that report into one line naming the
lost host. With one process nothing here does anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from instructjax.core import context, stopping, storage
from instructjax.core.errors import InstructJaxError

T = TypeVar("T")
DEFAULT_TIMEOUT = 3600.0
DEFAULT_HEARTBEAT = 100


class Coordinator(Protocol):
    """What the hosts of a run share: `set` a key once, `get` one (waiting at most `timeout_s`; TimeoutError
    after), `delete` one."""

    process_index: int
    process_count: int

    def set(self, key: str, value: str) -> None: ...

    def get(self, key: str, timeout_s: float) -> str: ...

    def delete(self, key: str) -> None: ...


class HostsTimeout(InstructJaxError):
    """Another host did not arrive in time (it stopped, or it is much slower)."""

    host_lost = True  # the CLI exits at once: a clean exit would wait for that host


class HostsDisagree(InstructJaxError):
    """The hosts entered different collectives: they ran different steps (other data, config or code on one)."""

    host_lost = True

    def __init__(self, message: str, leave: Callable[[], None] = lambda: None):
        super().__init__(message)
        self.leave = leave

    def before_exit(self) -> None:
        """Called once this host printed its line, just before it exits (see `_disagree`)."""
        self.leave()


class HostLost(InstructJaxError):
    """JAX's distributed runtime is gone: host 0 (its coordinator) stopped."""

    host_lost = True


class JaxHosts:
    """`Coordinator` over `jax.distributed`'s client: a deadline is a TimeoutError, a lost coordinator HostLost."""

    def __init__(self):
        import jax
        from jax._src import distributed

        self.client = distributed.global_state.client
        self.process_index, self.process_count = jax.process_index(), jax.process_count()

    def set(self, key: str, value: str) -> None:
        _bounded(self.client.key_value_set, key, value, True)

    def get(self, key: str, timeout_s: float) -> str:
        return _bounded(self.client.blocking_key_value_get, key, int(timeout_s * 1000))

    def delete(self, key: str) -> None:
        _bounded(self.client.key_value_delete, key)


def _bounded(call, *args):
    try:
        return call(*args)
    except Exception as exc:  # the runtime's own error type: judged by its status text
        text = str(exc)
        if "DEADLINE_EXCEEDED" in text or "timed out" in text.lower():
            raise TimeoutError(text) from None
        if "UNAVAILABLE" in text or "Socket closed" in text:
            raise HostLost("host 0 (the coordinator of JAX's distributed runtime) stopped; this host stops too "
                           "(saved checkpoints are intact: run again with --resume)") from None
        raise


EXIT_GRACE_S = 1.0  # how long host 0 outlives the other hosts' last word before it exits (see `_disagree`)

@dataclass
class Session:
    """The installed hosts of the current command (`core.context`): the coordinator (None: this process alone), the
    prefix of the session's keys, the collectives this host entered, how often each name was, and the directories
    asked about (`sees_one_directory`)."""

    coordinator: Coordinator | None = None
    prefix: str = ""
    entered: int = 0
    names: Counter = field(default_factory=Counter)
    shared_dirs: dict[str, bool] = field(default_factory=dict)


def _session() -> Session:
    return context.current().slot("hosts.session", lambda _: Session())


def install(coordinator: Coordinator | None = None, session: str = "run") -> None:
    """Install the run's hosts: `coordinator`, or JAX's runtime when it has several processes (else this process
    works alone), with a fresh session of keys named `session` (what the hosts agree they run) in the current
    command's context. The installs of each name are counted in the outermost context, so a process that installs
    the same name again (an in-process sweep) never meets its earlier keys in JAX's store (which lives as long as
    the process's runtime)."""
    if coordinator is None and _jax_processes() > 1:
        coordinator = JaxHosts()
    installs = context.current().root.slot("hosts.installs", lambda _: Counter())
    installs[session] += 1
    context.current().slots["hosts.session"] = Session(coordinator, f"instructjax/{session}#{installs[session]}")


def _jax_processes() -> int:
    """JAX's process count when `jax` is loaded and its distributed runtime is up, else 1 (never imports jax)."""
    if "jax" not in sys.modules:
        return 1
    from jax._src import distributed

    if distributed.global_state.client is None:
        return 1
    import jax

    return jax.process_count()


def current() -> Coordinator | None:
    """The installed coordinator when there are several hosts, else None (installed on first use when JAX's
    runtime is up and nobody installed one)."""
    if _session().coordinator is None and _jax_processes() > 1:
        install()
    coordinator = _session().coordinator
    return coordinator if coordinator is not None and coordinator.process_count > 1 else None


def process() -> tuple[int, int]:
    """(this process's index, the number of processes) of the run's hosts (`current`); (0, 1) alone."""
    coordinator = current()
    return (coordinator.process_index, coordinator.process_count) if coordinator is not None else (0, 1)


def is_first() -> bool:
    """Whether this process is host 0 (the one that writes what the hosts share; True alone)."""
    return process()[0] == 0


def timeout() -> float:
    said = os.environ.get("INSTRUCTJAX_SHARED_TIMEOUT")
    return float(said) if said else DEFAULT_TIMEOUT


def get(coordinator: Coordinator, key: str, host: int, doing: str, verb: str = "finish") -> str:
    """`coordinator.get(key)`, or a one-line HostsTimeout: "host H did not {verb} {doing} within T s"."""
    try:
        return coordinator.get(key, timeout())
    except TimeoutError:
        raise HostsTimeout(f"host {host} did not {verb} {doing} within {timeout():.0f} s "
                           "(INSTRUCTJAX_SHARED_TIMEOUT): is it much slower, or stuck?") from None


class Collective:
    """One collective of the session, entered by every host (see the module doc). `key(part)` names its keys."""

    def __init__(self, coordinator: Coordinator, name: str, doing: str):
        session = _session()
        self.hosts, self.doing = coordinator, doing
        n, me = session.entered, coordinator.process_index
        session.entered += 1
        session.names[name] += 1
        self.prefix = f"{session.prefix}/{name}#{session.names[name]}"
        coordinator.set(f"{session.prefix}/at/{me}/{n}", name)
        for h in range(coordinator.process_count):
            if h == me:
                continue
            theirs = get(coordinator, f"{session.prefix}/at/{h}/{n}", h, doing, verb="get to")
            if theirs != name:
                _disagree(coordinator, n, f"host {h} entered collective {theirs!r} where host {me} entered {name!r} "
                                          f"({doing}): the hosts ran different steps; check that every host has the "
                                          "same data files, config and package versions")  # fmt: skip

    def key(self, part: str) -> str:
        return f"{self.prefix}/{part}"

    def all_gather(self, value: Any, part: str = "value") -> list[Any]:
        """Every host's `value` (JSON), in host order."""
        me = self.hosts.process_index
        self.hosts.set(self.key(f"{part}/{me}"), json.dumps(value))
        return [value if h == me else json.loads(get(self.hosts, self.key(f"{part}/{h}"), h, self.doing))
                for h in range(self.hosts.process_count)]  # fmt: skip


def gather_to_first(coordinator: Coordinator, name: str, value: Any, doing: str) -> list[Any] | None:
    """Every host's `value` (JSON) at host 0, in host order; None on the others. Not one of the ordered
    collectives (a background thread may call it): `name` must be unique within the session."""
    key, me = f"{_session().prefix}/gather/{name}", coordinator.process_index
    if me != 0:
        coordinator.set(f"{key}/{me}", json.dumps(value))
        return None
    every = [value] + [json.loads(get(coordinator, f"{key}/{h}", h, doing)) for h in range(1, coordinator.process_count)]
    for h in range(1, coordinator.process_count):
        coordinator.delete(f"{key}/{h}")
    return every


def _disagree(coordinator: Coordinator, n: int, message: str, wait_s: float = 10.0) -> None:
    """Raise HostsDisagree once every host has found it too (each finds it at the same collective). Host 0 exits
    last: its exit takes JAX's runtime down, and a host that had not yet printed its own line would be aborted
    with a report of a lost coordinator instead, so each other host says when it has printed its line (just
    before it exits) and host 0 waits for that, and `EXIT_GRACE_S` more for their exits to land."""
    me = coordinator.process_index
    others = [h for h in range(coordinator.process_count) if h != me]
    found = True
    try:
        coordinator.set(f"{_session().prefix}/disagree/{me}/{n}", "found")
        for h in others:
            coordinator.get(f"{_session().prefix}/disagree/{h}/{n}", wait_s)
    except (TimeoutError, InstructJaxError):  # a host is elsewhere (or gone): say it here alone
        found = False
    said = f"{_session().prefix}/disagree-said/{{}}/{n}"

    def leave() -> None:
        try:
            if me != 0:
                coordinator.set(said.format(me), "said")
            else:
                for h in others:
                    coordinator.get(said.format(h), wait_s)
                time.sleep(EXIT_GRACE_S)  # a host that has said it may not be gone yet (a loaded machine)
        except (TimeoutError, InstructJaxError):
            pass

    raise HostsDisagree(message, leave if found else lambda: None)


def enter(name: str, doing: str) -> Collective | None:
    """Enter collective `name` (None with one host)."""
    coordinator = current()
    return None if coordinator is None else Collective(coordinator, name, doing)


def agree(name: str, value: T, doing: str) -> T:
    """Host 0's `value` (JSON) on every host: a decision each must take alike (whether a file is there yet, where
    another host may be about to write it); `value` itself with one host."""
    collective = enter(name, doing)
    return value if collective is None else collective.all_gather(value)[0]


def first_then_others(name: str, make: Callable[[], T], doing: str) -> T:
    """`make()` on host 0, then on the others once host 0 is done (what host 0 made, e.g. converted files in a
    shared directory, the others then find). Host 0 failing lets the others go on: they fail alike."""
    collective = enter(name, doing)
    if collective is None:
        return make()
    if collective.hosts.process_index == 0:
        try:
            return make()
        finally:
            collective.hosts.set(collective.key("done"), "done")
    get(collective.hosts, collective.key("done"), 0, doing)
    return make()


def sees_one_directory(directory) -> bool:
    """Whether every host sees `directory` as one (each writes a marker there, then looks for the others'),
    asked once per directory; with one host, True. When not, host 0 prints one note line."""
    key = str(directory)
    known = _session().shared_dirs
    collective = enter(f"shared-dir/{key}", "checking the cache directory") if key not in known else None
    if collective is None:
        return known.get(key, True)
    hosts = collective.hosts
    token = collective.all_gather(uuid.uuid4().hex, "token")[0]
    markers = storage.path(directory) / f".hosts-{token}"
    try:
        markers.mkdir(parents=True, exist_ok=True)
        (markers / str(hosts.process_index)).write_text("here")
        collective.all_gather(True, "written")
        seen = all(_appears(markers / str(h)) for h in range(hosts.process_count))
    except OSError:
        seen = False
    views = collective.all_gather(seen, "seen")
    known[key] = all(views)
    if hosts.process_index == 0:
        storage.remove_tree(markers)
        if not all(views):
            blind = [h for h, v in enumerate(views) if not v]
            print(f"instructjax: note: the tokenized cache {directory} is not one directory for all "
                  f"{hosts.process_count} hosts (host {blind[0]} cannot see the others' files): every "
                  "host tokenizes every task itself", file=sys.stderr, flush=True)
    return known[key]


def _appears(path, wait_s: float = 2.0) -> bool:
    """Whether `path` exists, looking again for `wait_s` (a network file system may show it late)."""
    deadline = time.monotonic() + wait_s
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


# ---- JAX's runtime ---------------------------------------------------------------------------------------------


def initialize(distributed: bool, session: str = "run", handles: stopping.ProcessHandles = stopping.PROCESS) -> None:
    """`jax.distributed.initialize` when `distributed` or JAX_COORDINATOR_ADDRESS is set (JAX_NUM_PROCESSES /
    JAX_PROCESS_ID give the rest on machines without a cluster auto-detection), with the heartbeat of
    `INSTRUCTJAX_HEARTBEAT_SECONDS`; stderr then goes through the lost-host relay (held in `handles`). Then
    `install(session=...)`."""
    if not (distributed or os.environ.get("JAX_COORDINATOR_ADDRESS")):  # one process: jax is not even imported
        install(session=session)
        return
    import jax

    if not jax.distributed.is_initialized():
        if os.environ.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        env = {k: int(os.environ[v]) for k, v in (("num_processes", "JAX_NUM_PROCESSES"),
                                                  ("process_id", "JAX_PROCESS_ID")) if v in os.environ}  # fmt: skip
        heartbeat = int(os.environ.get("INSTRUCTJAX_HEARTBEAT_SECONDS", DEFAULT_HEARTBEAT))
        jax.distributed.initialize(os.environ.get("JAX_COORDINATOR_ADDRESS"), heartbeat_timeout_seconds=heartbeat,
                                   **env)  # fmt: skip
        stopping.jax_runtime_started(jax.process_count(), handles)  # JAX's preemption notifier took SIGTERM
        if jax.process_count() > 1:
            _relay_stderr(jax.process_index(), handles)
    install(session=session)


def _relay_stderr(host: int, handles: stopping.ProcessHandles) -> None:
    """Send this process's stderr (Python's and the C++ runtime's: file descriptor 2) through `stderr_relay`, which
    passes it on and turns JAX's report of a lost host into one line (the relay process: `handles.relay`)."""
    if handles.relay is not None:
        return
    sys.stderr.flush()
    handles.relay = subprocess.Popen([sys.executable, "-m", "instructjax.core.stderr_relay", str(host)],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, close_fds=True,
                                     start_new_session=True)  # a terminal's Ctrl-C is this process's to handle
    os.dup2(handles.relay.stdin.fileno(), 2)
    handles.relay.stdin.close()
