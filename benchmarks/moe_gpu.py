"""A small mixture of experts' training step on a GPU beside a dense model of equal active parameters (issue 67 item 6).

OLMoE-1B-7B's shape (2048 wide, 16 heads, vocab 50304; 64 experts of width 1024, top 8) cut to `--layers` layers,
against the same model with a dense MLP of top-k x the experts' width (8 x 1024 = 8192) in every layer: the same
matmul parameters a token. Both run the trainer's step (bf16 compute over fp32 master weights, AdamW + clip), each in
its own process (JAX preallocates GPU memory): median step time, tokens/s, and MFU = (6 x the matmul parameters a
token uses + 12 L T H D) x tokens / step time / peak (989 TFLOP/s: H100/H200 SXM dense bf16; `--peak-tflops`
otherwise). The mixture's own cost is the gap: the router, the sort of the token copies and the grouped matmuls.
Without a GPU it prints that it was skipped and exits 0 (`--allow-cpu` runs it anyway, at whatever size you give).

    python benchmarks/moe_gpu.py [--layers 4] [--batch 4 --seq 2048] [--remat full] [--peak-tflops 989]
    python benchmarks/moe_gpu.py --allow-cpu --layers 2 --hidden 128 --experts 8 --top 2 --width 64 --vocab 512 \
        --batch 2 --seq 128 --steps 2 --no-append
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402
from gpu_mfu import child_environment, gpu_available  # noqa: E402


def configs(args) -> dict:
    """The mixture of experts and its dense twin (a dense MLP of top-k x the experts' width), as DecoderConfigs."""
    from instructjax.model.presets import preset

    moe = preset("olmoe-1b-7b", num_layers=args.layers, hidden_size=args.hidden, num_heads=args.heads,
                 num_kv_heads=args.heads, vocab_size=args.vocab, num_experts=args.experts,
                 experts_per_token=args.top, intermediate_size=args.width, max_position_embeddings=max(4096, args.seq),
                 dtype="bfloat16", param_dtype="float32", remat=args.remat, attention=args.attention)
    dense = dataclasses.replace(moe, num_experts=0, intermediate_size=args.top * args.width, router_aux_loss=None,
                                router_z_loss=None)
    return {"moe": moe, "dense": dense}


def active_matmul_params(config) -> int:
    """The matmul parameters one token uses: all of a dense model's (`common.matmul_params`); a mixture of experts'
    less the experts its router did not choose in each sparse layer."""
    unchosen = config.num_experts - config.experts_per_token if config.num_experts else 0
    return common.matmul_params(config) - len(config.sparse_layers) * unchosen * 3 * config.hidden_size * \
        config.expert_width


def child(args) -> dict:
    """Median step seconds of the trainer's step for `args.child`'s model."""
    import jax

    from instructjax.core import sharding

    config = configs(args)[args.child]
    step, params, opt_state, mesh, _ = common.train_step(config)
    with jax.set_mesh(mesh):
        batch = jax.device_put(common.synthetic_batch(args.batch, args.seq, config.vocab_size),
                               sharding.batch_sharding(mesh))
        times, _, _ = common.timed_steps(step, params, opt_state, batch, args.steps)
    return {"step_s": statistics.median(times), "device": jax.devices()[0].device_kind}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = common.parser(__doc__)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--width", type=int, default=1024, help="each expert's MLP width")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--remat", default="full")
    p.add_argument("--attention", default="auto")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    p.add_argument("--xla-flags", choices=("gpu", "none"), default="gpu")
    p.add_argument("--allow-cpu", action="store_true", help="run without a GPU (to check the script)")
    p.add_argument("--child", choices=("moe", "dense"), default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        common.child_result(child(args))
        return {}
    if not args.allow_cpu and not gpu_available():
        print("moe_gpu: skipped (no GPU visible to JAX)")
        common.write_summary(args.json, {"skipped": "no GPU"})
        return {"skipped": "no GPU"}
    from instructjax.model.config import param_count

    load_before = common.load_average()
    models, tokens = configs(args), args.batch * args.seq
    passed = list(argv if argv is not None else sys.argv[1:])
    rows, summary = [], {"load_before": load_before, "peak_tflops": args.peak_tflops}
    for name, config in models.items():
        result = common.run_child([__file__, *passed, "--child", name], env=child_environment(args))
        if result is None:
            raise SystemExit(f"moe_gpu: the {name} run failed")
        flops = (6.0 * active_matmul_params(config) + common.attention_flops_per_token(config, args.seq)) * tokens
        mfu = flops / result["step_s"] / (args.peak_tflops * 1e12)
        words = (f"{config.num_experts} experts of {config.expert_width}, top {config.experts_per_token}"
                 if config.num_experts else f"dense MLP {config.intermediate_size}")
        rows.append([f"{name}: {words}", f"{param_count(config) / 1e9:.2f}B / {active_matmul_params(config) / 1e9:.2f}B",
                     f"{result['step_s']:.3f}", f"{tokens / result['step_s']:,.0f}", f"**{mfu:.1%}**"])
        summary[name] = {"step_s": result["step_s"], "tokens_per_s": tokens / result["step_s"], "mfu": mfu,
                         "device": result["device"]}
    ratio = summary["moe"]["tokens_per_s"] / summary["dense"]["tokens_per_s"]
    summary["moe_over_dense"] = ratio
    body = (f"{summary['moe']['device']}; {args.layers} layers x {args.hidden}, {args.heads} heads, vocab {args.vocab}, "
            f"batch {args.batch} x seq {args.seq}, bf16 compute / fp32 params, remat {args.remat}, attention "
            f"{args.attention}, XLA flags {args.xla_flags}; median of {args.steps} steps each, peak "
            f"{args.peak_tflops:g} TFLOP/s.\n\n"
            + common.table(["model", "params / matmul params a token", "s/step", "tokens/s", "MFU"], rows)
            + f"\n\nmixture of experts / dense at equal active parameters: **{ratio:.2f}x** tokens/s.\n")
    print(body)
    common.finish(args, f"GPU step: a mixture of experts beside a dense model of equal active parameters "
                        f"({args.layers} layers, seq {args.seq})", body, summary, load_before=load_before)
    return summary


if __name__ == "__main__":
    main()
