"""GPU model FLOPs utilization of the trainer's step: a ~1B LLaMA at seq 2048, bf16, on one GPU.

Model (TinyLlama-1.1B shape): 22 layers x 2048 wide, MLP 5632, 32 heads, 4 kv heads, vocab 32000;
bf16 compute over fp32 master weights (the papers' setting). MFU = (6 x matmul params + 12 L T H D)
x tokens / step time / peak, with the peak 989 TFLOP/s (H100 SXM dense bf16; `--peak-tflops` for other
GPUs). Without a GPU it prints that it was skipped and exits 0. `--profile DIR` writes a jax.profiler
trace of a few steps (open it in TensorBoard/Perfetto for the top costs).

    python benchmarks/gpu_mfu.py [--batch 4 --seq 2048 --remat dots_with_no_batch_dims_saveable --steps 10]

Goal: >= 45% MFU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402


def gpu_available() -> bool:
    """Whether JAX sees a GPU."""
    import jax

    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--remat", default="dots_with_no_batch_dims_saveable")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--profile", default=None, help="write a jax.profiler trace here")
    parser.add_argument("--no-append", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    if not gpu_available():
        print("gpu_mfu: skipped (no GPU visible to JAX)")
        common.write_summary(args.json, {"skipped": "no GPU"})
        return {"skipped": "no GPU"}

    import jax

    from instructjax.core import sharding
    from instructjax.model.config import LlamaConfig, param_count

    load_before = common.load_average()
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.kv_heads,
                         max_position_embeddings=max(2048, args.seq), dtype="bfloat16", param_dtype="float32",
                         remat=args.remat)  # fmt: skip
    tokens = args.batch * args.seq
    flops = common.model_flops_per_token(config, args.seq) * tokens
    step, params, opt_state, mesh, which = common.train_step(config)
    with jax.set_mesh(mesh):
        batch = jax.device_put(common.synthetic_batch(args.batch, args.seq, config.vocab_size),
                               sharding.batch_sharding(mesh))  # fmt: skip
        for _ in range(2):  # compile + warm-up
            params, opt_state, m = step(params, opt_state, batch)
        jax.block_until_ready(m)
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            params, opt_state, m = step(params, opt_state, batch)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
        if args.profile:
            with jax.profiler.trace(args.profile):
                for _ in range(3):
                    params, opt_state, m = step(params, opt_state, batch)
                jax.block_until_ready(m)
    step_s = statistics.median(times)
    mfu = flops / step_s / (args.peak_tflops * 1e12)
    device = jax.devices()[0].device_kind
    body = (
        f"{device}; {param_count(config) / 1e9:.2f}B params ({args.layers} x {args.hidden}, kv heads "
        f"{args.kv_heads}), batch {args.batch} x seq {args.seq}, bf16 compute / fp32 params, remat "
        f"{args.remat}; `{which}`; median of {args.steps} steps.\n\n"
        + common.table(["s/step", "tokens/s", "model TFLOP/s", "peak TFLOP/s", "MFU"],
                       [[f"{step_s:.3f}", f"{tokens / step_s:,.0f}", f"{flops / step_s / 1e12:.1f}",
                         f"{args.peak_tflops:g}", f"**{mfu:.1%}**"]])  # fmt: skip
        + f"\n\nGoal >= 45%: {'met' if mfu >= 0.45 else 'missed'}."
        + (f" Profile trace: `{args.profile}`." if args.profile else "")
        + "\n"
    )
    print(body)
    summary = {"mfu": mfu, "tokens_per_s": tokens / step_s, "device": device, "load_before": load_before}
    if not args.no_append:
        common.append_results("GPU MFU: ~1B LLaMA, seq 2048, bf16", body, load_before=load_before)
    common.write_summary(args.json, summary)
    return summary


if __name__ == "__main__":
    main()
