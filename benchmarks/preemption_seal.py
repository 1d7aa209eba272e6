"""Seconds from SIGTERM to a sealed checkpoint step, for several GB of train state on 2 processes, on a local disk
and on a GCS-API server (fake-gcs-server), beside the seal as it was: host 0 reading every file of the step back.

    python benchmarks/preemption_seal.py [--gb 2.2] [--where local gcs] [--record]

Each case runs `instructjax train` on 2 local processes (gloo collectives, 2 CPU devices each, fsdp over all 4), a
model sized so that its float32 parameters and AdamW moments hold `--gb` GB. Right after step 1 each process sends
itself SIGTERM (a preemption notice reaches every host of a VM) and notes the time; the hosts save the step JAX's
preemption sync point names (the next one). This process polls for the step: its save starting (the first of its
files), its commit (Orbax's) and its manifest (ours). Reported, from the SIGTERM: each of those and the processes
gone; the save alone (start to commit: Orbax writing), the seal alone (commit to manifest); what each host digests
of its own files (the local seal's work; in a bucket host 0 reads the store's checksums from one listing instead);
and the reference, host 0 reading and hashing every file of the same step (the seal before). Per GB, then
extrapolated to LLaMA-2 7B with AdamW on a v4-64 (8 hosts, 80.9 GB of state, 10.1 GB a host) against a spot VM's
30 s grace.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))

import common  # noqa: E402

GRACE = 30.0
LLAMA2_7B_STATE_GB = 6.74e9 * 12 / 1e9  # float32 params + AdamW mu and nu
V4_64_HOSTS = 8


def worker(stamp: str, argv: list[str]) -> int:
    """One training process: SIGTERM to itself right after step 1, the time noted in `stamp`.HOST."""
    from instructjax.train import preemption

    original = preemption.PreemptionWatch.should_stop

    def should_stop(self, done: int) -> bool:
        if done == 1:
            Path(f"{stamp}.{os.environ.get('JAX_PROCESS_ID', '0')}").write_text(repr(time.time()))
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, done)

    preemption.PreemptionWatch.should_stop = should_stop
    from instructjax import cli

    return cli.main(argv)


def model_overrides(gb: float) -> list[str]:
    """A model whose float32 params + AdamW moments hold about `gb` GB (width 1024, as many layers as it takes)."""
    from instructjax.model.config import param_count
    from instructjax.model.presets import preset

    shape = dict(hidden_size=1024, intermediate_size=4096, num_heads=8, num_kv_heads=8, max_position_embeddings=512)
    layers = 1
    while param_count(preset("tiny", **shape, num_layers=layers)) * 12 / 1e9 < gb:
        layers += 1
    config = preset("tiny", **shape, num_layers=layers)
    return [f"model.{k}={v}" for k, v in {**shape, "num_layers": layers}.items()], param_count(config) * 12 / 1e9


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_case(where: str, gb: float, root: Path) -> dict:
    from instructjax.core import integrity, storage

    overrides, state_gb = model_overrides(gb)
    server = None
    if where == "gcs":
        from helpers.gcs_emulator import GCSEmulator  # tests/helpers/gcs_emulator.py

        server = GCSEmulator("filesystem").start()  # objects on disk, as a bucket's are not in memory
        os.environ.update(server.variables)
        run_dir = f"{server.bucket('bench')}/runs/seal"
    else:
        run_dir = str(root / "runs" / "seal")
    stamp = str(root / f"sigterm-{where}")
    argv = ["train", "--config", "/dev/null", f"run_dir={run_dir}", "model.preset=tiny", "model.dtype=float32",
            *overrides, "data.mixture=alpaca_builtin", "data.seq_len=64", "data.global_batch=4", "data.prefetch=0",
            "mesh.data=1", "mesh.fsdp=4", "max_steps=3", "checkpoint.every=1000", "log_every=1"]  # fmt: skip
    port, procs = _free_port(), []
    for i in range(2):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
               "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i),
               "INSTRUCTJAX_CACHE_DIR": str(root / "cache")}  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", stamp, "--", *argv], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    checkpoints = storage.path(run_dir) / "checkpoints"
    seen: dict[str, float] = {}
    step_dir = None
    while any(p.poll() is None for p in procs) or "sealed" not in seen:
        now = time.time()
        names = [p.name for p in checkpoints.iterdir()] if checkpoints.is_dir() else []
        if "started" not in seen and names:
            seen["started"] = now
        steps = [n for n in names if n.isdigit()]
        if step_dir is None and steps:
            step_dir = checkpoints / steps[0]
        if step_dir is not None and "committed" not in seen:
            if where != "gcs" or (step_dir / "commit_success.txt").exists():  # a disk: the rename to STEP
                seen["committed"] = now
        if step_dir is not None and "sealed" not in seen and (step_dir / integrity.MANIFEST).exists():
            seen["sealed"] = now
        if "exited" not in seen and all(p.poll() is not None for p in procs):
            seen["exited"] = now
            if "sealed" not in seen:
                break
        time.sleep(0.02)
    errors = [p.stderr.read()[-2000:] for p in procs]
    if not all(p.returncode == 75 for p in procs) or "sealed" not in seen:
        raise SystemExit(f"{where}: the run did not stop sealed ({[p.returncode for p in procs]}): {errors}")
    seen.setdefault("exited", time.time())
    signalled = min(float(Path(f"{stamp}.{i}").read_text()) for i in range(2))
    files = storage.listing(step_dir)
    size_gb = sum(e.size for n, e in files.items() if not n.startswith(integrity.MANIFEST)) / 1e9
    own = []
    for host in range(2):  # what each host's seal digests of its own files (in a bucket: a listing on host 0)
        start = time.perf_counter()
        integrity.own_digests(step_dir, host, 2)
        own.append(time.perf_counter() - start)
    start = time.perf_counter()  # the reference: host 0 reads and hashes every file, as the seal did before
    for name in files:
        storage.digest(step_dir / name)
    reference = time.perf_counter() - start
    if server is not None:
        server.stop()
    return {"where": where, "state_gb": state_gb, "files_gb": size_gb, "files": len(files), "step": step_dir.name,
            "started": seen["started"] - signalled, "committed": seen["committed"] - signalled,
            "sealed": seen["sealed"] - signalled, "exited": seen["exited"] - signalled, "own_max": max(own),
            "reference": reference}


def extrapolate(case: dict) -> tuple[float, float]:
    """(our seal, the reference's) in seconds for LLaMA-2 7B + AdamW on a v4-64, from this case's rates."""
    per_host = LLAMA2_7B_STATE_GB / V4_64_HOSTS
    ours = case["own_max"] if case["where"] == "gcs" else case["own_max"] / (case["files_gb"] / 2) * per_host
    return ours, case["reference"] / case["files_gb"] * LLAMA2_7B_STATE_GB


def table(cases: list[dict]) -> str:
    lines = ["| where | state (params + AdamW) | files | SIGTERM -> save starts (the sync step runs) | "
             "-> committed | -> sealed | -> exited | save alone (start -> commit) | seal alone (commit -> manifest) | "
             "a host's own digests | reference: host 0 reads all | reference per GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        lines.append(f"| {c['where']} | {c['state_gb']:.2f} GB | {c['files']} files, {c['files_gb']:.2f} GB | "
                     f"{c['started']:.1f} s (step {c['step']}) | {c['committed']:.1f} s | {c['sealed']:.1f} s | "
                     f"{c['exited']:.1f} s | {c['committed'] - c['started']:.1f} s | "
                     f"{c['sealed'] - c['committed']:.2f} s | {c['own_max']:.2f} s | {c['reference']:.1f} s | "
                     f"{c['reference'] / c['files_gb']:.2f} s/GB |")
    lines += ["", f"Extrapolated to LLaMA-2 7B + AdamW ({LLAMA2_7B_STATE_GB:.1f} GB) on a v4-64 ({V4_64_HOSTS} hosts, "
              f"{LLAMA2_7B_STATE_GB / V4_64_HOSTS:.1f} GB a host), the seal's own work against a {GRACE:.0f} s grace "
              "(the write itself is Orbax's and the same either way):", "",
              "| where | ours | reference (host 0 reads all) |", "|---|---|---|"]
    for c in cases:
        ours, ref = extrapolate(c)
        lines.append(f"| {c['where']} | {ours:.1f} s ({'within' if ours < GRACE else 'over'}) | "
                     f"{ref:.0f} s ({'within' if ref < GRACE else 'over'}) |")
    return "\n".join(lines) + "\n"


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        return worker(sys.argv[2], sys.argv[sys.argv.index("--") + 1 :])
    p = common.parser(__doc__, append="--record", summary=None, append_help="append the table to benchmarks/RESULTS.md")
    p.add_argument("--gb", type=float, default=2.2, help="train state to save (GB)")
    p.add_argument("--where", nargs="+", default=["local", "gcs"], choices=["local", "gcs"])
    args = p.parse_args()
    load = common.load_average()
    cases = []
    for where in args.where:
        with tempfile.TemporaryDirectory(prefix="seal-bench-") as root:
            cases.append(run_case(where, args.gb, Path(root)))
            print(json.dumps(cases[-1]), flush=True)
    text = table(cases)
    print(text)
    common.finish(args, "Preemption save: SIGTERM to a sealed step, 2 processes", text, load_before=load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
