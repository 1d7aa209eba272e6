"""`instructjax sweep` and `report` on a tiny A/C/P family: three settings trained (tiny preset, built-in data,
4 steps), exported and evaluated on an offline lm-eval task; a fourth config fails and the sweep goes on. The
sweep is stopped by Ctrl-C (SIGINT; SIGTERM alike) inside the second run's training and run again: nothing finished is redone, the
interrupted run resumes from its checkpoint. `report` then fills three rows of seed 000's Table 1."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO
from helpers.host_devices import xla_flags

STEPS = 4
CONFIG = """name: acp_{setting}_tiny
experiment: {{family: seed000, setting: {setting}}}
run_dir: {root}/runs/seed000_acp/acp_{setting}_tiny
max_steps: {steps}
log_every: 1
model: {{preset: tiny, dtype: float32}}
data: {{mixture: {mixture}, seq_len: 256, global_batch: 4}}
optim: {{lr: 1.0e-3, warmup_ratio: 0.0}}
checkpoint: {{every: 1, keep: 2, async_save: false}}
eval: {{tasks: [ij_mc], include_path: instructjax/eval/offline_tasks, backend: instructjax, batch_size: 4}}
"""
MIXTURES = {"AC": "no_such_mixture", "A": "acp_A_builtin", "C": "acp_C_builtin", "P": "acp_P_builtin"}


def _sweep(configs: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "XLA_FLAGS": xla_flags(1), "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", "instructjax.cli", "sweep", str(configs), *extra], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _rows(root: Path) -> dict[tuple[str, str], dict]:
    rows = json.loads((root / "runs" / "seed000_acp" / "sweep.json").read_text())["rows"]
    return {(r["config"], r["stage"]): r for r in rows}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The family swept twice: stopped by Ctrl-C in acp_C_tiny's training, then to the end."""
    root = tmp_path_factory.mktemp("sweep")
    configs = root / "configs" / "seed000_acp"
    configs.mkdir(parents=True)
    for setting, mixture in MIXTURES.items():
        (configs / f"acp_{setting}_tiny.yaml").write_text(CONFIG.format(setting=setting, root=root, steps=STEPS,
                                                                         mixture=mixture))
    first = _sweep(configs)
    checkpoints = root / "runs" / "seed000_acp" / "acp_C_tiny" / "checkpoints"
    deadline = time.time() + 300
    while first.poll() is None and time.time() < deadline:  # until acp_C_tiny has saved its first step
        if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)  # Ctrl-C inside acp_C_tiny's training: saved, exit 75
    first_out = first.communicate(timeout=300)[0]
    first_rows = _rows(root)
    a_dir = root / "runs" / "seed000_acp" / "acp_A_tiny"
    stamps = {p: p.stat().st_mtime_ns for p in (a_dir / "eval" / "results.json", a_dir / "hf" / "config.json",
                                                  a_dir / "DONE")}
    second = _sweep(configs)
    second_out = second.communicate(timeout=600)[0]
    return {"root": root, "configs": configs, "first": (first.returncode, first_out, first_rows),
            "second": (second.returncode, second_out, _rows(root)), "stamps": stamps}


@pytest.mark.slow
def test_sweep_is_stopped_and_resumed_without_redoing_finished_stages(swept):
    code, out, rows = swept["first"]
    assert code == 75, out
    assert rows[("acp_AC_tiny", "train")]["result"].startswith("failed:") and "no_such_mixture" in out
    assert rows[("acp_AC_tiny", "eval")]["result"] == "pending"  # the failed run's later stages wait; the sweep goes on
    assert [rows[("acp_A_tiny", s)]["result"] for s in ("train", "export", "eval")] == ["done"] * 3
    stopped = rows[("acp_C_tiny", "train")]
    assert stopped["result"].startswith("preempted at step"), stopped
    at = int(stopped["result"].split()[3].rstrip(":"))
    assert 1 <= at < STEPS
    assert ("acp_P_tiny", "train") not in rows  # stopped before the next config

    code, out, rows = swept["second"]
    assert code == 1, out  # acp_AC_tiny fails again; everything else is complete
    results = {key: r["result"] for key, r in rows.items()}
    ran = [key for key, result in results.items() if result.startswith("done")]
    skipped = [key for key, result in results.items() if result == "complete (skipped)"]
    assert sorted(skipped) == [("acp_A_tiny", s) for s in ("eval", "export", "train")]
    assert len(ran) == 6, results  # C resumed + its export and eval, and P's three stages
    assert results[("acp_C_tiny", "train")] == f"done (resumed at step {at})"
    assert rows[("acp_C_tiny", "train")]["steps"] == f"{STEPS}/{STEPS}"
    for path, stamp in swept["stamps"].items():  # the finished run's outputs were not written again
        assert path.stat().st_mtime_ns == stamp, path
    run_c = swept["root"] / "runs" / "seed000_acp" / "acp_C_tiny"
    logged = [json.loads(line)["step"] for line in (run_c / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, STEPS + 1))
    for setting in "ACP":
        results = json.loads((swept["root"] / "runs" / "seed000_acp" / f"acp_{setting}_tiny" / "eval" /
                              "results.json").read_text())
        assert results["parts"] == ["tasks"] and 0 <= results["tasks"]["ij_mc"]["acc,none"] <= 1
    assert "config" in out and "elapsed" in out  # the status table is printed too


