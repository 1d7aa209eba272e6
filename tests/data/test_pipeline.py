"""The input pipeline: exact resume, one global plan sliced by host, mixture proportions, clear config errors."""

import json
from collections import Counter

import numpy as np
import pytest
import seqio
from helpers.batches import take
from scipy import stats

from instructjax.core.config import DataSection, MosaicSection
from instructjax.core.errors import ConfigError
from instructjax.data.batches.pipeline import DataPipeline
from instructjax.data.blends import papers, specs
from instructjax.data.seqio import mixtures
from instructjax.data.sources import registry

# Small built-in blends keep these fast: ~200 examples per task.
EPOCH_MIX = mixtures.register_epoch_mixture("test_epoch_mix", {"alpaca_builtin": 60, "code_alpaca_builtin": 40}).name
RATE_MIX = mixtures.register_rate_mixture("test_rate_mix", {"alpaca_builtin": 1.0, "dolly_builtin": 3.0}).name


def config(mixture=EPOCH_MIX, **kw) -> DataSection:
    base = dict(mixture=mixture, seq_len=256, global_batch=4, pack_window=32, prefetch=0, seed=7)
    return DataSection(**{**base, **kw})


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "cfg",
    [
        config(),
        config(mixture=RATE_MIX),
        config(mosaic=MosaicSection(k_max=3, max_length=256)),
    ],
    ids=["epoch", "rate", "epoch+mosaic"],
)
def test_resume_at_any_point_gives_identical_batches(cfg):
    """Crossing epoch boundaries (an epoch is ~10 batches here), resume from every saved state."""
    straight = take(DataPipeline(cfg), 24)
    epochs = {state.epoch for _, state in straight}
    if not DataPipeline(cfg).stream.rate_mode:
        assert len(epochs) >= 2, "the run should cross an epoch boundary"
    for k in (1, 5, 11, 17):
        resumed = DataPipeline(cfg)
        resumed.restore(straight[k - 1][1].to_array())  # what a checkpoint stores
        again = take(resumed, 24 - k)
        for (a, _), (b, _) in zip(straight[k:], again, strict=True):
            assert same(a, b)


def test_prefetch_thread_yields_the_same_batches_and_state():
    a = take(DataPipeline(config(prefetch=0)), 8)
    b = take(DataPipeline(config(prefetch=3)), 8)
    for (x, sx), (y, sy) in zip(a, b, strict=True):
        assert same(x, y) and sx == sy


def test_epoch_mode_counts_are_exact_and_each_epoch_is_reshuffled():
    p = DataPipeline(config())
    first, second = p.stream.epoch_examples(0), DataPipeline(config()).stream.epoch_examples(1)
    count = Counter(p.task_names[ex["source"]] for ex in first)
    assert count == {"alpaca_builtin": 60, "code_alpaca_builtin": 40}
    assert sorted(ex["origin"] for ex in first) == sorted(ex["origin"] for ex in second)  # same subset
    assert [ex["origin"] for ex in first] != [ex["origin"] for ex in second]  # new order


