"""Hosts build one tokenized cache together, and `data prepare` builds it ahead of `train`, through the real
CLI in real processes (gloo collectives, JAX's distributed runtime), counting the conversations each process
tokenizes (tests/fault_worker.py FAULT_COUNT_ENCODED):

- 2 hosts starting cold on one cache directory tokenize, together, exactly the conversations one process
  tokenizes (each once); the cache files equal the one-process files byte for byte; the losses are equal;
- 4 hosts, one of which dies as it starts tokenizing: the others stop with one line naming it after
  INSTRUCTJAX_SHARED_TIMEOUT; the pieces the others finished stay, and the restart tokenizes only the rest,
  ending with the same bytes;
- `data prepare --config` then `train` with the same config: train tokenizes nothing.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("fault_worker.py")
RUN = ["model.preset=tiny", "model.dtype=float32", "optim.lr=3e-3", "log_every=1", "mesh.data=4", "mesh.fsdp=2",
       "data.prefetch=0", "data.mixture=acp_ACP_n10000_builtin", "data.seq_len=128", "data.global_batch=8",
       "data.pack_window=64", "max_steps=2"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(hosts: int, cache: Path, run_dir: Path, dies: int | None = None) -> list[tuple[int, str, int | None]]:
    """`instructjax train` on `hosts` processes sharing `cache`: per host (exit code, stderr, conversations
    it tokenized; None when it did not exit cleanly). Host `dies` dies as it starts tokenizing."""
    port, procs = _free_port(), []
    for i in range(hosts):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // hosts}",
               "JAX_PLATFORMS": "cpu", "INSTRUCTJAX_CACHE_DIR": str(cache), "INSTRUCTJAX_SHARED_TIMEOUT": "20",
               "FAULT_COUNT_ENCODED": f"{run_dir}.count{i}"}  # fmt: skip
        if hosts > 1:
            env |= {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(hosts),
                    "JAX_PROCESS_ID": str(i)}  # fmt: skip
        if i == dies:
            env["FAULT_DIE_TOKENIZING"] = "1"
        cmd = [sys.executable, str(WORKER), "train", "--config", "/dev/null", *RUN, f"run_dir={run_dir}"]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    out = []
    for i, p in enumerate(procs):
        try:
            _, err = p.communicate(timeout=600)
        finally:
            if p.poll() is None:
                p.kill()
        counted = Path(f"{run_dir}.count{i}")
        out.append((p.returncode, err, int(counted.read_text()) if counted.exists() else None))
    return out


def files(cache: Path) -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(cache.iterdir())}


def losses(run_dir: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def pieces_done(cache: Path) -> int:
    """Conversations in the finished piece files a stopped build left (named FIRST-END)."""
    done = 0
    for piece in cache.glob("*.pieces/*"):
        if not piece.name.startswith("."):
            first, end = map(int, piece.name.split("-"))
            done += end - first
    return done


def test_hosts_share_one_cache_and_a_lost_host_costs_only_its_piece(tmp_path):
    (code, err, alone), = train(1, tmp_path / "one", tmp_path / "run1")
    assert code == 0, err[-3000:]
    reference = files(tmp_path / "one")
    assert alone > 0 and len(reference) == 3

    shared = train(2, tmp_path / "two", tmp_path / "run2")
    assert all(code == 0 for code, _, _ in shared), [err[-3000:] for _, err, _ in shared]
    counts = [n for _, _, n in shared]
    assert all(n > 0 for n in counts) and sum(counts) == alone, counts  # each conversation once, split
    assert files(tmp_path / "two") == reference
    assert losses(tmp_path / "run2") == pytest.approx(losses(tmp_path / "run1"), rel=1e-6)

    lost = train(4, tmp_path / "four", tmp_path / "run4a", dies=3)
    assert lost[3][0] == 9
    for code, err, _ in lost[:3]:
        errors = [line for line in err.splitlines() if "error" in line.lower()]
        assert code == 2 and len(errors) == 1 and "host 3 did not finish tokenizing" in errors[0], err[-3000:]
    done = pieces_done(tmp_path / "four")
    assert done > 0 and not list((tmp_path / "four").glob("*.tok"))

    again = train(4, tmp_path / "four", tmp_path / "run4b")
    assert all(code == 0 for code, _, _ in again), [err[-3000:] for _, err, _ in again]
    assert sum(n for _, _, n in again) == alone - done  # only what the lost run did not finish
    assert files(tmp_path / "four") == reference  # the pieces are gone, the files are the one-process ones


def test_prepare_then_train_tokenizes_nothing(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "INSTRUCTJAX_CACHE_DIR": str(tmp_path / "cache"),
           "FAULT_COUNT_ENCODED": str(tmp_path / "prepare.count")}  # fmt: skip
    config = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
    prepare = subprocess.run([sys.executable, str(WORKER), "data", "prepare", "--config", str(config), "max_steps=2"],
                             env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    assert "3 written now, 0 there already" in prepare.stdout, prepare.stdout
    assert int((tmp_path / "prepare.count").read_text()) > 0

    env["FAULT_COUNT_ENCODED"] = str(tmp_path / "train.count")
    run = subprocess.run([sys.executable, str(WORKER), "train", "--config", str(config), "max_steps=2",
                          f"run_dir={tmp_path / 'run'}"], env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert int((tmp_path / "train.count").read_text()) == 0
