"""`core.runlock`: one writer per run directory, on a disk and in a bucket (the GCS-API server), against real
processes: a live holder (another process) refuses, a killed one's lock is taken over with a warning, a holder on
another machine is alive while it refreshes its lock and gone once it stops; the bucket's lock is written with the
store's generation preconditions (a stale holder's generation read, then changed by another writer: the takeover
fails)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from instructjax.core import runlock, storage
from instructjax.core.errors import ConfigError

HOLD = ("import sys, time\nfrom instructjax.core import runlock\nlock = runlock.RunLock(sys.argv[1])\n"
        "lock.acquire()\nprint('held', flush=True)\ntime.sleep(600)\n")


def holder_process(run_dir: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, run_dir], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=os.environ)
    assert proc.stdout.readline().strip() == "held", proc.stderr.read()
    return proc


def record(run_dir: str) -> dict:
    """The lock's record in one GET: a sized read (open, then read `size` bytes) races the refresh thread's rewrite
    and can cut the record short."""
    fs, where = storage.filesystem(storage.join(run_dir, runlock.LOCK))
    return json.loads(fs.cat_file(where))


@pytest.fixture(params=["local", "bucket"])
def run_dir(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    return f"{request.getfixturevalue('bucket')}/runs/r1"


def test_a_live_holder_refuses_and_a_killed_ones_lock_is_taken_over(run_dir, capsys):
    proc = holder_process(run_dir)
    try:
        with pytest.raises(ConfigError) as e:
            runlock.RunLock(run_dir).acquire()
        line = str(e.value)
        assert "\n" not in line and "being trained by another process" in line
        assert f"host {socket.gethostname()}, pid {proc.pid}" in line
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    lock = runlock.RunLock(run_dir)
    lock.acquire()
    assert f"taking over the lock of a process that is gone (host {socket.gethostname()}, pid {proc.pid}" in \
        capsys.readouterr().err
    assert record(run_dir)["pid"] == os.getpid()
    lock.release()
    assert not storage.path(storage.join(run_dir, runlock.LOCK)).exists()


def test_a_holder_on_another_machine_is_alive_while_it_refreshes(run_dir, capsys):
    other = runlock.Holder("tpu-vm-7", 4242, "another-boot", "1", "2026-11-25 10:00:00", time.time(), "t0k3n")
    storage.write_bytes(storage.join(run_dir, runlock.LOCK), other.dumps())
    with pytest.raises(ConfigError, match="host tpu-vm-7, pid 4242"):
        runlock.RunLock(run_dir).acquire()
    other.beat = time.time() - runlock.STALE_SECONDS - 1  # it stopped refreshing
    storage.write_bytes(storage.join(run_dir, runlock.LOCK), other.dumps())
    lock = runlock.RunLock(run_dir)
    lock.acquire()
    assert "taking over the lock of a process that is gone (host tpu-vm-7" in capsys.readouterr().err
    assert record(run_dir)["token"] == lock.holder.token
    lock.release()


def test_refreshing_keeps_the_lock_and_notices_a_takeover(run_dir, monkeypatch):
    monkeypatch.setattr(runlock, "REFRESH_SECONDS", 0.2)
    lock = runlock.RunLock(run_dir)
    lock.acquire()
    first = record(run_dir)["beat"]
    time.sleep(1.0)
    assert record(run_dir)["beat"] > first and lock.lost is None
    lock.check()
    thief = runlock.Holder("elsewhere", 1, "b", "1", "now", time.time(), "not-yours")
    storage.write_bytes(storage.join(run_dir, runlock.LOCK), thief.dumps())  # a takeover while this one paused
    time.sleep(1.0)
    with pytest.raises(ConfigError, match="another process took over the run's lock \\(host elsewhere"):
        lock.check()
    lock.release()
    assert record(run_dir)["token"] == "not-yours"  # not removed: it is not this process's any more


def test_in_a_bucket_every_write_is_conditional_on_the_generation(bucket):
    """The stale holder's generation is read; another writer changes the lock before the takeover: the takeover's
    upload (ifGenerationMatch on the generation read) fails and the lock is the other writer's."""
    run_dir = f"{bucket}/runs/race"
    path = storage.join(run_dir, runlock.LOCK)
    stale = runlock.Holder("gone-host", 1, "b", "1", "then", 0.0, "stale")
    storage.write_bytes(path, stale.dumps())
    lock = runlock.RunLock(run_dir)
    _, generation = lock._read()
    storage.write_bytes(path, runlock.Holder("fresh-host", 2, "c", "1", "now", time.time(), "fresh").dumps())
    assert not lock._take_over(generation, runlock.Holder.me())
    assert record(run_dir)["token"] == "fresh"
    assert runlock._upload(path, b"{}", generation=0) is None  # create: refused where the lock exists