@pytest.mark.parametrize("mixture", [EPOCH_MIX, RATE_MIX])
@pytest.mark.parametrize("hosts", [2, 4])
def test_hosts_take_slices_of_one_global_plan(mixture, hosts):
    """Every host plans the same steps; each step the hosts' rows, in host order, are the one-host global
    batch; no row is given to two hosts."""
    cfg = config(mixture=mixture, global_batch=8)
    single = DataPipeline(cfg)
    parts = [DataPipeline(cfg, process_index=i, process_count=hosts) for i in range(hosts)]
    assert len({p.plan_epoch(0).steps for p in parts + [single]}) == 1
    steps = single.plan_epoch(0).steps + 3  # across the epoch boundary
    reference = take(single, steps)
    per_host = [take(p, steps) for p in parts]
    for s, (batch, state) in enumerate(reference):
        got = {k: np.concatenate([h[s][0][k] for h in per_host]) for k in batch}
        assert same(got, batch)
        assert all(h[s][1] == state for h in per_host)  # the data position is global
        assert all(h[s][0]["tokens"].shape == (8 // hosts, cfg.seq_len) for h in per_host)


def test_a_run_saved_on_two_hosts_resumes_on_one_and_on_four():
    """Elastic resume: the state two hosts saved after 5 steps continues the same global batches on 1 or 4."""
    cfg = config(global_batch=8)
    straight = take(DataPipeline(cfg), 12)
    two = [DataPipeline(cfg, process_index=i, process_count=2) for i in range(2)]
    saved = [take(p, 5)[-1][1] for p in two]
    assert saved[0] == saved[1]
    for hosts in (1, 4):
        parts = [DataPipeline(cfg, process_index=i, process_count=hosts) for i in range(hosts)]
        for p in parts:
            p.restore(saved[0].to_array())
        again = [take(p, 7) for p in parts]
        for s, (batch, _) in enumerate(straight[5:]):
            assert same({k: np.concatenate([h[s][0][k] for h in again]) for k in batch}, batch)


def test_rate_mode_draws_tasks_in_proportion_to_rates_like_seqio():
    """Our draws and seqio's own Mixture sampling both match the 1:3 rates (chi-square)."""
    p = DataPipeline(config(mixture=RATE_MIX, pack_window=500))
    ours = Counter(ex["source"] for w in range(4) for ex in p.stream.window_examples(0, w))
    n = sum(ours.values())
    expected = [n / 4, 3 * n / 4]
    assert stats.chisquare([ours[0], ours[1]], expected).pvalue > 1e-3

    mixture = seqio.get_mixture_or_task(RATE_MIX)
    ds = mixture.get_dataset(sequence_length=None, split="train", shuffle=True, seed=0, passthrough_features=["id"])
    ids = [ex["id"].decode() for ex in ds.take(1000).as_numpy_iterator()]
    theirs = Counter("dolly" if i.startswith("dolly") else "alpaca" for i in ids)
    assert stats.chisquare([theirs["alpaca"], theirs["dolly"]], [250, 750]).pvalue > 1e-3


def _counts(name: str) -> dict:
    return dict(specs.lookup_mixture(name).counts)


def test_paper_mixture_families_have_the_papers_counts():
    assert _counts("acp_ratio_1.5") == {"alpaca": 20_000, "code_alpaca": 15_000, "p3": 15_000}
    assert _counts("acp_ratio_2") == _counts("acp_ACP")
    assert _counts("acp_ACP_n5000") == dict.fromkeys(["alpaca", "code_alpaca", "p3"], 5_000)
    assert set(_counts("acp_CP")) == {"code_alpaca", "p3"}
    assert _counts("tulu_human_gpt") == {"flan_v2": 100_000, "cot": None, "dolly": None, "oasst1": None,
                                         "gpt4_alpaca": None, "code_alpaca": None, "sharegpt": None}  # fmt: skip
    assert set(_counts("tulu_human_builtin")) == {"flan_v2_builtin", "cot_builtin", "dolly_builtin", "oasst1_builtin"}
    assert len([m for m in papers.paper_names() if m.startswith("tulu_single_") and "builtin" not in m]) == 12
    # Table 1: SuperNI 96,913 instances (not the hub split's millions); FLAN V2 100K; the rest whole, CoT's
    # 100K being its source's pool: 50K from each of the zero-shot and few-shot submixes (tests/data/test_pools.py)
    assert _counts("tulu_single_superni") == {"superni": 96_913}
    assert _counts("tulu_single_cot") == {"cot": None} and _counts("tulu_single_dolly") == {"dolly": None}
    cot = registry.SOURCES["cot"]
    assert cot.options["per_part"] * len(cot.hub_data_files) == 100_000
    assert registry.SOURCES["p3"].options["per_part"] == 1000  # seed 000: 1K of every prompted subtask
    assert _counts("tulu_single_superni_builtin") == {"superni_builtin": None}
    assert specs.lookup_mixture("acp_Q") is None and specs.lookup_mixture("tulu_single_lima") is None
    # the seqio face registers the same mixtures (on demand)
    mixtures.register_paper_mixtures()
    assert seqio.get_mixture_or_task("acp_ratio_1.5").counts == _counts("acp_ratio_1.5")


def test_every_builtin_mixture_fits_the_builtin_data():
    """No `_builtin` twin asks for more examples than the synthetic rows hold (one row = one example
    for every source with a count)."""
    from instructjax.data.sources import synthetic

    for name in papers.paper_names():
        if not name.endswith("_builtin"):
            continue
        for task, count in _counts(name).items():
            rows = synthetic.default_rows(task.removesuffix("_builtin"))
            assert count is None or count <= rows, (name, task, count, rows)


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(seq_len=4), "too small"),
        (dict(mixture="no_such_mixture"), "not a registered"),
        (dict(pack_window=0), "pack_window"),
    ],
)
def test_bad_configurations_fail_with_one_clear_line(changes, message):
    with pytest.raises(ConfigError, match=message) as err:
        DataPipeline(config(**changes), process_index=0, process_count=2)
    assert "\n" not in str(err.value)


