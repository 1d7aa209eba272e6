"""GPU training step, side by side: instructjax against transformers' PyTorch LlamaForCausalLM, ~1B LLaMA.

Model (TinyLlama-1.1B shape): 22 layers x 2048 wide, MLP 5632, 32 heads, 4 kv heads, vocab 32000, seq 2048;
bf16 compute over fp32 master weights (the papers' setting). instructjax runs the trainer's step with the
GPU attention (`--attention`, default auto: Pallas flash attention with segment ids); transformers runs
SDPA under bf16 autocast with fused AdamW. Each framework runs in its own process, one after the other (JAX
preallocates GPU memory). MFU = (6 x matmul params + 12 L T H D) x tokens / step time / peak, with the peak
989 TFLOP/s (H100/H200 SXM dense bf16; `--peak-tflops` otherwise). Without a GPU it prints that it was skipped
and exits 0 (`--allow-cpu` runs it anyway, at whatever size you give, to check the script). `--profile DIR`
writes a jax.profiler trace of a few instructjax steps (benchmarks/profile_step.py reads the top costs).

    python benchmarks/gpu_mfu.py [--shape tinyllama|llama3.2-3b] [--batch 4 --seq 2048 --remat minimal_with_context]
                                 [--attention pallas_gpu --block 128 --backward-block 64] [--xla-flags gpu|none]

`--xla-flags gpu` (the default) gives the JAX process instructjax.core.xla_flags' GPU set, as launch/gpu.py
does for a training run; `none` leaves XLA's defaults.

Goals (issue 16): instructjax >= 45% MFU, and >= 1.3x transformers' tokens/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402


def gpu_available() -> bool:
    """Whether JAX sees a GPU, asked in a child process: this one must not hold the device (JAX takes 75%
    of its memory on first use) while the measured children run."""
    import subprocess

    code = "import jax, sys; sys.exit(0 if jax.default_backend() in ('gpu', 'cuda', 'rocm') else 1)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


# Model shapes: TinyLlama-1.1B, and LLaMA-3.2-3B (tied embeddings, vocabulary 128256).
SHAPES = {
    "tinyllama": dict(layers=22, hidden=2048, intermediate=5632, heads=32, kv_heads=4, vocab=32000, tie=False),
    "llama3.2-3b": dict(layers=28, hidden=3072, intermediate=8192, heads=24, kv_heads=8, vocab=128256, tie=True),
}


def model_config(args):
    from instructjax.model.config import DecoderConfig

    return DecoderConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
                       num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.kv_heads,
                       max_position_embeddings=max(2048, args.seq), dtype="bfloat16", param_dtype="float32",
                       remat=args.remat, attention=args.attention, attention_block=args.block,
                       attention_backward_block=args.backward_block, tie_embeddings=args.tie)  # fmt: skip


def setting_words(args) -> str:
    """The measured setting in words (shape, batch, remat, attention and its tiles, XLA flags)."""
    tiles = f", tiles {args.block or 'default'}/{args.backward_block or 'default'}" if args.attention != "xla" else ""
    return (f"{args.shape} ({args.layers} x {args.hidden}, kv heads {args.kv_heads}, vocab {args.vocab}), batch "
            f"{args.batch} x seq {args.seq}, bf16 compute / fp32 params, remat {args.remat}, attention "
            f"{args.attention}{tiles}, XLA flags {args.xla_flags}")


def child_environment(args) -> dict:
    """The environment of the measured children: the GPU XLA flags unless `--xla-flags none`."""
    from instructjax.core import xla_flags

    env = dict(os.environ)
    return xla_flags.gpu_environment(env) if args.xla_flags == "gpu" else env


def jax_child(args) -> dict:
    """Median step seconds of the trainer's step (and the device, the attention it ran)."""
    import jax

    from instructjax.core import sharding
    from instructjax.model import attention

    config = model_config(args)
    step, params, opt_state, mesh, which = common.train_step(config)
    with jax.set_mesh(mesh):
        batch = jax.device_put(common.synthetic_batch(args.batch, args.seq, config.vocab_size),
                               sharding.batch_sharding(mesh))  # fmt: skip
        times, params, opt_state = common.timed_steps(step, params, opt_state, batch, args.steps)
        if args.profile:
            with jax.profiler.trace(args.profile):
                for _ in range(3):
                    params, opt_state, m = step(params, opt_state, batch)
                jax.block_until_ready(m)
    return {"step_s": statistics.median(times), "device": jax.devices()[0].device_kind, "which": which,
            "attention": attention.implementation_for(config.attention)}


