"""Multi-host training: 2 local processes (gloo collectives, 4 CPU devices each) through the real CLI give
the losses of a single-process 8-device run fed the same global batches (host 0's rows, then host 1's)."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from instructjax.core.config import load_config
from instructjax.data.pipeline import BATCH_KEYS, DataPipeline
from instructjax.train import setup as run_setup
from instructjax.train.trainer import Trainer

OVERRIDES = [
    "model.preset=tiny", "model.dtype=float32", "data.mixture=acp_ACP_n10000_builtin", "data.seq_len=128",
    "data.global_batch=8", "data.pack_window=64", "optim.lr=3e-3", "optim.epochs=1", "log_every=1",
    "max_steps=3", "checkpoint.every=2", "mesh.data=4", "mesh.fsdp=2",
]  # fmt: skip


class TwoHostFeed:
    """What the two hosts feed, as one process: each step, host 0's rows then host 1's."""

    def __init__(self, config):
        self.hosts = [DataPipeline(config, process_index=i, process_count=2) for i in range(2)]
        self.task_names = self.hosts[0].task_names

    def plan_epoch(self, epoch=0):
        return self.hosts[0].plan_epoch(epoch)

    def __iter__(self):
        for parts in zip(*self.hosts, strict=True):
            yield {k: np.concatenate([p[k] for p in parts]) for k in BATCH_KEYS}

    @property
    def state(self):
        return self.hosts[0].state


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    port = _free_port()
    procs = []
    for i in range(2):
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
               "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)}  # fmt: skip
        cmd = [sys.executable, "-m", "instructjax.cli", "train", "--config", "/dev/null", *OVERRIDES,
               f"run_dir={tmp_path / 'multi'}"]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]

    config = load_config(None, [*OVERRIDES, f"run_dir={tmp_path / 'single'}"])
    single_feed = TwoHostFeed(run_setup.bind_data(config, None).config)  # the data as the trainer binds it
    single = Trainer(config, devices=jax.devices()[:8], pipeline=single_feed).run()

    records = [json.loads(line) for line in (tmp_path / "multi" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    np.testing.assert_allclose([r["loss"] for r in records], [single.losses[s] for s in (1, 2, 3)], rtol=2e-5)
    saved = sorted(int(p.name) for p in (tmp_path / "multi" / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [2, 3]
    # every host's iterator state is in the checkpoint, one row per host, as the reference hosts stand
    feed = single_feed.hosts
    assert _data_item(tmp_path / "multi", 3).tolist() == [h.state.to_array().tolist() for h in feed]


def _data_item(run_dir, step):
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(run_dir / "checkpoints", item_handlers={"data": ocp.StandardCheckpointHandler()}) as m:
        return np.asarray(m.restore(step, args=ocp.args.Composite(data=ocp.args.StandardRestore()))["data"])
