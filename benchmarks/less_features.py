"""LESS's feature pass (issue 80, item 4): examples per second of ours (`train/less_features.py`: batches of
`vmap(grad)`, sorted by length and padded to four widths an octave, the head once over a batch's trained tokens
end to end, Adam features and the projection in one jitted program) against LESS's own loop (its `obtain_gradients_with_adam`, pinned in tests/assets/less,
one example at a time through a PEFT LoRA in transformers, projected 16 at a time as its `collect_grads` does, by a
+-1 matrix held whole: trak's CPU projector without its block-wise generation), on the same tiny LLaMA, LoRA and
examples, one after the other in one process, on this CPU.

Both run once over the examples first (ours compiles a program per padded width); the figure is the timed pass over
`--examples` examples of LESS's pool (the built-in Tulu sources' rows, at random, of at most `--max-length` tokens;
`--random-tokens`: random ones, a prompt of up to half a row untrained). Goal: 2x.

    python benchmarks/less_features.py [--examples 256] [--rank 8] [--dim 8192] [--random-tokens] [--no-append]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]  # LESS's


def hf_model(directory: str) -> str:
    """A random tiny LLaMA (our `tiny` preset's shape) in the HF layout."""
    import torch
    import transformers

    from instructjax.convert import hf_config
    from instructjax.data.encoding.tokenizer import Tokenizer
    from instructjax.model.presets import preset

    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**hf_config.to_hf(preset("tiny", dtype="float32"))))
    path = os.path.join(directory, "hf")
    model.save_pretrained(path)
    Tokenizer.load().save(path)  # the built-in tokenizer, the preset's vocabulary
    return path


POOL = ("flan_v2_builtin", "cot_builtin", "dolly_builtin", "oasst1_builtin")  # LESS's pool (seed 004's tulu_human)


def pool_examples(n: int, longest: int, seed: int = 0) -> list[dict]:
    """`n` of the built-in Tulu pool's examples (its four sources, encoded by the built-in tokenizer), at random,
    of at most `longest` tokens and some trained."""
    from instructjax.data.tokenized.examples import encoded_examples

    pool = [{"tokens": np.asarray(e["tokens"], np.int32), "loss_mask": np.asarray(e["loss_mask"], np.int32)}
            for name in POOL for e in encoded_examples(name)]
    pool = [e for e in pool if len(e["tokens"]) <= longest and e["loss_mask"][1:].any()]
    return [pool[i] for i in np.random.default_rng(seed).choice(len(pool), n, replace=False)]


