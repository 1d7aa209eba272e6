"""What ships inside the package beside the code, found the same way in a checkout and in an installed wheel:
the run configs (`configs/`: the quickstart and the papers' experiments), the launch scripts (`launch/`) and the
offline lm-eval tasks the quickstart evaluates on (`eval/offline_tasks/`).

In a checkout the top-level `configs/` and `launch/` are links to these folders, so `configs/quickstart.yaml`
and `python launch/tpu_vm.py` read as before. Anywhere, a shipped config is also found by its name
(`config_file`): `--config quickstart`, `--config seed004_tulu/tulu_human_gpt_llama2_7b`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from instructjax.core import storage
from instructjax.core.errors import ConfigError


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


def shipped_config(name: str) -> Path | None:
    """The shipped config `name` names (`quickstart`, `seed004_tulu/tulu_human_gpt_llama2_7b`, with or without
    `.yaml`, or with the checkout's `configs/` before it), else None."""
    name = name.removeprefix("./").removeprefix("configs/")
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        return None
    for candidate in (name, f"{name}.yaml"):
        found = configs_dir() / candidate
        if found.suffix in (".yaml", ".yml") and found.is_file():
            return found
    return None


def config_file(given: str) -> str:
    """The config file `--config GIVEN` means: GIVEN itself where it exists (or is in a bucket), else the shipped
    config of that name (`shipped_config`, the checkout's `configs/` prefix aside: that path, given where no
    checkout is, is named in the error instead). A ConfigError pointing at the shipped configs when neither is."""
    if storage.is_remote(given) or Path(given).exists():
        return given
    found = shipped_config(given)
    if found is not None and not given.removeprefix("./").startswith("configs/"):
        return str(found)
    if found is not None:  # the docs' checkout path, where there is no checkout
        name = str(found.relative_to(configs_dir()).with_suffix(""))
        hint = f"the shipped config of that name is `--config {name}`"
    else:
        hint = (f"a shipped config is found by name, e.g. `--config quickstart` or `--config "
                f"seed004_tulu/tulu_human_gpt_llama2_7b` (all of them in {configs_dir()}; `instructjax experiments "
                "--root DIR` copies them to edit)")
    raise ConfigError(f"config file {given} does not exist; {hint}")
