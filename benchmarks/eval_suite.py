"""The papers' suite end to end before and after issue 65's engine: `eval --suite tulu` and 805 AlpacaEval-style
generations on the quickstart's model, same data, same outputs.

The model is a quickstart run (`instructjax train --config instructjax/configs/quickstart.yaml`, --steps steps);
the suite's data are the tests' open-instruct-layout sets (tests/eval/test_tulu_suite.py: MMLU, GSM, BBH, TydiQA and
Codex in open-instruct's files). Each side runs in a fresh process on the same files: `before` is the engine before
issue 65 (commit generate.BEFORE, extracted from git), `after` this tree. Printed: whole-process seconds of each, and
whether every greedy answer of the suite (tulu.run's samples) and every AlpacaEval reply is the same.

    python benchmarks/eval_suite.py [--steps 20] [--alpaca 805] [--max-new 256]
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import common  # noqa: E402
from generate import BEFORE, INSTRUCTIONS, REPO  # noqa: E402

SUITE_CHILD = """
import json, sys
from instructjax.eval import tulu
from instructjax.eval.generate import load_generator
generator, _ = load_generator(sys.argv[1])
scores = tulu.run(generator, sys.argv[2], tulu.chat_format_of(sys.argv[1]), samples_out=sys.argv[3])
engine = getattr(generator, "engine", None)  # the engine's counts (prefix tokens not recomputed), where it has one
if engine is not None:
    open(sys.argv[3] + ".stats.json", "w").write(json.dumps(engine.stats.as_dict()))
print("RESULT " + json.dumps(scores), flush=True)
"""


def timed(argv: list[str], pythonpath: str) -> tuple[float, str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": pythonpath}
    start = time.time()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{' '.join(argv[:4])}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return time.time() - start, proc.stdout


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--alpaca", type=int, default=805)
    p.add_argument("--max-new", type=int, default=256)
    p.add_argument("--workdir")
    args = p.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench_suite_"))
    python = sys.executable
    here = f"{REPO}:{os.environ.get('PYTHONPATH', '')}"
    run_dir = root / "quickstart"
    if not (run_dir / "checkpoints").is_dir():
        timed([python, "-m", "instructjax.cli", "train", "--config", str(REPO / "instructjax/configs/quickstart.yaml"),
               f"max_steps={args.steps}", f"run_dir={run_dir}", "checkpoint.every=1000"], here)
    data_dir = root / "eval_data"
    if not data_dir.is_dir():
        import importlib.util

        spec = importlib.util.spec_from_file_location("suite_data", REPO / "tests/eval/test_tulu_suite.py")
        suite_data = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(suite_data)

        data_dir.mkdir()
        rng = random.Random(0)
        for write in (suite_data._write_mmlu, suite_data._write_gsm, suite_data._write_bbh, suite_data._write_tydiqa,
                      suite_data._write_codex):
            write(data_dir, rng)
    prompts = root / "alpaca.jsonl"
    prompts.write_text("".join(json.dumps({"id": str(i), "instruction": f"{INSTRUCTIONS[i % len(INSTRUCTIONS)]} "
                                           f"(request {i})"}) + "\n" for i in range(args.alpaca)))
    before = root / "before"
    if not before.is_dir():
        before.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE, "instructjax"], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
    (root / "suite_child.py").write_text(SUITE_CHILD)
    load_before = common.load_average()
    sides = {"before": f"{before}:{here}", "after": here}
    seconds, answers, replies = {}, {}, {}
    for side, path in sides.items():
        samples = root / f"suite_{side}.jsonl"
        seconds[f"suite_{side}"], _ = timed([python, str(root / "suite_child.py"), str(run_dir), str(data_dir),
                                             str(samples)], path)
        answers[side] = [json.loads(line)["answer"] for line in samples.read_text().splitlines()]
        out = root / f"alpaca_{side}.jsonl"
        seconds[f"alpaca_{side}"], _ = timed([python, "-m", "instructjax.cli", "generate", "--model", str(run_dir),
                                              "--prompts", str(prompts), "--out", str(out), "--max-new-tokens",
                                              str(args.max_new)], path)
        replies[side] = [json.loads(line)["output"] for line in out.read_text().splitlines()]
        print(side, {k: round(v, 1) for k, v in seconds.items()}, flush=True)
    same_suite = sum(a == b for a, b in zip(answers["before"], answers["after"], strict=True))
    same_alpaca = sum(a == b for a, b in zip(replies["before"], replies["after"], strict=True))
    body = (f"The quickstart's model ({args.steps} steps), the tests' open-instruct-layout sets "
            f"({len(answers['after'])} requests of the scored settings), {args.alpaca} AlpacaEval-style prompts up to "
            f"{args.max_new} new tokens, greedy, float32, each side a fresh process.\n\n" + common.table(
                ["workload", "before issue 65 (s)", "after (s)", "speed-up", "same outputs"],
                [["`eval --suite tulu` (tulu.run: MMLU, GSM, BBH, TydiQA)", f"{seconds['suite_before']:.1f}",
                  f"{seconds['suite_after']:.1f}", f"{seconds['suite_before'] / seconds['suite_after']:.2f}x",
                  f"{same_suite}/{len(answers['after'])}"],
                 [f"`generate`, {args.alpaca} prompts", f"{seconds['alpaca_before']:.1f}", f"{seconds['alpaca_after']:.1f}",
                  f"{seconds['alpaca_before'] / seconds['alpaca_after']:.2f}x", f"{same_alpaca}/{args.alpaca}"]]))
    print(body)
    common.finish(args, "The Tulu suite and AlpacaEval-sized generation before and after issue 65's engine", body,
                  seconds, load_before=load_before)


if __name__ == "__main__":
    main()
