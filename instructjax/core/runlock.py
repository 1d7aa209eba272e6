"""One writer per run directory: the process that trains a run holds RUN_DIR/LOCK, so a second trainer (or sweep
stage) on the same run stops before it writes anything, with one line naming the holder.

- The lock is a small JSON record: the holder's host, pid, boot and process start time (which tell a live process
  from a dead one whose pid was reused), when it started, a random token, and `beat`: when it last said it was
  alive (refreshed every REFRESH_SECONDS by a thread while the run trains).
- Taken by a write that fails where the lock exists, never a read-then-write: `O_CREAT | O_EXCL` on a disk, an
  upload with the store's generation precondition `ifGenerationMatch=0` in a bucket.
- A holder is alive when it is a process of this machine's present boot that still runs (its pid with its start
  time), or, on another machine (or before a reboot), when it refreshed its lock within STALE_SECONDS. A dead
  holder's lock (kill -9, a preempted VM) is taken over with a warning, so a resume after a crash works: in a
  bucket by an upload conditional on the generation that was read; on a disk by renaming that file aside (one
  rename of it succeeds) and creating the lock anew.
- Refreshing is conditional too (on the generation written, on a disk on the token): a lock taken over meanwhile
  (this process paused past STALE_SECONDS) is noticed, and `check` stops the run before its next checkpoint.
- The run's hosts: host 0 takes the lock, the others learn the outcome through `hosts` and stop alike.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from urllib.parse import quote

from instructjax.core import hosts, storage
from instructjax.core.errors import ConfigError

LOCK = "LOCK"
STALE_SECONDS = 180.0
REFRESH_SECONDS = 30.0


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    return ""


def _started(pid: int) -> str:
    """The process's start time since boot (from /proc), "" where it is not running (or not known)."""
    with contextlib.suppress(OSError, IndexError):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    return ""


@dataclass
class Holder:
    """Who holds a run's lock (see the module doc)."""

    host: str
    pid: int
    boot: str
    start: str
    since: str
    beat: float
    token: str

    @classmethod
    def me(cls) -> Holder:
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), _boot_id(), _started(os.getpid()),
                   time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)), now, uuid.uuid4().hex)

    def alive(self) -> bool:
        if self.host == socket.gethostname() and self.boot and self.boot == _boot_id():
            return bool(self.start) and _started(self.pid) == self.start
        return time.time() - self.beat < STALE_SECONDS

    def is_me(self) -> bool:
        """Whether this process holds it (an earlier object of it)."""
        return (self.host, self.pid, self.boot, self.start) == (socket.gethostname(), os.getpid(), _boot_id(),
                                                                 _started(os.getpid()))

    def words(self) -> str:
        return (f"host {self.host}, pid {self.pid}, started {self.since}, last alive "
                f"{max(0.0, time.time() - self.beat):.0f} s ago")

    def dumps(self) -> bytes:
        return json.dumps(asdict(self)).encode()


