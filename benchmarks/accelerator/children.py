"""Child processes: the probe of what JAX sees, and the `--child` runs of accelerator_check.py each section
makes (its time limit, the results a stopped child printed, its error as one line)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMMAND = Path(__file__).resolve().parents[1] / "accelerator_check.py"  # whose --child mode runs a section


def one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]



def probe() -> dict:
    """The platform and device JAX sees, and the versions, asked in a child process so that this one
    never holds the device."""
    code = ("import jax, json, sys; d = jax.devices()[0]; "
            "print(json.dumps({'platform': jax.default_backend(), 'device': d.device_kind, 'count': jax.device_count(), "
            "'jax': jax.__version__}))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"accelerator_check: JAX does not start: {proc.stderr.strip().splitlines()[-1:]}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    for name in ("flax", "optax", "orbax.checkpoint", "transformers", "torch"):
        try:
            module = __import__(name, fromlist=["_"])
            found[name] = getattr(module, "__version__", "?")
        except ImportError:
            found[name] = None
    return found



def child(argv: list[str], timeout: int, log: Path) -> dict:
    """Run accelerator_check.py in its `--child` mode; its stderr goes to `log` (progress, tracebacks)."""
    with log.open("w") as err:
        try:
            proc = subprocess.run([sys.executable, str(COMMAND), *argv], stdout=subprocess.PIPE, stderr=err, text=True,
                                  timeout=timeout, env=jax_environment())
        except subprocess.TimeoutExpired as exc:  # what it finished still counts
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            done = [json.loads(line[len("ROW "):]) for line in out.splitlines() if line.startswith("ROW ")]
            finished = f" after {len(done)} checks" if done else ""
            return {"error": f"stopped at its time limit of {timeout} s{finished}", "ok": False,
                    "rows": [r for r in done if r["kind"] == "value"], "leaks": [r for r in done if r["kind"] == "leak"]}
    proc.stderr = log.read_text()
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(error_line(proc.stderr) or f"exit {proc.returncode}")
    return json.loads(lines[-1][len("RESULT "):])


def jax_environment() -> dict[str, str]:
    """This process's environment, with the GPU XLA flags where the check runs on a GPU (CHECK_PLATFORM)."""
    from instructjax.core import xla_flags

    env = dict(os.environ)
    return xla_flags.gpu_environment(env) if env.get("CHECK_PLATFORM") == "gpu" else env


def error_line(output: str) -> str:
    """The last exception line of a traceback in `output` (else its last line), at most 300 characters."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Exit|Expired)\b", line)]
    return (errors or lines or [""])[-1][:300]
