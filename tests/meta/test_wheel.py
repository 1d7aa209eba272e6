"""The built wheel works outside the source tree: installed into a fresh environment, run from a folder with no
checkout in sight, the quickstart trains, exports and evaluates on what the package ships, the paper configs it
ships are the ones the tables generate, and a sweep of them hands each run to the shipped TPU launcher."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO
from helpers.host_devices import xla_flags

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh environment's bin folder, the wheel installed in it. The wheel's
    dependencies are read from this environment's site-packages (named by a path line in the new environment's
    own .pth, after the wheel: the editable install's .pth there is not processed, so the checkout stays out)."""
    tmp = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp / "dist"), str(REPO)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("instructjax-*.whl")
    env = tmp / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=300)
    put = subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "-q",
                          "--no-deps", str(wheel)], capture_output=True, text=True, timeout=600)
    assert put.returncode == 0, put.stderr[-3000:]
    (packages,) = (env / "lib").glob("python3*/site-packages")
    (packages / "zz_dependencies.pth").write_text("".join(p + "\n" for p in site.getsitepackages()))
    return env / "bin"


def environment(bin_dir: Path) -> dict[str, str]:
    """A reader's environment with the new one's bin first (the GCS-API server's variables kept, where set): one CPU
    device, compiled as the session's other programs are (tests/conftest.py's cheap flags)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(1)}


def run(bin_dir: Path, cwd: Path, *argv: str, timeout: int = 900, code: int = 0) -> str:
    """`instructjax ARGV`'s stdout (its exit status `code`); nothing on stderr says git is missing a checkout."""
    environ = environment(bin_dir)
    proc = subprocess.run([str(bin_dir / "instructjax"), *argv], cwd=cwd, env=environ, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == code, (argv, proc.stdout[-2000:], proc.stderr[-3000:])
    assert "not a git repository" not in proc.stderr, proc.stderr[-3000:]  # lm-eval's `git describe`, unasked
    return proc.stdout if code == 0 else proc.stderr


def test_the_wheel_imports_from_its_own_environment(installed, tmp_path):
    bin_dir = installed
    where = subprocess.run([str(bin_dir / "python"), "-c", "import instructjax; print(instructjax.__file__)"],
                           cwd=tmp_path, env=environment(bin_dir), capture_output=True, text=True, timeout=300)
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(bin_dir.parent) and not where.stdout.startswith(str(REPO))


def test_the_wheel_ships_notice(installed):
    """NOTICE (the derived parts, their upstreams and licences) is in the installed wheel, as it is in the checkout."""
    (shipped,) = installed.parent.glob("lib/python3*/site-packages/instructjax-*.dist-info/licenses/NOTICE")
    assert shipped.read_text() == (REPO / "NOTICE").read_text()


def test_quickstart_runs_from_the_wheel(installed, tmp_path):
    out = run(installed, tmp_path, "quickstart", "max_steps=4", "checkpoint.every=4", "log_every=2")
    assert "ij_mc:" in out and "ij_rolling:" in out, out[-2000:]
    assert list((tmp_path / "runs").glob("quickstart-*/hf/config.json"))  # the run lives where the user stands


def test_shipped_configs_are_found_by_name_from_the_wheel(installed, tmp_path):
    """Where no checkout is, `--config quickstart` is the shipped file, and the docs' `configs/quickstart.yaml` is one
    line naming it."""
    assert "quickstart" in run(installed, tmp_path, "plan", "--config", "quickstart")
    err = run(installed, tmp_path, "train", "--config", "configs/quickstart.yaml", code=2)
    assert err.splitlines() == ["instructjax: error: config file configs/quickstart.yaml does not exist; the shipped "
                                "config of that name is `--config quickstart`"]
    assert list(tmp_path.iterdir()) == []


def test_paper_configs_ship_and_a_sweep_hands_them_to_the_shipped_launcher(installed, tmp_path, bucket):
    out = run(installed, tmp_path, "experiments", "--check")
    assert "configs up to date" in out
    run(installed, tmp_path, "experiments", "--root", "configs")  # a copy of one's own to edit
    copied = sorted(p.relative_to(tmp_path / "configs") for p in (tmp_path / "configs").rglob("*.yaml"))
    shipped = sorted(p.relative_to(REPO / "instructjax" / "configs") for p in
                     (REPO / "instructjax" / "configs").rglob("seed*/*.yaml"))
    assert copied == shipped and shipped
    out = run(installed, tmp_path, "sweep", "configs/seed000_acp", "--launch", "tpu", "--dry-run",
              "--launch-args", f"--zone us-central2-b --bucket {bucket}")
    assert "tpu-vm" in out and "acp-acp-llama2-7b" in out, out[-3000:]
    assert "pip install instructjax==" in out and "pip wheel" not in out  # no checkout to build a wheel of
