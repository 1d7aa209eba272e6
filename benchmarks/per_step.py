"""`data.pack: per_step` side by side with `pack: false` (the papers' steps) and `pack: true`.

1. Padding, Tulu Human+GPT lengths, seq 2048, global batch 128, the paper configs' 2 epochs: real tokens /
   processed tokens of the steps, for the built-in rows (`tulu_human_gpt_builtin`, through the pipeline) and
   for Table 1's length model at full size (`packing.tulu_lengths`: 490,694 conversations, ShareGPT's cut into
   2048-token blocks; each epoch in another order). per_step at row
   multiples 1 (one device), 8 (8 GPUs, FSDP), 32 (v4-64, FSDP over 32 chips) and 64 (v4-128, FSDP over 64 chips;
   `plan` proposes fsdp 32 x tensor 2 there, the multiple-32 line), either layout (rows of seq_len, or a fixed
   number of rows of a step's own length), and how the number of step shapes (compiles) trades against padding.
2. CPU, tiny model (float32), seq 512, global batch 16, 20 steps through the trainer on one device: step time
   per_step / unpacked (median of steps 2-20: the unpacked step 1 compiles), losses and gradient norms of every
   step side by side, and how many step shapes each run compiled. Runs alternate, three rounds.

    python benchmarks/per_step.py [--steps 20] [--rounds 3] [--no-append]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

MULTIPLES = (1, 8, 32, 64)
SHAPE_LIMITS = (1, 2, 3, 4, 6, 8)


def padding_section() -> str:
    """Real-token shares of unpacked, per_step and packed steps (part 1)."""
    import numpy as np
    from packing import tulu_lengths

    from instructjax.core.config import DataSection
    from instructjax.data.batches.packing import count_rows
    from instructjax.data.batches.pipeline import DataPipeline
    from instructjax.data.batches.step_plan import plan_step_rows, step_need, step_shapes

    seq, batch, epochs = 2048, 128, 2
    section = DataSection(mixture="tulu_human_gpt_builtin", seq_len=seq, global_batch=batch, prefetch=0,
                          pack="per_step")  # fmt: skip
    pipe = DataPipeline(section)
    steps = epochs * pipe.plan_epoch(0).steps
    builtin = pipe.plan_steps(steps).tokens, [pipe.plan_steps(steps, m) for m in MULTIPLES]
    packed = DataPipeline(DataSection(**{**section.__dict__, "pack": True}))
    plans = [packed.plan_epoch(e) for e in range(epochs)]
    builtin_packed = sum(p.tokens for p in plans) / (sum(p.rows for p in plans) * seq)

    t0 = time.perf_counter()
    lengths = np.minimum([n for n, _ in tulu_lengths(490_694, seed=0)], seq)
    epochs_lengths = np.concatenate([lengths, np.random.default_rng(1).permutation(lengths)])
    model_plans = [plan_step_rows(epochs_lengths, batch, seq, m) for m in MULTIPLES]
    plan_s = (time.perf_counter() - t0) / len(MULTIPLES)
    model_packed_rows = sum(count_rows(w, seq) for w in np.array_split(epochs_lengths, len(epochs_lengths) // 1000))
    model_packed = epochs_lengths.sum() / (model_packed_rows * seq)

    def shape_words(shapes):
        return ", ".join(f"{rows}x{length}" for rows, length in shapes)

    def rows_line(name, tokens, plans_by_multiple, packed_share):
        out = [[name, "pack: false", f"{batch}x{seq}", f"{batch * seq:,}", f"{tokens.sum() / (len(tokens) * batch * seq):.1%}"]]
        for m, plan in zip(MULTIPLES, plans_by_multiple, strict=True):
            layout = f"{plan.fixed_rows} rows of a step's length" if plan.fixed_rows else "rows of seq_len"
            out.append([name, f"per_step, rows a multiple of {m}: {layout}", shape_words(plan.shapes),
                        f"{plan.processed / len(plan.needed):,.0f}", f"**{plan.efficiency:.1%}**"])
        out.append([name, "pack: true (other steps)", f"{batch}x{seq}", f"{batch * seq:,}", f"{packed_share:.1%}"])
        return out

    rows = rows_line(f"built-in rows ({steps} steps)", builtin[0], builtin[1], builtin_packed)
    rows += rows_line(f"Table 1 model ({len(model_plans[0].needed):,} steps)", model_plans[0].tokens, model_plans,
                      model_packed)
    body = ("**Real tokens / processed tokens**, Tulu Human+GPT, seq 2048, global batch 128, 2 epochs "
            f"({MULTIPLES[1]} = 8 GPUs with FSDP; 32 = v4-64 with FSDP over its 32 chips, the paper configs' mesh"
            "; 64 = v4-128 with FSDP over its 64 chips, where `plan` proposes fsdp 32 x tensor 2: the 32 line):\n\n"
            + common.table(["data", "mode", "step shapes (rows x length)", "tokens processed a step (mean)",
                            "real / processed"], rows))

    shape_rows, real = [], epochs_lengths[: len(model_plans[0].tokens) * batch].sum()
    needed = np.asarray([step_need(step, seq) for step in np.split(epochs_lengths, range(batch, len(epochs_lengths),
                                                                                        batch)) if len(step) == batch])
    for m in MULTIPLES[:2]:
        shares = []
        for limit in SHAPE_LIMITS:
            shapes = np.asarray(step_shapes(needed, m, limit))
            shares.append(real / (shapes[np.searchsorted(shapes, needed)].sum() * seq))
        shape_rows.append(["Table 1 model", m, *[f"{s:.1%}" for s in shares]])
    ideal = real / (needed.sum() * seq)
    body += ("\n\n**Step shapes (each one compile) against padding**: real / processed with at most N shapes "
             f"of rows of seq_len (the default is 4; every step in its own fitted shape would be {ideal:.1%}). "
             f"Planning the Table 1 model's {len(model_plans[0].needed):,} steps took {plan_s:.1f} s.\n\n"
             + common.table(["data", "row multiple", *[f"N={n}" for n in SHAPE_LIMITS]], shape_rows))
    return body


def train_once(mixture: str, pack: str, steps: int, run_dir: Path) -> dict:
    """One trainer run; its per-step metrics, wall time and the number of step compiles."""
    import jax

    from instructjax.core.config import load_config
    from instructjax.train.trainer import Trainer

    compiled = []

    def listen(event, _, fun_name=None, **__):
        compiled.append(fun_name if event == "/jax/core/compile/backend_compile_duration" else None)

    config = load_config(None, [
        "model.preset=tiny", "model.dtype=float32", f"data.mixture={mixture}", "data.seq_len=512",
        "data.global_batch=16", f"data.pack={pack}", "optim.lr=3e-3", "log_every=1", f"max_steps={steps}",
        "checkpoint.every=100000", f"run_dir={run_dir}", "mesh.data=1"])  # fmt: skip
    trainer = Trainer(config, devices=jax.devices()[:1])
    jax.monitoring.register_event_duration_secs_listener(listen)
    t0 = time.perf_counter()
    try:
        trainer.run()
    finally:
        wall = time.perf_counter() - t0
        jax.monitoring.unregister_event_duration_listener(listen)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"records": records, "wall": wall, "compiles": compiled.count("jit(step)"), "shapes": trainer.step_shapes}


def timing_section(steps: int, rounds: int) -> tuple[str, dict]:
    """Step time and losses of unpacked vs per_step runs (part 2). The machine is shared: runs alternate (the
    order flips every round) and each mode's time is its fastest run's median step (load only slows)."""
    rows, summary = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for mixture in ("acp_ACP_builtin", "tulu_human_gpt_builtin"):
            runs: dict[str, list[dict]] = {"false": [], "per_step": []}
            for r in range(rounds):
                for pack in (("false", "per_step") if r % 2 == 0 else ("per_step", "false")):
                    runs[pack].append(train_once(mixture, pack, steps, Path(tmp) / f"{mixture}-{pack}-{r}"))
            medians = {pack: [statistics.median(x["step_seconds"] for x in run["records"][1:]) for run in done]
                       for pack, done in runs.items()}  # fmt: skip
            best = {pack: min(m) for pack, m in medians.items()}
            a, b = runs["per_step"][0]["records"], runs["false"][0]["records"]
            loss = max(abs(x["loss"] - y["loss"]) / abs(y["loss"]) for x, y in zip(a, b, strict=True))
            grad = max(abs(x["grad_norm"] - y["grad_norm"]) / abs(y["grad_norm"]) for x, y in zip(a, b, strict=True))
            same = all(x["tokens"] == y["tokens"] for x, y in zip(a, b, strict=True))
            ratio = best["per_step"] / best["false"]
            shapes = runs["per_step"][0]["shapes"]
            each = {pack: ", ".join(f"{m * 1e3:.0f}" for m in ms) for pack, ms in medians.items()}
            rows.append([f"`{mixture}`", f"{best['false'] * 1e3:.0f} ({each['false']})",
                         f"{best['per_step'] * 1e3:.0f} ({each['per_step']})", f"**{ratio:.2f}x**",
                         ", ".join(f"{r}x{n}" for r, n in shapes), f"{runs['false'][0]['compiles']} / {runs['per_step'][0]['compiles']}",
                         f"{loss:.1e}", f"{grad:.1e}", "yes" if same else "NO"])  # fmt: skip
            summary[mixture] = {"ratio": ratio, "loss_rel": loss, "grad_rel": grad, "shapes": shapes}
            print(rows[-1], flush=True)
    body = (f"**CPU step time**, tiny model (float32, 32000-token vocabulary), seq 512, global batch 16, {steps} steps "
            f"on one device, {rounds} rounds alternating the modes: ms/step = the fastest run's median of steps "
            f"2-{steps} (each run's in brackets; the unpacked step 1 compiles, per_step compiles its shapes before "
            "step 1):\n\n"
            + common.table(["data", "unpacked ms/step", "per_step ms/step", "per_step / unpacked",
                            "per_step shapes (rows x length)", "step compiles (unpacked / per_step)", "max rel. loss diff",
                            "max rel. grad-norm diff", "same tokens every step"], rows))  # fmt: skip
    return body, summary


def main(argv: list[str] | None = None) -> dict:
    parser = common.parser(__doc__, summary=None)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    load_before = common.load_average()
    padding = padding_section()
    print(padding, flush=True)
    timing, summary = timing_section(args.steps, args.rounds)
    print(timing, flush=True)
    common.finish(args, "Exact steps, packed: `data.pack: per_step` (issues 28, 40)", padding + "\n\n" + timing,
                  load_before=load_before)
    return summary


if __name__ == "__main__":
    main()
