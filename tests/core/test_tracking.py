"""core/tracking.py against W&B itself (offline, its run files read back): the evaluation's numbers land in the run
directory's own W&B run even where this process still has another W&B run open (a run of the user's own, or one a
failure left open); W&B's default would hand that run back, and the numbers would land in it."""

from __future__ import annotations

import pytest

wandb = pytest.importorskip("wandb")


def test_results_land_in_the_run_directorys_own_run_with_another_run_open(tmp_path):
    from helpers import wandb_records

    from instructjax.core import tracking
    from instructjax.core.config import load_config

    run_dir = tmp_path / "run"
    config = load_config("/dev/null", [f"run_dir={run_dir}", "wandb.project=ij-test", "wandb.mode=offline",
                                       f"wandb.dir={tmp_path}"])
    left_open = wandb.init(mode="offline", dir=str(tmp_path), project="another")
    try:
        tracking.log_results(config, {"suite": {"ij_gsm": {"acc": 0.25, "acc_stderr": 0.1}}, "step": 3})
    finally:
        left_open.finish()
    logged = wandb_records.summary(tmp_path, tracking.run_id(str(run_dir)))
    assert {k: v for k, v in logged.items() if k.startswith("eval/")} == {"eval/suite/ij_gsm/acc": 0.25}
