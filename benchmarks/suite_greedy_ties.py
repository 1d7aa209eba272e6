"""Why the Tulu suite's greedy answers differ before and after issue 65's engine: each differing request (and a few
equal ones, a control) generated alone by the engine after, the engine before, and transformers' `generate` on the
model's HF export, float32, 512 new tokens, with transformers' top-2 logit gap at every step.

Takes the work directory of `benchmarks/eval_suite.py` (its quickstart run, `suite_before.jsonl` and
`suite_after.jsonl`, and `before/`, the engine before extracted from git). Each side runs in its own process.

    python benchmarks/suite_greedy_ties.py --workdir /tmp/ee/suite
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402
from generate import REPO  # noqa: E402

CONTROL = 13
CHILD = r"""
import json, sys
side, root, hf_dir, chosen = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
rows = [json.loads(line) for line in open(f"{root}/suite_after.jsonl")]
from instructjax.eval.generate import load_generator
gen, tok = load_generator(f"{root}/quickstart")
prompts = [tok(rows[i]["prompt"], add_special_tokens=False)["input_ids"] for i in chosen]
out = {}
if side == "after":
    from instructjax.model.batching import ContinuousBatcher
    from instructjax.eval.interface import Sampling
    engine = ContinuousBatcher(gen.model, slots=1)
    out["ids"] = [engine.generate([p], Sampling(max_new_tokens=512), gen.stop_ids)[0] for p in prompts]
elif side == "before":
    from instructjax.eval.generate import Sampling, generate_ids
    out["ids"] = [generate_ids(gen.model, [p], Sampling(max_new_tokens=512), gen.stop_ids)[0] for p in prompts]
else:
    import torch, transformers
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    out["ids"], out["gaps"] = [], []
    for p in prompts:
        with torch.no_grad():
            o = model.generate(torch.tensor([p]), max_new_tokens=512, do_sample=False, eos_token_id=gen.stop_ids,
                               pad_token_id=0, attention_mask=torch.ones(1, len(p), dtype=torch.long),
                               output_logits=True, return_dict_in_generate=True)
        out["ids"].append(o.sequences[0, len(p):].tolist())
        out["gaps"].append([float(torch.topk(step[0], 2).values.diff().abs()) for step in o.logits])
print("RESULT " + json.dumps(out), flush=True)
"""


def _first_difference(a: list[int], b: list[int]) -> int | None:
    return next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), None)


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--workdir", required=True, help="benchmarks/eval_suite.py's work directory")
    args = p.parse_args()
    root = Path(args.workdir)
    after = [json.loads(line) for line in (root / "suite_after.jsonl").read_text().splitlines()]
    before = [json.loads(line) for line in (root / "suite_before.jsonl").read_text().splitlines()]
    differ = [i for i, (a, b) in enumerate(zip(after, before, strict=True)) if a["answer"] != b["answer"]]
    protocols = {after[i]["protocol"] for i in differ}
    generated = [i for i, a in enumerate(after) if a["answer"] == before[i]["answer"] and a["protocol"] in protocols]
    chosen = differ + random.Random(0).sample(generated, CONTROL)
    hf_dir = root / "quickstart_hf"
    if not hf_dir.is_dir():
        subprocess.run([sys.executable, "-m", "instructjax.cli", "export", "--checkpoint", str(root / "quickstart"),
                        "--out", str(hf_dir)], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    load_before = common.load_average()
    sides = {}
    for side, path in (("after", REPO), ("before", root / "before"), ("transformers", REPO)):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(path)}
        proc = subprocess.run([sys.executable, "-c", CHILD, side, str(root), str(hf_dir), json.dumps(chosen)],
                              capture_output=True, text=True, env=env, check=True)
        sides[side] = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    hf, gaps = sides["transformers"]["ids"], sides["transformers"]["gaps"]
    rows, at = [], []
    for name, part in (("differing before/after", slice(0, len(differ))), ("equal (control)", slice(len(differ), None))):
        ours, old = sides["after"]["ids"][part], sides["before"]["ids"][part]
        rows.append([name, len(ours), sum(a == h for a, h in zip(ours, hf[part], strict=True)),
                     sum(b == h for b, h in zip(old, hf[part], strict=True))])
        for a, h, g in zip(ours, hf[part], gaps[part], strict=True):
            k = _first_difference(a, h)
            if k is not None:
                at.append(g[k])
    body = (f"The quickstart's model, the suite's {len(differ)} greedy requests whose answers differ before and after, "
            f"and {CONTROL} whose answers agree; each generated alone, float32, 512 new tokens.\n\n"
            + common.table(["requests", "n", "after, alone == transformers", "before, alone == transformers"], rows)
            + f"\n\nTransformers' top-2 logit gap where ours parts from it: largest {max(at, default=0):.3g} "
              f"({len(at)} requests; every one a float32 rounding-level near-tie)")
    print(body)
    common.finish(args, "The suite's greedy answers before and after issue 65 against transformers", body,
                  {"gaps": at, "rows": rows}, load_before=load_before)


if __name__ == "__main__":
    main()
