"""`data select --method less` end to end on a tiny LLaMA (an HF directory, imported by the command): the warm-up run
on its share of the pool, a step an epoch; every pool example's score against a brute-force computation (each
example's gradient alone at its own length, LESS's Adam features and the projection in float64 numpy, the
checkpoints weighted by their epochs' mean learning rates read from the warm-up's log, subtask mean then max), the
selected file the top ids; features reused for a second target, a preempted feature pass resumed, features of
another pool refused, bad input one line each."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers.host_devices import one_device

from instructjax.cli import main
from instructjax.train import less
from instructjax.train import less_features as store

POOL = ([{"instruction": f"What is {a} plus {b}?", "input": "", "output": f"{a + b}"} for a, b in
         [(2, 3), (7, 1), (4, 4), (9, 6), (12, 5), (3, 8)]]
        + [{"instruction": f"Write a line about the {w}.", "input": "", "output": f"The {w} is quiet and grey today."}
           for w in ("sea", "moon", "forest", "river", "city", "field")]
        + [{"instruction": f"Name a colour like {c}.", "input": "", "output": f"Something close to {c}, I think."}
           for c in ("red", "blue", "green", "amber", "teal", "plum")])  # fmt: skip
TARGET = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                        {"role": "assistant", "content": f"{a + b}"}], "subtask": s}
          for a, b, s in [(5, 5, "small"), (1, 2, "small"), (20, 30, "large")]]  # fmt: skip
FLAGS = ["--warmup-fraction", "0.34", "--warmup-epochs", "2", "--warmup-batch", "2", "--lora-rank", "4",
         "--lora-alpha", "8", "--lora-dropout", "0", "--lora-targets", "q_proj", "v_proj", "--dim", "32",
         "--max-length", "64", "--feature-batch", "4", "--warmup-override", "model.dtype=float32"]  # fmt: skip


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """(root, the HF model, the pool file, the target file, the selection's directory), selected once."""
    from helpers.models import make_hf_dir

    from instructjax.data.encoding.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("less_select")
    hf = make_hf_dir(root / "hf")
    Tokenizer.load().save(hf)
    pool, target = write_jsonl(root / "pool.jsonl", POOL), write_jsonl(root / "target.jsonl", TARGET)
    with one_device():
        assert main(["data", "select", "alpaca", "--data-files", pool, "--method", "less", "--model", hf,
                     "--target", target, "-k", "4", "--out", str(root / "sel" / "chosen.jsonl"), *FLAGS]) == 0
    return root, hf, pool, target, root / "sel"


def encoded(path: str, source: str, tokenizer: str) -> list[dict]:
    from instructjax.core.context import Context, current
    from instructjax.data.binding import bind
    from instructjax.data.blends import specs
    from instructjax.data.tokenized.examples import encoded_examples

    with Context(parent=current()):
        specs.add_task("ref_task", specs.TaskSpec(source=source, data_files=(path,)))
        return encoded_examples(bind("ref_task", tokenizer=tokenizer, max_length=64).tasks[0])


def example_gradient(gradient, params, ex: dict) -> np.ndarray:
    """[D] float64: the example's gradient alone, in a row of 64 (one program for every example)."""
    tokens, mask, pad = np.asarray(ex["tokens"], np.int32), np.asarray(ex["loss_mask"]), 64 - len(ex["tokens"])
    row = {"tokens": tokens, "targets": np.append(tokens[1:], 0), "segment_ids": np.ones_like(tokens),
           "positions": np.arange(len(tokens), dtype=np.int32), "loss_weights": np.append(mask[1:], 0).astype(np.float32)}
    row = {k: np.pad(v, (0, pad))[None] for k, v in row.items()}  # padding: segment 0
    return np.asarray(gradient(params, row), np.float64)[0]


def reference_scores(sel, pool: list[dict], target: list[dict], labels: list[str]) -> np.ndarray:
    """Float64 numpy from each example's own gradient (see the module doc)."""
    import jax

    run_dir = str(sel / "warmup")
    steps = less.warmup_steps(run_dir)
    logged = {r["step"]: r["lr"] for r in map(json.loads, open(f"{run_dir}/metrics.jsonl")) if "lr" in r}
    weights = [np.mean([lr for s, lr in logged.items() if before < s <= step])
               for before, step in zip([0, *steps[:-1]], steps, strict=True)]
    graphdef, partition = less.model_parts(less.warmup_step(run_dir, steps[0]).model)
    gradient = jax.jit(lambda params, row: less.flatten(less.gradients(graphdef, partition, params, row)))
    total = 0.0
    for weight, step in zip(weights, steps, strict=True):
        warm = less.warmup_step(run_dir, step)
        matrix = np.asarray(less.rademacher(warm.first.size, 32, seed=0), np.float64)
        m, v = warm.first.astype(np.float64), warm.second.astype(np.float64)
        adam = [(0.9 * m + 0.1 * g) / np.sqrt(0.999 * v + 0.001 * g * g + 1e-8)
                for g in (example_gradient(gradient, warm.params, ex) for ex in pool)]
        p, t = np.stack(adam) @ matrix, np.stack([example_gradient(gradient, warm.params, ex) for ex in target]) @ matrix
        p, t = p / np.linalg.norm(p, axis=1, keepdims=True), t / np.linalg.norm(t, axis=1, keepdims=True)
        total = total + weight * p @ t.T
    total = total / sum(weights)
    names = list(dict.fromkeys(labels))
    return np.stack([total[:, [label == n for label in labels]].mean(1) for n in names], 1).max(1)


def test_less_scores_every_pool_example_as_its_own_gradients_say(made):
    root, hf, pool_file, target_file, sel = made
    share = [json.loads(line)["id"] for line in (sel / "warmup.jsonl").read_text().splitlines()]
    assert len(share) == round(0.34 * len(POOL)) == 6 and less.warmup_steps(str(sel / "warmup")) == [3, 6]
    pool, target = encoded(pool_file, "alpaca", hf), encoded(target_file, "messages", hf)
    labels = [json.loads(ex["conversation"])["meta"]["subtask"] for ex in target]
    with one_device():
        want = reference_scores(sel, pool, target, labels)
    scored = [json.loads(line) for line in (sel / "chosen.scores.jsonl").read_text().splitlines()]
    assert [s["id"] for s in scored] == [json.loads(ex["conversation"])["id"] for ex in pool]
    got = np.array([s["score"] for s in scored])
    # float32 against float64 (Adam's m / sqrt(v) is large where v is small): 3.5e-5 measured; each checkpoint
    # weighted by its last rate instead of its epoch's mean is off by 1.3e-2, one subtask instead of two by 0.2
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)
    chosen = [json.loads(line) for line in (sel / "chosen.jsonl").read_text().splitlines()]
    assert [c["id"] for c in chosen] == [scored[i]["id"] for i in np.argsort(-got, kind="stable")[:4]]
    assert [c["selection"]["score"] for c in chosen] == sorted(got, reverse=True)[:4]
    ranked = np.sort(want)[::-1]
    assert ranked[3] - ranked[4] > 1e-3 and set(np.argsort(-want)[:4]) == set(np.argsort(-got)[:4])
    assert {s["subtask"] for s in scored} <= {"small", "large"}


