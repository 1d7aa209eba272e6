"""What a resume cannot restore: parameters of other shapes. A checkpoint holds arrays of the shapes its model had
(a LoRA's adapters of its rank on its targets, a QLoRA's base stored quantized, the model's own sizes); a config
that changes them cannot continue it, `--accept-changes` or not. `shape_change` names the key the user typed
(`model.lora.rank`, not the `model.overrides.lora.rank` the config stores it under) in one line, before the run
writes anything."""

from __future__ import annotations

from typing import Any

from instructjax.core.errors import ConfigError
from instructjax.model.config import DecoderConfig


def _shapes(model: DecoderConfig) -> dict:
    import jax

    from instructjax.convert.hf import abstract_params

    return jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), abstract_params(model))


def _words(value: Any) -> str:
    return ", ".join(value) if isinstance(value, list | tuple) else str(value)


def _lora_words(saved: dict | None, new: dict | None) -> str:
    """The one line of a changed `model.lora` (`saved`: the checkpoint's, `new`: the config's)."""
    if saved is None:
        return "model.lora cannot be added on resume (the checkpoint holds no LoRA adapters)"
    spec = f"rank {saved.get('rank')} on {_words(saved.get('targets', 'all-linear'))}"
    if new is None:
        return f"model.lora cannot be removed on resume (the checkpoint's adapters are {spec})"
    for key in ("rank", "targets"):
        old = saved.get(key, "all-linear" if key == "targets" else None)
        if old != new.get(key, "all-linear" if key == "targets" else None):
            return (f"model.lora.{key} cannot change on resume (the checkpoint's adapters are "
                    + (f"rank {old}" if key == "rank" else f"on {_words(old)}") + ")")
    return f"model.lora cannot change on resume (the checkpoint's adapters are {spec})"


def shape_change(stored: dict, model: DecoderConfig, overrides: dict, init_from: str | None) -> str | None:
    """One line naming what changes the parameters' shapes between the checkpoint's model (`stored`, its config
    dict) and the run's (`model`, in the checkpoint's layout), by the key the user typed (`overrides`: the run
    config's `model:` keys; a field it does not set came from `init_from` or the preset); None where they match."""
    saved = DecoderConfig.from_dict(stored).replace(scan_layers=model.scan_layers)
    if _shapes(saved) == _shapes(model):
        return None
    for field in DecoderConfig.__dataclass_fields__:
        old, new = getattr(saved, field), getattr(model, field)
        if old == new:
            continue
        try:
            moves = _shapes(saved.replace(**{field: new})) != _shapes(saved)
        except ConfigError:  # not a model alone (e.g. quantize_base without its lora): it takes part
            moves = True
        if not moves:
            continue
        if field == "lora":
            line = _lora_words(old, new)
        elif field == "quantize_base":
            line = ("model.quantize_base cannot change on resume (the checkpoint's base is "
                    + (f"stored as {old})" if old != "none" else "not quantized)"))
        elif field in overrides:
            line = f"model.{field} cannot change on resume (the checkpoint's is {old})"
        else:
            key = "model.init_from" if init_from else "model.preset"
            line = f"{key} cannot change on resume to a model of other shapes (the checkpoint's {field} is {old}, now {new})"
        return f"{line}; start a new run_dir"
    return "the model's parameters cannot change shape on resume; start a new run_dir"
