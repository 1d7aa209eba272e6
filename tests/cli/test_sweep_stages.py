"""A family of stages: `sweep` runs an SFT config before the DPO config that continues it (its model.init_from is
the SFT run's directory), whatever order the files sort in, and waits while the SFT run has not trained; `report`
then sets the DPO run beside the SFT run it started from (seed 004's `table_preference`)."""

from __future__ import annotations

import csv
import json
import math

from instructjax.cli import main

COMMON = """experiment: {{family: seed004, data: human_gpt}}
run_dir: {root}/runs/{name}
max_steps: 2
log_every: 1
model: {{preset: tiny, dtype: float32{init}}}
data: {{mixture: {mixture}, seq_len: 256, global_batch: 8}}
optim: {{lr: 1.0e-3, warmup_ratio: 0.0}}
checkpoint: {{every: 2, async_save: false}}
"""


def write(configs, root, name: str, mixture: str, extra: str = "", init: str = "") -> None:
    (configs / f"{name}.yaml").write_text(f"name: {name}\n" + COMMON.format(root=root, name=name, mixture=mixture,
                                                                            init=init) + extra)


def test_sweep_trains_the_sft_run_before_the_dpo_run_that_continues_it(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    sft = tmp_path / "runs" / "z_sft"  # sorts after the DPO config: the sweep still trains it first
    write(configs, tmp_path, "z_sft", "alpaca_builtin")
    write(configs, tmp_path, "a_dpo", "preference_builtin", "objective: {loss: dpo, dpo: {beta: 0.1}}\n",
          f", init_from: {sft}")
    assert main(["sweep", str(configs), "--status", str(tmp_path / "sweep.json")]) == 0
    rows = json.loads((tmp_path / "sweep.json").read_text())["rows"]
    assert [(r["config"], r["stage"]) for r in rows][:2] == [("z_sft", "train"), ("z_sft", "export")]
    dpo = [json.loads(line) for line in (tmp_path / "runs" / "a_dpo" / "metrics.jsonl").read_text().splitlines()]
    assert abs(dpo[0]["loss"] - math.log(2)) < 1e-6  # the policy starts as its reference: the SFT run's last step

    assert main(["report", str(configs), "--out", str(tmp_path / "report")]) == 0
    with (tmp_path / "report" / "seed004_table_preference.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(r["Model"], r["Objective"]) for r in table] == [("Tulu (tiny)", "DPO")]


def test_a_dpo_run_waits_while_its_sft_run_has_not_trained(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    write(configs, tmp_path, "z_sft", "no_such_mixture")  # fails to load: never trains
    write(configs, tmp_path, "a_dpo", "preference_builtin", "objective: {loss: dpo}\n",
          f", init_from: {tmp_path / 'runs' / 'z_sft'}")
    assert main(["sweep", str(configs), "--status", str(tmp_path / "sweep.json")]) == 1
    rows = {(r["config"], r["stage"]): r for r in json.loads((tmp_path / "sweep.json").read_text())["rows"]}
    assert rows[("a_dpo", "train")]["result"].startswith("waiting: z_sft")
    assert not (tmp_path / "runs" / "a_dpo").exists()
