"""What ships inside the package beside the code, found the same way in a checkout and in an installed wheel:
the run configs (`configs/`: the quickstart and the papers' experiments), the launch scripts (`launch/`) and the
offline lm-eval tasks the quickstart evaluates on (`eval/offline_tasks/`).

In a checkout the top-level `configs/` and `launch/` are links to these folders, so `configs/quickstart.yaml`
and `python launch/tpu_vm.py` read as before."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def package_dir() -> Path:
    """The folder of the installed `instructjax` package (a checkout's `instructjax/`, or site-packages')."""
    return Path(str(resources.files("instructjax")))


def configs_dir() -> Path:
    """The shipped run configs: `quickstart.yaml` and the papers' `seed*/` families."""
    return package_dir() / "configs"


def launch_dir() -> Path:
    """The shipped launch scripts: `tpu_vm.py` (Cloud TPU VMs) and `gpu.py` (one node or SLURM)."""
    return package_dir() / "launch"


def offline_tasks_dir() -> Path:
    """The offline lm-eval tasks (ij_mc, ij_rolling, ij_gen); their data paths are relative to `data_root()`."""
    return package_dir() / "eval" / "offline_tasks"


def data_root() -> Path:
    """The folder that holds the package: where the offline tasks' relative data paths start."""
    return package_dir().parent


def source_checkout() -> Path | None:
    """The source checkout the package is imported from (its pyproject.toml beside the package), else None."""
    root = data_root()
    return root if (root / "pyproject.toml").is_file() and (root / "instructjax").is_dir() else None
