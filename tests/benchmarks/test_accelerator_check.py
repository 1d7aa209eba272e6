"""benchmarks/accelerator_check.py in its reduced CPU size, so that the command an accelerator's first
minutes go to never rots: every section runs and passes its own comparison (float64 numpy and the dense
implementation for the kernels, transformers for the step, decoding and the export, an uninterrupted run
for the resume)."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO
from helpers.host_devices import xla_flags

SCRIPT = REPO / "benchmarks" / "accelerator_check.py"


@pytest.mark.slow
def test_accelerator_check_runs_every_section_on_cpu(tmp_path):
    # one CPU device, as on a real host, compiled as the session's other programs are (the cheap compiler flags)
    env = {**os.environ, "XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=1800)
    summary = json.loads((tmp_path / "accelerator_check.json").read_text())
    failed = {k: v.get("error", v) for k, v in summary.items() if isinstance(v, dict) and v.get("ok") is False}
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-2000:])
    assert summary["small"] and summary["found"]["platform"] == "cpu"
    kernels = summary["kernels"]
    assert {r["impl"] for r in kernels["rows"]} == {"xla", "blockwise", "pallas_gpu", "splash"}
    assert {r["dtype"] for r in kernels["rows"]} == {"float32", "bfloat16"}
    assert {r["dtype"] for r in kernels["leaks"]} == {"float32"}  # the reduced size: float32's leak test alone
    assert {r["impl"] for r in kernels["leaks"]} == {"xla", "blockwise", "pallas_gpu", "splash"}
    assert summary["real_run"]["steps"] == 4 and summary["real_run"]["export"]["argmax_agree"] >= 0.99
    assert "| batch |" in (tmp_path / "accelerator_check.md").read_text()
