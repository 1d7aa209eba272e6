"""A user's own modules (a config's `imports:`, `--import`): imported before anything is resolved, so the
tasks, sources and seqio Tasks they define are known."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from instructjax.core.context import current
from instructjax.core.errors import ConfigError


def import_modules(names: list[str], base: Path | None = None) -> None:
    """Import a config's `imports:` (or `--import`) before anything is resolved, so the tasks, sources and
    seqio Tasks they register are known: a module name (found on sys.path, the config's directory or the
    working directory) or a path to a .py file (relative to the config's directory, else the working
    directory). A module that fails to import is one ConfigError line. What the modules register goes into the
    outermost context (`core.context`): Python imports a module once per process, so every later command reads it
    there."""
    with current().root:
        _import(names, base)


def _import(names: list[str], base: Path | None) -> None:
    for name in names:
        try:
            if name.endswith(".py") or "/" in name:
                candidates = [Path(name)] if base is None else [base / name, Path(name)]
                found = next((p for p in candidates if p.is_file()), None)
                if found is None:
                    raise FileNotFoundError(f"no file {name}")
                module_name = found.stem
                if module_name in sys.modules and getattr(sys.modules[module_name], "__file__", None) == str(found):
                    continue
                spec = importlib.util.spec_from_file_location(module_name, found)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            else:
                extra = [str(p) for p in (base, Path.cwd()) if p is not None and str(p) not in sys.path]
                sys.path[len(sys.path):] = extra
                importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001  whatever the user's module raises: one line
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise ConfigError(f"imports: cannot import {name!r}: {detail[:300]}") from None
