"""benchmarks/moe_gpu.py compares a mixture of experts with a dense twin of equal active parameters: the twin's matmul
parameters (counted by `param_count` over its own dense layers) are the mixture's a token uses, but for the routers."""

import sys

from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import common  # noqa: E402
import moe_gpu  # noqa: E402


def test_the_dense_twin_has_the_mixtures_active_parameters():
    args = moe_gpu.parse_args(["--layers", "3", "--hidden", "128", "--experts", "8", "--top", "2", "--width", "64",
                               "--vocab", "512"])
    models = moe_gpu.configs(args)
    moe, dense = models["moe"], models["dense"]
    assert moe.num_experts == 8 and not dense.num_experts and dense.intermediate_size == 2 * 64
    routers = 3 * 128 * 8
    assert moe_gpu.active_matmul_params(moe) - routers == moe_gpu.active_matmul_params(dense) \
        == common.matmul_params(dense)
    assert common.matmul_params(moe) - moe_gpu.active_matmul_params(moe) == 3 * 6 * 3 * 128 * 64  # unchosen experts
