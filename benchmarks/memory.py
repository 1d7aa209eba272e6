"""Peak host memory of a training run per parameter count (CPU, fp32).

Each size runs in its own subprocess: import, build the model and AdamW state with the trainer's step,
run `--steps` steps on a synthetic packed batch, then report its peak RSS (`ru_maxrss`) and its RSS
before the model existed (the imports). Training state alone is 16 bytes per parameter (fp32 params,
gradients, two Adam moments; params and optimizer state donated, so not doubled); the rest is
activations, XLA's buffers and the compiled program.

    python benchmarks/memory.py [--sizes 4x256,8x512,12x768,12x1024] [--seq 512 --batch 1 --steps 2]
"""

from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

MIB = 1024 * 1024


def child(layers: int, hidden: int, seq: int, batch: int, steps: int, remat: str) -> dict:
    """Run the training steps in this process; its memory figures (bytes)."""
    import jax

    import instructjax.train.trainer  # noqa: F401  (imported before the baseline)
    from instructjax.core import sharding
    from instructjax.model.config import DecoderConfig, param_count

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    config = DecoderConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=int(hidden * 8 / 3 // 32 * 32),
                         num_layers=layers, num_heads=max(1, hidden // 64), num_kv_heads=max(1, hidden // 64),
                         max_position_embeddings=max(2048, seq), dtype="float32", param_dtype="float32",
                         remat=remat)  # fmt: skip
    step, params, opt_state, mesh, _ = common.train_step(config)
    with jax.set_mesh(mesh):
        batch = jax.device_put(common.synthetic_batch(batch, seq, config.vocab_size), sharding.batch_sharding(mesh))
        for _ in range(steps):
            params, opt_state, metrics = step(params, opt_state, batch)
            jax.block_until_ready(metrics)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"params": param_count(config), "baseline": base, "peak": peak}


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__)
    parser.add_argument("--sizes", default="4x256,8x512,12x768,12x1024", help="LAYERSxHIDDEN[:remat],...")
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        size, _, remat = args.child.partition(":")
        layers, hidden = (int(x) for x in size.split("x"))
        common.child_result(child(layers, hidden, args.seq, args.batch, args.steps, remat or "none"))
        return {}

    load_before = common.load_average()
    rows, summary = [], {"load_before": load_before}
    for spec in args.sizes.split(","):
        r = common.run_child([__file__, "--child", spec, "--seq", str(args.seq), "--batch", str(args.batch),
                              "--steps", str(args.steps)])  # fmt: skip
        if r is None:
            rows.append([spec, "failed", "", "", "", ""])
            continue
        train = r["peak"] - r["baseline"]
        row = [spec, f"{r['params'] / 1e6:.1f}M", f"{r['peak'] / MIB:,.0f}", f"{r['baseline'] / MIB:,.0f}",
               f"{train / MIB:,.0f}", f"{train / r['params']:.1f}"]  # fmt: skip
        print(" | ".join(row), f"(load {common.load_average()})")
        rows.append(row)
        summary[spec] = {"params": r["params"], "peak_mib": r["peak"] / MIB, "bytes_per_param": train / r["params"]}
    body = (
        f"CPU, fp32 params and compute, AdamW; batch {args.batch} x seq {args.seq}, {args.steps} steps of the "
        f"trainer's step per size, one subprocess each; heads = hidden / 64, vocab 32000. "
        f"Training state is 16 B/param; the rest is activations and XLA buffers.\n\n"
        + common.table(["layers x hidden[:remat]", "params", "peak RSS MiB", "RSS after imports MiB",
                        "training MiB (peak - imports)", "bytes / param"], rows)  # fmt: skip
    )
    print(body)
    summary["load_after"] = common.load_average()
    common.finish(args, "Memory: peak host RSS of a training run", body, summary, load_before=load_before)
    return summary


if __name__ == "__main__":
    main()