def examples(n: int, low: int, high: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(low, high + 1))
        mask = np.zeros(length, np.int32)
        mask[int(rng.integers(1, length // 2)) :] = 1
        out.append({"tokens": rng.integers(3, 32000, length).astype(np.int32), "loss_mask": mask})
    return out


def ours(hf: str, directory: str, rank: int, dim: int, exs: list[dict], batch: int) -> float:
    """Examples per second of our pass (after a first pass that compiles)."""
    import jax
    from flax import nnx

    from instructjax.convert.saved import import_hf, load_params_as
    from instructjax.model import lora as lora_lib
    from instructjax.model.decoder import Decoder
    from instructjax.train import less
    from instructjax.train import less_features as store

    base = os.path.join(directory, "base")
    plain = import_hf(hf, base).replace(dtype="float32")
    config = plain.replace(lora={"rank": rank, "alpha": 2 * rank, "targets": TARGETS})
    adapters = lora_lib.trainable(nnx.to_pure_dict(nnx.state(Decoder(config, rngs=nnx.Rngs(3)), nnx.Param)))
    rng = np.random.default_rng(2)
    adapters = jax.tree.map(lambda x: rng.normal(0, 0.05, x.shape).astype(np.float32), adapters)  # B not 0
    params = lora_lib.combine(adapters, load_params_as(base, plain))
    d = sum(x.size for x in jax.tree.leaves(adapters))
    rng = np.random.default_rng(1)
    warm = less.WarmupStep(1, config, params, rng.normal(0, 1e-3, d).astype(np.float32),
                           rng.uniform(1e-8, 1e-5, d).astype(np.float32), 1.0)
    fn = store.feature_fn(config, "adam", less.Projection(dim, 0), store.feature_mesh(jax.devices()[:1]))
    store.compute(exs, lambda rows: fn(warm, rows), batch, dim=dim)  # compiles each width's program
    start = time.perf_counter()
    store.compute(exs, lambda rows: fn(warm, rows), batch, dim=dim)
    return len(exs) / (time.perf_counter() - start)


def theirs(hf: str, rank: int, dim: int, exs: list[dict]) -> float:
    """Examples per second of LESS's loop (see the module doc)."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(REPO / "tests" / "assets" / "less"))
    from less.data_selection.grads_extract import obtain_gradients_with_adam

    torch.set_num_threads(os.cpu_count() or 1)
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(hf).float(), peft.LoraConfig(
        r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"))
    d = sum(p.numel() for p in model.parameters() if p.requires_grad)
    gen = torch.Generator().manual_seed(1)
    m, v = torch.randn(d, generator=gen) * 1e-3, torch.rand(d, generator=gen) * 1e-5 + 1e-8
    matrix = (torch.randint(0, 2, (d, dim), generator=gen) * 2 - 1).float()

    def run(batch_examples):
        held, out = [], []
        for ex in batch_examples:
            ids = torch.tensor(ex["tokens"], dtype=torch.long)[None]
            labels = ids.clone()
            labels[0, torch.tensor(ex["loss_mask"]) == 0] = -100
            batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
            held.append(obtain_gradients_with_adam(model, batch, m, v))
            model.zero_grad()
            if len(held) == 16:  # LESS's project_interval
                projected = torch.stack(held) @ matrix
                out.append(projected / projected.norm(dim=1, keepdim=True))
                held = []
        return out

    run(exs[:4])
    start = time.perf_counter()
    run(exs)
    return len(exs) / (time.perf_counter() - start)


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--min-length", type=int, default=32)
    p.add_argument("--max-length", type=int, help="the longest example (default: 512 of the pool's, 128 random)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--dim", type=int, default=8192)
    p.add_argument("--batch", type=int, default=16, help="our examples a batch")
    p.add_argument("--random-tokens", action="store_true",
                   help="random tokens of --min-length..--max-length, the first up to half untrained, instead of the "
                        "built-in Tulu pool's examples of at most --max-length tokens")
    args = p.parse_args()
    load_before = common.load_average()
    directory = tempfile.mkdtemp(prefix="less_features_")
    hf = hf_model(directory)
    args.max_length = args.max_length or (128 if args.random_tokens else 512)
    exs = (examples(args.examples, args.min_length, args.max_length) if args.random_tokens
           else pool_examples(args.examples, args.max_length))
    where = (f"random tokens, {args.min_length}-{args.max_length} a row" if args.random_tokens else
             f"the built-in Tulu pool's ({', '.join(POOL)}), at most {args.max_length} tokens")
    real, trained = sum(len(e["tokens"]) for e in exs), sum(int(e["loss_mask"][1:].sum()) for e in exs)
    mine = ours(hf, directory, args.rank, args.dim, exs, args.batch)
    print(f"ours: {mine:.1f} examples/s", flush=True)
    reference = theirs(hf, args.rank, args.dim, exs)
    print(f"LESS's loop: {reference:.1f} examples/s", flush=True)
    ratio = mine / reference
    body = "\n\n".join([
        f"Tiny LLaMA (hidden 64, 2 layers), LoRA rank {args.rank} on {', '.join(TARGETS)}, Adam features projected to "
        f"{args.dim}, {args.examples} examples ({where}: {real:,} tokens, {trained:,} trained), one CPU process.",
        common.table(["LESS's loop: examples/s", "ours: examples/s", "ours / LESS"],
                     [[f"{reference:.1f}", f"{mine:.1f}", f"**{ratio:.2f}x**"]]),
    ])
    print(body)
    common.finish(args, "LESS's feature pass against LESS's own loop (issue 80)", body,
                  {"ours_examples_per_s": mine, "less_examples_per_s": reference, "ratio": ratio},
                  load_before=load_before)


if __name__ == "__main__":
    main()
