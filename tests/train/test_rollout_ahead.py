"""Rollouts made ahead (`objective.grpo.async_steps`, issue 81 item 3), against a loop written here from the rule alone:
step t trains on the synchronous `Rollouts.rollout` of the parameters after update t - 1 - k (the first ones for the
first steps), the rollouts made in step order; a run stopped and resumed trains as the uninterrupted one."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from instructjax.core.config import load_config
from instructjax.train.metrics import read_metrics
from instructjax.train.reference import prepare
from instructjax.train.trainer import Trainer, on_mesh

IFEVAL_DRAWN = repr([json.dumps({"instruction_id": ["length_constraints:number_words"], "kwargs": [None]})])
STEPS = 3


@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    """A verifiable task whose rewards vary (IFEvalG's word count with its kwargs null: a relation and count drawn
    for each completion), as a config file."""
    from instructjax.data.sources.synthetic import synthetic_rows

    folder = tmp_path_factory.mktemp("prompts")
    (folder / "rows").mkdir()
    (folder / "rows" / "rows.jsonl").write_text("".join(
        json.dumps({**row, "dataset": "ifeval", "ground_truth": IFEVAL_DRAWN}) + "\n"
        for row in synthetic_rows("verifiable", 24)))
    config = folder / "grpo.yaml"
    config.write_text(json.dumps({"define": {"tasks": {"drawn_81": {"source": "verifiable",
                                                                     "data_files": [str(folder / "rows")]}}}}))
    return config


def config_args(run_dir, k: int) -> list[str]:
    return ["model.preset=tiny", "model.dtype=float32", "optim.lr=3e-3", "data.mixture=drawn_81", "data.seq_len=64",
            "data.global_batch=8", "objective.loss=grpo", "objective.grpo.beta=0", "objective.grpo.prompts_per_rollout=4",
            "objective.grpo.samples_per_prompt=2", "objective.grpo.response_length=6", "objective.grpo.temperature=1.0",
            f"max_steps={STEPS}", "log_every=1", f"objective.grpo.async_steps={k}", f"run_dir={run_dir}"]


def config_of(prompts, run_dir, k: int):
    return load_config(prompts, config_args(run_dir, k))


def by_rule(config, k: int) -> dict[int, float]:
    """Each step's loss, the loop written from the rule: step t's batch the synchronous rollout of update
    max(0, t - 1 - k)'s parameters (each update's kept: the step donates its own)."""
    trainer = Trainer(config)
    try:
        params, opt_state, *_ = trainer.init_state()
        reference = prepare(trainer.run_dir, trainer.config, trainer.model_config, trainer.build, trainer.base,
                               None, params, 0)
        updates, losses = [jax.tree.map(jnp.copy, params)], {}
        with jax.set_mesh(trainer.mesh):
            for step in range(1, STEPS + 1):
                made = trainer.pipeline.rollout(updates[max(0, step - 1 - k)])
                params, opt_state, metrics = trainer.build.step(
                    params, opt_state, on_mesh(made.rows, trainer.build.batch_sharding), *reference.step_args)
                updates.append(jax.tree.map(jnp.copy, params))
                losses[step] = float(metrics["loss"])
    finally:
        trainer.lock.release()
    return losses


@pytest.mark.parametrize("k", [0, 1])
def test_each_step_trains_on_the_rollout_of_update_t_minus_1_minus_k_and_resumes_exactly(prompts, tmp_path, capsys, k):
    """The run's losses are the rule's (k = 0: today's synchronous rollouts, bit for bit; k = 1: steps 1 and 2 on the
    first parameters' rollouts, step 3 on update 1's), its staleness logged; stopped after step 1 (k = 1: step 2's
    rollout, made from parameters no checkpoint holds, saved beside it) and resumed, every step's loss and scores are
    the uninterrupted run's; resumed with k = 0 instead, the rollout made ahead is dropped in one line."""
    whole = Trainer(config_of(prompts, tmp_path / "whole", k)).run()
    assert whole.losses == by_rule(config_of(prompts, tmp_path / "rule", k), k)
    records = {r["step"]: r for r in read_metrics(tmp_path / "whole")}
    if k:
        assert [records[s]["rollout/staleness"] for s in (1, 2, 3)] == [0.0, 1.0, 1.0]
        assert records[2]["rollout/staleness_1"] == 1.0 and "rollout/staleness_1" not in records[1]
    else:
        assert "rollout/staleness" not in records[1]
    Trainer(config_of(prompts, tmp_path / "stopped", k)).run(stop_at=1)
    if k:
        assert sorted(p.name for p in (tmp_path / "stopped" / "rollouts").iterdir()) == ["step-1.npz"]
        shutil.copytree(tmp_path / "stopped", tmp_path / "smaller_k")
    resumed = Trainer(config_of(prompts, tmp_path / "stopped", k), resume=True).run()
    assert resumed.losses == {s: whole.losses[s] for s in (2, 3)}
    again = {r["step"]: r for r in read_metrics(tmp_path / "stopped")}
    assert [again[s]["scores"] for s in (1, 2, 3)] == [records[s]["scores"] for s in (1, 2, 3)]
    assert len({records[s]["scores"] for s in (1, 2, 3)}) > 1  # the rewards vary
    if k:  # resumed with k = 0: the rollout made ahead is too old now, dropped in one line (open-instruct's rule)
        capsys.readouterr()
        result = Trainer(config_of(prompts, tmp_path / "smaller_k", 0), resume=True, accept_changes=True).run()
        assert sorted(result.losses) == [2, 3] and all(np.isfinite(v) for v in result.losses.values())
        warnings = [line for line in capsys.readouterr().err.splitlines() if "made ahead" in line]
        assert warnings == ["instructjax: warning: the 1 rollouts made ahead of step 1 are dropped "
                            "(objective.grpo.async_steps is 0: each step's rollout is made from the parameters before it)"]


def test_the_engine_on_devices_of_its_own_makes_the_rollouts_the_trainers_devices_make(prompts, tmp_path):
    """`objective.grpo.rollout_devices: 4` of 8 devices (the engine on the last 4, the learner on the first 4, each update's
    parameters sent over) with k = 1 trains as the same run on 4 devices with the engine on the trainer's mesh (one
    shape of mesh each: the same programs): every step's loss and scores."""
    apart = Trainer(load_config(prompts, [*config_args(tmp_path / "apart", 1),
                                          "objective.grpo.rollout_devices=4"])).run()
    together = Trainer(config_of(prompts, tmp_path / "together", 1), devices=jax.devices()[:4]).run()
    assert apart.losses == together.losses
    scores = [[r["scores"] for r in read_metrics(tmp_path / name)] for name in ("apart", "together")]
    assert scores[0] == scores[1]
