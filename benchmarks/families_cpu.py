"""Every family's training step on the CPU, side by side with transformers' own model of it.

For each family: a small config of the family's switches (its own norms, MLP, biases, windows, soft-caps,
RoPE variant; 4 layers x 256 wide, vocab 32000, seq 512, batch 2, float32), the same weights in both
frameworks. instructjax runs the trainer's jitted step (`common.train_step`: forward, backward, clip,
AdamW; the chunked loss), transformers `model(input_ids, labels=...)`, `backward`, `clip_grad_norm_`,
`AdamW.step` (eager attention where the family needs it for soft-caps, SDPA otherwise). Each run is a
process of its own: its median step time after a warm-up step and its peak RSS (`ru_maxrss`), beside the
RSS after imports (what the run itself added is the difference).

    python benchmarks/families_cpu.py [--families llama,gemma2,...] [--steps 3] [--seq 512 --batch 2]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

MIB = 1024 * 1024
HERE = Path(__file__).resolve()  # the children run this file, whichever script called main
SOFTCAPPED = ("gemma2",)  # transformers' SDPA has no soft-cap: eager attention for these
MOE_SIZE = dict(num_experts=8, experts_per_token=2)  # the mixtures of experts: 8 experts, top 2 (Mixtral's)


def family_config(family: str, args):
    """The family's switches at the benchmark's size (windows and caps active at this length)."""
    from instructjax.model.config import FAMILIES, DecoderConfig
    from instructjax.model.families.record import alternating

    size = dict(vocab_size=32000, hidden_size=256, intermediate_size=704, num_layers=4, num_heads=4, num_kv_heads=2,
                max_position_embeddings=max(2048, args.seq), dtype="float32", param_dtype="float32")
    extra = {
        "mistral": dict(sliding_window=args.seq // 4),
        "qwen2": dict(qkv_bias=True),
        "phi3": dict(sliding_window=args.seq // 2),
        "gemma2": dict(head_dim=64, query_scale=64 ** -0.5, attention_softcap=50.0, final_softcap=30.0,
                       sliding_window=args.seq // 4, layer_types=alternating(4, 2)),
        "gemma3": dict(head_dim=64, query_scale=64 ** -0.5, sliding_window=args.seq // 4,
                       layer_types=alternating(4, 2), local_rope_theta=10000.0, rope_theta=1e6),
        "gpt_neox": dict(num_kv_heads=4, rotary_dims=16),
        "opt": dict(num_kv_heads=4),
        **{moe: MOE_SIZE for moe in ("mixtral", "qwen3_moe", "olmoe")},  # each expert as wide as the dense MLP
    }.get(family, {})
    return DecoderConfig(family=family, **{**FAMILIES[family], **size, **extra})


def jax_child(family: str, args) -> dict:
    import jax

    import instructjax.train.trainer  # noqa: F401  (imported before the baseline)
    from instructjax.core import sharding

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    config = family_config(family, args)
    step, params, opt_state, mesh, _ = common.train_step(config)
    times = []
    with jax.set_mesh(mesh):
        batch = jax.device_put(common.synthetic_batch(args.batch, args.seq, config.vocab_size),
                               sharding.batch_sharding(mesh))
        for _ in range(args.steps + 1):
            t0 = time.perf_counter()
            params, opt_state, metrics = step(params, opt_state, batch)
            jax.block_until_ready(metrics)
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"step_s": statistics.median(times[1:]), "first_s": times[0], "baseline": base, "peak": peak}


def torch_child(family: str, args) -> dict:
    import numpy as np
    import torch
    import transformers

    from instructjax.convert import hf_config

    torch.manual_seed(0)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    config = family_config(family, args)
    hf = transformers.AutoConfig.for_model(**hf_config.to_hf(config))
    hf._attn_implementation = "eager" if family in SOFTCAPPED else "sdpa"
    if config.num_experts:  # the router's load-balancing loss in the loss, as ours adds it
        hf.output_router_logits = True
    model = transformers.AutoModelForCausalLM.from_config(hf).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    ids = torch.from_numpy(np.asarray(common.synthetic_batch(args.batch, args.seq, config.vocab_size)["tokens"])).long()
    times = []
    for _ in range(args.steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"step_s": statistics.median(times[1:]), "first_s": times[0], "baseline": base, "peak": peak,
            "version": torch.__version__}


def main(argv: list[str] | None = None, *, doc: str = __doc__, families: str | None = None, seq: int = 512,
         batch: int = 2, title: str = "Every family's training step, CPU: instructjax vs transformers") -> dict:
    """The benchmark (`doc`, `families`, `seq`, `batch`, `title`: another script's defaults, e.g. moe_cpu.py's)."""
    from instructjax.model.config import FAMILIES

    parser = common.parser(doc)
    parser.add_argument("--families", default=families or ",".join(FAMILIES))
    parser.add_argument("--seq", type=int, default=seq)
    parser.add_argument("--batch", type=int, default=batch)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        framework, family = args.child.split(":")
        common.child_result((jax_child if framework == "jax" else torch_child)(family, args))
        return {}
    from instructjax.model.config import param_count

    load_before = common.load_average()
    rows, results = [], {}
    passed = ["--seq", str(args.seq), "--batch", str(args.batch), "--steps", str(args.steps)]
    for family in args.families.split(","):
        ours = common.run_child([str(HERE), *passed, "--child", f"jax:{family}"])
        theirs = common.run_child([str(HERE), *passed, "--child", f"torch:{family}"])
        results[family] = {"jax": ours, "torch": theirs}
        if not ours or not theirs:
            rows.append([family, "failed" if not ours else "", "failed" if not theirs else "", "", "", "", ""])
            continue
        rows.append([family, f"{param_count(family_config(family, args)) / 1e6:.1f}M", f"{ours['step_s']:.3f}",
                     f"{theirs['step_s']:.3f}", f"{theirs['step_s'] / ours['step_s']:.2f}x",
                     f"{(ours['peak'] - ours['baseline']) / MIB:,.0f} / {ours['peak'] / MIB:,.0f}",
                     f"{(theirs['peak'] - theirs['baseline']) / MIB:,.0f} / {theirs['peak'] / MIB:,.0f}"])
        print(f"families_cpu: {family} done", flush=True)
    body = (f"Each family's switches at 4 layers x 256 wide (kv heads 2, vocab 32000; a mixture of experts: 8 "
            f"experts of the MLP's width 704, top 2), batch {args.batch} x seq "
            f"{args.seq}, float32, AdamW + clip; median of {args.steps} steps after a warm-up step; each run in its own "
            "process. Memory: peak RSS added by the run (peak - after imports) / peak RSS, MiB.\n\n"
            + common.table(["family", "params", "instructjax s/step", "transformers s/step", "speed (theirs/ours)",
                            "instructjax MiB", "transformers MiB"], rows) + "\n")
    print(body)
    common.finish(args, title, body, results,
                  load_before=load_before)
    return results


if __name__ == "__main__":
    main()