class RunLock:
    """RUN_DIR/LOCK, taken by `acquire`, refreshed by a thread, checked by `check`, given back by `release`."""

    def __init__(self, run_dir):
        self.run_dir = os.fspath(storage.path(run_dir))
        self.path = storage.join(run_dir, LOCK)
        self.remote = storage.is_remote(self.path)
        self.holder: Holder | None = None
        self.version = None  # in a bucket: the generation this process wrote
        self.lost: Holder | str | None = None
        self.made_dir = False  # the run directory did not exist before the lock (on a disk)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Take the lock, or one ConfigError line naming the live process that holds it."""
        me = Holder.me()
        for _ in range(3):
            if self._create(me):
                return self._held(me)
            found = self._read()
            if found is None:  # given back meanwhile
                continue
            other, version = found
            if other is not None and other.is_me():  # an earlier trainer of this process, never run or given back
                if self._take_over(version, me):
                    return self._held(me)
                continue
            if other is not None and other.alive():
                raise ConfigError(f"{self.run_dir} is being trained by another process ({other.words()}); wait for "
                                  "it to finish or stop it, or choose another run_dir")
            gone = other.words() if other is not None else "an unreadable lock"
            print(f"instructjax: warning: {self.run_dir}: taking over the lock of a process that is gone ({gone})",
                  file=sys.stderr, flush=True)
            if self._take_over(version, me):
                return self._held(me)
        raise ConfigError(f"{self.run_dir}: another process took the run's lock at the same moment; run one trainer "
                          "on a run_dir at a time")

    def check(self) -> None:
        """One ConfigError line where another process took the lock over while this one trained."""
        if self.lost is not None:
            who = self.lost.words() if isinstance(self.lost, Holder) else self.lost
            raise ConfigError(f"{self.run_dir}: another process took over the run's lock ({who}) while this one "
                              "trained; this one stops without writing more")

    def release(self) -> None:
        """Stop refreshing and remove the lock where it is still this process's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=REFRESH_SECONDS)
        if self.holder is None or self.lost is not None:
            return
        found = self._read()
        if found is not None and found[0] is not None and found[0].token == self.holder.token:
            self._remove(found[1])
        self.holder = None
        if self.made_dir:  # a run stopped before it wrote anything (a config error) leaves no directory behind
            with contextlib.suppress(OSError):
                os.rmdir(self.run_dir)

    # ---- the lock as the store keeps it -----------------------------------------------------------------------

    def _held(self, me: Holder) -> None:
        self.holder = me
        self._thread = threading.Thread(target=self._refresh, name="instructjax-runlock", daemon=True)
        self._thread.start()

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_SECONDS):
            me = self.holder
            me.beat = time.time()
            try:
                if not self._replace(me):
                    found = self._read()
                    self.lost = found[0] if found and found[0] is not None else "the lock is gone"
                    return
            except Exception as exc:  # noqa: BLE001  a store that does not answer: tried again next time
                print(f"instructjax: warning: {self.run_dir}: could not refresh the run's lock ({exc})",
                      file=sys.stderr, flush=True)

    def _create(self, me: Holder) -> bool:
        if self.remote:
            self.version = _upload(self.path, me.dumps(), generation=0)
            return self.version is not None
        if not os.path.isdir(self.run_dir):  # made for the lock: removed with it where nothing else was written
            os.makedirs(self.run_dir, exist_ok=True)
            self.made_dir = True
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(me.dumps())
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read(self) -> tuple[Holder | None, object] | None:
        """(the holder, or None where the record cannot be read; the version read), None where there is no lock."""
        try:
            if self.remote:
                fs, where = storage.filesystem(self.path)
                generation = fs.info(where).get("generation")
                data = fs.cat_file(where)
            else:
                with open(self.path, "rb") as f:
                    data = f.read()
                generation = None
        except FileNotFoundError:
            return None
        try:
            holder = Holder(**json.loads(data))
        except (ValueError, TypeError):
            holder = None
        return holder, generation if self.remote else data

    def _take_over(self, version, me: Holder) -> bool:
        if self.remote:
            self.version = _upload(self.path, me.dumps(), generation=version)
            return self.version is not None
        aside = f"{self.path}.gone-{me.token}"
        try:
            os.rename(self.path, aside)  # one process's rename of this file succeeds
        except FileNotFoundError:
            return False
        with open(aside, "rb") as f:
            if f.read() != version:  # a live holder's lock was there by then: put it back
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
                os.unlink(aside)
                return False
        os.unlink(aside)
        return self._create(me)

    def _replace(self, me: Holder) -> bool:
        if self.remote:
            version = _upload(self.path, me.dumps(), generation=self.version)
            if version is not None:
                self.version = version
            return version is not None
        found = self._read()
        if found is None or found[0] is None or found[0].token != me.token:
            return False
        storage.write_bytes(self.path, me.dumps())
        return True

    def _remove(self, version) -> None:
        if self.remote:
            fs, where = storage.filesystem(self.path)
            bucket, key, _ = fs.split_path(where)
            with contextlib.suppress(FileNotFoundError):
                fs.call("DELETE", "b/{}/o/{}", bucket, key, ifGenerationMatch=str(version))
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _upload(p: str, data: bytes, *, generation) -> int | None:
    """Write object `p` only where its generation is `generation` (0: where it does not exist): the new
    generation, or None where the precondition failed. One multipart upload (the JSON API's `ifGenerationMatch`)."""
    fs, where = storage.filesystem(p)
    bucket, key, _ = fs.split_path(where)
    body = (b"--==0==\nContent-Type: application/json; charset=UTF-8\n\n" + json.dumps({"name": key}).encode()
            + b"\n--==0==\nContent-Type: application/json\n\n" + data + b"\n--==0==--")
    try:
        out = fs.call("POST", f"{fs._location}/upload/storage/v1/b/{quote(bucket)}/o", uploadType="multipart",
                      headers={"Content-Type": 'multipart/related; boundary="==0=="'}, data=body, json_out=True,
                      ifGenerationMatch=str(generation))
    except FileExistsError:  # gcsfs's word for 412 Precondition Failed
        return None
    with contextlib.suppress(Exception):
        fs.invalidate_cache(where)
    return int(out["generation"])


def take(run_dir) -> RunLock:
    """The run's lock, taken by host 0 of the run's hosts (see the module doc); the other hosts get a lock they do
    not hold (`release` does nothing there) and stop alike, with host 0's line, where host 0 could not take it."""
    lock, error = RunLock(run_dir), ""
    index, count = hosts.process()
    if index == 0:
        try:
            lock.acquire()
        except ConfigError as e:
            error = str(e)
    if count > 1:
        error = hosts.enter("run-lock", "taking the run's lock").all_gather(error)[0]
    if error:
        raise ConfigError(error if index == 0 else f"host 0: {error}")
    return lock
