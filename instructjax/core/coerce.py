"""YAML values into typed dataclasses: every config section (the run's, the evaluation's, a `define:` block's task
specs) is built by `build_section`, each value checked against its field's type, every unknown key and bad value
of a section named in one `ConfigError` line."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

from instructjax.core.errors import ConfigError


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Check/convert a YAML value to a dataclass field type, or raise a ConfigError naming it."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(kind):
        if isinstance(value, kind):  # already built (data.mosaic)
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        if hasattr(kind, "from_config"):  # a section that reads its mapping itself (`objective:`)
            return kind.from_config(value, where)
        return _build(kind, value, where)
    if origin in (tuple, list) or kind in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = typing.get_args(kind)[0] if origin is list and typing.get_args(kind) else Any
        return (tuple if (origin or kind) is tuple else list)(_coerce(v, item, f"{where}[{i}]")
                                                              for i, v in enumerate(value))  # fmt: skip
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        item = typing.get_args(kind)[1] if typing.get_args(kind) else Any  # each value checked: mesh.data=two
        return {k: _coerce(v, item, f"{where}.{k}") for k, v in value.items()}
    if kind is Any:
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if kind in (int, str, bool) and type(value) is kind:
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    raise ConfigError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


def check_value(value: Any, kind: Any, where: str) -> Any:
    """`value` checked (and converted) against the type `kind` of the config key `where`: one ConfigError line."""
    return _coerce(value, kind, where)


def unknown_key(path: str, known) -> ConfigError:
    """`model.dtyp: unknown key; did you mean dtype?` (or the known keys when none is close)."""
    key = path.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(known))}"
    return ConfigError(f"{path}: unknown key; {hint}")


def build_section(cls, values: dict, where: str):
    """A dataclass from a YAML mapping, each value checked against the field's type (one-line ConfigErrors
    naming `where`): how every config section, and a `define:` block's task specs, are built."""
    return _build(cls, values, where)


def _build(cls, values: dict, where: str):
    """The section, or one ConfigError naming every unknown key and bad value in it (not one per run)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    into = getattr(cls, "OTHER_KEYS_INTO", None)  # a section whose unknown keys are entries of this mapping field
    kwargs, problems, shortcuts = {}, [], {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if into is not None and key not in names:  # `model.remat: full` is `model.overrides.remat: full`
            shortcuts[key] = value
            continue
        try:
            if key not in names:
                raise unknown_key(path, names)
            kwargs[key] = _coerce(value, hints[key], path)
        except ConfigError as e:
            problems.append(str(e))
    if shortcuts:
        twice = {k for k in shortcuts if k in kwargs.get(into, {}) and kwargs[into][k] != shortcuts[k]}
        if twice:
            problems.append(f"{where}: {', '.join(sorted(twice))} given both as {where}.KEY and {where}.{into}.KEY "
                            "with different values")
        kwargs[into] = {**kwargs.get(into, {}), **shortcuts}
    if problems:
        raise ConfigError("; ".join(problems))
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or 'config'}: {e}") from None
