"""The docs' `plan` figures are what `plan` prints: docs/launch_tpu.md's walk through the 7B Tulu config (memory a
chip, epoch, run, step layout, the slices it does and does not fit, the mesh proposals; the quickstart's run line),
its table's plan column
(the compiler's column is benchmarks/tpu_compile.py's, measured; each ratio is checked against both), and
docs/pretrained.md's Gemma-2 and LoRA figures. Each figure is built here from a plan and looked for in the page's text (line
breaks read as spaces): a doc that keeps an old figure fails."""

from __future__ import annotations

import re

import pytest
from helpers import REPO

from instructjax.core.config import load_config
from instructjax.train.memory import GIB
from instructjax.train.plan import format_plan, make_plan, plan_with_proposal
from instructjax.train.topology import tpu_topology

pytestmark = pytest.mark.slow
CONFIGS = REPO / "configs"
TULU7B = CONFIGS / "seed004_tulu" / "tulu_human_gpt_llama2_7b.yaml"
FSDP = ["mesh.data=1", "mesh.fsdp=-1"]  # the mesh written out instead of `auto`
# the launch page's table: its config column -> the config file (benchmarks/tpu_compile.py's RUNS)
TABLE = {"quickstart": "quickstart.yaml",
         "Tulu Human+GPT LLaMA-2 7B": "seed004_tulu/tulu_human_gpt_llama2_7b.yaml",
         "Tulu Human+GPT LLaMA-2 13B": "seed004_tulu/tulu_human_gpt_llama2_13b.yaml",
         "Tulu Human+GPT LLaMA 33B": "seed004_tulu/tulu_human_gpt_llama1_33b.yaml",
         "Tulu Human+GPT LLaMA 65B": "seed004_tulu/tulu_human_gpt_llama1_65b.yaml",
         "Magpie Mosaic-IT Llama-3-8B": "seed003_mosaic/magpie_mosaic_llama3_8b.yaml",
         "Magpie Mosaic-IT Phi-3 mini": "seed003_mosaic/magpie_mosaic_phi3_mini.yaml",
         "Magpie Mosaic-IT Gemma-2 2B": "seed003_mosaic/magpie_mosaic_gemma2_2b.yaml",
         "ACP LLaMA-2 7B": "seed000_acp/acp_ACP_llama2_7b.yaml",
         "ACP LLaMA-2 13B": "seed000_acp/acp_ACP_llama2_13b.yaml",
         "Alpaca longest 9k LLaMA-2 7B": "seed002_selection/alpaca_longest_9k_llama2_7b.yaml"}


def text(page: str) -> str:
    return " ".join((REPO / "docs" / page).read_text().split())


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def test_launch_pages_walk_through_the_7b_config_is_plans():
    page = text("launch_tpu.md")
    plan = plan_with_proposal(load_config(TULU7B), tpu_topology("v4-64"))
    m, a, d = plan.memory, plan.activations, plan.data
    (rows, length), = d.step_shapes
    figures = [f"parameter count ({m['params']:,})", f"parameters ({gib(m['param_bytes'])})",
               f"AdamW state ({gib(m['opt_bytes'])})", f"gradients ({gib(m['grad_bytes'])})",
               f"activations ({gib(a['total'])}, full remat: the mean step's 128 examples packed into about {rows} "
               f"rows of {length:,} tokens",
               f"{d.examples:,} examples, {d.steps:,} steps of 128 examples, {d.run_steps:,} steps for the paper's 2 "
               "epochs", f"{d.real_share:.1%} of the tokens real in the plan's estimate",
               f"mean Tulu step fills about {round(128 * d.tokens / d.examples / 2048)} rows of 2048",
               f"by the compiler against plan's {plan.total_bytes / GIB:.2f}"]
    small, large = (make_plan(load_config(TULU7B), tpu_topology(s)) for s in ("v5e-8", "v5e-16"))
    state = small.memory["param_bytes"] + small.memory["opt_bytes"] + small.memory["grad_bytes"]
    assert not small.fits and large.fits
    figures += [f"alone take {state / GIB:.1f} GiB of each chip's 16", f"a v5e-16 does ({large.total_bytes / GIB:.1f} "
                "GiB a chip)"]
    fsdp, auto = (plan_with_proposal(load_config(TULU7B, o), tpu_topology("v4-128")) for o in (FSDP, []))
    figures += [f"`proposal {fsdp.proposal.split(' of the tokens')[0]} ...`",
                f"`proposal {auto.proposal}` on a v4-128: {auto.data.real_share:.1%} of the 7B Tulu steps' tokens real, "
                f"against {fsdp.data.real_share:.1%} for FSDP over all 64 chips"]
    quickstart = plan_with_proposal(load_config(CONFIGS / "quickstart.yaml"), tpu_topology("v5e-1")).data.run
    figures.append(f"`{quickstart.split(' (')[0]} ...` for the quickstart")
    missing = [f for f in figures if f not in page]
    assert not missing, missing
    assert "config      " in format_plan(plan)  # the block above these figures prints this plan


def test_launch_pages_table_has_plans_column():
    rows = [line.split("|")[1:-1] for line in (REPO / "docs" / "launch_tpu.md").read_text().splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in TABLE]
    assert len(rows) == len(TABLE)
    for name, slice_name, mesh, plan_gib, compiler_gib, ratio, _ in ([c.strip() for c in row] for row in rows):
        plan = plan_with_proposal(load_config(CONFIGS / TABLE[name]), tpu_topology(slice_name))
        assert mesh == " x ".join(str(v) for v in plan.mesh.values()), name
        assert plan_gib == f"{plan.total_bytes / GIB:.2f}", name
        p, c = float(plan_gib), float(compiler_gib)  # each rounded to 0.01 GiB, the ratio of unrounded ones
        assert abs(float(ratio) - p / c) <= 0.006 + p / c * (0.005 / p + 0.005 / c), name


def test_pretrained_pages_figures_are_plans():
    """The Gemma-2 2B plan's comment and the LoRA one's figure; the LoRA plan's activation line adds up."""
    page = text("pretrained.md")
    gemma = ["model.preset=gemma2-2b", "model.remat=full", "mesh.data=1", "mesh.fsdp=16", "data.seq_len=2048",
             "data.global_batch=64"]  # the page's command
    plan = make_plan(load_config(CONFIGS / "quickstart.yaml", gemma), tpu_topology("v4-32"))
    assert plan.fits and f"# {plan.memory['params'] / 1e9:.1f}B parameters, {plan.total_bytes / GIB:.1f} GiB a chip" in page
    plan = plan_with_proposal(load_config(TULU7B, ["model.overrides.lora={rank: 16}"]), tpu_topology("v4-8"))
    assert plan.fits
    assert f"fits a v4-8 (plan {plan.total_bytes / GIB:.2f} GiB a chip" in page
    a = plan.activations  # the activation line's parts add up to its total
    parts = [float(x) for x in re.findall(r"([\d.]+) GiB", format_plan(plan).split("activations")[1].split(";")[0])]
    assert parts[0] == pytest.approx(parts[1] + parts[2], abs=0.011) and parts[0] == round(a["total"] / GIB, 2)
