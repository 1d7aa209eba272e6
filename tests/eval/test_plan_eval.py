"""`plan`'s evaluation figures (cli/plan_eval.py): LLaMA-2-13B on a v5e-16 by hand, and the slots chosen to fit."""

from __future__ import annotations

import json

import pytest
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
    5120 in bfloat16; the slots chosen fit in 90% of the HBM and twice as many (eval.slots) do not. Against the TPU
    compiler (`plan --compile --eval`, benchmarks/RESULTS.md): at 16 slots the fill step takes 10.24 GiB a device and
    the decode step 6.19, at 32 slots the fill 14.49 (above 90% of a chip) and the decode 10.44."""
    plan = _eval_plan(capsys)
    assert plan["mesh"] == {"data": 1, "fsdp": 16, "tensor": 1} and plan["dtype"] == "bfloat16"
    assert abs(plan["weights"] - 13_015_864_320 * 2 / 16) < 2**20  # norms do not split evenly: within 1 MiB
    assert plan["cache"] == plan["slots"] // 16 * 2 * 40 * 4096 * 5120 * 2
    assert plan["slots_from"] == "chosen to fit" and plan["fits"] and plan["total"] <= 0.9 * 16 * GIB
    more = _eval_plan(capsys, f"eval.slots={2 * plan['slots']}")
    assert more["slots"] == 2 * plan["slots"] and more["slots_from"] == "eval.slots"
    assert plan["slots"] == 16 and not more["fits"]  # the compiled fill at 32 slots does not fit
    compiler = {16: {"fill": 10.24, "decode": 6.19}, 32: {"fill": 14.49, "decode": 10.44}}
    for figures in (plan, more):
        for step, xla in compiler[figures["slots"]].items():
            total = figures["weights"] + figures["cache"] + figures[step]
            assert total == pytest.approx(xla * GIB, rel=0.10), (figures["slots"], step, total / GIB)
    assert "eval        mesh data=1,fsdp=16,tensor=1, bfloat16" in (main(["plan", "--config", CONFIG, "--topology",
                                                                          "v5e-16"]), capsys.readouterr().out)[1]


def test_decode_step_updates_the_cache_in_place_and_matches_plan_on_8_cpu_devices():
    """The engine's decode step built by XLA:CPU for the 8 host devices (a tiny model whose KV cache, 4096 rows of
    32 slots in 4 layers, outweighs its weights): the donated cache is aliased whole to the output and the step's
    temporaries are a small part of it (no second copy of the cache in the decode loop: a concatenate or a `where`
    over it, or a carry rebuilt, would double it), and plan's per-device figure is within 10% of XLA's (0.96).
    Data parallelism only: XLA:CPU hoists every layer's fsdp gathers out of the decode loop, where XLA:TPU gathers
    them a layer at a time (model/decoding.py), and its fill step keeps unfused attention scores; the fsdp terms and
    the fill are checked with `plan --compile --eval` against XLA:TPU (benchmarks/RESULTS.md)."""
    from instructjax.cli.plan_eval import compile_eval
    from instructjax.core.config import load_config
    from instructjax.train.topology import Topology

    config = load_config(REPO / "configs/quickstart.yaml", ["mesh.data=8", "model.max_position_embeddings=4096",
                                                            "model.num_kv_heads=4", "model.num_layers=4"])
    plan, (step,) = compile_eval(config, Topology("cpu-8", 8, 1.0, 1, "cpu"), steps=("decode",))
    assert plan.mesh == {"data": 8, "fsdp": 1, "tensor": 1} and plan.cache > 1.5 * plan.weights
    assert step.aliases == plan.cache and step.temporaries < 0.2 * plan.cache, step
    assert step.plan_bytes == pytest.approx(step.xla_bytes, rel=0.10), step


def test_a_model_whose_weights_alone_fit_a_chip_splits_them_where_its_steps_would_not(capsys):
    """OLMoE-1B-7B's 6,919,161,856 parameters in bfloat16 (12.9 GiB) fit one 16 GiB v5e chip, and with a cache of one
    4096-token sequence (16 layers x 2 x 4096 x 2048 x 2 bytes) still under 90% of it, but not with a 4096-token
    prompt's fill (its attention scores alone, 4096 x 16 heads x 4096 in float32 and bfloat16, 1.5 GiB): the eval
    mesh splits the weights over fsdp, and the plan fits."""
    weights, cache, scores = 6_919_161_856 * 2, 16 * 2 * 4096 * 2048 * 2, 4096 * 16 * 4096 * 6
    assert weights + cache <= 0.9 * 16 * GIB < weights + cache + scores  # data parallel would not fit
    main(["plan", "--config", str(REPO / "instructjax/configs/moe/olmoe_1b_7b_tulu_human_gpt.yaml"), "--topology",
          "v5e-16", "--json"])
    plan = json.loads(capsys.readouterr().out)["eval"]
    assert plan["mesh"] == {"data": 1, "fsdp": 16, "tensor": 1} and plan["fits"], plan
