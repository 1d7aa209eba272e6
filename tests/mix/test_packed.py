"""Proxies stacked in one vmapped step (`mix train SWARM_DIR --packed K`, train/packed.py) against each proxy trained
alone by the trainer: every step's loss, and each source's, within 1e-6, through a packed stop and a packed resume; a
proxy stopped in a pack resumes alone to the same losses; proxies that differ in more than their data are one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers.host_devices import one_device

from instructjax.cli import main
from instructjax.core.config import load_config
from instructjax.core.context import Context, current
from instructjax.core.errors import ConfigError
from instructjax.train.packed import PackedTrainer
from instructjax.train.trainer import Trainer

STEPS = 2


@pytest.fixture(autouse=True)
def on_one_device():
    with one_device():  # nothing here is about sharding: the runs on one of the 8 CPU devices, stacked or not
        yield


@pytest.fixture(scope="module")
def swarm(tmp_path_factory):
    """Two proxies drawn on the A/C/P sources (one mixture name, each at its own rates), 2 steps each."""
    root = tmp_path_factory.mktemp("packed")
    base = root / "base.yaml"
    base.write_text(yaml.safe_dump({
        "name": "acp", "run_dir": str(root / "runs" / "acp"), "model": {"preset": "tiny", "dtype": "float32"},
        "data": {"mixture": "acp_ACP_builtin", "seq_len": 128, "global_batch": 8, "pack_window": 16},
        "optim": {"lr": 3e-3, "warmup_ratio": 0.0}, "log_every": 1}))  # fmt: skip
    assert main(["mix", "swarm", "--config", str(base), "--runs", "2", "--seed", "1", "--out", str(root / "swarm"),
                 "--max-repetition", "8", f"max_steps={STEPS}"]) == 0
    configs = sorted((root / "swarm").glob("acp_proxy*.yaml"))
    return root, configs


def config_at(path, run_dir):
    return load_config(str(path), [f"run_dir={run_dir}"])


def alone(path, run_dir, **kwargs):
    with Context(parent=current()):  # as `sweep` trains a proxy: its own registry
        return Trainer(config_at(path, run_dir), **{k: v for k, v in kwargs.items() if k != "stop_at"}).run(
            stop_at=kwargs.get("stop_at"))


def logged(run_dir) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k in ("step", "loss") or k.startswith("loss/")} for line in lines]


def test_packed_proxies_train_as_each_alone_through_a_stop_and_a_resume(swarm, capsys):
    root, configs = swarm
    separate = [alone(path, root / "alone" / path.stem).losses for path in configs]
    assert separate[0] != separate[1]  # their data differ
    packed = [load_config(str(path)) for path in configs]
    PackedTrainer(packed).run(stop_at=1)  # stopped after step 1, saved
    assert main(["mix", "train", str(root / "swarm"), "--packed", "2"]) == 0  # resumed together, to the end
    assert "resuming 2 proxies in one step" in capsys.readouterr().out
    for path, config in zip(configs, packed, strict=True):
        mine, theirs = logged(Path(config.run_dir)), logged(root / "alone" / path.stem)
        assert [r["step"] for r in mine] == list(range(1, STEPS + 1)) == [r["step"] for r in theirs]
        for a, b in zip(mine, theirs, strict=True):
            assert a.keys() == b.keys() and a == pytest.approx(b, rel=1e-6, abs=1e-6)
    assert main(["mix", "train", str(root / "swarm"), "--packed", "2"]) == 0  # every proxy done: nothing to train
    assert "0 proxies trained" in capsys.readouterr().out

    # a proxy stopped in a pack resumes alone (its checkpoint is its own run's)
    stopped = [config_at(path, root / "split" / path.stem) for path in configs]
    PackedTrainer(stopped).run(stop_at=1)
    rest = alone(configs[0], root / "split" / configs[0].stem, resume=True)
    assert sorted(rest.losses) == [2] and rest.losses[2] == pytest.approx(separate[0][2], rel=1e-6)


def test_proxies_that_differ_in_more_than_their_data_are_one_line(swarm, tmp_path, capsys):
    root, configs = swarm
    other = yaml.safe_load(configs[1].read_text())
    other["optim"]["lr"] = 1e-3
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(ConfigError) as info:
        PackedTrainer([load_config(str(configs[0]), [f"run_dir={tmp_path / 'a'}"]),
                       load_config(str(tmp_path / "other.yaml"), [f"run_dir={tmp_path / 'b'}"])])
    assert "differ in optim" in str(info.value) and "\n" not in str(info.value)
    assert main(["mix", "train", str(root / "swarm"), "--packed", "0"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


def test_plan_compile_packed_builds_k_proxies_state_and_batches_and_counts_what_fits(swarm):
    """The stacked step's arguments (parameters, optimizer state, batch) are K times one proxy's step's, as the
    compiler lays them out; `proxies_that_fit` divides the usable memory by a proxy's share of the stacked step."""
    from instructjax.train.compile import compile_run
    from instructjax.train.topology import local_topology

    _, configs = swarm
    config, topology = load_config(str(configs[0])), local_topology()
    alone_step, stacked = compile_run(config, topology), compile_run(config, topology, packed=3)
    one, three = alone_step.shapes[0], stacked.shapes[0]
    assert (three.rows, three.length) == (one.rows, one.length) and three.arguments == 3 * one.arguments
    assert stacked.proxies_that_fit == int(stacked.usable * three.hbm_bytes // (three.xla_bytes / 3)) >= 3
    assert "proxies_that_fit" in stacked.to_dict() and "proxies_that_fit" not in alone_step.to_dict()
