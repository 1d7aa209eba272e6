"""A mixture of experts in place of a layer's MLP (Mixtral, Qwen3-MoE, OLMoE), as their HF code defines it, and the
router's statistics the losses and metrics are made from.

The router: logits = x W [tokens, experts] in the compute dtype, softmax over every expert in float32, the top
`experts_per_token` of it, renormalised to sum to one where `router_norm_topk` (Mixtral always; Qwen3-MoE and OLMoE
by `norm_topk_prob`: Mixtral's "top-k of the logits, then softmax" is the same numbers). Dropless: every token reaches
its k experts, none is dropped for capacity. The experts run as grouped matmuls (`jax.lax.ragged_dot`; `grouped_matmul`) over the
token copies sorted by expert, never a dense all-experts product; each copy's output is weighted and the k copies of
a token summed back in its place. On a mesh each device computes its own tokens (`SparseMLP.dispatched`); with an
`expert` axis (core/sharding.py) each of its devices holds its own experts (their LoRA adapters alike) and the tokens
are dispatched to them and back.

`RouterStats`, per sparse layer, are sums over the real tokens (segment > 0) only: how many of the tokens' k choices
each expert got, the softmax mass each expert got, and the squared logsumexp of the logits (the z-loss's). Sums add
over rows, so a packed row's are its examples' own. `aux_loss` and `z_loss` turn a batch's into the losses.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec

from instructjax.core.sharding import BATCH_AXES, logical_to_spec, with_logical_constraint
from instructjax.model import lora
from instructjax.model.config import DecoderConfig
from instructjax.model.kernels.common import target_platform
from instructjax.model.layers import ACTIVATIONS, Dense, param

Array = jax.Array
EXPERT_AXIS = "expert"  # the mesh axis the experts are split over (core/sharding.py's rules: logical "expert")


class RouterStats(NamedTuple):
    """Sums over the real tokens of one sparse layer (a leading layers axis where stacked): `counts` [E] the top-k
    choices each expert got, `probs` [E] the softmax mass each got, `z` the squared logsumexp of the logits."""

    counts: Array
    probs: Array
    z: Array


def grouped_matmul(x: Array, w: Array, sizes: Array) -> Array:
    """`jax.lax.ragged_dot`: rows of x [M, in], in consecutive groups of `sizes` [E] rows (summing to at most M: the
    rows after the last group are not computed and read 0 or anything), each times its group's w [E, in, out].
    XLA:CPU lowers ragged_dot as every group's product over every row (E times the work), so on a CPU the groups run
    as blocks of rows instead (`blocked_matmul`); elsewhere ragged_dot itself."""
    return jax.lax.platform_dependent(x, w, sizes, cpu=blocked_matmul, default=jax.lax.ragged_dot)


def blocked_matmul(x: Array, w: Array, sizes: Array) -> Array:
    """`grouped_matmul` as a scan over blocks of rows: each group padded to whole blocks (fewer than a block's rows
    of padding a group), each block times its own group's matrix; the blocks after the last group's are skipped
    (the rows after the groups, an expert device's copies of other devices' experts, read 0)."""
    m, experts = x.shape[0], w.shape[0]
    block = int(min(128, max(8, 2 ** int(math.log2(max(1, m // (4 * experts)))))))
    count = -(-(m + experts * (block - 1)) // block)  # blocks enough for any sizes
    padded = -(-sizes // block) * block
    ends = jnp.cumsum(padded)
    group = jnp.repeat(jnp.arange(experts), sizes, total_repeat_length=m)  # each row's group (the last after them)
    dest = (ends - padded)[group] + jnp.arange(m) - (jnp.cumsum(sizes) - sizes)[group]  # its row among the blocks
    blocks = jnp.zeros((count * block, x.shape[1]), x.dtype).at[dest].set(x).reshape(count, block, -1)
    # each block's group: the groups ending at or before its first row (searchsorted's side="right", which jax
    # 0.10.2 cannot trace inside a shard_map: model/moe.py's `dispatched`)
    starts = jnp.arange(count) * block
    owner = jnp.minimum(jnp.sum(ends[None, :] <= starts[:, None], axis=1), experts - 1)

    def one(_, block_owner_live):
        rows, j, live = block_owner_live
        matrix = jax.lax.dynamic_index_in_dim(w, j, keepdims=False)
        # the skipped block's zeros made of its operands: they vary as theirs do inside a shard_map (cond's types)
        return None, jax.lax.cond(live, lambda: rows @ matrix, lambda: jnp.zeros_like(rows[:, :1]) * matrix[0])

    out = jax.lax.scan(one, None, (blocks, owner, starts < ends[-1]))[1].reshape(count * block, -1)[dest]
    return jnp.where((jnp.arange(m) < jnp.sum(sizes))[:, None], out, jnp.zeros((), out.dtype))


def route(logits: Array, k: int, renormalise: bool) -> tuple[Array, Array, Array]:
    """(softmax probabilities [N, E] float32, top-k weights [N, k] float32, top-k experts [N, k] int32)."""
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    weights, experts = jax.lax.top_k(probs, k)
    if renormalise:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return probs, weights, experts


class SparseMLP(nnx.Module):
    """The router (`router`: HF's `gate`) and the experts' gated MLPs, stacked: `gate_proj`, `up_proj` [E, embed,
    width], `down_proj` [E, width, embed]; where `config.lora` targets the experts, each targeted one's adapters
    beside it (`gate_proj_lora`, ...: model/lora.py's `ExpertAdapters`, one A and B an expert)."""

    def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
        e, m, n = config.hidden_size, config.expert_width, config.num_experts
        self.router = Dense(e, n, ("embed", "expert"), config, name="router", rngs=rngs)
        shapes = {"gate_proj": (e, m, ("expert", "embed", "mlp")), "up_proj": (e, m, ("expert", "embed", "mlp")),
                  "down_proj": (m, e, ("expert", "mlp", "embed"))}
        for name, (n_in, n_out, axes) in shapes.items():
            setattr(self, name, param(rngs, (n, n_in, n_out), axes, config))
        for name, (n_in, n_out, axes) in shapes.items():
            setattr(self, name + lora.EXPERT_SUFFIX,
                    nnx.data(lora.expert_adapters(config, name, n_in, n_out, axes, rngs)))
        spec = lora.spec(config)
        self.lora_scale = spec.scale if spec is not None else 0.0
        self.k, self.renormalise, self.experts = config.experts_per_token, config.router_norm_topk, n
        self.activation, self.dtype = ACTIVATIONS[config.activation], jnp.dtype(config.dtype)

    def __call__(self, x: Array, real: Array | None) -> tuple[Array, RouterStats | None]:
        """x [B, T, embed] -> (the experts' weighted sum [B, T, embed], the router's sums over the tokens where
        `real` [B, T] is true; None without `real`, as when decoding)."""
        shape = x.shape
        flat = x.reshape(-1, shape[-1]).astype(self.dtype)
        logits = self.router(flat)  # [N, E]
        probs, weights, experts = route(logits, self.k, self.renormalise)
        out = self.grouped(flat, experts, weights.astype(self.dtype))
        out = with_logical_constraint(out.reshape(shape), ("batch", "length", "embed"))
        if real is None:
            return out, None
        mask = real.reshape(-1, 1).astype(jnp.float32)
        chosen = jnp.sum(jax.nn.one_hot(experts, self.experts, dtype=jnp.float32), axis=1)  # [N, E]
        lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
        return out, RouterStats(jnp.sum(chosen * mask, 0), jnp.sum(probs * mask, 0), jnp.sum(lse * lse * mask[:, 0]))

    def choices(self, x: Array) -> Array:
        """Each token's k experts [B * T, k] for the block's input x [B, T, embed], best first."""
        return route(self.router(x.reshape(-1, x.shape[-1]).astype(self.dtype)), self.k, self.renormalise)[2]

    def grouped(self, flat: Array, experts: Array, weights: Array) -> Array:
        """Each token's k experts' outputs, weighted and summed: `dispatched` where the expert axis splits the
        experts, or where the batch axes split more token copies than the experts have rows of their matrices (a
        train step's or a fill's: gathering the experts to the tokens moves fewer bytes than gathering the tokens to
        the experts); else `local_experts` as XLA partitions it (no mesh, one device, a decode step's few tokens)."""
        params = {name: self.weights_of(name) for name in ("gate_proj", "up_proj", "down_proj")}
        mesh = jax.sharding.get_abstract_mesh()
        if not mesh.empty:
            batch = logical_to_spec(("batch",), mesh, flat.shape[:1], strict=False)[0]
            batch = (batch,) if isinstance(batch, str) else tuple(batch or ())
            width, hidden = params["gate_proj"]["w"][0].shape[2], flat.shape[1]
            many = flat.shape[0] * self.k * (hidden + width) >= self.experts * 3 * hidden * width
            if (batch and many) or dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True)).get(EXPERT_AXIS, 1) > 1:
                return self.dispatched(flat, experts, weights, params, mesh, batch)
        return self.local_experts(flat, experts, weights, {n: {k: w for k, (w, _) in p.items()}
                                                           for n, p in params.items()})

    def weights_of(self, name: str) -> dict[str, tuple[Array, tuple[str, ...]]]:
        """Parameter `name`'s stacked experts `w` [E, in, out] and, where it holds adapters, their `b` and its own
        `a` (a fused group's later parameter has none: it takes its first one's branch input); each with its
        logical axes."""
        axes = ("expert", "mlp", "embed") if name == "down_proj" else ("expert", "embed", "mlp")
        out = {"w": (getattr(self, name)[...].astype(self.dtype), axes)}
        adapters = getattr(self, name + lora.EXPERT_SUFFIX)
        if adapters is not None:
            out["b"] = (adapters.lora_b[...].astype(self.dtype), (axes[0], "lora_rank", axes[2]))
            if adapters.lora_a is not None:
                out["a"] = (adapters.lora_a[...].astype(self.dtype), (axes[0], axes[1], "lora_rank"))
        return out

    def local_experts(self, flat: Array, experts: Array, weights: Array, params: dict, first: Array | int = 0
                      ) -> Array:
        """The weighted sum over each token's choices among the experts `first` .. `first` + E_l - 1 whose weights
        `params` holds (E_l of them; all: every choice): the N * k token copies sorted by expert (those of other
        experts last), three grouped matmuls over the experts' groups (`grouped_matmul`), the copies put back in
        order. The copies of other experts come after the groups: not computed (`grouped_matmul`), they weigh 0."""
        n, k = experts.shape
        local = params["gate_proj"]["w"].shape[0]
        choices = experts.reshape(-1) - first
        mine = (choices >= 0) & (choices < local)
        choices = jnp.where(mine, choices, local)
        order = jnp.argsort(choices, stable=True)  # copy i of the sorted list is choice order[i]
        sizes = jnp.bincount(choices, length=local + 1)[:local].astype(jnp.int32)
        copies = flat[order // k]
        gate, shared = self.project(copies, params["gate_proj"], sizes)
        up, _ = self.project(copies, params["up_proj"], sizes, shared)
        hidden = self.activation(checkpoint_name(gate, "gate_proj")) * checkpoint_name(up, "up_proj")
        down = checkpoint_name(self.project(hidden, params["down_proj"], sizes)[0], "down_proj")
        unsorted = down[jnp.argsort(order)].reshape(n, k, -1)
        if not isinstance(first, int):  # an expert device's: the copies of other devices' experts read 0
            unsorted = jnp.where(mine.reshape(n, k, 1), unsorted, jnp.zeros((), unsorted.dtype))
        return jnp.sum(unsorted * weights[..., None], axis=1)

    def dispatched(self, flat: Array, experts: Array, weights: Array, params: dict, mesh, batch: tuple[str, ...]
                   ) -> Array:
        """`local_experts` in a `shard_map` over the mesh axes `batch` that split the tokens (of data, fsdp, expert)
        and the expert axis (tensor, and any other, stays automatic): each device computes its own tokens with its
        own experts' weights, gathered whole over fsdp (FSDP's gather; the gradient's transpose a reduce-scatter),
        never the tokens gathered to the weights (which XLA's automatic partitioning picks: every device then holds
        the k copies of the whole batch's tokens, 2 GiB an array for 64K tokens of width 2048).

        Where the `expert` axis splits the experts, each device of an expert group gathers the group's tokens and
        their choices (an all-gather over the axis), computes its own experts' share of every token (the others'
        choices weigh 0) and the shares are summed back onto the tokens' own devices (a reduce-scatter:
        `psum_scatter`); tokens the axis does not split (a decode step's few rows) are whole on each of its devices,
        the shares summed (`psum`). The router ran before, on each device's own tokens, so its choices and
        statistics are those of one device.

        Why not an all-to-all: XLA:CPU has no `ragged_all_to_all` (jax 0.10.2: "not supported by XLA:CPU
        ThunkEmitter"), and a dropless `all_to_all` must send each device a buffer for all k copies of every token
        (k times the all-gather's bytes). Dropless and exact: every choice is computed by its expert's device. Each
        device's grouped matmuls compute its own experts' copies alone (`grouped_matmul`: the others sorted after the
        groups), but their buffers are sized for the worst case, every gathered copy (the expert axis's size times a
        device's own)."""
        experts_split = dict(zip(mesh.axis_names, mesh.axis_sizes, strict=True)).get(EXPERT_AXIS, 1) > 1
        split = experts_split and EXPERT_AXIS in batch  # the tokens are split over the expert axis
        manual = tuple(a for a in BATCH_AXES if a in batch or (a == EXPERT_AXIS and experts_split))
        # XLA:CPU has no bfloat16 reduce-scatter: the expert axis's shares are summed in float32 there
        gathered = flat.dtype if target_platform() == "tpu" or not experts_split else jnp.float32

        def manual_spec(array, names):  # the array's layout over the manual axes (tensor's left to the compiler)
            spec = logical_to_spec(names, mesh, array.shape, strict=False)
            keep = [tuple(a for a in ((s,) if isinstance(s, str) else tuple(s or ())) if a in manual) for s in spec]
            return PartitionSpec(*(s[0] if len(s) == 1 else (s or None) for s in keep))

        arrays = {n: {key: w for key, (w, _) in p.items()} for n, p in params.items()}
        specs = {n: {key: manual_spec(w, names) for key, (w, names) in p.items()} for n, p in params.items()}
        rows = PartitionSpec(batch or None)

        def whole(w, spec):  # a weight whole but for its experts: gathered over the other manual axes that split it
            for dim, entry in enumerate(spec):
                axes = tuple(a for a in ((entry,) if isinstance(entry, str) else tuple(entry or ())) if a != EXPERT_AXIS)
                if axes:
                    w = jax.lax.all_gather(w, axes, axis=dim, tiled=True)
            return w

        def body(x, ex, wt, p):
            p = {n: {key: whole(w, specs[n][key]) for key, w in q.items()} for n, q in p.items()}
            if not experts_split:
                return self.local_experts(x.astype(flat.dtype), ex, wt, p).astype(gathered)
            local = p["gate_proj"]["w"].shape[0]
            if split:
                x, ex, wt = (jax.lax.all_gather(a, EXPERT_AXIS, axis=0, tiled=True) for a in (x, ex, wt))
            first = jax.lax.axis_index(EXPERT_AXIS) * local
            y = self.local_experts(x.astype(flat.dtype), ex, wt, p, first).astype(gathered)
            if split:
                return jax.lax.psum_scatter(y, EXPERT_AXIS, scatter_dimension=0, tiled=True)
            return jax.lax.psum(y, EXPERT_AXIS)

        out = jax.shard_map(body, mesh=mesh, axis_names=set(manual), in_specs=(rows, rows, rows, specs),
                            out_specs=rows)(flat.astype(gathered), experts, weights, arrays)
        return out.astype(flat.dtype)

    def project(self, x: Array, params: dict[str, Array], sizes: Array, shared: Array | None = None
                ) -> tuple[Array, Array | None]:
        """(x through each group's expert of one parameter's `params` (`weights_of`), plus its LoRA branch
        x A_j B_j * alpha / rank where it holds adapters; the branch's x A_j [copies, rank], which a fused group's
        later parameter takes as `shared`, or None)."""
        y = grouped_matmul(x, params["w"], sizes)
        if "b" not in params:
            return y, None
        xa = grouped_matmul(x, params["a"], sizes) if "a" in params else shared
        branch = grouped_matmul(xa, params["b"], sizes)
        return y + branch * jnp.asarray(self.lora_scale, self.dtype), xa


def stacked_stats(stats: list[RouterStats | None]) -> RouterStats | None:
    """The sparse layers' stats with a leading layers axis (None for a dense model)."""
    present = [s for s in stats if s is not None]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *present) if present else None


def aux_loss(stats: RouterStats, experts: int, tokens: Array) -> Array:
    """The load-balancing loss as transformers' `load_balancing_loss_func` computes it over every sparse layer's
    router at once: experts * sum_e (share of choices of e) * (mean probability of e), each over layers * tokens."""
    rows = stats.counts.shape[0] * jnp.maximum(tokens, 1)
    return experts * jnp.sum((jnp.sum(stats.counts, 0) / rows) * (jnp.sum(stats.probs, 0) / rows))


def z_loss(stats: RouterStats, tokens: Array) -> Array:
    """The router z-loss (ST-MoE): the mean over sparse layers and real tokens of logsumexp(logits) squared."""
    return jnp.sum(stats.z) / (stats.z.shape[0] * jnp.maximum(tokens, 1))

