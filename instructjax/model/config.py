"""Decoder configuration: one dataclass whose switches describe every family, the families as a table of
those switches, and the parameter count (the named presets: `model.presets`).

The families differ only by these switches (`FAMILIES`: each family's record in `model.families`, which holds them
beside its Hugging Face config.json mapping and its tensor names):

| switch               | values                                                                            |
|----------------------|-----------------------------------------------------------------------------------|
| `norm`               | `rms` (LLaMA), `rms_plus_one` (Gemma: x * (1 + w)), `layer` (LayerNorm with bias)   |
| `activation`         | `silu`, `gelu_tanh`, `gelu` (exact), `relu`; `gated_mlp`: down(act(gate x) * up x)  |
| `residual`           | `sequential`, or `parallel` (GPT-NeoX: x + attn(norm1 x) + mlp(norm2 x))            |
| `sandwich_norms`     | Gemma-2/3: a norm on the attention's and the MLP's outputs too                    |
| `qk_norm`            | Qwen3, Gemma-3: a norm over each head of q and k, before RoPE                      |
| `qkv_bias`, `o_bias`, `mlp_bias` | biases of the projections (Qwen2: q/k/v; OPT, GPT-NeoX: all)         |
| `positions`          | `rope`, or `learned` (OPT, its table shifted by `position_offset`)                 |
| `rotary_dims`        | None: RoPE over the whole head; else its first dims (GPT-NeoX: a quarter)         |
| `rope_scaling`       | None, or {`rope_type`: `llama3` / `longrope` (Phi-3) / `linear`, ...}              |
| `local_rope_theta`   | the sliding layers' own RoPE base (Gemma-3)                                       |
| `embed_scale`        | Gemma: embeddings times sqrt(hidden_size)                                         |
| `query_scale`        | the attention scores' scale (None: head_dim ** -0.5; Gemma: query_pre_attn_scalar ** -0.5) |
| `attention_softcap`, `final_softcap` | cap * tanh(x / cap) on attention scores / output logits (Gemma-2) |
| `sliding_window`, `layer_types` | a window of keys (query i sees keys i - window < j <= i), on the layers whose type is `sliding` (None: every layer when a window is set) |
| `tie_embeddings`     | the output projection is the embedding table                                      |
| `qk_norm_whole`      | OLMoE: the q/k norm spans all heads at once (one scale over heads * head_dim)      |
| `num_experts`, `experts_per_token` | a mixture of experts (model/moe.py): each token's MLP is the weighted sum of its top-k experts' (0: dense) |
| `expert_size`        | each expert's MLP width (None: `intermediate_size`; Qwen3-MoE: `moe_intermediate_size`) |
| `router_norm_topk`   | the top-k weights renormalised to sum to one (Mixtral; Qwen3-MoE, OLMoE: `norm_topk_prob`) |
| `dense_layers`, `sparse_step` | Qwen3-MoE: the layers that keep a dense MLP (`mlp_only_layers`), and a sparse layer every `sparse_step` (`decoder_sparse_step`) |
| `router_aux_loss`, `router_z_loss` | the load-balancing loss's and the router z-loss's coefficients (MoE only; None: the family's) |
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any

from instructjax.core.coerce import check_value, unknown_key
from instructjax.core.errors import ConfigError
from instructjax.model.families import RECORDS

REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable", "save_attention",
                  "minimal_with_context")  # see instructjax.model.layers.remat_policy
ATTENTION = ("auto", "xla", "blockwise", "splash", "pallas_gpu", "cudnn")  # see instructjax.model.attention
CONTEXT_STRATEGIES = ("all_gather", "ring", "ulysses")  # attention over rows split by `context`: model/context.py
CONTEXT_REORDERS = ("striped", "dual_chunk_swap", "none")  # how a row is dealt out over `context` first
NORMS = ("rms", "rms_plus_one", "layer")
ACTIVATIONS = ("silu", "gelu_tanh", "gelu", "relu")
LAYER_TYPES = ("full", "sliding")
ROPE_TYPES = {  # rope_scaling["rope_type"] -> the keys it needs
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "longrope": ("short_factor", "long_factor", "original_max_position_embeddings"),
    "linear": ("factor",),
}

# Field metadata of the DecoderConfig fields that say how the model runs, not what it computes: a run's training
# does not depend on them (a resume may change them; `runs_only_keys`), and no HF config.json holds them.
RUNS_ONLY = {"runs_only": True}

# The families: the switches each sets (everything else is LLaMA's default), from each family's record
# (model/families/<family>.py: its switches, config.json keys and tensor names side by side). Sizes, windows,
# soft-caps, RoPE bases and scalings come from a model's own config or a preset below.
FAMILIES: dict[str, dict[str, Any]] = {name: record.switches for name, record in RECORDS.items()}


@dataclass(frozen=True)
class DecoderConfig:
    """Shape, family switches (see the module doc) and numerics of a decoder.

    `dtype` is the compute dtype (activations, matmul inputs); `param_dtype` the stored (master) dtype.
    `remat` names the per-layer rematerialisation policy.

    How the model runs, not what it computes (none of it reaches an HF config.json): `attention` picks
    the attention implementation (`auto`: splash on TPU, Pallas GPU flash attention on GPU, blockwise
    on CPU), `attention_block` its tile size (None: the implementation's default),
    `attention_backward_block` the backward pass's tiles where the kernel has its own (pallas_gpu), and
    `scan_layers` runs the decoder layers as one `scan` over stacked parameters (compile time independent
    of depth) instead of a Python loop over per-layer parameters; with a `context` mesh axis, `context_strategy`
    says how attention meets the other devices' keys and `context_reorder` how rows are dealt out over the axis
    (model/context.py).
    """

    family: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int | None = None  # None: hidden_size // num_heads
    # family switches
    norm: str = "rms"
    norm_eps: float = 1e-6
    activation: str = "silu"
    gated_mlp: bool = True
    residual: str = "sequential"
    sandwich_norms: bool = False
    qk_norm: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    positions: str = "rope"
    position_offset: int = 0
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    rotary_dims: int | None = None  # None: head_dim
    local_rope_theta: float | None = None
    embed_scale: bool = False
    query_scale: float | None = None
    attention_softcap: float | None = None
    final_softcap: float | None = None
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None
    tie_embeddings: bool = False
    qk_norm_whole: bool = False
    # a mixture of experts (model/moe.py; 0 experts: every MLP dense)
    num_experts: int = 0
    experts_per_token: int = 0
    expert_size: int | None = None  # None: intermediate_size
    router_norm_topk: bool = False
    dense_layers: tuple[int, ...] = ()
    sparse_step: int = 1
    router_aux_loss: float | None = None  # None: the family's coefficient (MoE), none at all (dense)
    router_z_loss: float | None = None
    max_position_embeddings: int = 2048
    # numerics and how it runs
    dtype: str = "bfloat16"
    param_dtype: str = "float32"
    remat: str = field(default="none", metadata=RUNS_ONLY)
    attention: str = field(default="auto", metadata=RUNS_ONLY)
    attention_block: int | None = field(default=None, metadata=RUNS_ONLY)
    attention_backward_block: int | None = field(default=None, metadata=RUNS_ONLY)
    scan_layers: bool = field(default=True, metadata=RUNS_ONLY)
    context_strategy: str = field(default="all_gather", metadata=RUNS_ONLY)
    context_reorder: str = field(default="striped", metadata=RUNS_ONLY)
    bos_id: int | None = 1
    eos_id: int = 2
    extra_eos_ids: tuple[int, ...] = ()  # further end-of-turn ids (an HF `eos_token_id` list after its first)
    pad_id: int | None = None
    initializer_range: float = 0.02
    lora: dict[str, Any] | None = None  # model.lora: {rank, alpha, dropout, targets} (model/lora.py)
    quantize_base: str = "none"  # QLoRA: the frozen base's projections stored as nf4 or int8 (model/quantize.py)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # unmapped HF keys, kept for export

    def __post_init__(self):
        object.__setattr__(self, "extra_eos_ids", tuple(self.extra_eos_ids))  # a list after a JSON round trip
        if self.layer_types is not None:
            object.__setattr__(self, "layer_types", tuple(self.layer_types))
        object.__setattr__(self, "dense_layers", tuple(self.dense_layers))
        if self.num_experts:  # the family's published coefficients where the config states none
            for name in ("router_aux_loss", "router_z_loss"):
                if getattr(self, name) is None:
                    record = RECORDS.get(self.family)
                    published = record.router_aux_loss if record and name == "router_aux_loss" else 0.0
                    object.__setattr__(self, name, float(published))
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        problems = self._problems()
        if problems:
            raise ConfigError("invalid model config: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        problems = []
        choices = {"family": FAMILIES, "norm": NORMS, "activation": ACTIVATIONS, "residual": ("sequential", "parallel"),
                   "positions": ("rope", "learned"), "remat": REMAT_POLICIES, "attention": ATTENTION,
                   "context_strategy": CONTEXT_STRATEGIES, "context_reorder": CONTEXT_REORDERS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                problems.append(f"{name}={getattr(self, name)!r} is not one of {tuple(allowed)}")
        if self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.positions == "rope" and self.rotary_size % 2:
            problems.append(f"the rotary dims ({self.rotary_size}) must be even for RoPE")
        if self.rotary_dims is not None and not 0 < self.rotary_dims <= self.head_dim:
            problems.append(f"rotary_dims={self.rotary_dims} must lie in 1..head_dim={self.head_dim}")
        for name in ("attention_block", "sliding_window"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                problems.append(f"{name}={value!r} must be a positive integer (or null)")
        if self.attention_block is not None and self.attention_block % 8:
            problems.append(f"attention_block={self.attention_block!r} must be a multiple of 8 (or null)")
        backward = self.attention_backward_block
        if backward is not None and (not isinstance(backward, int) or backward < 16 or backward & (backward - 1)):
            problems.append(f"attention_backward_block={backward!r} must be a power of two >= 16 (or null)")
        if not isinstance(self.scan_layers, bool):
            problems.append(f"scan_layers={self.scan_layers!r} must be true or false")
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_layers or set(self.layer_types) - set(LAYER_TYPES):
                problems.append(f"layer_types must list {self.num_layers} of {LAYER_TYPES}, got {self.layer_types}")
            elif "sliding" in self.layer_types and self.sliding_window is None:
                problems.append("layer_types has sliding layers but sliding_window is not set")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type")
            if kind not in ROPE_TYPES:
                problems.append(f"rope_scaling.rope_type={kind!r} is not one of {tuple(ROPE_TYPES)}")
            else:
                missing = [k for k in ROPE_TYPES[kind] if k not in self.rope_scaling]
                if missing:
                    problems.append(f"rope_scaling ({kind}) lacks {missing}")
        for name in ("attention_softcap", "final_softcap", "query_scale"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                problems.append(f"{name}={value!r} must be positive (or null)")
        problems += self._expert_problems()
        from instructjax.model.adapter_settings import lora_problems, quantize_problems

        return problems + lora_problems(self) + quantize_problems(self)

    def _expert_problems(self) -> list[str]:
        if not self.num_experts:
            stated = [n for n in ("router_aux_loss", "router_z_loss") if getattr(self, n) is not None]
            return [f"model.{n} is for a mixture of experts; the {self.family} model has none" for n in stated]
        problems = []
        if not 0 < self.experts_per_token <= self.num_experts:
            problems.append(f"experts_per_token={self.experts_per_token} must lie in 1..num_experts={self.num_experts}")
        if not isinstance(self.sparse_step, int) or self.sparse_step < 1:
            problems.append(f"sparse_step={self.sparse_step!r} must be a positive integer")
        for name in ("router_aux_loss", "router_z_loss"):
            if not getattr(self, name) >= 0:
                problems.append(f"model.{name}={getattr(self, name)!r} must be a number >= 0")
        if self.scan_layers and len({self.sparse_layer(i) for i in range(self.num_layers)}) > 1:
            problems.append("scan_layers needs every layer alike, but dense_layers / sparse_step mix dense and sparse "
                            "MLPs: set model.scan_layers: false")
        return problems

    def sparse_layer(self, index: int) -> bool:
        """Whether layer `index`'s MLP is a mixture of experts (Qwen3-MoE's `mlp_only_layers` and
        `decoder_sparse_step` as its HF code reads them)."""
        return bool(self.num_experts) and index not in self.dense_layers and (index + 1) % self.sparse_step == 0

    @property
    def sparse_layers(self) -> tuple[int, ...]:
        """The layers whose MLP is a mixture of experts."""
        return tuple(i for i in range(self.num_layers) if self.sparse_layer(i))

    @property
    def expert_width(self) -> int:
        """Each expert's MLP width."""
        return self.expert_size or self.intermediate_size

    def __hash__(self) -> int:  # nnx keeps the config in the (hashed) graph definition
        return hash(json.dumps({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.compare},
                               sort_keys=True))

    @property
    def eos_ids(self) -> tuple[int, ...]:
        """Every id that ends a turn: `eos_id` first."""
        return (self.eos_id, *self.extra_eos_ids)

    @property
    def rotary_size(self) -> int:
        """How many dims of each head RoPE rotates."""
        return self.rotary_dims or self.head_dim

    @property
    def kinds(self) -> tuple[str, ...]:
        """Each layer's attention: `full` or `sliding` (a window of `sliding_window` keys)."""
        if self.sliding_window is None:
            return ("full",) * self.num_layers
        return self.layer_types or ("sliding",) * self.num_layers

    def replace(self, **changes: Any) -> DecoderConfig:
        """A copy with some fields changed (e.g. `preset("tiny").replace(dtype="float32")`)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DecoderConfig:
        """A config saved as a plain dict (`dataclasses.asdict`), including those saved before the family
        switches existed (LLaMA's `rms_norm_eps`)."""
        values = dict(values)
        if "rms_norm_eps" in values:
            values["norm_eps"] = values.pop("rms_norm_eps")
        return cls(**values)


def param_count(config: DecoderConfig) -> int:
    """Number of parameters of the model `config` describes (tied embeddings counted once; a LoRA's adapters
    included)."""
    from instructjax.model.lora import adapter_params

    e, m, d, h, k = config.hidden_size, config.intermediate_size, config.head_dim, config.num_heads, config.num_kv_heads
    norm = 2 * e if config.norm == "layer" else e
    attention = e * d * (2 * h + 2 * k)  # q, o + k, v
    attention += (h + 2 * k) * d * config.qkv_bias + e * config.o_bias + 2 * d * config.qk_norm
    mlp = (3 if config.gated_mlp else 2) * e * m + config.mlp_bias * ((2 if config.gated_mlp else 1) * m + e)
    attention += (h + k) * d * config.qk_norm_whole - 2 * d * config.qk_norm_whole  # OLMoE: one scale over all heads
    layer = attention + mlp + (4 if config.sandwich_norms else 2) * norm
    sparse = len(config.sparse_layers) * (e * config.num_experts * (1 + 3 * config.expert_width) - mlp)  # router, experts
    embeddings = config.vocab_size * e * (1 if config.tie_embeddings else 2)
    positions = (config.max_position_embeddings + config.position_offset) * e if config.positions == "learned" else 0
    return config.num_layers * layer + sparse + embeddings + positions + norm + adapter_params(config)  # + final norm


def with_overrides(config: DecoderConfig, overrides: dict[str, Any]) -> DecoderConfig:
    """`config` (e.g. a checkpoint's) with a run config's `model:` keys applied (see `checked_overrides`)."""
    return config.replace(**checked_overrides(overrides))


def checked_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """A run config's `model:` keys, each checked against DecoderConfig's fields and types: an unknown key or a
    wrong type is one ConfigError line naming `model.<key>` (before anything is built or compiled)."""
    hints = typing.get_type_hints(DecoderConfig)
    names = {f.name for f in dataclasses.fields(DecoderConfig)}
    checked, problems = {}, []  # every problem in one line, not one per run
    for key, value in overrides.items():
        try:
            if key == "double_quant":  # QLoRA's double quantization: refused in one line (model/quantize.py)
                from instructjax.model.adapter_settings import double_quant_problem

                if problem := double_quant_problem(value):
                    raise ConfigError(problem)
                continue
            if key not in names:
                raise unknown_key(f"model.{key}", names | {"preset", "init_from"})
            checked[key] = check_value(value, hints[key], f"model.{key}")
        except ConfigError as e:
            problems.append(str(e))
    if problems:
        raise ConfigError("; ".join(problems))
    return checked


def runs_only_keys() -> tuple[str, ...]:
    """The run config keys (`model.overrides.X`) of the DecoderConfig fields marked RUNS_ONLY: what a run's
    training does not depend on among the model's (core.run_identity's `not_training`)."""
    return tuple(f"model.overrides.{f.name}" for f in dataclasses.fields(DecoderConfig) if f.metadata.get("runs_only"))


def __getattr__(name: str):
    if name in ("preset", "PRESETS"):  # their home until the presets had a module of their own
        raise ImportError(f"instructjax.model.config.{name} moved: import it from instructjax.model.presets")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
