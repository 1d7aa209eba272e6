"""LoRA (`model.lora: {rank, alpha, dropout, targets}`): low-rank adapters on the family's linear modules, as PEFT's
`LoraConfig` defines them: y = x W + (dropout(x) A B) * alpha / rank, A [in, rank] kaiming-uniform(a=sqrt(5)) like
PEFT's `lora_A`, B [rank, out] zeros, so a fresh adapter leaves the model's output exactly as it was.

The adapter method, in one module: which modules it adapts (`spec`), its weights (`adapters`: `lora_a`, `lora_b`,
each an `nnx.LoRAParam`, their own Variable type, as flax's and qwix's adapters are), and its branch (`branch_input`,
`branch`), which model/layers.py's `Dense` adds to its projection where it holds adapters. What trains is that type:
model/partition.py splits a model's parameters by it (the adapters where there are any, else every parameter), once,
for the step, the optimizer, the checkpoint and the memory estimate. The adapters keep their on-disk names
(`.../q_proj/lora_a`), so checkpoints of every version read alike. Not through qwix: qwix 0.1.8's
`apply_lora_to_model` on our nnx `Decoder` creates no adapters in the loop layout (it intercepts `dot_general`
/ `einsum` under an eval trace whose RNG count nnx refuses to mutate: TraceContextError) and fails inside
`nnx.scan` over the stacked layers (IndexError), and its adapters are named by intercepted op rather than by
HF module and carry none of our logical axis names; PEFT's per-module lora_A / lora_B map one to one onto ours.

`targets` are the family's Hugging Face module names (its record's `lora_modules`, model/families/), a mixture of
experts' fused expert parameters (its record's `lora_parameters`, PEFT's `target_parameters`:
`mlp.experts.gate_up_proj`, `mlp.experts.down_proj`) or `all-linear`: every projection of a layer, never the
output head nor a router; on a mixture of experts the attention and the experts (PEFT's own `all-linear` takes
`nn.Linear` modules alone: the export lists the experts in `target_parameters`), not Qwen3-MoE's dense MLPs, which
PEFT cannot target there (model/families/moe.py). An expert parameter has an A [experts, in, rank] and a B
[experts, rank, out]: expert j's weight is W_j + A_j B_j * alpha / rank, as PEFT's `ParamWrapper` computes it (a
fused `gate_up_proj`'s gate and up share each expert's A); PEFT refuses a dropout there, and so does the check. A fused HF module (Phi-3's `qkv_proj`,
`gate_up_proj`, GPT-NeoX's `query_key_value`) is a group of our modules sharing one A, as PEFT's single lora_A: the
group's first module (q_proj, gate_proj) holds `lora_a`, each module its own part of PEFT's lora_B as `lora_b`, and
the attention / MLP computes dropout(x) A once for the group. `dropout` (PEFT's `lora_dropout`) drops the LoRA
branch's input in the train step alone, its masks from the step's key (train/step.py) and each token's row and
place in it (`token_keys`: the same whatever the layout), not torch's: PEFT's exact masks cannot be reproduced.
`merged` folds the adapters into the kernels (the export without `--adapter`).
`trainable` / `frozen` / `combine` select the adapters of a params tree read from disk by their names (a tree
without its model at hand); a run's own trees go through its `Partition`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from instructjax.core.sharding import with_logical_constraint
from instructjax.model.adapter_settings import (  # noqa: F401 (module_names: re-exported, quantize.py uses it)
    LORA_KEYS,
    family_modules,
    family_parameters,
    lora_problems,
    module_names,
)
from instructjax.model.families import RECORDS
from instructjax.model.families.record import LLAMA_LORA

ADAPTERS = ("lora_a", "lora_b")  # the adapters' names in a Dense (and on disk)
EXPERT_SUFFIX = "_lora"  # a stacked expert parameter `gate_proj`'s adapters are its sibling `gate_proj_lora`
TRAINS = nnx.LoRAParam  # the adapters' Variable type: what trains where a model has any (model/partition.py)
LLAMA_MODULES = LLAMA_LORA  # its old home
# family -> {HF module name: our modules it is}: each family record's `lora_modules` (its old home)
MODULES: dict[str, dict[str, tuple[str, ...]]] = {name: record.lora_modules for name, record in RECORDS.items()}
KEYS = LORA_KEYS
problems = lora_problems  # the checks of `model.lora`, without JAX: model/adapter_settings.py


class LoraSpec(NamedTuple):
    """A checked `model.lora`: `targets` in our module names, `hf_targets` in the family's, `groups` our modules
    of each HF target (a fused module's share its first one's A)."""

    rank: int
    alpha: float
    dropout: float
    targets: tuple[str, ...]
    hf_targets: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...] = ()
    # a mixture of experts' targeted expert parameters: HF's (PEFT's target_parameters) and ours, grouped likewise
    hf_parameters: tuple[str, ...] = ()
    expert_groups: tuple[tuple[str, ...], ...] = ()

    @property
    def scale(self) -> float:
        """PEFT's default scaling, alpha / rank."""
        return self.alpha / self.rank

    @property
    def experts(self) -> tuple[str, ...]:
        """Our targeted expert parameters (model/moe.py's `gate_proj`, `up_proj`, `down_proj`)."""
        return tuple(name for group in self.expert_groups for name in group)

    def holds_a(self, name: str, experts: bool = False) -> bool:
        """Whether our module `name` (an expert parameter where `experts`) has its own `lora_a` (a target, first of
        its group)."""
        return any(group[0] == name for group in (self.expert_groups if experts else self.groups))

    def leaders(self, experts: bool = False) -> dict[str, str]:
        """Our targeted module (expert parameter where `experts`) -> the one whose A it uses (itself unless fused)."""
        return {name: group[0] for group in (self.expert_groups if experts else self.groups) for name in group}


