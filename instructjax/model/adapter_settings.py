"""The adapter settings of a model config, read and checked without JAX: `model.lora` (the LoRA method:
model/lora.py) and `model.quantize_base` (QLoRA's frozen base: model/quantize.py).

A command that only reads a run's config (`data prepare`, `data stats`, `plan` before it compiles) checks these
too, and must not pay for importing JAX and Flax to do so: the names and checks live here, and lora.py and
quantize.py re-export them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from instructjax.model.families import RECORDS

LORA_KEYS = ("rank", "alpha", "dropout", "targets")
QUANTIZE_KINDS = ("none", "nf4", "int8")
BLOCK = 64  # a quantized kernel's values per absmax, along its last input axis (bitsandbytes' layout)


def family_modules(config: Any) -> dict[str, tuple[str, ...]]:
    """The family's HF linear modules a LoRA may target -> our modules (a plain MLP has no gate)."""
    record = RECORDS.get(config.family)
    modules = dict(record.lora_modules) if record is not None else {}
    if not config.gated_mlp:
        modules.pop("gate_proj", None)
    return modules


def family_parameters(config: Any) -> dict[str, tuple[str, ...]]:
    """A mixture of experts' fused expert parameters a LoRA may target (PEFT's `target_parameters`) -> our stacked
    expert parameters; {} for a dense model."""
    record = RECORDS.get(config.family)
    return dict(record.lora_parameters) if record is not None and config.num_experts else {}


def module_names(config: Any) -> set[str]:
    """Our modules that are the family's linear layers (what a LoRA may adapt, what QLoRA quantizes)."""
    return {name for group in family_modules(config).values() for name in group}


def lora_problems(config: Any) -> list[str]:
    """What is wrong with `config.lora` (a DecoderConfig's), one phrase each; [] when fine or unset."""
    lora = config.lora
    if lora is None:
        return []
    if not isinstance(lora, Mapping):
        return [f"model.lora must be a mapping of {LORA_KEYS}, got {lora!r}"]
    out = [f"model.lora.{k} is unknown (known: {', '.join(LORA_KEYS)})" for k in lora if k not in LORA_KEYS]
    rank, alpha, dropout = lora.get("rank"), lora.get("alpha", lora.get("rank")), lora.get("dropout", 0.0)
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        out.append(f"model.lora.rank must be a positive integer, got {rank!r}")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        out.append(f"model.lora.alpha must be a number, got {alpha!r}")
    if not isinstance(dropout, int | float) or isinstance(dropout, bool) or not 0 <= dropout < 1:
        out.append(f"model.lora.dropout must be a number in [0, 1), got {dropout!r}")
    modules, parameters = family_modules(config), family_parameters(config)
    if not modules and not parameters:
        return out + [f"model.lora: the {config.family} family has no LoRA module table"]
    targets = lora.get("targets", "all-linear")
    targets = [targets] if isinstance(targets, str) else list(targets or [])
    unknown = [t for t in targets if t != "all-linear" and t not in modules and t not in parameters]
    if unknown or not targets:
        out.append(f"model.lora.targets {unknown or targets}: the {config.family} family's modules are "
                   f"{', '.join([*modules, *parameters])} (or all-linear)")
    experts = [t for t in parameters if t in targets or "all-linear" in targets]
    if experts and isinstance(dropout, int | float) and dropout > 0:
        out.append(f"model.lora.dropout={dropout} with the experts targeted ({', '.join(experts)}"
                   f"{', by all-linear' if 'all-linear' in targets else ''}): PEFT's LoRA on expert parameters has no "
                   "dropout; set dropout: 0, or list targets without the experts")
    return out


def quantize_problems(config: Any) -> list[str]:
    """What is wrong with `config.quantize_base` (a DecoderConfig's), one phrase each."""
    kind = config.quantize_base
    if kind not in QUANTIZE_KINDS:
        return [f"model.quantize_base must be one of {QUANTIZE_KINDS}, got {kind!r}"]
    if kind == "none":
        return []
    if config.lora is None:
        return [f"model.quantize_base={kind} stores a frozen base: it needs model.lora (QLoRA)"]
    inputs = {"head_dim": config.head_dim, "hidden_size": config.hidden_size}  # the projections' last input axes
    if "down_proj" in module_names(config):  # a dense MLP (a mixture of experts may have none)
        inputs["intermediate_size"] = config.intermediate_size
    return [f"model.quantize_base={kind} quantizes blocks of {BLOCK} inputs (bitsandbytes' layout): {name}="
            f"{size} is not a multiple of {BLOCK}" for name, size in inputs.items() if size % BLOCK]


def double_quant_problem(value: Any) -> str:
    """The one line `double_quant` under `model:` gets: refused (or a no-op when false)."""
    if value in (False, None):
        return ""
    return (f"model.double_quant={value!r}: QLoRA's double quantization of the absmax constants (bitsandbytes' "
            "bnb_4bit_use_double_quant) is not supported; the absmax stay float32 (0.5 bit a weight): leave it out")
