"""The mixtures of experts' training step on the CPU, side by side with transformers (issue 67 item 6).

Mixtral, Qwen3-MoE and OLMoE at families_cpu.py's size (4 layers x 256 wide, vocab 32000, float32) with 8 experts of
the dense MLP's width, top 2, at batch 4 x seq 256: instructjax's jitted train step (the router, dropless
`ragged_dot` experts, the router's load-balancing loss, AdamW + clip) against transformers' model, backward, clip and
AdamW, each in its own process: median step time after a warm-up step and peak RSS (families_cpu.py does the work).
Goal: at least transformers' speed.

    python benchmarks/moe_cpu.py [--families mixtral,qwen3_moe,olmoe] [--steps 3] [--seq 256 --batch 4] [--append]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import families_cpu  # noqa: E402

if __name__ == "__main__":
    families_cpu.main(doc=__doc__, families="mixtral,qwen3_moe,olmoe", seq=256, batch=4,
                      title="Mixture-of-experts training step, CPU: instructjax vs transformers (issue 67)")
