"""`data.pack: per_step`: every step packs exactly the examples of the unpacked run's step, so the run is the
unpacked run (losses, gradient norms, logged figures) on fewer rows; shapes come from a plan of the whole run."""

import itertools
import json

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from instructjax import cli
from instructjax.core.config import DataSection, MosaicSection, load_config
from instructjax.core.errors import ConfigError, DataError
from instructjax.data.batches.packing import best_fit_decreasing
from instructjax.data.batches.pipeline import DataPipeline
from instructjax.data.batches.step_plan import plan_step_rows, step_shapes
from instructjax.data.seqio import mixtures
from instructjax.train.trainer import Trainer

EPOCH_MIX = mixtures.register_epoch_mixture("per_step_mix", {"alpaca_builtin": 60, "code_alpaca_builtin": 40}).name
RATE_MIX = mixtures.register_rate_mixture("per_step_rate", {"alpaca_builtin": 1.0, "dolly_builtin": 3.0}).name


def data(pack, **kw) -> DataSection:
    base = dict(mixture=EPOCH_MIX, seq_len=256, global_batch=8, pack_window=32, prefetch=0, seed=7)
    return DataSection(**{**base, **kw, "pack": pack})


def segments(batch: dict) -> list[tuple]:
    """Every segment of a batch with all its features, in a canonical order (where it sits not included)."""
    out = []
    for r, seg in enumerate(batch["segment_ids"]):
        for s in np.unique(seg[seg > 0]):
            at = seg == s
            out.append(tuple(batch[k][r, at].tobytes() for k in ("tokens", "targets", "loss_weights", "positions",
                                                                "source_ids")))  # fmt: skip
    return sorted(out)


@pytest.mark.parametrize(
    "changes, hosts, multiple, long_rows",
    [
        ({}, 1, 2, True),
        (dict(global_batch=16), 1, 1, False),  # rows of seq_len, as many as a step fills
        ({}, 2, 2, True),
        (dict(shuffle=False), 2, 2, True),
        (dict(seq_len=64, overlong="split"), 1, 2, None),  # examples cut into several rows
        (dict(mixture=RATE_MIX), 1, 2, None),
        (dict(mosaic=MosaicSection(k_max=3, max_length=256)), 1, 2, None),
    ],
    ids=["epoch", "seq-len-rows", "2-hosts", "no-shuffle", "split", "rate", "mosaic"],
)
def test_each_step_packs_the_unpacked_steps_examples_into_its_planned_rows(changes, hosts, multiple, long_rows):
    """Across epoch boundaries: the same examples each step, whole, and the same iterator state; the shape the
    plan (from sizes alone) gives each step is the one its batch has, and its examples are packed within what the
    plan says they need (rows of seq_len, or the row length in a fixed number of rows); hosts split the rows."""
    unpacked = DataPipeline(data(False, **changes))
    per_host = [DataPipeline(data("per_step", **changes), process_index=h, process_count=hosts) for h in range(hosts)]
    steps = 3 * unpacked.plan_epoch(0).steps + 1
    plans = [p.plan_steps(steps, multiple=multiple) for p in per_host]
    plan = plans[0]
    assert all(np.array_equal(p.needed, plan.needed) and p.shapes == plan.shapes for p in plans)
    assert all(rows % multiple == 0 for rows, _ in plan.shapes) and len(plan.shapes) <= 4
    if long_rows is not None:
        assert bool(plan.fixed_rows) == long_rows
    iters = [iter(unpacked)] + [iter(p) for p in per_host]
    processed = 0
    for step in range(steps):
        reference, *parts = [next(it) for it in iters]
        batch = {k: np.concatenate([part[k] for part in parts]) for k in reference}
        assert segments(batch) == segments(reference), step
        assert all(p.state == unpacked.state for p in per_host)
        assert batch["tokens"].shape == plan.shapes[plan.sizes.index(plan.size(plan.needed[step]))], step
        used = batch["segment_ids"] > 0
        if plan.fixed_rows:  # every row filled within the needed length, the rest padding
            assert not used[:, plan.needed[step]:].any(), step
        else:
            filled = np.count_nonzero(used.any(axis=1))
            assert filled == plan.needed[step] and not used[filled:].any(), step  # empty rows last
        assert plan.tokens[step] == np.count_nonzero(used)
        processed += used.size
    assert processed == plan.processed
    assert unpacked.state.epoch >= 1 or unpacked.stream.rate_mode
    with pytest.raises(DataError, match="more than the"):
        plan.size(plan.sizes[-1] + 1)