def test_a_batch_hosts_cannot_share_is_an_error_of_the_run_config():
    from instructjax.core.config import RunConfig
    from instructjax.core.sharding import resolve_mesh

    with pytest.raises(ConfigError, match="not divisible by the 2 host"):
        resolve_mesh(RunConfig(data=config(global_batch=5)), device_count=2, process_count=2)


def test_asking_for_more_examples_than_a_task_has_is_an_error():
    name = mixtures.register_epoch_mixture("too_many", {"alpaca_builtin": 10**6}).name
    with pytest.raises(ConfigError, match="asks for 1000000 examples of 'alpaca_builtin'"):
        DataPipeline(config(mixture=name))


def test_report_names_skipped_rows_and_truncations(tmp_path):
    from instructjax.data.blends import specs

    path = tmp_path / "alpaca.jsonl"
    good = '{"instruction": "Say it.", "input": "", "output": "' + "word " * 300 + '"}'
    path.write_text(good + "\n" + '{"instruction": "broken"' + "\n" + good.replace("Say", "Tell") + "\n")
    spec = specs.TaskSpec(source="alpaca", data_files=(str(path),), on_bad_row="skip", max_length=64)
    specs.add_task("report_alpaca", spec)
    name = mixtures.register_epoch_mixture("report_mix", {"report_alpaca": None}).name
    lines = DataPipeline(config(mixture=name)).report()
    assert "report_alpaca: skipped 1 row(s): malformed_json" in lines
    assert "report_alpaca: 2 example(s) truncated to max_length" in lines


def test_plan_counts_rows_and_steps_of_an_epoch():
    p = DataPipeline(config())
    plan = p.plan_epoch(0)
    rows = sum(len(p.packed_window(0, w)["tokens"]) for w in range(int(np.ceil(100 / 32))))
    assert plan.examples == 100 and plan.rows == rows
    assert plan.steps == int(np.ceil(rows / 4))
    assert 0.5 < plan.efficiency <= 1.0


def _subset_ids(mixture: str, task: str, seed: int = 7) -> list[str]:
    pipe = DataPipeline(config(mixture=mixture, seq_len=2048, seed=seed))
    examples = pipe.stream.examples[pipe.task_names.index(task)]
    return sorted(json.loads(e["conversation"])["id"] for e in examples)


def test_subsets_depend_on_seed_dataset_and_size_only_and_nest():
    """P3's 200 in acp_P, acp_AP and acp_ACP are one draw (not one per mixture position); the data-count
    sweep's 25 lie inside its 50; another seed draws another subset."""
    p3 = _subset_ids("acp_P_builtin", "p3_builtin")
    assert len(p3) == 200 and p3 == _subset_ids("acp_AP_builtin", "p3_builtin") == _subset_ids("acp_ACP_builtin",
                                                                                               "p3_builtin")
    small, large = _subset_ids("acp_ACP_n2500_builtin", "p3_builtin"), _subset_ids("acp_ACP_n5000_builtin",
                                                                                  "p3_builtin")
    assert (len(small), len(large)) == (25, 50) and set(small) < set(large) and set(large) < set(p3)
    assert _subset_ids("acp_P_builtin", "p3_builtin", seed=8) != p3


def test_a_subset_reads_in_proportion_to_its_size(tmp_path):
    """Drawing 30 of 600 rows reads, renders and tokenizes about 30 rows (the skipped ones too), not 600."""
    from instructjax.data.blends import specs
    from instructjax.data.tokenized import examples as examples_lib

    rows = [{"inputs": f"Question {i}: what is {i} plus {i}?", "targets": "" if i % 10 == 0 else str(2 * i),
             "task_name": "sum", "template_type": "zs_opt"} for i in range(600)]  # every tenth target is empty
    path = tmp_path / "flan.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    specs.add_task("sampled_flan", specs.TaskSpec(source="flan_v2", data_files=(str(path),)))
    mixtures.register_epoch_mixture("sampled_flan_mix", {"sampled_flan": 30})
    pipe = DataPipeline(config(mixture="sampled_flan_mix", seq_len=512, seed=3))
    report = examples_lib.task_report("sampled_flan", seed=3)
    assert len(pipe.stream.examples[0]) == 30 == report.examples
    assert report.read == 30 + report.skipped["empty_response"] and report.read < 60
    targets = [json.loads(e["conversation"])["messages"][1]["content"] for e in pipe.stream.examples[0]]
    assert len(set(targets)) == 30 and "" not in targets
