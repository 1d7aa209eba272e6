"""LESS's feature pass planned and built by XLA:TPU (issue 80, item 4): `plan --less --compile` for LLaMA-2-7B with
LESS's LoRA (rank 128 on q/k/v/o, 16 examples a batch of 2048 tokens, 8192 dimensions) on a v4-64 and a v5e-16
(the issue's slices), and two shapes beside them that the plan was not fitted to: rank 64 with two 1024-token
examples a device on a v5e-16, and two layers of the 7B at 512 tokens on a v4-8. Per device: plan's bytes, the
compiler's (arguments + outputs - aliases + temporaries) and their ratio. Compiled on this CPU from libtpu's
descriptions of the slices (no TPU).

    python benchmarks/less_plan.py [--no-append]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))

import common  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TULU_7B = REPO / "configs" / "seed004_tulu" / "tulu_human_gpt_llama2_7b.yaml"


def rank_64_config(directory: str) -> str:
    """The 7B config with a task selecting by LESS at rank 64, 32 examples a batch, 1024 tokens."""
    config = yaml.safe_load(TULU_7B.read_text())
    config["data"]["seq_len"] = 1024
    config["define"] = {"tasks": {"tulu_pool": {"source": "alpaca", "data_files": ["builtin"], "selection": {
        "method": "less", "target": "alpaca_builtin", "fraction": 0.05, "less": {"lora_rank": 64, "batch": 32}}}}}
    path = Path(directory) / "rank64.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def main() -> None:
    p = common.parser(__doc__)
    args = p.parse_args()
    from instructjax.cli import load_run_config
    from instructjax.train.less_plan import compile_features
    from instructjax.train.topology import GIB, tpu_topology

    load_before = common.load_average()
    cases = [("7B, rank 128, 2048 tokens", str(TULU_7B), "v4-64", []),
             ("7B, rank 128, 2048 tokens", str(TULU_7B), "v5e-16", []),
             ("7B, rank 64, 2 x 1024 tokens a device", rank_64_config(tempfile.mkdtemp()), "v5e-16", []),
             ("7B's 2 layers, rank 128, 4 x 512 tokens a device", str(TULU_7B), "v4-8",
              ["model.num_layers=2", "data.seq_len=512"])]
    rows, summary = [], {}
    for name, config, slice_name, overrides in cases:
        plan = compile_features(load_run_config(config, overrides), tpu_topology(slice_name))
        ratio = plan.needed / plan.compiled["xla_bytes"]
        rows.append([name, slice_name, f"{plan.rows // plan.devices}", f"{plan.needed / GIB:.2f}",
                     f"{plan.compiled['xla_bytes'] / GIB:.2f}", f"**{ratio:.2f}**", f"{plan.compiled['compile_s']}"])
        summary[f"{slice_name}:{name}"] = ratio
        print(rows[-1], flush=True)
    body = common.table(["pass", "slice", "examples a device", "plan GiB", "compiler GiB", "plan / compiler",
                         "compile s"], rows)
    print(body)
    common.finish(args, "LESS's feature pass: plan against XLA:TPU (issue 80, item 4)", body, summary,
                  load_before=load_before)


if __name__ == "__main__":
    main()