def test_resume_and_elastic_resume_continue_the_same_steps():
    """A state saved after 5 steps on 2 hosts continues on 1 and on 4 hosts with the same examples per step."""
    cfg = data("per_step", global_batch=8)

    def pipes(hosts):
        out = [DataPipeline(cfg, process_index=h, process_count=hosts) for h in range(hosts)]
        for p in out:
            p.plan_steps(30, multiple=4)
        return out

    def take(parts, n):
        its = [iter(p) for p in parts]
        return [segments({k: np.concatenate([b[k] for b in bs]) for k in bs[0]})
                for bs in ([next(it) for it in its] for _ in range(n))]  # fmt: skip

    straight = take(pipes(1), 12)
    two = pipes(2)
    assert take(two, 5) == straight[:5]
    for hosts in (1, 4):
        parts = pipes(hosts)
        for p in parts:
            p.restore(two[0].state.to_array())
        assert take(parts, 7) == straight[5:]


def test_iterating_without_a_plan_and_other_pack_values_are_clear_errors():
    with pytest.raises(ConfigError, match="plan_steps"):
        next(iter(DataPipeline(data("per_step"))))
    with pytest.raises(ConfigError, match="data.pack must be true, false or per_step, got 'step'"):
        load_config(None, ["data.pack=step"])


def test_plan_reports_the_step_shapes_and_real_share_the_trainer_plans():
    """`instructjax plan --real-data` on 8 GPUs (FSDP: rows a multiple of 8): the shapes and real-token share of
    the pipeline's own plan, and activations for the largest shape."""
    from instructjax.train import setup as run_setup
    from instructjax.train.plan import format_plan, make_plan
    from instructjax.train.topology import gpu_topology

    def config(pack):
        return load_config(None, [*BASE, f"data.pack={pack}", "data.global_batch=64", "optim.micro_batches=1",
                                  "mesh.data=1", "mesh.fsdp=-1", "max_steps=30"])  # fmt: skip

    plan, unpacked = (make_plan(config(pack), gpu_topology(8), real_data=True) for pack in ("per_step", "false"))
    steps = DataPipeline(run_setup.bind_data(config("per_step"), None).config).plan_steps(30, multiple=8)
    assert plan.data.step_shapes == steps.shapes and plan.data.real_share == pytest.approx(steps.efficiency)
    assert unpacked.data.step_shapes == ((64, 512),) and plan.data.real_share > 2 * unpacked.data.real_share
    assert plan.activations["total"] < unpacked.activations["total"]
    rows = sorted({rows for rows, _ in steps.shapes})
    words = " or ".join([", ".join(map(str, rows[:-1])), str(rows[-1])] if len(rows) > 1 else [str(rows[0])])
    assert f"64 examples packed into {words} rows" in format_plan(plan)


