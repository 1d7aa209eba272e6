"""One record per model family (`Family`, model/families/record.py): its decoder switches (model/config.py's
`FAMILIES` is read from here), its HF config.json mapping both ways, its tensor names, layout steps and fused-tensor
cuts, side by side. One module a family (gemma.py and qwen.py hold two generations each, moe.py the three mixtures of
experts); llama.py is the layout the other
RoPE families reuse. `RECORDS` maps each family name to its record, in HF's order of `supported()`.

Adding a family: a module here with its record (its switches first; its `lora_modules` where they are not LLaMA's),
presets in model/presets.py, and the record in `RECORDS`.
"""

from __future__ import annotations

from typing import Any

from instructjax.model.families.gemma import GEMMA2, GEMMA3
from instructjax.model.families.gpt_neox import GPT_NEOX
from instructjax.model.families.llama import LLAMA
from instructjax.model.families.mistral import MISTRAL
from instructjax.model.families.moe import MIXTRAL, OLMOE, QWEN3_MOE
from instructjax.model.families.opt import OPT
from instructjax.model.families.phi3 import PHI3
from instructjax.model.families.qwen import QWEN2, QWEN3
from instructjax.model.families.record import Family

RECORDS: dict[str, Family] = {r.name: r for r in (LLAMA, MISTRAL, QWEN2, QWEN3, PHI3, GEMMA2, GEMMA3, OPT, GPT_NEOX,
                                                  MIXTRAL, QWEN3_MOE, OLMOE)}


def family_of(hf: dict[str, Any]) -> str | None:
    """The family an HF config.json describes (by `architectures`, else `model_type`), or None."""
    for arch in hf.get("architectures") or []:
        for record in RECORDS.values():
            if arch == record.architecture:
                return record.name
    return next((r.name for r in RECORDS.values() if hf.get("model_type") == r.model_type), None)


def supported() -> str:
    """The HF architectures we convert, for a one-line error."""
    return ", ".join(r.architecture for r in RECORDS.values())
