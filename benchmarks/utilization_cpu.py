"""CPU utilization of the training step: achieved model FLOP/s against the matmul peak, in one run.

Model FLOPs per step = (6 x matmul parameters + 12 L T H D attention) x tokens (PaLM's accounting:
the input embedding is a lookup and is not counted, rematerialisation is not counted). Peak = the best
FLOP/s of a large square fp32 `jnp.dot` (2 n^3 FLOPs), measured between the training steps so both see
the same load. Also a timing breakdown (forward; forward + backward; the full trainer step with
clipping and AdamW) and XLA's own FLOP count of the compiled step.

    python benchmarks/utilization_cpu.py [--layers 8 --hidden 512 --seq 512 --batch 4 --rounds 5 --dot 2048]

Goal: >= 50% of the measured matmul peak.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402


def timed(fn, *args, repeats: int = 1) -> float:
    """Best wall time of `repeats` calls of fn(*args) (blocking on the result)."""
    import jax

    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__)
    common.add_model_args(parser)
    parser.add_argument("--dot", type=int, default=2048, help="size n of the n x n peak matmul")
    args = parser.parse_args(argv)

    load_before = common.load_average()
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from instructjax.core import sharding
    from instructjax.model.config import param_count
    from instructjax.train.loss import loss_sums

    config = common.model_config(args)
    tokens = args.batch * args.seq
    flops_per_step = common.model_flops_per_token(config, args.seq) * tokens
    step, params, opt_state, mesh, which = common.train_step(config)

    n = args.dot
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot_flops = 2.0 * n**3
    torch_mm = _torch_matmul(n)  # the reference's GEMM on the same matrices' size, for comparison

    graphdef = nnx.split(_model(config))[0]  # outside the mesh context: no logical-axis resolution
    with jax.set_mesh(mesh):
        batch = jax.device_put(common.synthetic_batch(args.batch, args.seq, config.vocab_size),
                               sharding.batch_sharding(mesh))  # fmt: skip
        compiled = step.lower(params, opt_state, batch).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

        def fwd_loss(p, bt):
            logits = nnx.merge(graphdef, p)(bt["tokens"], bt["positions"], bt["segment_ids"])
            return loss_sums(logits, bt["targets"], bt["loss_weights"])[0]

        fwd = jax.jit(fwd_loss)
        fwd_bwd = jax.jit(jax.value_and_grad(fwd_loss))
        step = compiled  # the executable just compiled (lower().compile() does not fill jit's cache)
        params, opt_state, m = step(params, opt_state, batch)  # warm-up
        jax.block_until_ready(m)
        timed(dot, a, b)
        timed(fwd, params, batch)
        timed(fwd_bwd, params, batch)
        step_times, fwd_times, fwd_bwd_times, peaks, torch_peaks = [], [], [], [], []
        for r in range(args.rounds):
            peaks.append(dot_flops / timed(dot, a, b, repeats=3))
            if torch_mm:
                torch_peaks.append(dot_flops / torch_mm())
            t0 = time.perf_counter()
            params, opt_state, m = step(params, opt_state, batch)
            jax.block_until_ready(m)
            step_times.append(time.perf_counter() - t0)
            fwd_times.append(timed(fwd, params, batch))
            fwd_bwd_times.append(timed(fwd_bwd, params, batch))
            print(f"round {r}: step {step_times[-1]:.3f}s fwd {fwd_times[-1]:.3f}s fwd+bwd {fwd_bwd_times[-1]:.3f}s "
                  f"peak {peaks[-1] / 1e9:.1f} GFLOP/s  load {common.load_average()}")  # fmt: skip

    step_s = statistics.median(step_times)
    peak = max(peaks)
    achieved = flops_per_step / step_s
    utilization = achieved / peak
    fwd_s, fwd_bwd_s = statistics.median(fwd_times), statistics.median(fwd_bwd_times)
    rows = [
        ["matmul peak (best jnp.dot)", f"{n}x{n} fp32", "", f"{peak / 1e9:.1f}", "100%"],
        *([["torch.mm, same size (for comparison)", f"{n}x{n} fp32", "", f"{max(torch_peaks) / 1e9:.1f}",
            f"{max(torch_peaks) / peak:.0%}"]] if torch_peaks else []),
        ["forward + loss", f"{fwd_s:.3f}", f"{fwd_s / step_s:.0%}", f"{flops_per_step / 3 / fwd_s / 1e9:.1f}",
         f"{flops_per_step / 3 / fwd_s / peak:.0%}"],
        ["forward + backward", f"{fwd_bwd_s:.3f}", f"{fwd_bwd_s / step_s:.0%}", f"{flops_per_step / fwd_bwd_s / 1e9:.1f}",
         f"{flops_per_step / fwd_bwd_s / peak:.0%}"],
        ["full trainer step (+ clip, AdamW)", f"{step_s:.3f}", "100%", f"{achieved / 1e9:.1f}", f"**{utilization:.0%}**"],
    ]  # fmt: skip
    body = (
        f"{args.layers} layers x {args.hidden} wide, vocab {args.vocab}, {param_count(config) / 1e6:.1f}M params "
        f"({common.matmul_params(config) / 1e6:.1f}M in matmuls), batch {args.batch} x seq {args.seq}, fp32, "
        f"remat {args.remat}; step = `{which}`. Model FLOPs/step {flops_per_step / 1e9:.1f} G "
        f"(6N + attention); XLA's count of the compiled step {xla_flops / 1e9:.1f} G. Medians of {args.rounds} "
        f"rounds; peak = best of the rounds' matmuls (median {statistics.median(peaks) / 1e9:.1f} GFLOP/s).\n\n"
        + common.table(["what", "s", "share of step", "model GFLOP/s", "of peak"], rows)
        + f"\n\n**Utilization {utilization:.0%}** of the measured matmul peak "
        f"(goal >= 50%: {'met' if utilization >= 0.5 else 'missed'}).\n"
    )
    print(body)
    summary = {"utilization": utilization, "achieved_gflops": achieved / 1e9, "peak_gflops": peak / 1e9,
               "load_before": load_before, "load_after": common.load_average()}  # fmt: skip
    common.finish(args, "Utilization, CPU: model FLOP/s vs matmul peak", body, summary,
                  load_before=load_before)
    return summary


def _torch_matmul(n: int):
    """A function timing one n x n fp32 torch.mm (best of 3), or None without torch."""
    try:
        import os

        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)

    def run() -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
        return best

    return run


def _model(config):
    """An abstract model (shapes only) for its graph definition."""
    from flax import nnx

    from instructjax.model.decoder import Decoder

    return nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))


if __name__ == "__main__":
    main()