@pytest.mark.slow
def test_report_of_the_sweep_has_three_rows_of_numbers(swept, tmp_path):
    from PIL import Image

    from instructjax.cli import main
    from instructjax.report.figures import figure_size

    assert main(["report", str(swept["configs"]), "--out", str(tmp_path)]) == 0
    with (tmp_path / "seed000_table1.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 + 4  # the paper's rows, then ours of a model it does not have (tiny)
    ours = [c for c in rows[0] if c.endswith("(ours)")]
    filled = [r for r in rows if any(r[c] for c in ours)]
    assert [(r["Model"], r["Data"]) for r in filled] == [("tiny", "A"), ("tiny", "C"), ("tiny", "P")]
    for r in rows:
        paper_cols = [c for c in ours if not c.startswith("ij_mc")]
        assert not any(r[c] for c in paper_cols)  # no suite was run: missing, never zero
        assert bool(r["MMLU (paper)"]) == (r["Model"] != "tiny")
    for r in filled:  # the CSV holds the numbers of results.json exactly
        results = json.loads((swept["root"] / "runs" / "seed000_acp" / f"acp_{r['Data']}_tiny" / "eval" /
                              "results.json").read_text())
        assert float(r["ij_mc acc (ours)"]) == results["tasks"]["ij_mc"]["acc,none"]
        assert float(r["ij_mc acc_norm (ours)"]) == results["tasks"]["ij_mc"]["acc_norm,none"]
    page = (tmp_path / "seed000.md").read_text()
    assert "### Table 1" in page and "| tiny | A |" in page and "— / 43.09" in page
    loss = tmp_path / "seed000_loss.png"  # total + alpaca, code_alpaca, p3
    with Image.open(loss) as image:
        assert image.size == figure_size(4)
        assert len(image.convert("RGB").getcolors(1 << 20)) > 20  # not blank
    assert not (tmp_path / "seed000_figure2_ratio.png").exists()  # no ratio runs: no ratio curve
    rows = {r["run"]: r for r in csv.DictReader((tmp_path / "seed000_runs.csv").open())}  # the family's own table
    assert {name: r["data.mixture"] for name, r in rows.items() if r["data.mixture"]} == {
        f"acp_{s}_tiny": MIXTURES[s] for s in ("A", "C", "P", "AC")}


@pytest.mark.slow
def test_the_sweeps_runs_as_a_study_of_ones_own(swept, tmp_path):
    """The same runs under names of one's own, recording no paper's experiment: a table of their own, a row per run,
    the mixture they differ in first, the numbers of their results.json exactly; their losses overlaid."""
    from PIL import Image

    from instructjax.cli import main

    mine = tmp_path / "my_blends"
    mine.mkdir()
    for config in sorted(swept["configs"].glob("*.yaml")):
        (mine / config.name.replace("acp_", "blend_")).write_text(
            "".join(line for line in config.read_text().splitlines(keepends=True)
                    if not line.startswith("experiment:")).replace("name: acp_", "name: blend_"))
    assert main(["report", str(mine), "--out", str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "my_blends_runs.csv").open()))
    assert [r["run"] for r in rows] == [f"blend_{s}_tiny" for s in ("AC", "A", "C", "P")]
    assert list(rows[0])[:2] == ["run", "data.mixture"]
    for r in rows:
        if r["run"] == "blend_AC_tiny":  # failed to train: no results, empty cells
            assert not r["tasks / ij_mc / acc,none"]
            continue
        results = json.loads((swept["root"] / "runs" / "seed000_acp" / r["run"].replace("blend_", "acp_") / "eval" /
                              "results.json").read_text())
        assert float(r["tasks / ij_mc / acc,none"]) == results["tasks"]["ij_mc"]["acc,none"]
    with Image.open(tmp_path / "out" / "my_blends_loss.png") as image:
        assert len(image.convert("RGB").getcolors(1 << 20)) > 20