def brute_force_shapes(needed, multiple, limit):
    """The fewest rows in all, over every choice of at most `limit` shapes among the rounded-up counts."""
    rounded = -(-np.asarray(needed) // multiple) * multiple
    values = sorted(set(rounded.tolist()))
    best = None
    for k in range(1, min(limit, len(values)) + 1):
        for chosen in itertools.combinations(values[:-1], k - 1):
            shapes = np.array(sorted(chosen) + [values[-1]])
            total = int(shapes[np.searchsorted(shapes, rounded)].sum())
            if best is None or total < best[0]:
                best = (total, k)
    return best


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.integers(1, 8), st.integers(1, 4))
def test_step_shapes_are_the_best_few(needed, multiple, limit):
    shapes = step_shapes(needed, multiple, limit)
    rounded = -(-np.asarray(needed) // multiple) * multiple
    assert all(s % multiple == 0 for s in shapes) and list(shapes) == sorted(set(shapes))
    assert shapes[-1] == rounded.max() and len(shapes) <= limit
    total = int(np.asarray(shapes)[np.searchsorted(shapes, rounded)].sum())
    assert (total, len(shapes)) == brute_force_shapes(needed, multiple, limit)


def brute_force_plan(segments, batch, seq_len, multiple):
    """(fixed rows, tokens processed) of the best layout by the rule of `plan_step_rows`, every need found by
    trying every row length (or count) in turn and every choice of at most 4 sizes tried."""
    steps = [segments[i : i + batch] for i in range(0, len(segments) - batch + 1, batch)]
    quantum = max(1, seq_len // 8)

    def fits(step, rows, length):
        return max(step) <= length and best_fit_decreasing(step, length).n_rows <= rows

    rows_needed = [next(r for r in itertools.count(1) if fits(step, r, seq_len)) for step in steps]
    best = (0, brute_force_shapes(rows_needed, multiple, 4)[0] * seq_len)
    limit, found = 0.95 * best[1], 0
    most = -(-max(rows_needed) // multiple) * multiple
    for rows in range(multiple, most + 1, multiple):
        lengths = [next((n for n in range(quantum, 2 * seq_len + 1, quantum) if fits(step, rows, n)), None)
                   for step in steps]  # fmt: skip
        if None in lengths:
            continue
        total = brute_force_shapes(lengths, quantum, 4)[0] * rows
        if total < limit:
            best, limit = (rows, total), total
        found += 1
        if found == 2:
            break
    return best


@settings(max_examples=150, deadline=None)
@given(st.sampled_from([16, 32, 64]), st.integers(1, 12), st.integers(1, 4), st.integers(1, 5), st.data())
def test_step_layout_is_the_best_of_the_rule_by_brute_force(seq_len, batch, multiple, steps, draw):
    segments = np.asarray(draw.draw(st.lists(st.integers(1, seq_len), min_size=batch * steps,
                                             max_size=batch * steps)))  # fmt: skip
    plan = plan_step_rows(segments, batch, seq_len, multiple)
    assert (plan.fixed_rows, plan.processed) == brute_force_plan(segments, batch, seq_len, multiple)
    assert plan.tokens.sum() == segments.sum() and len(plan.shapes) <= 4


# ---- the trainer --------------------------------------------------------------------------------

BASE = ["model.preset=tiny", "model.dtype=float32", "data.mixture=acp_ACP_n10000_builtin", "data.seq_len=512",
        "data.global_batch=8", "data.pack_window=64", "optim.lr=3e-3", "optim.epochs=1", "log_every=1",
        "max_steps=3", "optim.micro_batches=2", "checkpoint.every=2"]  # fmt: skip
EIGHT = ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]  # the CLI's 8 devices; rows a multiple of 2 x 2 x 2


def records(run_dir) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_per_step_run_equals_the_unpacked_run_through_resume_on_another_mesh(tmp_path):
    """`instructjax train` unpacked, against per_step stopped after step 2 (2 devices, rows a multiple of 4) and
    resumed through the CLI on 8 (a multiple of 8): every step has the unpacked run's loss, gradient norm,
    tokens and per-source losses; each step shape was compiled once, before step 1, and no other."""
    assert cli.main(["train", "--config", "/dev/null", *BASE, *EIGHT, "data.pack=false",
                     f"run_dir={tmp_path / 'unpacked'}"]) == 0  # fmt: skip
    compiled = []

    def listen(event, _, fun_name=None, **__):
        compiled.append(fun_name if event == "/jax/core/compile/backend_compile_duration" else None)

    config = load_config(None, [*BASE, "mesh.data=2", "data.pack=per_step", f"run_dir={tmp_path / 'per_step'}"])
    first = Trainer(config, devices=jax.devices()[:2])
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        assert first.run(stop_at=2).step == 2
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert 1 <= compiled.count("jit(step)") == len(first.step_shapes) <= 4
    assert all(rows % 4 == 0 for rows, _ in first.step_shapes)
    assert max(rows * length for rows, length in first.step_shapes) < 8 * 512  # fewer tokens than 8 unpacked rows
    assert cli.main(["train", "--resume", "--config", "/dev/null", *BASE, *EIGHT, "data.pack=per_step",
                     f"run_dir={tmp_path / 'per_step'}"]) == 0  # fmt: skip
    got, want = records(tmp_path / "per_step"), records(tmp_path / "unpacked")
    assert sorted(got) == sorted(want) == list(range(1, 4))
    for step in range(1, 4):
        a, b = got[step], want[step]
        assert a["tokens"] == b["tokens"] and set(a) == set(b)
        for key in [k for k in a if k in ("loss", "grad_norm") or k.startswith("loss/")]:
            np.testing.assert_allclose(a[key], b[key], rtol=2e-5, err_msg=f"step {step} {key}")
