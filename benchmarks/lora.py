"""LoRA and QLoRA against the full fine-tune of the same model on this CPU: trainable parameters (beside PEFT's
count for the same LoraConfig), peak memory and tokens/s.

One LLaMA-shaped model (`--layers` x `--hidden`, SwiGLU, untied head, vocab 32000). Each mode runs in its own
subprocess: import, build the model and the trainer's own step (`build_step`: AdamW over the adapters alone where
`model.lora` is set, the base frozen, and stored as NF4 codes under `model.quantize_base: nf4`), run `--steps` steps
on a synthetic packed batch, then report the peak RSS of the set-up (build, compile, first step) and of the later
steps alone (VmHWM, reset between them), the RSS after the imports, and the step time.
PEFT's figure is `PeftModel.get_nb_trainable_parameters()` (what `print_trainable_parameters` prints) for
transformers' LlamaForCausalLM of the same sizes with `LoraConfig(r, lora_alpha, target_modules=<the 7 linear
modules>)`.

    python benchmarks/lora.py [--layers 8 --hidden 1024 --rank 16 --seq 512 --batch 4 --steps 4]
"""

from __future__ import annotations

import argparse
import gc
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

MIB = 1024 * 1024
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MODES = {"full": {}, "lora": {"lora": True}, "qlora": {"lora": True, "quantize_base": "nf4"}}


def model_config(args: argparse.Namespace, mode: str):
    from instructjax.model.config import DecoderConfig

    extra = MODES[mode]
    lora = {"rank": args.rank, "alpha": 2 * args.rank, "targets": "all-linear"} if extra.get("lora") else None
    return DecoderConfig(vocab_size=32000, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4 // 64 * 64,
                         num_layers=args.layers, num_heads=args.hidden // 64, num_kv_heads=args.hidden // 64,
                         max_position_embeddings=max(2048, args.seq), dtype="float32", param_dtype="float32",
                         remat="full", lora=lora, quantize_base=extra.get("quantize_base", "none"))


def child(args: argparse.Namespace) -> dict:
    """Run the mode's steps in this process; its figures."""
    import jax

    import instructjax.train.trainer  # noqa: F401  (imported before the baseline)
    from instructjax.core import sharding
    from instructjax.model import lora
    from instructjax.model.config import param_count

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    config = model_config(args, args.child)
    step, params, opt_state, mesh, _ = common.train_step(config)
    trainable = lora.adapter_count(params) if config.lora else sum(x.size for x in jax.tree.leaves(params))
    stored = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
    seconds, setup_peak = [], 0
    with jax.set_mesh(mesh):
        batch = jax.device_put(common.synthetic_batch(args.batch, args.seq, config.vocab_size),
                               sharding.batch_sharding(mesh))
        for i in range(args.steps):
            if i == 1:  # the first step compiled: from here the peak is the steps' own (state and temporaries)
                setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
                gc.collect()
                reset_peak()
            start = time.perf_counter()
            params, opt_state, metrics = step(params, opt_state, batch)
            jax.block_until_ready(metrics)
            seconds.append(time.perf_counter() - start)
    return {"params": param_count(config), "trainable": int(trainable), "stored_bytes": int(stored),
            "baseline": base, "setup_peak": setup_peak, "peak": steps_peak(), "seconds": seconds,
            "loss": float(metrics["loss"])}


def reset_peak() -> None:
    """Reset this process's peak RSS (Linux: `5` to /proc/self/clear_refs resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def steps_peak() -> int:
    """This process's peak RSS (VmHWM) in bytes since `reset_peak`."""
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


def peft_trainable(args: argparse.Namespace) -> tuple[int, int, str]:
    """(trainable, all) parameters PEFT counts for the same model and LoraConfig, and PEFT's version."""
    import peft
    import torch
    import transformers

    with torch.device("meta"):
        config = model_config(args, "lora")
        hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
            num_key_value_heads=config.num_kv_heads, tie_word_embeddings=False))
        model = peft.get_peft_model(hf, peft.LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0,
                                                         target_modules=TARGETS, task_type="CAUSAL_LM"))
    trainable, total = model.get_nb_trainable_parameters()
    return int(trainable), int(total), peft.__version__


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--child", default=None, choices=tuple(MODES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        common.child_result(child(args))
        return {}

    load_before = common.load_average()
    peft_count, peft_total, peft_version = peft_trainable(args)
    flags = ["--layers", str(args.layers), "--hidden", str(args.hidden), "--rank", str(args.rank), "--seq",
             str(args.seq), "--batch", str(args.batch), "--steps", str(args.steps)]
    results = {mode: common.run_child([__file__, "--child", mode, *flags]) for mode in MODES}
    if any(r is None for r in results.values()):
        raise SystemExit("lora: a mode failed (its stderr is above)")
    tokens = args.batch * args.seq
    full = results["full"]
    rows, summary = [], {"peft_trainable": peft_count, "load_before": load_before}
    for mode, r in results.items():
        train = r["peak"] - r["baseline"]
        tps = tokens / statistics.median(r["seconds"][1:])
        peft_cell = f"{peft_count:,}" if mode != "full" else f"{peft_total:,} (all, with the adapters)"
        rows.append([mode, f"{r['trainable']:,}", peft_cell, f"{r['stored_bytes'] / MIB:,.0f}",
                     f"{r['setup_peak'] / MIB:,.0f}", f"{r['peak'] / MIB:,.0f}", f"{train / MIB:,.0f}",
                     f"{(r['peak'] - r['baseline']) / (full['peak'] - full['baseline']):.2f}", f"{tps:,.0f}",
                     f"{r['loss']:.4f}"])
        summary[mode] = {"trainable": r["trainable"], "peak_mib": r["peak"] / MIB, "training_mib": train / MIB,
                         "tokens_per_s": tps}
    lora_equal = results["lora"]["trainable"] == results["qlora"]["trainable"] == peft_count
    body = (f"LLaMA-shaped {args.layers} x {args.hidden} (intermediate {model_config(args, 'full').intermediate_size}, "
            f"{full['params'] / 1e6:.1f}M parameters, untied head, vocab 32000), float32 on the CPU, remat full, "
            f"AdamW; batch {args.batch} x seq {args.seq}, {args.steps} steps per mode, each in its own process. "
            f"LoRA rank {args.rank}, alpha {2 * args.rank}, every linear module of the layers; QLoRA: the same on an "
            f"NF4 base (blocks of 64). PEFT {peft_version}'s count for the same LoraConfig on transformers' "
            f"LlamaForCausalLM: {peft_count:,} trainable ({'equal to ours' if lora_equal else 'NOT equal to ours'}).\n\n"
            + "\n\nThe steps' peak RSS is the process's peak over the steps after the first (VmHWM reset after it: "
              "the state the steps hold and their temporaries); the set-up's peak is building the model and its "
              "optimizer state, compiling the step and running it once. "
              "Training MiB: the steps' peak less the RSS after the imports.\n\n"
            + common.table(["mode", "trainable params (ours)", "PEFT's count", "params stored MiB", "set-up peak RSS MiB",
                            "steps' peak RSS MiB", "training MiB", "vs full", "tokens/s (median after the first)",
                            f"loss after {args.steps} steps"], rows))
    print(body)
    summary["peft_equal"] = lora_equal
    summary["load_after"] = common.load_average()
    common.finish(args, "LoRA and QLoRA against the full fine-tune: parameters, memory and speed (CPU)", body, summary,
                  load_before=load_before)
    return summary


if __name__ == "__main__":
    main()