def test_dry_run_prints_the_commands_and_hands_training_to_the_launchers(tmp_path, capfd, monkeypatch, bucket):
    from instructjax.cli import main
    from instructjax.core import storage
    from instructjax.core.config import load_config
    from instructjax.core.run_identity import training_digest
    from instructjax.model.config import runs_only_keys

    monkeypatch.chdir(REPO)
    configs = tmp_path / "configs"
    configs.mkdir()
    for setting in "AC":
        (configs / f"acp_{setting}_tiny.yaml").write_text(CONFIG.format(setting=setting, root=tmp_path, steps=STEPS,
                                                                        mixture=MIXTURES[setting]))
    assert main(["sweep", str(configs), "--dry-run"]) == 0
    out = capfd.readouterr().out
    run_a = tmp_path / "runs" / "seed000_acp" / "acp_A_tiny"
    for command in (f"instructjax train --config {configs / 'acp_A_tiny.yaml'} --auto-resume",
                    f"instructjax export --checkpoint {run_a} --out {run_a / 'hf'} --force",
                    f"instructjax eval --config {configs / 'acp_C_tiny.yaml'}"):
        assert f"+ {command}\n" in out
    assert out.count("would run") == 6 and not (tmp_path / "runs").exists()  # a dry run writes nothing

    later = configs / "acp_A_tiny_more.yaml"  # a run that starts from acp_A_tiny's (as a DPO run from its SFT run)
    later.write_text((configs / "acp_A_tiny.yaml").read_text().replace("name: acp_A_tiny", "name: acp_A_tiny_more")
                     .replace("acp_A_tiny\n", "acp_A_tiny_more\n").replace("dtype: float32}", f"dtype: float32, "
                                                                             f"init_from: {run_a}}}"))
    assert main(["sweep", str(configs), "--launch", "tpu", "--launch-args", f"--zone us-central2-b --bucket {bucket}",
                 "--dry-run"]) == 0
    out = capfd.readouterr().out
    assert f"tpu_vm.py up --name acp-a-tiny --config {configs / 'acp_A_tiny.yaml'} --zone us-central2-b" in out
    assert "gcloud compute tpus tpu-vm create acp-c-tiny --zone us-central2-b" in out  # the launcher's own commands
    assert f"instructjax train --config ~/instructjax_run.yaml --auto-resume run_dir={bucket}/runs/acp-a-tiny" in out
    # where the launcher put the run it starts from, not the local run directory its config names
    assert f"--auto-resume run_dir={bucket}/runs/acp-a-tiny-more distributed=true model.init_from={bucket}/runs/acp-a-tiny " \
           in out
    later.unlink()

    # acp_A_tiny trained on its VM: the run wrote DONE where the launcher put it; the sweep reads it there
    done = {"step": STEPS, "config": training_digest(load_config(configs / "acp_A_tiny.yaml"), not_training=runs_only_keys())}
    storage.write_text(f"{bucket}/runs/acp-a-tiny/DONE", json.dumps(done))
    assert main(["sweep", str(configs), "--launch", "tpu", "--launch-args", f"--zone us-central2-b --bucket {bucket}",
                 "--dry-run"]) == 0
    out = capfd.readouterr().out
    assert "tpu_vm.py up --name acp-a-tiny" not in out and "tpu_vm.py up --name acp-c-tiny" in out
    assert f"+ instructjax export --checkpoint {bucket}/runs/acp-a-tiny --out {bucket}/runs/acp-a-tiny/hf" in out

    assert main(["sweep", str(configs), "--launch", "gpu", "--launch-args", "--gpus-per-node 2", "--dry-run"]) == 0
    out = capfd.readouterr().out
    assert f"CUDA_VISIBLE_DEVICES=0,1 instructjax train --config {configs / 'acp_C_tiny.yaml'} --auto-resume" in out
    assert out.count("printed") == 2 and "eval    -      pending" in out  # evaluated after training


