"""Memory (and optionally time) of the loss's value-and-grad: full logits vs `chunked_token_nll` (CPU).

A Gemma-2-2B-like output head (E=2304, V=256000; float32 parameters, bfloat16 compute, hidden states in
bfloat16), for a few token counts B*T. "full" is the trainer's path today: logits [B, T, V] in bfloat16,
then `token_nll` in float32; "chunk N" is `chunked_token_nll(..., chunk=N)`. Memory is XLA's own buffer
assignment of the compiled value-and-grad (w.r.t. hidden and head), `memory_analysis()`: temp (what the
computation allocates) + arguments + outputs = the peak it needs; compiling needs no memory for the
arrays, so the large shapes cost only compile time. With `--time-steps N` the smallest token count also runs
one warm-up and N timed steps of each variant (slow on a small CPU: ~7 TFLOP per full step at 2048 tokens).

    python benchmarks/loss_memory.py [--tokens 2048,4096,8192] [--chunks 512,1024,2048] [--time-steps 0]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

MIB = 1024 * 1024


def variants(chunks: list[int], dtype, softcap: float | None):
    """(name, chunk or None, loss(hidden, head, targets) -> scalar) for full logits and each chunk size."""
    import jax.numpy as jnp

    from instructjax.train.loss import chunked_token_nll, token_nll

    def full(hidden, head, targets):
        logits = hidden.astype(dtype) @ head.astype(dtype)  # [B, T, V] in dtype, as the model makes them
        if softcap:
            logits = softcap * jnp.tanh(logits.astype(jnp.float32) / softcap)
        return jnp.sum(token_nll(logits, targets))

    def chunked(chunk):
        return lambda hidden, head, targets: jnp.sum(
            chunked_token_nll(hidden, head, targets, chunk=chunk, softcap=softcap, dtype=dtype))

    return [("full logits", None, full)] + [(f"chunked {c}", c, chunked(c)) for c in chunks]


def measure(loss, shapes, arrays=None, steps: int = 0) -> dict:
    """Compile value-and-grad of `loss` for `shapes`: XLA's byte counts and compile seconds; with `arrays`
    and `steps`, also one warm-up call and the median seconds of `steps` timed calls."""
    import jax

    fn = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
    start = time.perf_counter()
    compiled = fn.lower(*shapes).compile()
    result = {"compile_s": time.perf_counter() - start}
    m = compiled.memory_analysis()
    result.update(temp=m.temp_size_in_bytes, arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes,
                  alias=m.alias_size_in_bytes)  # fmt: skip
    result["peak"] = result["temp"] + result["arguments"] + result["outputs"] - result["alias"]
    if arrays is not None and steps:
        jax.block_until_ready(compiled(*arrays))
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*arrays))
            times.append(time.perf_counter() - start)
        result["step_s"] = statistics.median(times)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__)
    parser.add_argument("--tokens", default="2048,4096,8192", help="B*T token counts, comma-separated")
    parser.add_argument("--batch", type=int, default=2, help="B (each token count is B x T)")
    parser.add_argument("--embed", type=int, default=2304)
    parser.add_argument("--vocab", type=int, default=256000)
    parser.add_argument("--chunks", default="512,1024,2048")
    parser.add_argument("--dtype", default="bfloat16", help="compute dtype of the logits' matmul")
    parser.add_argument("--softcap", type=float, default=None, help="final logit softcap (Gemma 2: 30)")
    parser.add_argument("--time-steps", type=int, default=0,
                        help="time this many value-and-grad steps (after a warm-up) at the smallest token count")
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    dtype = jnp.dtype(args.dtype)
    token_counts = sorted(int(t) for t in args.tokens.split(","))
    chunks = [int(c) for c in args.chunks.split(",")]
    load_before = common.load_average()
    rows, summary = [], {"load_before": load_before, "shapes": {}}
    for tokens in token_counts:
        if tokens % args.batch:
            raise SystemExit(f"--tokens {tokens} is not a multiple of --batch {args.batch}")
        b, t = args.batch, tokens // args.batch
        shapes = (jax.ShapeDtypeStruct((b, t, args.embed), dtype),
                  jax.ShapeDtypeStruct((args.embed, args.vocab), jnp.float32),
                  jax.ShapeDtypeStruct((b, t), jnp.int32))  # fmt: skip
        timed = args.time_steps > 0 and tokens == token_counts[0]
        arrays = None
        if timed:
            rng = np.random.default_rng(0)
            arrays = (jnp.asarray(rng.normal(size=(b, t, args.embed)), dtype),
                      jnp.asarray(rng.normal(size=(args.embed, args.vocab)) * args.embed ** -0.5, jnp.float32),
                      jnp.asarray(rng.integers(0, args.vocab, (b, t)), jnp.int32))  # fmt: skip
        full_peak = None
        for name, chunk, loss in variants(chunks, dtype, args.softcap):
            r = measure(loss, shapes, arrays, args.time_steps if timed else 0)
            full_peak = r["peak"] if chunk is None else full_peak
            row = [f"{b} x {t} = {tokens}", name, f"{r['temp'] / MIB:,.0f}", f"{r['arguments'] / MIB:,.0f}",
                   f"{r['outputs'] / MIB:,.0f}", f"{r['peak'] / MIB:,.0f}", f"{r['peak'] / full_peak:.2f}",
                   f"{r['compile_s']:.1f}", f"{r['step_s']:.2f}" if "step_s" in r else "-"]  # fmt: skip
            print(" | ".join(row), f"(load {common.load_average()})", flush=True)
            rows.append(row)
            summary["shapes"][f"{tokens}/{name}"] = r
        arrays = None
    logits_note = ", ".join(f"{t} tokens: {t * args.vocab * 4 / MIB:,.0f} MiB" for t in token_counts)
    body = (
        f"CPU, value-and-grad (w.r.t. hidden and head) of the summed token cross-entropy; head E={args.embed} x "
        f"V={args.vocab} float32, hidden states {args.dtype}, logits matmul in {args.dtype}, softcap "
        f"{args.softcap}. Bytes from XLA's `memory_analysis()` of the compiled function: peak = temp + "
        f"arguments + outputs (the head's float32 gradient is an output). For scale, float32 logits are "
        f"{logits_note}. The chunked loss's temp does not grow with the tokens; on XLA:CPU about 4.4 GiB of it "
        f"are head-sized float32 buffers (the bfloat16-rounded head upcast for CPU's float32 matmul, and one "
        f"chunk's head gradient in [V, E] layout before it is added up), plus about one [chunk, V] float32 "
        f"buffer. "
        + (f"Step time: median of {args.time_steps} after a warm-up, smallest shape only."
           if args.time_steps else "Not timed (`--time-steps N` to time the smallest shape).")
        + "\n\n"
        + common.table(["B x T = tokens", "loss", "temp MiB", "arguments MiB", "outputs MiB", "peak MiB",
                        "peak / full", "compile s", "step s"], rows)  # fmt: skip
    )
    print(body)
    summary["load_after"] = common.load_average()
    common.finish(args, "Loss memory: full logits vs chunked cross-entropy", body, summary,
                  load_before=load_before)
    return summary


if __name__ == "__main__":
    main()