def unadapted(config: Any) -> str | None:
    """One line naming the linear layers an `all-linear` LoRA on `config` leaves without adapters although they
    train in a full fine-tune: a mixture of experts' dense MLP layers (Qwen3-MoE's `mlp_only_layers`), which the
    family's modules do not list (PEFT cannot target them there); None where there are none, or no `all-linear`."""
    targets = (config.lora or {}).get("targets", "all-linear")
    if config.lora is None or not config.num_experts or "all-linear" not in ([targets] if isinstance(targets, str)
                                                                                else targets):
        return None
    dense = [i for i in range(config.num_layers) if i not in config.sparse_layers]
    if not dense or "gate_proj" in family_modules(config):
        return None
    return (f"model.lora: the dense MLPs of layer(s) {', '.join(map(str, dense))} of this {config.family} model get no "
            "adapters (PEFT cannot target them beside the experts: model/families/moe.py); their weights stay frozen")


def spec(config: Any) -> LoraSpec | None:
    """`config.lora` checked (DecoderConfig's own check ran first) and resolved, or None without LoRA."""
    lora = config.lora
    if lora is None:
        return None
    modules, parameters = family_modules(config), family_parameters(config)
    targets = lora.get("targets", "all-linear")
    targets = [targets] if isinstance(targets, str) else list(targets)
    every = "all-linear" in targets
    hf = tuple(t for t in modules if every or t in targets)
    hf_parameters = tuple(t for t in parameters if every or t in targets)
    groups = tuple(modules[t] for t in hf)
    return LoraSpec(lora["rank"], float(lora.get("alpha", lora["rank"])), float(lora.get("dropout", 0.0)),
                    tuple(name for group in groups for name in group), hf, groups, hf_parameters,
                    tuple(parameters[t] for t in hf_parameters))


def adapter_dtype(config: Any) -> jnp.dtype:
    """The adapters' stored dtype: float32 over a 16-bit base (`model.param_dtype: bfloat16`, the frozen base in
    bfloat16), as PEFT's `autocast_adapter_dtype` keeps them; else the base's."""
    dtype = jnp.dtype(config.param_dtype)
    return jnp.dtype(jnp.float32) if dtype.itemsize < 4 else dtype


def adapters(config: Any, name: str, in_shape: tuple[int, ...], out_shape: tuple[int, ...], axes: tuple[str, ...],
             rngs: nnx.Rngs) -> tuple[nnx.LoRAParam | None, nnx.LoRAParam | None]:
    """(lora_a, lora_b) of our module `name` [*in_shape -> *out_shape] with logical `axes`: PEFT's A
    kaiming-uniform(a=sqrt(5)) = U(+-1/sqrt(in)) from `rngs`, B zeros; lora_a None for the later modules of a fused
    group (they use its first one's A), both None where `config.lora` does not target it."""
    lora = spec(config)
    if lora is None or name not in lora.targets:
        return None, None
    dtype, n_in = adapter_dtype(config), len(in_shape)
    lora_a = None
    if lora.holds_a(name):
        bound = 1.0 / math.sqrt(math.prod(in_shape))
        a = jax.random.uniform(rngs.params(), (*in_shape, lora.rank), dtype, -bound, bound)
        lora_a = TRAINS(a, out_sharding=(*axes[:n_in], "lora_rank"), eager_sharding=False)
    lora_b = TRAINS(jnp.zeros((lora.rank, *out_shape), dtype), out_sharding=("lora_rank", *axes[n_in:]),
                    eager_sharding=False)
    return lora_a, lora_b


