"""`plan`'s evaluation figures (cli/plan_eval.py): LLaMA-2-13B on a v5e-16 by hand, and the slots chosen to fit."""

from __future__ import annotations

import json

from helpers import REPO

from instructjax.cli import main

CONFIG = str(REPO / "instructjax/configs/seed004_tulu/tulu_human_gpt_llama2_13b.yaml")
GIB = 2**30


def _eval_plan(capsys, *overrides: str) -> dict:
    main(["plan", "--config", CONFIG, "--topology", "v5e-16", "--json", *overrides])
    return json.loads(capsys.readouterr().out)["eval"]


def test_llama2_13b_on_v5e_16_by_hand_and_slots_chosen_to_fit(capsys):
    """13,015,864,320 parameters (40 layers of 5120 wide, MLP 13824, vocab 32000) in bfloat16 do not fit one 16 GiB
    chip beside a cache, so they split over fsdp=16; a slot's cache is keys and values of 40 layers x 4096 tokens x
    5120 in bfloat16; the slots chosen fit in 90% of the HBM and twice as many (eval.slots) do not."""
    plan = _eval_plan(capsys)
    assert plan["mesh"] == {"data": 1, "fsdp": 16, "tensor": 1} and plan["dtype"] == "bfloat16"
    assert abs(plan["weights"] - 13_015_864_320 * 2 / 16) < 2**20  # norms do not split evenly: within 1 MiB
    assert plan["cache"] == plan["slots"] // 16 * 2 * 40 * 4096 * 5120 * 2
    assert plan["slots_from"] == "chosen to fit" and plan["fits"] and plan["total"] <= 0.9 * 16 * GIB
    more = _eval_plan(capsys, f"eval.slots={2 * plan['slots']}")
    assert more["slots"] == 2 * plan["slots"] and more["slots_from"] == "eval.slots"
    assert plan["slots"] == 32 or not more["fits"]  # 32: the engine's most (generate's default)
    assert "eval        mesh data=1,fsdp=16,tensor=1, bfloat16" in (main(["plan", "--config", CONFIG, "--topology",
                                                                          "v5e-16"]), capsys.readouterr().out)[1]