def torch_child(args) -> dict:
    """Median step seconds of transformers' LlamaForCausalLM: SDPA, bf16 autocast, fused AdamW, clip 1.0."""
    import torch
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    from instructjax.convert import hf_config

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = model_config(args)
    with torch.device(device):  # initialised on the device
        model = LlamaForCausalLM._from_config(HFConfig(**hf_config.to_hf(config)), attn_implementation="sdpa",
                                              dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=device == "cuda")
    ids = torch.from_numpy(common.synthetic_batch(args.batch, args.seq, config.vocab_size)["tokens"]).long().to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(2):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return {"step_s": statistics.median(times), "device": name, "version": torch.__version__}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.parser(__doc__)
    parser.add_argument("--shape", choices=SHAPES, default="tinyllama", help="model shape (layers, widths, vocab)")
    for flag in ("layers", "hidden", "intermediate", "heads", "kv-heads", "vocab"):
        parser.add_argument(f"--{flag}", type=int, default=None, help="override the shape's value")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--remat", default="dots_with_no_batch_dims_saveable")
    parser.add_argument("--attention", default="auto")
    parser.add_argument("--block", type=int, default=None, help="model.attention_block (default: the kernel's)")
    parser.add_argument("--backward-block", type=int, default=None, help="model.attention_backward_block")
    parser.add_argument("--xla-flags", choices=("gpu", "none"), default="gpu",
                        help="gpu: instructjax.core.xla_flags' GPU set in the JAX process (as launch/gpu.py)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--profile", default=None, help="write a jax.profiler trace here")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (to check the script)")
    parser.add_argument("--child", choices=("jax", "torch"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-torch", action="store_true", help="instructjax only (e.g. on a TPU)")
    args = parser.parse_args(argv)
    shape = SHAPES[args.shape]
    for key in ("layers", "hidden", "intermediate", "heads", "kv_heads", "vocab"):
        if getattr(args, key) is None:
            setattr(args, key, shape[key])
    args.tie = shape["tie"]
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        common.child_result(jax_child(args) if args.child == "jax" else torch_child(args))
        return {}
    if not args.allow_cpu and not gpu_available():
        print("gpu_mfu: skipped (no GPU visible to JAX)")
        common.write_summary(args.json, {"skipped": "no GPU"})
        return {"skipped": "no GPU"}

    from instructjax.model.config import param_count

    load_before = common.load_average()
    config = model_config(args)
    tokens = args.batch * args.seq
    flops = common.model_flops_per_token(config, args.seq) * tokens
    results = {}
    for framework in ("jax",) if args.no_torch else ("jax", "torch"):
        passed = [a for a in (argv if argv is not None else sys.argv[1:]) if a not in ("--no-append",)]
        env = child_environment(args) if framework == "jax" else dict(os.environ)
        result = common.run_child([__file__, *passed, "--child", framework], env=env)
        if result is None:
            raise SystemExit(f"gpu_mfu: the {framework} run failed")
        results[framework] = result
    ours = results["jax"]
    ref = results.get("torch", {"step_s": float("nan"), "version": "not run"})
    mfu = {k: flops / r["step_s"] / (args.peak_tflops * 1e12) for k, r in results.items()}
    mfu.setdefault("torch", float("nan"))
    ratio = ref["step_s"] / ours["step_s"]
    rows = [[f"instructjax ({ours['attention']} attention)", f"{ours['step_s']:.3f}", f"{tokens / ours['step_s']:,.0f}",
             f"{flops / ours['step_s'] / 1e12:.1f}", f"**{mfu['jax']:.1%}**"],
            [f"transformers (torch {ref['version']}, SDPA, bf16 autocast, fused AdamW)", f"{ref['step_s']:.3f}",
             f"{tokens / ref['step_s']:,.0f}", f"{flops / ref['step_s'] / 1e12:.1f}", f"{mfu['torch']:.1%}"]]
    body = (
        f"{ours['device']}; {param_count(config) / 1e9:.2f}B params, {setting_words(args)}; `{ours['which']}`; "
        f"median of {args.steps} steps each, peak {args.peak_tflops:g} TFLOP/s.\n\n"
        + common.table(["implementation", "s/step", "tokens/s", "model TFLOP/s", "MFU"], rows)
        + f"\n\ninstructjax / transformers = **{ratio:.2f}x** tokens/s (goal >= 1.3x: "
        + f"{'met' if ratio >= 1.3 else 'missed'}); MFU goal >= 45%: {'met' if mfu['jax'] >= 0.45 else 'missed'}."
        + (f" Profile trace: `{args.profile}`." if args.profile else "")
        + "\n"
    )
    print(body)
    summary = {"mfu": mfu["jax"], "tokens_per_s": tokens / ours["step_s"], "step_s": ours["step_s"],
               "attention": ours["attention"], "torch_tokens_per_s": tokens / ref["step_s"], "torch_step_s": ref["step_s"],
               "torch_mfu": mfu["torch"], "torch_version": ref["version"], "ratio": ratio, "device": ours["device"],
               "peak_tflops": args.peak_tflops, "load_before": load_before,
               "model": f"{param_count(config) / 1e9:.2f}B params, {setting_words(args)}"}
    common.finish(args, f"GPU step: {args.shape}, seq {args.seq}, bf16, instructjax vs transformers", body,
                  summary, load_before=load_before)
    return summary


if __name__ == "__main__":
    main()