def select(root, hf, pool: str, target: str, out, *extra) -> list[str]:
    return ["data", "select", "alpaca", "--data-files", pool, "--method", "less", "--model", hf, "--target", target,
            "--out", str(out), *FLAGS, *extra]


def test_a_second_target_reuses_the_warmup_and_the_pools_features(made, monkeypatch):
    root, hf, pool, _, sel = made
    kept = [sel / "warmup" / "metrics.jsonl", *sorted(sel.glob("features/ckpt-*/pool-*.npy"))]
    before = [path.read_bytes() for path in kept]
    made_for, compute = [], store.compute
    monkeypatch.setattr(store, "compute", lambda examples, *a, **k: made_for.append(len(examples)) or compute(
        examples, *a, **k))
    other = write_jsonl(root / "other.jsonl", [{"messages": [{"role": "user", "content": "Write a line about snow."},
                                                             {"role": "assistant", "content": "Snow is soft."}]}])
    with one_device():
        assert main(select(root, hf, pool, other, sel / "other.jsonl", "--fraction", "0.25")) == 0
    assert made_for == [1, 1] and len(kept) == 3  # the new target's features at each step, nothing of the pool's
    assert [path.read_bytes() for path in kept] == before
    assert len((sel / "other.jsonl").read_text().splitlines()) == round(0.25 * len(POOL))
    assert {json.loads(line)["subtask"] for line in (sel / "other.scores.jsonl").read_text().splitlines()} == {
        "other.jsonl"}