class ExpertAdapters(nnx.Module):
    """The adapters of one stacked expert parameter (model/moe.py's `{name}_lora`): `lora_a` [experts, in, rank]
    (None for a fused group's later parameter: it uses its first one's), `lora_b` [experts, rank, out]."""

    def __init__(self, lora_a: nnx.LoRAParam | None, lora_b: nnx.LoRAParam):
        self.lora_a, self.lora_b = nnx.data(lora_a), lora_b


def expert_adapters(config: Any, name: str, in_size: int, out_size: int, axes: tuple[str, str, str],
                    rngs: nnx.Rngs) -> ExpertAdapters | None:
    """The adapters of our expert parameter `name` [experts, in, out] (logical `axes`), or None where `config.lora`
    does not target it: each expert's A drawn as PEFT's `ParamWrapper` draws its lora_A (kaiming-uniform(a=sqrt(5))
    over `in`: U(+-1/sqrt(in))), B zeros."""
    lora = spec(config)
    if lora is None or name not in lora.experts:
        return None
    dtype, experts = adapter_dtype(config), config.num_experts
    lora_a = None
    if lora.holds_a(name, experts=True):
        bound = 1.0 / math.sqrt(in_size)
        a = jax.random.uniform(rngs.params(), (experts, in_size, lora.rank), dtype, -bound, bound)
        lora_a = TRAINS(a, out_sharding=(axes[0], axes[1], "lora_rank"), eager_sharding=False)
    lora_b = TRAINS(jnp.zeros((experts, lora.rank, out_size), dtype), out_sharding=(axes[0], "lora_rank", axes[2]),
                    eager_sharding=False)
    return ExpertAdapters(lora_a, lora_b)


def token_keys(key: jax.Array, rows: int, length: int, order: jax.Array | None = None) -> jax.Array:
    """A layer's LoRA dropout keys, one for each token of `rows` rows of `length` [rows, length]: `key` folded with
    the row and then the token's place in it (`order`: the places of rows split over a context axis,
    model/context.py), so a token draws the same mask whatever the layout."""
    places = jnp.arange(length, dtype=jnp.int32) if order is None else order
    row = lambda r: jax.vmap(lambda p: jax.random.fold_in(jax.random.fold_in(key, r), p))(places)  # noqa: E731
    return with_logical_constraint(jax.vmap(row)(jnp.arange(rows, dtype=jnp.int32)), ("batch", "length"))


def branch_input(x: jax.Array, lora_a: jax.Array, axes: tuple[str, ...], n_in: int, dtype: Any, dropout: float,
                 keys: jax.Array | None = None) -> jax.Array:
    """The branch's dropout(x) A [tokens, rank] for x [..., *in]. With `keys` (a key a token, `token_keys`: the
    train step's alone) and `dropout` p > 0, each token's x keeps the elements where jax.random.bernoulli(its key,
    1 - p, [in]) is true, divided by 1 - p (PEFT's nn.Dropout, but not torch's masks)."""
    in_size = math.prod(lora_a.shape[:n_in])
    flat = x.astype(dtype).reshape(-1, in_size)
    if keys is not None and dropout > 0:
        if keys.size != flat.shape[0]:
            raise ValueError(f"LoRA dropout takes a key a token (lora.token_keys): {keys.shape} keys for "
                             f"{flat.shape[0]} tokens")
        keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - dropout, (in_size,)))(keys.reshape(-1))
        flat = jnp.where(keep, flat / (1.0 - dropout), jnp.zeros((), flat.dtype))
    # stored split over fsdp by its rank where its input axis is not (core.sharding), used whole over the rank
    # like a base kernel: gathered, not a matmul split over the rank
    a = with_logical_constraint(lora_a, (*axes[:n_in], None))
    return flat @ a.astype(dtype).reshape(in_size, -1)


def branch(xa: jax.Array, lora_b: jax.Array, axes: tuple[str, ...], n_in: int, scale: float,
           dtype: Any) -> jax.Array:
    """(dropout(x) A) B * alpha / rank [tokens, out] from the branch's input `xa` [tokens, rank]."""
    b = with_logical_constraint(lora_b, (None, *axes[n_in:])).astype(dtype)
    return xa @ b.reshape(b.shape[0], -1) * jnp.asarray(scale, dtype)


