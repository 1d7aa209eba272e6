"""Rows split over a `context` axis on this CPU (issue 82 items 3 and 8): the load balance of each reorder, and a
train step's time with `context` 4 against `context` 1 at the same row length.

Balance: packed rows of `--length` tokens (documents of lognormal lengths, mean about 600 tokens, packed first-fit
as the pipeline packs them, seed 0), each row dealt out over 4 devices by `model.context_reorder`; a device's
causal attention work is the (query, key) pairs it meets that attend (same document, key at or before the query),
counted by brute force. Printed: the busiest device's work over the mean, per reorder (1.00 is perfect balance).

Speed: the forward and backward pass of the train step (train/step.py `forward`, the loss's gradient) on 8 rows
of `--length` packed tokens, a `--hidden`-wide LLaMA of `--layers` layers in float32, on 8 host devices: mesh
data 8 (each device a whole row, context 1) against data 2 x context 4 for each strategy (the default reorder). The
median of `--steps` timed steps after a compile. On a CPU the devices share the cores, so the ratio says what the
split costs in collectives and reordering, not what an accelerator gains (a row too long for one chip).

    python benchmarks/context_cpu.py [--length 1024 --hidden 128 --layers 2 --steps 3] [--no-append]

(about 2.5 minutes on a 2-core CPU; at 2048 x 256 it does not finish in 15.)
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")  # before JAX: 8 host devices
sys.path.insert(0, str(Path(__file__).parent))

import numpy as np  # noqa: E402
from common import finish, parser  # noqa: E402

PARTS = 4


def packed_rows(length: int, rows: int, seed: int = 0) -> np.ndarray:
    """Segment ids [rows, length] of documents of lognormal lengths packed first-fit (0: padding)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((rows, length), np.int32)
    for r in range(rows):
        used, segment = 0, 0
        while used < length:
            n = int(min(max(rng.lognormal(6.2, 0.7), 16), length))
            if used + n > length:
                break
            segment += 1
            out[r, used: used + n] = segment
            used += n
    return out


def balance(segments: np.ndarray, reorder: str) -> float:
    """The busiest device's attending (query, key) pairs over the devices' mean, for rows dealt out by `reorder`."""
    from instructjax.model.context import order_of

    length = segments.shape[1]
    order = order_of(length, PARTS, reorder)
    work = np.zeros(PARTS)
    for row in segments:
        for device, queries in enumerate(np.split(order, PARTS)):
            seg_q = row[queries]
            same = (seg_q[:, None] == row[None, :]) & (np.arange(length)[None, :] <= queries[:, None])
            work[device] += np.sum(same & (seg_q[:, None] > 0))
    return float(work.max() / work.mean())


def step_time(shape: dict[str, int], strategy: str, args) -> float:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from instructjax.core import sharding
    from instructjax.model.decoder import Decoder
    from instructjax.model.presets import preset
    from instructjax.train.step import forward

    config = preset("tiny", dtype="float32", hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                    num_layers=args.layers, num_heads=8, num_kv_heads=4, max_position_embeddings=args.length,
                    context_strategy=strategy)
    graphdef, params = nnx.split(Decoder(config, rngs=nnx.Rngs(0)), nnx.Param)
    segments = packed_rows(args.length, 8)
    tokens = np.random.default_rng(1).integers(3, config.vocab_size, segments.shape) * (segments > 0)
    positions = np.stack([np.concatenate([np.arange(np.sum(r == s)) for s in np.unique(r)]) for r in segments])
    batch = {"tokens": tokens, "positions": positions, "segment_ids": segments, "targets": np.roll(tokens, -1, 1)}
    batch = {k: jnp.asarray(v, jnp.int32) for k, v in batch.items()}

    def loss(p, b):
        nll, _ = forward(graphdef, p, b, 0)
        return jnp.sum(nll * (b["segment_ids"] > 0)) / jnp.sum(b["segment_ids"] > 0)

    mesh = sharding.make_mesh(shape)
    step = jax.jit(jax.value_and_grad(loss))
    with jax.set_mesh(mesh):
        placed = jax.device_put(params, sharding.state_shardings(params, mesh))
        rows = sharding.shard_batch(batch, mesh)
        jax.block_until_ready(step(placed, rows))
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            jax.block_until_ready(step(placed, rows))
            times.append(time.perf_counter() - start)
    print(f"{shape} {strategy}: {statistics.median(times):.3f} s a step", file=sys.stderr, flush=True)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    p = parser(__doc__)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args(argv)
    segments = packed_rows(args.length, 64)
    balances = {r: balance(segments, r) for r in ("none", "dual_chunk_swap", "striped")}
    print(f"balance {balances}", file=sys.stderr, flush=True)
    whole = step_time({"data": 8}, "all_gather", args)
    split = {s: step_time({"data": 2, "context": PARTS}, s, args) for s in ("all_gather", "ring", "ulysses")}
    lines = [f"Balance over {PARTS} devices, 64 packed rows of {args.length} (busiest device's causal pairs / mean): "
             + ", ".join(f"{r} {b:.3f}" for r, b in balances.items()) + ".", "",
             f"Step (forward + backward), 8 packed rows of {args.length}, LLaMA {args.layers} x {args.hidden}, "
             "float32, 8 host devices:", "", "| mesh | strategy | median step (s) | / context 1 |", "|---|---|---|---|",
             f"| data 8 (context 1) | - | {whole:.3f} | 1.00 |"]
    lines += [f"| data 2 x context {PARTS} | {s} | {t:.3f} | {t / whole:.2f} |" for s, t in split.items()]
    body = "\n".join(lines)
    print(body)
    summary = {"balance": balances, "context1_s": whole, **{f"context{PARTS}_{s}_s": t for s, t in split.items()}}
    finish(args, "Rows split over a context axis (CPU)", body, summary)
    return summary


if __name__ == "__main__":
    main()