class Killed(Exception):
    pass


def test_a_preempted_feature_pass_goes_on_where_it_stopped(made, monkeypatch):
    root, hf, pool, target, sel = made
    last = sorted(sel.glob("features/ckpt-6/pool-*.npy"))[0]
    whole = np.load(last)
    last.unlink()
    monkeypatch.setattr(store, "CHUNK_BATCHES", 1)  # a part file a batch
    calls, kill_at, feature_fn = [], [3], store.feature_fn

    def counted(*args):
        fn = feature_fn(*args)

        def run(warm, rows):
            calls.append(warm.step)
            if len(calls) in kill_at:
                raise Killed  # the pass killed in its third batch
            return fn(warm, rows)
        return run

    monkeypatch.setattr(store, "feature_fn", counted)
    with one_device(), pytest.raises(Killed):
        main(select(root, hf, pool, target, sel / "chosen.jsonl", "-k", "4"))
    assert len(list(last.with_suffix("").glob("part-*.npy"))) == 2 and not last.exists()
    calls.clear(), kill_at.clear()
    with one_device():
        assert main(select(root, hf, pool, target, sel / "chosen.jsonl", "-k", "4")) == 0
    assert calls == [6] * (-(-len(POOL) // 4) - 2)  # the batches not written before, nothing else
    np.testing.assert_array_equal(np.load(last), whole)
    assert not last.with_suffix("").exists()


@pytest.mark.slow
def test_two_hosts_select_what_one_process_selects(made, tmp_path):
    """`data select --method less` on 2 processes (JAX's distributed runtime over gloo, a CPU device each): the warm-up
    trains on both hosts' devices, each feature batch is split over them, host 0 alone writes and says so. The chosen
    examples are the one-process run's, and every score within 1% of its (of the largest score, for one near 0: the
    parameters split over the hosts sum in another order, and Adam's m / sqrt(v) amplifies the warm-up's last bits:
    on 1 device and on 2 its losses agree to 1e-7 and the scores to 0.4%, one score of 1e-3 to 3e-5)."""
    import subprocess
    import sys

    from helpers.host_devices import host_envs

    root, hf, pool, target, sel = made
    argv = [sys.executable, "-m", "instructjax.cli", *select(root, hf, pool, target, tmp_path / "chosen.jsonl", "-k", "4")]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for env in host_envs(2, 1)]
    outputs = [p.communicate(timeout=600) for p in procs]  # (not wait(): a process blocked on a full pipe never ends)
    done = [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]
    assert all(code == 0 for code, _, _ in done), [err[-3000:] for _, _, err in done]
    said = [[line for line in out.splitlines() if line.startswith("selected")] for _, out, _ in done]
    assert said[0][0].startswith("selected 4 of 18 examples by less") and not said[1]  # host 0 says it
    assert "less features" in done[0][2] and "less features" not in done[1][2]
    ids = lambda path: [json.loads(line)["id"] for line in path.read_text().splitlines()]  # noqa: E731
    assert ids(tmp_path / "chosen.jsonl") == ids(sel / "chosen.jsonl")
    scores = [[json.loads(line)["score"] for line in (where / "chosen.scores.jsonl").read_text().splitlines()]
              for where in (tmp_path, sel)]
    np.testing.assert_allclose(*scores, rtol=1e-2, atol=1e-2 * np.abs(scores[1]).max())  # a score near 0: its scale


def test_features_of_another_pool_and_bad_input_are_one_line(made, capsys):
    from helpers.models import make_hf_dir

    from instructjax.data.encoding.tokenizer import Tokenizer

    root, hf, pool, target, sel = made
    manifest = (sel / "features" / "manifest.json").read_text()
    smaller = write_jsonl(root / "smaller.jsonl", POOL[:-1])
    bad = root / "bad"
    other_hf = make_hf_dir(root / "other_hf")
    Tokenizer.load().save(other_hf)
    partial = write_jsonl(root / "partial.jsonl", [{**TARGET[0]}, {"messages": TARGET[1]["messages"]}])
    cases = [
        (select(root, hf, smaller, target, sel / "x.jsonl", "-k", "2"), "features of another pool"),
        (select(root, hf, pool, target, bad / "a.jsonl", "--fraction", "1.5"), "--fraction must be in (0, 1]"),
        (select(root, hf, pool, write_jsonl(root / "empty.jsonl", []), bad / "b.jsonl", "-k", "2"), "no examples"),
        (select(root, hf, pool, partial, bad / "c.jsonl", "-k", "2"), "has no subtask while others have one"),
        (select(root, hf, pool, target, bad / "d.jsonl", "-k", "2", "--lora-targets", "nope_proj"), "nope_proj"),
        (select(root, hf, pool, target, target, "-k", "2"), "or it is the --target"),
        (select(root, other_hf, pool, target, sel / "y.jsonl", "-k", "2"), f"was imported from {hf}"),
    ]
    capsys.readouterr()
    with one_device():
        for argv, words in cases:
            assert main(argv) == 2, words
            err = capsys.readouterr().err.strip()
            assert words in err and "\n" not in err, err
    assert (sel / "features" / "manifest.json").read_text() == manifest and not (sel / "x.jsonl").exists()
    assert json.loads((root / "target.jsonl").read_text().splitlines()[0]) == TARGET[0]  # not written over


def test_a_tasks_selection_less_chooses_what_the_command_chose(made, tmp_path, capsys):
    """`selection: {method: less}` in a config's task, the run's model (init_from: the command's imported base)
    selecting in the command's directory (its manifest checks the pool, base and warm-up are the same ones): the
    same examples, in the same order, as `data select --method less` with the same settings."""
    import yaml

    root, hf, pool, target, sel = made
    less_settings = {"warmup_fraction": 0.34, "warmup_epochs": 2, "warmup_batch": 2, "lora_rank": 4, "lora_alpha": 8,
                     "lora_dropout": 0, "lora_targets": ["q_proj", "v_proj"], "dim": 32, "batch": 4,
                     "warmup_overrides": ["model.dtype=float32"]}  # FLAGS' values
    config = {"model": {"init_from": str(sel / "base"), "dtype": "float32"},
              "data": {"mixture": "less_pool", "seq_len": 64},
              "define": {"tasks": {"less_pool": {"source": "alpaca", "data_files": [pool], "selection": {
                  "method": "less", "target": target, "k": 4, "less": less_settings, "directory": str(sel)}}}}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    capsys.readouterr()
    with one_device():
        assert main(["data", "preview", "--config", str(tmp_path / "c.yaml"), "--json", "-n", "10"]) == 0
    shown = [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    chosen = [json.loads(line)["id"] for line in (sel / "chosen.jsonl").read_text().splitlines()]
    assert shown == chosen
