"""LLaMA-family model configuration: one dataclass, named presets, parameter count, HF config mapping.

Mistral-7B is the LLaMA architecture plus a 4096-token sliding attention window; the window is not
modelled here because every paper's max length (<= 2048) is below it, where the two are identical.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from instructjax.core.errors import ConfigError

REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable", "save_attention",
                  "minimal_with_context")  # see instructjax.model.llama.remat_policy
ATTENTION = ("auto", "xla", "blockwise", "splash", "pallas_gpu", "cudnn")  # see instructjax.model.attention
_ROPE_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


@dataclass(frozen=True)
class LlamaConfig:
    """Shape and numerics of a LLaMA-family decoder.

    `dtype` is the compute dtype (activations, matmul inputs); `param_dtype` the stored (master) dtype.
    `rope_scaling` is None or the LLaMA-3.1 dict {factor, low_freq_factor, high_freq_factor,
    original_max_position_embeddings}. `remat` names the per-layer rematerialisation policy.

    How the model runs, not what it computes (none of it reaches an HF config.json): `attention` picks
    the attention implementation (`auto`: splash on TPU, Pallas GPU flash attention on GPU, blockwise
    on CPU), `attention_block` its tile size (None: the implementation's default),
    `attention_backward_block` the backward pass's tiles where the kernel has its own (pallas_gpu), and `scan_layers`
    runs the decoder layers as one `scan` over stacked parameters (compile time independent of depth)
    instead of a Python loop over per-layer parameters.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int | None = None  # None: hidden_size // num_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict[str, float] | None = None
    max_position_embeddings: int = 2048
    tie_embeddings: bool = False
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    remat: str = "none"
    attention: str = "auto"
    attention_block: int | None = None
    attention_backward_block: int | None = None
    scan_layers: bool = True
    bos_id: int | None = 1
    eos_id: int = 2
    extra_eos_ids: tuple[int, ...] = ()  # further end-of-turn ids (an HF `eos_token_id` list after its first)
    pad_id: int | None = None
    initializer_range: float = 0.02
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # unmapped HF keys, kept for export

    def __post_init__(self):
        object.__setattr__(self, "extra_eos_ids", tuple(self.extra_eos_ids))  # a list after a JSON round trip
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        problems = []
        if self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            problems.append(f"head_dim={self.head_dim} must be even for RoPE")
        if self.remat not in REMAT_POLICIES:
            problems.append(f"remat={self.remat!r} is not one of {REMAT_POLICIES}")
        if self.attention not in ATTENTION:
            problems.append(f"attention={self.attention!r} is not one of {ATTENTION}")
        if self.attention_block is not None and (not isinstance(self.attention_block, int) or self.attention_block < 8
                                                 or self.attention_block % 8):
            problems.append(f"attention_block={self.attention_block!r} must be a multiple of 8 (or null)")
        if self.attention_backward_block is not None and (
                not isinstance(self.attention_backward_block, int) or self.attention_backward_block < 16
                or self.attention_backward_block & (self.attention_backward_block - 1)):
            problems.append(f"attention_backward_block={self.attention_backward_block!r} must be a power of two >= 16 "
                            "(or null)")
        if not isinstance(self.scan_layers, bool):
            problems.append(f"scan_layers={self.scan_layers!r} must be true or false")
        if self.rope_scaling is not None:
            missing = [k for k in _ROPE_SCALING_KEYS if k not in self.rope_scaling]
            if missing:
                problems.append(f"rope_scaling lacks {missing} (expected the LLaMA-3 keys {_ROPE_SCALING_KEYS})")
        if problems:
            raise ConfigError("invalid LlamaConfig: " + "; ".join(problems))

    def __hash__(self) -> int:  # nnx keeps the config in the (hashed) graph definition
        return hash(json.dumps({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare},
                               sort_keys=True))

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every id that ends a turn: `eos_id` first."""
        return (self.eos_id, *self.extra_eos_ids)

    def replace(self, **changes: Any) -> LlamaConfig:
        """A copy with some fields changed (e.g. `preset("tiny").replace(dtype="float32")`)."""
        return dataclasses.replace(self, **changes)

    # ---- Hugging Face transformers LlamaConfig mapping -------------------------------------------

    def to_hf_dict(self) -> dict[str, Any]:
        """A transformers `LlamaConfig` dict (config.json), readable by transformers 4.x and 5.x."""
        rope_scaling = None
        if self.rope_scaling is not None:
            rope_scaling = {"rope_type": "llama3", **{k: self.rope_scaling[k] for k in _ROPE_SCALING_KEYS}}
        return {
            **self.extra,
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_embeddings,
            "attention_bias": False,
            "mlp_bias": False,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_id,
            "eos_token_id": list(self.eos_ids) if self.extra_eos_ids else self.eos_id,
            "pad_token_id": self.pad_id,
            "torch_dtype": self.dtype,
        }

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], **overrides: Any) -> LlamaConfig:
        """Build from a transformers LlamaConfig dict (old `rope_scaling` or new `rope_parameters` form)."""
        if hf.get("hidden_act", "silu") != "silu" or hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ConfigError("only LLaMA configs with silu activation and no biases are supported")
        rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise ConfigError(f"unsupported rope type {rope_type!r}: only default and llama3 are implemented")
        rope_theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0))
        rope_scaling = {k: rope[k] for k in _ROPE_SCALING_KEYS} if rope_type == "llama3" else None
        eos = hf.get("eos_token_id", 2)
        eos = list(eos) if isinstance(eos, list) and eos else [eos]
        num_heads = hf["num_attention_heads"]
        mapped = {
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters",
            "max_position_embeddings", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id",
            "initializer_range", "hidden_act", "attention_bias", "mlp_bias", "architectures", "model_type",
        }
        kwargs = dict(
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=hf.get("head_dim") or hf["hidden_size"] // num_heads,
            rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            max_position_embeddings=hf.get("max_position_embeddings", 2048),
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            bos_id=hf.get("bos_token_id", 1),
            eos_id=eos[0],
            extra_eos_ids=tuple(eos[1:]),
            pad_id=hf.get("pad_token_id"),
            initializer_range=hf.get("initializer_range", 0.02),
            extra={k: v for k, v in hf.items() if k not in mapped and not k.startswith("_")},
        )
        kwargs.update(overrides)
        return cls(**kwargs)


def param_count(config: LlamaConfig) -> int:
    """Number of parameters of the model `config` describes (tied embeddings counted once)."""
    e, m, d = config.hidden_size, config.intermediate_size, config.head_dim
    attention = e * d * (2 * config.num_heads + 2 * config.num_kv_heads)  # q, o + k, v
    mlp = 3 * e * m
    layer = attention + mlp + 2 * e  # + two RMSNorm scales
    embeddings = config.vocab_size * e * (1 if config.tie_embeddings else 2)
    return config.num_layers * layer + embeddings + e  # + final norm


_LLAMA3_ROPE_SCALING = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def _llama1(hidden: int, inter: int, layers: int, heads: int) -> dict[str, Any]:
    return dict(hidden_size=hidden, intermediate_size=inter, num_layers=layers, num_heads=heads,
                num_kv_heads=heads, rms_norm_eps=1e-6, max_position_embeddings=2048)


def _llama2(hidden: int, inter: int, layers: int, heads: int, kv_heads: int) -> dict[str, Any]:
    return dict(hidden_size=hidden, intermediate_size=inter, num_layers=layers, num_heads=heads,
                num_kv_heads=kv_heads, rms_norm_eps=1e-5, max_position_embeddings=4096)


_LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                  num_kv_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0, max_position_embeddings=8192,
                  bos_id=128000, eos_id=128001)

PRESETS: dict[str, dict[str, Any]] = {
    "llama1-7b": _llama1(4096, 11008, 32, 32),
    "llama1-13b": _llama1(5120, 13824, 40, 40),
    "llama1-33b": _llama1(6656, 17920, 60, 52),
    "llama1-65b": _llama1(8192, 22016, 80, 64),
    "llama2-7b": _llama2(4096, 11008, 32, 32, 32),
    "llama2-13b": _llama2(5120, 13824, 40, 40, 40),
    "llama2-70b": _llama2(8192, 28672, 80, 64, 8),
    "llama3-8b": _LLAMA3_8B,
    "llama3.1-8b": {**_LLAMA3_8B, "rope_scaling": _LLAMA3_ROPE_SCALING, "max_position_embeddings": 131072},
    "mistral-7b": dict(hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                       rms_norm_eps=1e-5, max_position_embeddings=32768),
    # Test and smoke sizes (LLaMA vocabulary so the shipped SentencePiece tokenizer fits).
    "tiny": dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                 max_position_embeddings=512),
    "tiny-mha": dict(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=4,
                     max_position_embeddings=512),
    "small-100m": dict(hidden_size=768, intermediate_size=2048, num_layers=8, num_heads=12, num_kv_heads=4,
                       max_position_embeddings=2048),
}


def preset(name: str, **overrides: Any) -> LlamaConfig:
    """The named preset (see `PRESETS`), with optional field overrides (checked as a config's `model:`)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return LlamaConfig(**{**PRESETS[name], **checked_overrides(overrides)})  # head_dim follows the overrides


def with_overrides(config: LlamaConfig, overrides: dict[str, Any]) -> LlamaConfig:
    """`config` (e.g. a checkpoint's) with a run config's `model:` keys applied (see `checked_overrides`)."""
    return config.replace(**checked_overrides(overrides))


def checked_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """A run config's `model:` keys, each checked against LlamaConfig's fields and types: an unknown key or a
    wrong type is one ConfigError line naming `model.<key>` (before anything is built or compiled)."""
    import typing

    from instructjax.core.config import check_value, unknown_key
    from instructjax.core.errors import ConfigError

    hints = typing.get_type_hints(LlamaConfig)
    names = {f.name for f in dataclasses.fields(LlamaConfig)}
    checked, problems = {}, []  # every problem in one line, not one per run
    for key, value in overrides.items():
        try:
            if key not in names:
                raise unknown_key(f"model.{key}", names | {"preset", "init_from"})
            checked[key] = check_value(value, hints[key], f"model.{key}")
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError("; ".join(problems))
    return checked
