"""Training step on CPU, side by side: instructjax (JAX) against transformers' PyTorch LlamaForCausalLM.

Same LLaMA configuration (built from one DecoderConfig, `convert.hf_config.to_hf` for transformers), same weights,
batch and sequence length, fp32; one step = forward + backward + global-norm clipping + AdamW update.
instructjax runs the trainer's own jitted step (params and optimizer state donated); PyTorch runs
`model(input_ids, labels=...)`, `loss.backward()`, `clip_grad_norm_`, `AdamW.step()` with the default
(SDPA) attention. Each framework lives in its own worker process (so neither's thread pools or allocator
state touch the other's) and the parent alternates them, a few steps at a time, so both see the same
machine load. On a small VM the first step after a switch can be slower (page faults of the step's
temporary buffers cost more right after the other process freed its memory): the median over all steps
is the headline, the first steps' median is shown beside it.

    python benchmarks/train_step_cpu.py [--layers 8 --hidden 512 --seq 512 --batch 4 --rounds 5 --steps-per-turn 3]

Prints and appends tokens/s of each, their ratio (goal: instructjax >= 1.2x) and the load average.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402


def clm_batch(args, vocab: int) -> dict:
    """Plain causal-LM rows (one segment per row, every next token trained), as HF computes its loss."""
    import numpy as np

    batch = common.synthetic_batch(args.batch, args.seq, vocab)
    batch["segment_ids"] = np.ones_like(batch["segment_ids"])
    batch["positions"] = np.arange(args.seq, dtype=np.int32)[None].repeat(args.batch, 0)
    batch["loss_weights"] = np.ones_like(batch["loss_weights"])
    batch["loss_weights"][:, -1] = 0.0
    return batch


def jax_worker(conn, args, weights_path: str) -> None:
    """Builds the trainer's step, writes its initial weights (HF names) for the torch worker, then steps on demand."""
    import jax
    import numpy as np

    from instructjax.convert.hf import hf_state
    from instructjax.core import sharding

    config = common.model_config(args)
    step, params, opt_state, mesh, which = common.train_step(config)
    np.savez(weights_path, **hf_state(params, config))
    with jax.set_mesh(mesh):
        batch = jax.device_put(clm_batch(args, config.vocab_size), sharding.batch_sharding(mesh))
        t0 = time.perf_counter()
        params, opt_state, metrics = step(params, opt_state, batch)
        first_loss = float(metrics["loss"])
        compile_s = time.perf_counter() - t0
        params, opt_state, metrics = step(params, opt_state, batch)  # warm-up
        jax.block_until_ready(metrics["loss"])
        conn.send({"first_loss": first_loss, "compile_s": compile_s, "which": which})
        while conn.recv() == "step":
            t0 = time.perf_counter()
            params, opt_state, metrics = step(params, opt_state, batch)
            jax.block_until_ready(metrics["loss"])
            conn.send(time.perf_counter() - t0)


def torch_worker(conn, args, weights_path: str) -> None:
    """transformers' LlamaForCausalLM with the JAX worker's weights; steps on demand."""
    import numpy as np
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    config = common.model_config(args)
    with np.load(weights_path) as f:
        weights = {k: f[k] for k in f.files}
    step = torch_step_fn(config, weights, args)
    del weights
    first_loss = step()
    step()  # warm-up
    conn.send({"first_loss": first_loss, "version": torch.__version__})
    while conn.recv() == "step":
        t0 = time.perf_counter()
        step()
        conn.send(time.perf_counter() - t0)


def start_worker(ctx, target, args, weights_path: str):
    """(process, connection, ready message) of a worker started with `spawn` (a fresh interpreter)."""
    parent, child = ctx.Pipe()
    process = ctx.Process(target=target, args=(child, args, weights_path), daemon=True)
    process.start()
    return process, parent, parent.recv()


