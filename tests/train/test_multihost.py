"""Multi-host training through the real CLI: 2 and 4 local processes (gloo collectives) against one process
with the same 8 CPU devices.

- without `max_steps`, on a mixture whose size does not divide among 4 hosts, every host plans the same steps,
  the run finishes and saves, and the losses equal the one-process run (the same global batches);
- a LoRA trained by DPO with `data.pack: per_step` on 2 processes, Ctrl-C (SIGINT) to the last of them: both save the
  same step (JAX's preemption sync point, which the SIGINT reaches as a SIGTERM; the adapters alone) and exit 75;
  resumed on 1 process, the losses are the unpacked one-process run's;
- a torn newest checkpoint under 2 processes (a seeded (file, way) of its files): both hosts print the
  same one warning line, fall back to the same step and finish with the uninterrupted run's losses.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers.damage import damage, draw

from instructjax.core.config import load_config
from instructjax.train.trainer import Trainer

pytestmark = pytest.mark.slow

from helpers import WORKER  # noqa: E402
from helpers.host_devices import xla_flags  # noqa: E402

DEVICES = 8
TIMEOUT = 900
BASE = ["model.preset=tiny", "model.dtype=float32", "optim.lr=3e-3", "optim.epochs=1", "log_every=1",
        "mesh.data=4", "mesh.fsdp=2", "data.prefetch=0"]  # fmt: skip
SMALL = [*BASE, "data.mixture=acp_ACP_n10000_builtin", "data.seq_len=128", "data.global_batch=8",
         "data.pack_window=64", "max_steps=4"]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(hosts: int, run_dir, args, *extra, env_extra=None, config="/dev/null") -> list[subprocess.Popen]:
    """`instructjax train` on `hosts` local processes (DEVICES / hosts CPU devices each); `config` may
    name one file per host."""
    port, procs = _free_port(), []
    for i in range(hosts):
        env = {**os.environ, "XLA_FLAGS": xla_flags(DEVICES // hosts), "JAX_PLATFORMS": "cpu", **(env_extra or {})}
        if hosts > 1:
            env |= {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(hosts),
                    "JAX_PROCESS_ID": str(i)}  # fmt: skip
        mine = config[i] if isinstance(config, list) else config
        cmd = [sys.executable, str(WORKER), "train", "--config", str(mine), *args, f"run_dir={run_dir}", *extra]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def wait(procs) -> list[tuple[int, str]]:
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=TIMEOUT)
        finally:
            if p.poll() is None:
                p.kill()
        out.append((p.returncode, err))
    return out


def losses(run_dir) -> dict[int, float]:
    records = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records}


def saved_steps(run_dir) -> list[int]:
    return sorted(int(p.name) for p in (Path(run_dir) / "checkpoints").iterdir() if p.name.isdigit())


def one_process(args, run_dir):
    """The same config trained in this process on the same 8 devices: the reference."""
    return Trainer(load_config(None, [*args, f"run_dir={run_dir}"]), devices=jax.devices()[:DEVICES]).run()


@pytest.fixture(scope="module")
def small_vocab(tmp_path_factory):
    """A 600-id BPE tokenizer, so a whole epoch of the built-in Tulu data trains in seconds per host."""
    from helpers.pretrained_models import bpe_tokenizer

    return bpe_tokenizer(str(tmp_path_factory.mktemp("tokenizer")), vocab_size=600)


def test_hosts_plan_one_run_and_match_one_process(tmp_path, small_vocab, hosts=4, mixture="tulu_single_sharegpt_builtin"):
    """Every host plans the whole epoch of the mixture (every task read, encoded and packed; ShareGPT's
    conversations split into blocks, its size not a multiple of the hosts) and takes its slice of each step: the
    first 2 steps' losses are one process's (the whole epoch took 7 minutes of CI, 8 steps 48 s more than 4; two hosts
    on the Tulu mix, 84 s more of CI, showed nothing four did not; a second step shows the hosts' slices move on)."""
    args = [*BASE, f"tokenizer={small_vocab}", "model.vocab_size=640", f"data.mixture={mixture}",
            "data.seq_len=512", "data.global_batch=16", "data.pack_window=256", "checkpoint.every=1000",
            "max_steps=2"]  # fmt: skip
    results = wait(launch(hosts, tmp_path / "multi", args))
    assert all(rc == 0 for rc, _ in results), results[0][1][-3000:] + results[-1][1][-3000:]
    reference = one_process(args, tmp_path / "single")
    assert reference.step == 2 and saved_steps(tmp_path / "multi") == [reference.step]  # the final save
    got = losses(tmp_path / "multi")
    assert sorted(got) == list(range(1, reference.step + 1))
    np.testing.assert_allclose([got[s] for s in sorted(got)], [reference.losses[s] for s in sorted(got)], rtol=2e-5)


def test_per_step_lora_dpo_preempted_on_two_hosts_resumes_on_one_as_the_unpacked_run(tmp_path, uninterrupted):
    """A LoRA trained by DPO on a saved base with `data.pack: per_step` on 2 processes (each host its slice of every
    step's packed rows, the step shapes agreed), the reference's log-probs cached first (every host runs its share
    of each batch through the base, host 0 stores them), Ctrl-C (SIGINT) to the last host after step 1: it alone
    hears it, and both hosts save the same step (the adapters alone, with the base's reference) and exit 75; resumed
    on 1 (another host count: the plan's slices made again; the cached log-probs read back, not made again), every
    step's loss is the unpacked run's on one process with the reference live. (Resumed on 4, it took 4 processes'
    start and compile for what the other host count proves; the plan test runs 4 hosts, the torn and GRPO tests
    resume on 2. 3 steps: a step before the signal, one after the save; each step shape a host compiles.)"""
    from instructjax.core.checkpoint import load_params
    from instructjax.model import lora

    base = uninterrupted[1]  # a base to adapt: the tiny model trained 4 steps (the torn test copies, not changes, it)
    args = [*BASE, f"model.init_from={base}", "model.lora.rank=4", "model.lora.alpha=8",
            "data.mixture=preference_builtin", "objective.loss=dpo", "data.seq_len=256", "data.global_batch=8",
            "data.pack_window=64", "max_steps=3", "checkpoint.every=1000"]  # fmt: skip
    run_dir = tmp_path / "multi"
    cached = [*args, "data.pack=per_step", "objective.dpo.reference=cached"]
    procs = launch(2, run_dir, cached, env_extra={"FAULT_STEP_SECONDS": "0.5"})
    _signal_after(procs, run_dir, 1, target=1, sig=signal.SIGINT)
    results = wait(procs)
    assert all(rc == 75 for rc, _ in results), [err[-2000:] for _, err in results]
    (step,) = saved_steps(run_dir)
    assert 1 <= step < 3
    saved = jax.tree_util.tree_flatten_with_path(load_params(str(run_dir))[0])[0]
    assert saved and all(path[-1].key in lora.ADAPTERS for path, _ in saved)  # the base is not saved again
    (stored,) = (run_dir / "reference_logps").iterdir()
    stamp = stored.stat().st_mtime_ns
    results = wait(launch(1, run_dir, cached, "--resume"))
    assert all(rc == 0 for rc, _ in results), results[0][1][-3000:] + results[-1][1][-3000:]
    assert stored.stat().st_mtime_ns == stamp
    reference = one_process([*args, "data.pack=false", "objective.dpo.reference=live"], tmp_path / "single")
    got = losses(run_dir)
    assert sorted(got) == list(range(1, 4))
    np.testing.assert_allclose([got[s] for s in range(1, 4)], [reference.losses[s] for s in range(1, 4)], rtol=1e-4)


def _signal_after(procs, run_dir, step: int, target: int = 0, sig: int = signal.SIGTERM) -> None:
    """`sig` to process `target` once step `step` is logged."""
    deadline = time.monotonic() + TIMEOUT
    metrics = Path(run_dir) / "metrics.jsonl"
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= step):
        assert all(p.poll() is None for p in procs), wait(procs)[0][1][-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    procs[target].send_signal(sig)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """SMALL trained 4 steps in this process, saved at 2 and 4: the torn test's reference, the DPO test's base."""
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    return one_process([*SMALL, "checkpoint.every=2"], run_dir), run_dir


def test_torn_newest_checkpoint_every_host_falls_back_to_the_same_step(tmp_path, uninterrupted):
    reference, reference_dir = uninterrupted
    run_dir = tmp_path / "run"
    shutil.copytree(reference_dir, run_dir)
    assert saved_steps(run_dir) == [2, 4]
    seed = int(os.environ.get("FAULT_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    name, way = rng.choice(draw(run_dir / "checkpoints" / "4", rng))
    damage(run_dir / "checkpoints" / "4" / name, way, rng)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    (run_dir / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    results = wait(launch(2, run_dir, [*SMALL, "checkpoint.every=2"], "--resume"))
    assert all(rc == 0 for rc, _ in results), results[0][1][-3000:]
    case = f"seed {seed}: {name} {way}"
    warnings = [[line for line in err.splitlines() if line.startswith("instructjax: warning:")]
                for _, err in results]  # fmt: skip
    assert len(warnings[0]) == 1 and warnings[0] == warnings[1], f"{case}: {warnings}"  # alike on each host
    assert "checkpoint step 4" in warnings[0][0] and "falling back to step 2" in warnings[0][0], case
    got = losses(run_dir)
    np.testing.assert_allclose([got[s] for s in (3, 4)], [reference.losses[s] for s in (3, 4)], rtol=2e-5)
    assert saved_steps(run_dir) == [2, 4]


def test_a_host_with_other_data_stops_the_run_with_one_line(tmp_path):
    """Host 1's copy of the data file lost a row: both hosts stop before the first step, naming the mismatch."""
    rows = [json.dumps({"instruction": f"Say {i}.", "input": "", "output": f"{i} " * 20}) for i in range(40)]
    configs = []
    for host, kept in enumerate((rows, rows[:-1])):
        data = tmp_path / f"host{host}.jsonl"
        data.write_text("\n".join(kept) + "\n")
        config = tmp_path / f"host{host}.yaml"
        config.write_text(json.dumps({"define": {"tasks": {"mine": {"source": "alpaca", "data_files": [str(data)]}}}}))
        configs.append(config)
    args = [*BASE, "data.mixture=mine", "data.seq_len=128", "data.global_batch=8"]
    results = wait(launch(2, tmp_path / "run", args, config=configs))
    for rc, err in results:
        errors = [line for line in err.splitlines() if line.startswith("instructjax: error:")]
        assert rc == 2 and len(errors) == 1, err[-3000:]
        assert "host 1 planned a different epoch than host 0 (examples 40 vs 39" in errors[0]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


PARITY = """from instructjax.data.verifiers import register_verifier


@register_verifier("parity_69")
def parity(prediction: str, ground_truth: str) -> float:
    return float(len(prediction) % 2 == int(ground_truth) % 2)
"""


IFEVAL_DRAWN = repr([json.dumps({"instruction_id": ["length_constraints:number_words"], "kwargs": [None]})])


def test_grpo_preempted_mid_run_on_two_hosts_resumes_as_one_process_runs(tmp_path):
    """GRPO (issue 69) through the real CLI on 2 processes: each host runs the same rollout (the engine on the
    trainer's mesh, its slots over both hosts' devices) and trains its rows of it, made a step ahead (issue 81's
    `objective.grpo.async_steps: 1`); SIGTERM after step 1 (both save the step they agree on, host 0 the rollout made ahead
    of it, and exit 75), resumed on 1 process (the torn test resumes on 2): every step's loss and rollout scores are
    one process's uninterrupted run's. Half the prompts'
    verifier is the user's own (`imports:`), half are IFEvalG's word count with its kwargs null (the relation and the
    count drawn at random for each completion, issue 81's pure rewards: each host and the resumed run draw alike)."""
    from instructjax.data.sources.synthetic import synthetic_rows

    rows = tmp_path / "prompts" / "rows.jsonl"
    rows.parent.mkdir()
    rows.write_text("".join(json.dumps({**row, "dataset": "parity_69"} if i % 2 else
                                       {**row, "dataset": "ifeval", "ground_truth": IFEVAL_DRAWN}) + "\n"
                            for i, row in enumerate(synthetic_rows("verifiable", 40))))
    module = tmp_path / "parity_69.py"
    module.write_text(PARITY)
    config = tmp_path / "grpo.yaml"
    config.write_text(f"imports: [{module}]\ndefine:\n  tasks:\n    parity_prompts:\n      source: verifiable\n"
                      f"      data_files: [{rows.parent}]\n")
    args = [*BASE, "data.mixture=parity_prompts", "data.seq_len=64", "data.global_batch=8", "objective.loss=grpo",
            "objective.grpo.prompts_per_rollout=4", "objective.grpo.samples_per_prompt=2", "objective.grpo.response_length=6",
            "objective.grpo.temperature=1.0", "objective.grpo.reference=live", "objective.grpo.async_steps=1", "max_steps=3",
            "checkpoint.every=1000"]
    run_dir = tmp_path / "multi"
    results = wait(launch(2, run_dir, args, config=config, env_extra={"FAULT_SIGTERM_AFTER_STEP": "1"}))
    assert all(rc == 75 for rc, _ in results), [err[-2000:] for _, err in results]
    (step,) = saved_steps(run_dir)  # the hosts' sync point: the step both reach after the signal
    assert 1 <= step < 3
    results = wait(launch(1, run_dir, args, "--resume", config=config))  # another host count (2 once took 2 starts more)
    assert all(rc == 0 for rc, _ in results), results[0][1][-3000:] + results[-1][1][-3000:]
    reference = Trainer(load_config(config, [*args, f"run_dir={tmp_path / 'single'}"]),
                        devices=jax.devices()[:DEVICES]).run()
    records = {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}
    single = {r["step"]: r for r in map(json.loads, (tmp_path / "single" / "metrics.jsonl").read_text().splitlines())}
    assert sorted(records) == sorted(single) == [1, 2, 3]
    assert len({single[s]["scores"] for s in single}) > 1  # the rewards vary
    for step in range(1, 4):
        assert records[step]["scores"] == single[step]["scores"], step
        np.testing.assert_allclose(records[step]["loss"], reference.losses[step], rtol=1e-4, atol=1e-7)