def test_eval_stage_scores_only_the_judged_parts_whose_replies_arrived(tmp_path, monkeypatch):
    import instructjax
    from instructjax.cli.sweep import eval_todo, stage_done
    from instructjax.core.config import load_config
    from instructjax.eval import generate
    from instructjax.eval import run as eval_run

    for name in ("p.jsonl", "a.jsonl"):
        (tmp_path / name).write_text('{"id": "0", "instruction": "hi", "output": "x"}\n')
    run_dir = tmp_path / "run"
    (tmp_path / "c.yaml").write_text(f"name: c\nrun_dir: {run_dir}\neval: {{tasks: [ij_mc], pairwise: "
                                     f"{{prompts: {tmp_path / 'p.jsonl'}, against: {tmp_path / 'a.jsonl'}}}}}\n")
    config = load_config(tmp_path / "c.yaml")
    assert eval_todo(config) == ["tasks", "pairwise"] and not stage_done(config, "eval")
    (run_dir / "eval").mkdir(parents=True)
    earlier = {"model": str(run_dir), "step": None, "eval": eval_run.eval_digest(config), "parts": ["tasks", "pairwise"],
               "tasks": {"ij_mc": {"acc,none": 0.3}},
               "pairwise": {"vs": {"a": {"replies": "none yet: put the judge's replies in ..."}}}}
    (run_dir / "eval" / "results.json").write_text(json.dumps(earlier))
    assert eval_todo(config) == [] and stage_done(config, "eval")
    (run_dir / "eval" / "pairwise_vs_a_replies.jsonl").write_text("")  # the judge's replies arrive
    assert eval_todo(config) == ["pairwise"]
    monkeypatch.setattr(generate, "load_generator", lambda model, **kw: (None, None))
    monkeypatch.setattr(eval_run, "run_judged", lambda gen, ev, mode, out, **kw: {"vs": {"a": {"winning_score": 1.25}}})
    results = eval_run.evaluate_config(config, only=eval_todo(config))
    engine = {"name": "instructjax", "version": instructjax.__version__}  # an earlier results.json without: ours
    assert results == {**earlier, "engine": engine, "pairwise": {"vs": {"a": {"winning_score": 1.25}}}}  # tasks kept
    assert json.loads((run_dir / "eval" / "results.json").read_text()) == results
    assert stage_done(config, "eval")


@pytest.mark.slow
def test_markers_say_what_each_stage_stands_for(swept, tmp_path):
    """A finished run (acp_A_tiny), copied: its stages are done for its own config; more steps retrain (and so
    re-export and re-evaluate); an eval taken at another step is redone; with its newest step damaged the export
    is redone from the step before, and that is the step the status shows."""
    import random
    import shutil

    from helpers.damage import damage

    from instructjax.cli import sweep
    from instructjax.core.config import load_config

    run = tmp_path / "acp_A_tiny"
    shutil.copytree(swept["root"] / "runs" / "seed000_acp" / "acp_A_tiny", run)
    path = swept["configs"] / "acp_A_tiny.yaml"
    config = load_config(path, [f"run_dir={run}"])
    results = json.loads((run / "eval" / "results.json").read_text())
    assert not sweep.stage_done(config, "eval")  # its results are of the run it was copied from
    (run / "eval" / "results.json").write_text(json.dumps({**results, "model": str(run)}))
    assert all(sweep.stage_done(config, s) for s in sweep.STAGES)
    assert sweep.trained_step(config) == sweep.exported_step(config) == STEPS
    assert not sweep.stage_done(load_config(path, [f"run_dir={run}", f"max_steps={STEPS + 1}"]), "train")
    assert not sweep.stage_done(load_config(path, [f"run_dir={run}", "optim.lr=2e-3"]), "train")
    assert sweep.stage_done(load_config(path, [f"run_dir={run}", "log_every=5", "mesh.data=1"]), "train")
    assert not sweep.stage_done(load_config(path, [f"run_dir={run}", "eval.num_fewshot=3"]), "eval")

    (run / "eval" / "results.json").write_text(json.dumps({**results, "model": str(run), "step": STEPS - 2}))  # mid-run
    assert sweep.eval_todo(config) == ["tasks"]

    step_dir = run / "checkpoints" / str(STEPS)
    array = sorted(p for p in step_dir.rglob("*") if p.is_file() and "/d/" in p.as_posix())[0]
    damage(array, "cut", random.Random(0))
    assert not sweep.stage_done(config, "export")  # its export holds a step that is no longer the newest intact
    row = sweep.Row("acp_A_tiny", "export")
    sweep.export_stage(config, row)
    assert row.steps == str(STEPS - 1) and sweep.exported_step(config) == STEPS - 1