def torch_step_fn(config, weights, args):
    """step() -> loss: one training step of transformers' LlamaForCausalLM with our weights (None: its own
    random init), AdamW, clip 1.0."""
    import torch
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    from instructjax.convert import hf_config as hf_json

    hf_config = HFConfig(**hf_json.to_hf(config))
    model = LlamaForCausalLM._from_config(hf_config, attn_implementation=args.torch_attention, dtype=torch.float32)
    if weights is not None:
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()}, strict=True)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    batch = common.synthetic_batch(args.batch, args.seq, config.vocab_size)
    ids = torch.from_numpy(batch["tokens"]).long()

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return float(loss.detach())

    return step


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__)
    common.add_model_args(parser)
    parser.add_argument("--torch-attention", default="sdpa", help="transformers attn_implementation")
    parser.add_argument("--steps-per-turn", type=int, default=3, help="steps of one framework before switching")
    args = parser.parse_args(argv)

    load_before = common.load_average()
    from instructjax.model.config import param_count

    config = common.model_config(args)
    tokens_per_step = args.batch * args.seq
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as tmp:
        weights_path = str(Path(tmp) / "weights.npz")
        jax_proc, jax_conn, jax_ready = start_worker(ctx, jax_worker, args, weights_path)
        torch_proc, torch_conn, torch_ready = start_worker(ctx, torch_worker, args, weights_path)
    which, jax_first, torch_first = jax_ready["which"], jax_ready["first_loss"], torch_ready["first_loss"]
    print(f"{which}; compile + first step {jax_ready['compile_s']:.1f}s; "
          f"first-step loss jax {jax_first:.5f} torch {torch_first:.5f}")  # fmt: skip
    jax_times, torch_times = [], []  # per round, the times of its `steps_per_turn` steps
    for r in range(args.rounds):
        for conn, times in ((jax_conn, jax_times), (torch_conn, torch_times)):
            turn = []
            for _ in range(args.steps_per_turn):
                conn.send("step")
                turn.append(conn.recv())
            times.append(turn)
        print(f"round {r}: instructjax {' '.join(f'{t:.3f}' for t in jax_times[-1])}s  "
              f"torch {' '.join(f'{t:.3f}' for t in torch_times[-1])}s  load {common.load_average()}")  # fmt: skip
    for conn, proc in ((jax_conn, jax_proc), (torch_conn, torch_proc)):
        conn.send("stop")
        proc.join(timeout=60)
    jax_s, torch_s = (statistics.median(t for turn in times for t in turn) for times in (jax_times, torch_times))
    jax_first_s, torch_first_s = (statistics.median(turn[0] for turn in times) for times in (jax_times, torch_times))
    jax_tps, torch_tps = tokens_per_step / jax_s, tokens_per_step / torch_s
    ratio = jax_tps / torch_tps
    shape = (f"{args.layers} layers x {args.hidden} wide (mlp {config.intermediate_size}, {args.heads} heads, "
             f"{config.num_kv_heads} kv heads), vocab {args.vocab}, {param_count(config) / 1e6:.1f}M params; "
             f"batch {args.batch} x seq {args.seq} = {tokens_per_step} tokens/step; fp32; remat {args.remat}")  # fmt: skip
    rows = [
        ["instructjax (JAX, trainer step)", f"{jax_s:.3f}", f"{min(map(min, jax_times)):.3f}", f"{jax_first_s:.3f}",
         f"{jax_tps:,.0f}"],
        [f"transformers LlamaForCausalLM (torch {torch_ready['version']}, {args.torch_attention})", f"{torch_s:.3f}",
         f"{min(map(min, torch_times)):.3f}", f"{torch_first_s:.3f}", f"{torch_tps:,.0f}"],
    ]  # fmt: skip
    body = (
        f"{shape}. {args.rounds} rounds; in each, {args.steps_per_turn} steps of one framework, then of the other "
        f"(one worker process each, one warm-up step each first); first-step loss {jax_first:.4f} (JAX) vs "
        f"{torch_first:.4f} (torch), same weights. The first step of a turn runs just after the other framework's "
        f"steps; its median is shown apart.\n\n"
        + common.table(["implementation", "median s/step", "best s/step", "first step of a turn (median)",
                        "tokens/s (median)"], rows)
        + f"\n\n**instructjax / transformers = {ratio:.2f}x** (goal >= 1.2x: {'met' if ratio >= 1.2 else 'missed'}).\n"
    )
    print(body)
    summary = {"jax_tokens_per_s": jax_tps, "torch_tokens_per_s": torch_tps, "ratio": ratio,
               "load_before": load_before, "load_after": common.load_average()}  # fmt: skip
    common.finish(args, "Training step, CPU: instructjax vs transformers", body, summary,
                  load_before=load_before)
    return summary


if __name__ == "__main__":
    main()
