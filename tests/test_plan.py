"""`instructjax plan` against hand-computed numbers for LLaMA-2 7B (and topologies, fit, errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from instructjax.cli import main
from instructjax.core.config import load_config
from instructjax.core.errors import ConfigError
from instructjax.model.config import preset
from instructjax.train.plan import GIB, activation_bytes, gpu_topology, make_plan, tpu_topology

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
TULU7B = CONFIGS / "seed004_tulu" / "tulu_human_gpt_llama2_7b.yaml"

# LLaMA-2 7B by hand: per layer q,k,v,o 4 x 4096^2 = 67,108,864; MLP 3 x 4096 x 11008 = 135,266,304;
# two norms 8,192 -> 202,383,360 x 32 layers = 6,476,267,520; embeddings + lm_head 2 x 32000 x 4096
# = 262,144,000; final norm 4,096.
PARAMS_7B = 6_738_415_616
NORM_BYTES = 65 * 4096 * 4  # 65 RMSNorm scales (fp32), replicated by the rules table ("norm": None)


def test_topologies():
    assert tpu_topology("v4-64") == tpu_topology("V4-64")
    t = tpu_topology("v4-64")
    assert (t.devices, t.hbm_gib, t.hosts) == (32, 32, 8)  # 64 TensorCores = 32 chips, 4 per host
    assert (tpu_topology("v5e-16").devices, tpu_topology("v5litepod-8").hosts, tpu_topology("v5e-8").hbm_gib) == \
        (16, 1, 16)
    assert (tpu_topology("v5p-128").devices, tpu_topology("v5p-128").hbm_gib) == (64, 95)
    assert (gpu_topology(16, "a100-40").hosts, gpu_topology(8).hbm_gib) == (2, 80)
    for bad in ("v9-8", "v4-3", "tpu"):
        with pytest.raises(ConfigError):
            tpu_topology(bad)
    with pytest.raises(ConfigError, match="GPU type"):
        gpu_topology(8, "k80")


@pytest.fixture(scope="module")
def tulu7b_v4_64():
    return make_plan(load_config(TULU7B), tpu_topology("v4-64"))


def test_llama2_7b_state_memory_by_hand(tulu7b_v4_64):
    plan = tulu7b_v4_64
    m = plan.memory
    assert plan.mesh == {"data": 1, "fsdp": 32, "tensor": 1}
    assert m["params"] == PARAMS_7B
    assert m["param_bytes_global"] == 4 * PARAMS_7B == 26_953_662_464  # fp32 master weights: 26.95 GB
    # FSDP over 32 chips: every matrix is split 32 ways, the norm scales are whole on every chip
    assert m["param_bytes"] == (4 * PARAMS_7B - NORM_BYTES) // 32 + NORM_BYTES == 843_333_632
    # AdamW: mu and nu in fp32 sharded like the params, plus two int32 step counters
    assert m["opt_bytes_global"] == 2 * 4 * PARAMS_7B + 8
    assert m["opt_bytes"] == 2 * 843_333_632 + 8
    assert m["grad_bytes"] == 843_333_632  # one fp32 gradient, no accumulator at micro_batches=1


def test_llama2_7b_activations_and_data_by_hand(tulu7b_v4_64):
    a = tulu7b_v4_64.activations
    # 128 rows / 32 devices = 4 rows of 2048 per device, remat "full": each layer keeps its input
    # 2 x 2048 x 4 x 4096 bytes; one layer is recomputed with everything: 2*2048*4*(4*4096 + 64*128 + 4*11008)
    # + splash attention's float32 log-sum-exp 4*32*2048*4 (no 2048^2 term on TPU); logits 6 bytes x 2048 x 4 x 32000.
    assert a["attention"] == "splash"
    assert a["layers"] == 32 * 67_108_864 + (16_384 * 76_800 + 1_048_576)
    assert a["logits"] == 1_572_864_000
    assert a["total"] == 4_979_687_424
    assert tulu7b_v4_64.total_bytes == 843_333_632 * 4 + 8 + 4_979_687_424
    assert tulu7b_v4_64.fits
    d = tulu7b_v4_64.data
    # Human+GPT: FLAN V2 100K + CoT 100K + Dolly 15,011 + OASST1 34,795 + GPT4-Alpaca 52,002 + Code-Alpaca
    # 20,022 + ShareGPT 168,864 = 490,694 examples, unpacked: ceil(490,694 / 128) = 3,834 steps per epoch
    assert (d.examples, d.rows, d.steps) == (490_694, 490_694, 3_834)


def test_activation_policies_order():
    model = preset("llama2-7b")
    sizes = {r: activation_bytes(model.replace(remat=r), 4, 2048, 1)["total"] for r in
             ("none", "full", "save_attention", "dots_with_no_batch_dims_saveable", "dots_saveable")}
    assert sizes["full"] < sizes["save_attention"] < sizes["dots_with_no_batch_dims_saveable"]
    # a fused kernel's einsums stay inside it: dots_saveable saves nothing more; the dense one's scores it does
    assert sizes["dots_saveable"] == sizes["dots_with_no_batch_dims_saveable"]
    dense = {r: activation_bytes(model.replace(remat=r, attention="xla"), 4, 2048, 1)["total"]
             for r in ("dots_with_no_batch_dims_saveable", "dots_saveable")}
    assert dense["dots_saveable"] - dense["dots_with_no_batch_dims_saveable"] == 32 * (4 * 32 * 2048**2 * 4 +
                                                                                      2 * 2048 * 4 * 32 * 128)
    assert sizes["none"] == 32 * (1_258_291_200 + 1_048_576) + 1_572_864_000  # no recompute term, fused attention
    # the dense attention keeps its bf16 probabilities, 2*32*2048^2*4 bytes a layer; a GPU runs a fused kernel too
    dense = model.replace(remat="none", attention="xla")
    assert activation_bytes(dense, 4, 2048, 1)["total"] == 32 * (1_258_291_200 + 1_073_741_824) + 1_572_864_000
    assert activation_bytes(model.replace(remat="none"), 4, 2048, 1, "gpu")["attention"] == "pallas_gpu"
    assert activation_bytes(model.replace(remat="none"), 4, 2048, 1, "gpu")["total"] == sizes["none"]
    # tensor parallelism divides the head/MLP parts and the logits
    assert activation_bytes(model, 4, 2048, 4)["logits"] == 1_572_864_000 // 4


def test_does_not_fit_and_errors():
    config = load_config(TULU7B)
    small = make_plan(config, tpu_topology("v5e-8"))  # 16 GiB chips, 16 rows each
    assert not small.fits and small.total_bytes > 16 * GIB
    assert make_plan(config, gpu_topology(8, "h100")).memory["param_bytes"] == (4 * PARAMS_7B - NORM_BYTES) // 8 + \
        NORM_BYTES
    with pytest.raises(ConfigError, match="not divisible"):  # 32 heads do not split over tensor=3
        make_plan(load_config(TULU7B, ["mesh.tensor=3"]), gpu_topology(6))
    with pytest.raises(ConfigError, match="does not divide"):
        make_plan(load_config(TULU7B, ["mesh.tensor=3"]), tpu_topology("v4-64"))
    with pytest.raises(ConfigError, match="not divisible by the 8 host"):  # v4-64: 32 chips on 8 hosts
        make_plan(load_config(TULU7B, ["data.global_batch=100"]), tpu_topology("v4-64"))
    with pytest.raises(ConfigError, match="does not divide over the mesh's data\\*fsdp=32 devices"):
        make_plan(load_config(TULU7B, ["data.global_batch=104"]), tpu_topology("v4-64"))


def test_eval_only_config_and_cli(capsys):
    plan = make_plan(load_config(CONFIGS / "seed000_acp" / "acp_None_llama2_7b.yaml"), tpu_topology("v4-8"))
    assert plan.data is None and plan.memory["grad_bytes"] == 0 and plan.activations["total"] == 0
    assert main(["plan", "--config", str(TULU7B), "--topology", "v4-64"]) == 0
    out = capsys.readouterr().out
    assert "6,738,415,616" in out and "fits" in out and "3,834 steps" in out
    assert main(["plan", "--config", str(TULU7B), "--topology", "v5e-8"]) == 1
    assert "DOES NOT FIT" in capsys.readouterr().out