def adapter_params(config: Any) -> int:
    """Elements of the adapters `config.lora` adds (PEFT's "trainable params"): rank x (in + the outs of its
    modules) for each targeted HF module of each layer that has it (one A for a fused module; a mixture of experts'
    MLP modules in its dense layers alone), and each expert's for a targeted expert parameter of each sparse
    layer; 0 without LoRA."""
    lora = spec(config)
    if lora is None:
        return 0
    e, m, d, w = config.hidden_size, config.intermediate_size, config.head_dim, config.expert_width
    q, kv = config.num_heads * d, config.num_kv_heads * d
    sizes = {"q_proj": (e, q), "k_proj": (e, kv), "v_proj": (e, kv), "o_proj": (q, e), "gate_proj": (e, m),
             "up_proj": (e, m), "down_proj": (m, e)}
    experts = {"gate_proj": (e, w), "up_proj": (e, w), "down_proj": (w, e)}
    sparse = len(config.sparse_layers)

    def size(groups, sizes) -> int:
        return sum(lora.rank * (sizes[g[0]][0] + sum(sizes[t][1] for t in g)) for g in groups)

    mlp = [g for g in lora.groups if set(g) & {"gate_proj", "up_proj", "down_proj"}]
    attention = [g for g in lora.groups if g not in mlp]
    return (config.num_layers * size(attention, sizes) + (config.num_layers - sparse) * size(mlp, sizes)
            + sparse * config.num_experts * size(lora.expert_groups, experts))


# ---- params trees (pure dicts) -----------------------------------------------------------------------------


def _select(tree: Any, keep_adapters: bool) -> Any:
    if not isinstance(tree, Mapping):
        return tree  # a leaf, or optax's placeholder (tree_map_params)
    out = {}
    for key, value in tree.items():
        if key in ADAPTERS:
            if keep_adapters:
                out[key] = value
        elif isinstance(value, Mapping):
            sub = _select(value, keep_adapters)
            if sub:
                out[key] = sub
        elif not keep_adapters:
            out[key] = value
    return out


def trainable(tree: Any) -> Any:
    """The adapters of a params-shaped tree (nested dicts), in its nesting; idempotent."""
    return _select(tree, True)


def frozen(tree: Any) -> Any:
    """Everything but the adapters."""
    return _select(tree, False)


def combine(a: Any, b: Any) -> Any:
    """Two disjoint nested dicts as one (`combine(trainable(t), frozen(t))` is `t`)."""
    if not isinstance(a, Mapping):
        return a
    out = dict(b)
    for key, value in a.items():
        out[key] = combine(value, b[key]) if key in b and isinstance(value, Mapping) else value
    return out


def reference(params: Any) -> Any:
    """`params` with every adapter zeroed: the frozen base's model exactly (a zero B adds nothing): fresh adapters'
    starting values, the reference of a DPO run that trains them."""
    return combine(jax.tree.map(jnp.zeros_like, trainable(params)), frozen(params))


def delta(lora_a: np.ndarray, lora_b: np.ndarray, scale: float, stacked: bool) -> np.ndarray:
    """The kernel's change (A B) * scale in the kernel's shape [(layers,) *in, *out]."""
    lead = 1 if stacked else 0
    rank = lora_a.shape[-1]
    a = lora_a.reshape(*lora_a.shape[:lead], -1, rank)
    b = lora_b.reshape(*lora_b.shape[:lead], rank, -1)
    return (np.matmul(a, b) * scale).reshape(*lora_a.shape[:-1], *lora_b.shape[lead + 1:])


def merged(params: Mapping, config: Any) -> dict:
    """`params` (host arrays) with every adapter folded into its kernel and removed (PEFT's merge_and_unload); a
    module holding `lora_b` alone uses its fused group's A (a sibling's `lora_a`)."""
    lora = spec(config)
    scale, leaders = (lora.scale, lora.leaders()) if lora else (1.0, {})
    expert_leaders = lora.leaders(experts=True) if lora else {}

    def walk(node: Mapping, stacked: bool) -> dict:
        out = {k: walk(v, stacked or (node is params and config.scan_layers and k == "layers"))
               if isinstance(v, Mapping) else v for k, v in node.items()
               if k not in ADAPTERS and not str(k).endswith(EXPERT_SUFFIX)}
        for key, value in node.items():
            if str(key).endswith(EXPERT_SUFFIX) and isinstance(value, Mapping):  # a stacked expert parameter's
                name = key[: -len(EXPERT_SUFFIX)]
                a = value["lora_a"] if "lora_a" in value else node[expert_leaders[name] + EXPERT_SUFFIX]["lora_a"]
                weight = np.asarray(node[name])  # [(layers,) experts, in, out]: A_j B_j per expert
                change = np.matmul(np.asarray(a, np.float32), np.asarray(value["lora_b"], np.float32)) * scale
                out[name] = (weight + change).astype(weight.dtype)
            elif isinstance(value, Mapping) and "lora_b" in value:
                a = value["lora_a"] if "lora_a" in value else node[leaders[key]]["lora_a"]
                kernel = np.asarray(value["kernel"])
                out[key]["kernel"] = (kernel + delta(np.asarray(a, np.float32), np.asarray(value["lora_b"], np.float32),
                                                     scale, stacked)).astype(kernel.dtype)
        return out

    return walk(params, False)


def adapter_count(tree: Any) -> int:
    """Elements of the adapters in a params-shaped tree."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainable(tree)))
