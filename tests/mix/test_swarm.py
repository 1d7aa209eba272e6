"""olmix's swarm (instructjax/mix/swarm.py) against olmix's own generator, pinned in tests/assets/olmix
(`generate_weights_dirichlet` run on the same sources, tokens, budget and seed), and `instructjax mix swarm` end to
end: its proxies' configs, weights.csv and swarm.json, `sweep` and `report` listing the swarm, bad input."""

from __future__ import annotations

import csv
import json
import random

import numpy as np
import pytest
import yaml
from helpers import pinned

from instructjax.cli import main
from instructjax.core.config import load_config
from instructjax.mix import swarm
from instructjax.mix.table import read_table


@pytest.fixture(scope="module")
def olmix():
    """olmix's generator module and its `SourceConfig`, as olmix imports them."""
    with pinned("olmix"):
        from olmix.aliases import SourceConfig
        from olmix.generate import synthesize_mixture_dirichlet as generator
    return generator, SourceConfig


def theirs(olmix, tokens: dict[str, int], budget: int, runs: int, seed: int, settings: swarm.Settings) -> np.ndarray:
    """olmix's draws [runs, 2 (weights, repetition), sources]: its globals seeded as `mk_mixtures` seeds them, its
    natural distribution as `calculate_priors` makes it (sorted by name, each count over the total)."""
    generator, SourceConfig = olmix
    total = sum(tokens.values())
    leaf_dist = {name: tokens[name] / total for name in sorted(tokens)}
    random.seed(seed)
    np.random.seed(seed)
    return generator.generate_weights_dirichlet(
        sources=[SourceConfig(name=name, paths=[f"{name}.npy"]) for name in tokens], leaf_dist=leaf_dist,
        minimum_source_weight=settings.minimum_weight, minimum_topic_weight=settings.minimum_weight,
        num_samples_out=runs, source_temperature=settings.temperature, topic_temperature=settings.temperature,
        min_source_strength=settings.min_strength, max_source_strength=settings.max_strength,
        min_topic_strength=settings.min_strength, max_topic_strength=settings.max_strength, max_tokens=budget,
        leaf_tokens=dict(tokens), repetition_factor=settings.max_repetition, manual_prior=None,
        manual_topic_prior=None, sample_multiplier=settings.sample_multiplier)


CASES = [  # tokens per source (given unsorted: both sort them by name), budget, runs, seed, settings
    ({"c": 20_000, "a": 1_000, "b": 5_000}, 20_000, 20, 0, swarm.Settings(max_repetition=4.0)),
    ({"tulu": 900_000, "alpaca": 40_000, "dolly": 15_000, "oasst1": 60_000, "sharegpt": 300_000}, 200_000, 24, 7,
     swarm.Settings()),  # the small sources' caps bind: alpaca 0.2, dolly 0.075
    ({"x": 50_000, "y": 50_000, "z": 400_000, "w": 10_000}, 100_000, 12, 123,
     swarm.Settings(min_strength=0.5, max_strength=20.0, minimum_weight=0.05, sample_multiplier=4, max_repetition=2.0,
                    temperature=0.5)),
]


@pytest.mark.parametrize("tokens, budget, runs, seed, settings", CASES)
def test_the_draws_are_olmixs(olmix, tokens, budget, runs, seed, settings):
    """The same weights and repetitions as olmix's generator, to the bit, for the same inputs and seed."""
    expected = theirs(olmix, tokens, budget, runs, seed, settings)
    ours = swarm.draw(tokens, budget, runs, seed, settings)
    assert ours.sources == sorted(tokens)
    np.testing.assert_array_equal(ours.weights, expected[:, 0, :])
    np.testing.assert_array_equal(ours.repetition, expected[:, 1, :])
    np.testing.assert_allclose(ours.weights.sum(axis=1), 1.0)
    assert np.all(ours.weights <= swarm.caps(np.array([tokens[s] for s in ours.sources]), budget,
                                             settings.max_repetition) + 1e-12)


def test_too_few_mixtures_within_the_caps_fail_as_olmixs_do(olmix):
    """Caps only a few mixtures meet: olmix raises, and so do we (a ValueError the command turns into one line)."""
    tokens, settings = {"a": 1_000, "b": 1_000}, swarm.Settings(minimum_weight=0.1, sample_multiplier=2)
    with pytest.raises(ValueError):
        theirs(olmix, tokens, 2_000, 50, 0, settings)
    with pytest.raises(ValueError, match="fewer than the 50 asked for"):
        swarm.draw(tokens, 2_000, 50, 0, settings)


@pytest.mark.parametrize("count", [300, 10_500])  # olmix compares pairs up to 10,000 samples, rounds above
def test_duplicates_are_dropped_as_olmix_drops_them(olmix, count):
    generator, _ = olmix
    rng = np.random.default_rng(count)
    weights = rng.dirichlet(np.ones(3), count)
    weights[1::7] = weights[::7][: len(weights[1::7])] + 3e-6  # near-duplicates of earlier samples
    samples = [(w, np.ones(3)) for w in weights]
    expected = (generator.sort_and_deduplicate(samples) if count <= swarm.HASHED_ABOVE
                else generator.sort_and_deduplicate_with_hash(samples))
    ours = swarm.deduplicate(samples)
    assert len(ours) < count and [id(s) for s in ours] == [id(s) for s in expected]


# ---- the command --------------------------------------------------------------------------------------------


def base_config(tmp_path, mixture: str = "acp_ACP_builtin", **extra) -> str:
    path = tmp_path / f"{mixture}.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny_acp", "run_dir": str(tmp_path / "runs" / "tiny_acp"), "model": {"preset": "tiny"},
        "data": {"mixture": mixture, "seq_len": 256, "global_batch": 4, "pack_window": 64},
        "optim": {"lr": 1e-3, "epochs": 1}, "experiment": {"family": "seed000", "setting": "ACP"}, **extra}))
    return str(path)


def test_mix_swarm_writes_proxies_that_sweep_runs_and_report_lists(olmix, tmp_path, capsys):
    """Each proxy is the base config (its overrides kept) with a rate mixture of one draw; the draws are olmix's for
    the tokens and budget the manifest records; weights.csv is a table `mix fit` reads; `sweep --dry-run` trains
    one job per proxy and `report` tables them as a study of their own."""
    base, out = base_config(tmp_path), tmp_path / "swarm"
    assert main(["mix", "swarm", "--config", base, "--runs", "6", "--seed", "3", "--out", str(out),
                 "--max-repetition", "4", "max_steps=20"]) == 0
    assert "6 proxies of 3 sources" in capsys.readouterr().out
    manifest = json.loads((out / "swarm.json").read_text())
    sources = ["alpaca_builtin", "code_alpaca_builtin", "p3_builtin"]
    assert manifest["sources"] == sources and manifest["max_steps"] == 20 and manifest["runs"] == 6
    assert set(manifest["tokens_counted"].values()) == {"counted"} and manifest["budget_tokens"] > 0
    expected = theirs(olmix, manifest["tokens"], manifest["budget_tokens"], 6, 3, swarm.Settings(max_repetition=4.0))
    table = read_table(str(out / "weights.csv"), "weight.", [])
    assert table.sources == [f"weight.{s}" for s in sources]
    np.testing.assert_array_equal(table.weights, expected[:, 0, :])
    rows = list(csv.DictReader((out / "weights.csv").open()))
    for row, weights, proxy in zip(rows, expected[:, 0, :], manifest["proxies"], strict=True):
        config = load_config(str(out / row["config"]))
        assert config.max_steps == 20 and config.name == row["proxy"] == proxy["name"]
        assert config.run_dir == row["run_dir"] and config.run_dir.startswith(str(tmp_path / "runs" / "tiny_acp_swarm"))
        assert config.experiment == {"swarm": str(out), "proxy": int(row["proxy"][-3:])}  # the base's paper row: gone
        assert config.data.mixture == "acp_ACP_builtin_swarm" and config.data.seq_len == 256
        rates = config.define["mixtures"]["acp_ACP_builtin_swarm"]
        assert rates["mode"] == "rate"
        assert rates["rates"] == {s: w for s, w in zip(sources, weights.tolist(), strict=True) if w > 0}
    assert main(["sweep", str(out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("instructjax train --config") == 6 and printed.count("would run") == 12  # train, export
    report = tmp_path / "report"
    assert main(["report", str(out), "--out", str(report)]) == 0
    with (report / "swarm_runs.csv").open() as f:
        listed = list(csv.DictReader(f))
    assert [r["run"] for r in listed] == [r["proxy"] for r in rows]
    assert "define.mixtures.acp_ACP_builtin_swarm.rates.p3_builtin" in listed[0]


def test_mix_swarm_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    base, out = base_config(tmp_path), tmp_path / "swarm"

    def refused(*args: str, config: str = base) -> str:
        assert main(["mix", "swarm", "--config", config, "--out", str(out), *args]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and not out.exists()
        return err

    assert "at least 1 proxy" in refused("--runs", "0", "max_steps=20")
    assert "is one task" in refused("--runs", "4", "max_steps=20", config=base_config(tmp_path, "alpaca_builtin"))
    assert "max_steps" in refused("--runs", "4")
    err = refused("--runs", "4", "max_steps=5000")  # 5000 steps take more than the tasks hold, even repeated once
    assert "the tasks hold" in err and "alpaca_builtin" in err
    assert "min (5.0) < max (5.0)" in refused("--runs", "4", "--min-strength", "5", "max_steps=20")
    assert main(["mix", "swarm", "--config", base, "--runs", "3", "--out", str(out), "max_steps=20"]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in out.iterdir())
    assert main(["mix", "swarm", "--config", base, "--runs", "2", "--out", str(out), "max_steps=20"]) == 2
    assert "holds a swarm" in capsys.readouterr().err and sorted(p.name for p in out.iterdir()) == before
    assert main(["mix", "swarm", "--config", base, "--runs", "2", "--out", str(out), "--force", "max_steps=20"]) == 0
    assert len(list(out.glob("*.yaml"))) == 2 and len(json.loads((out / "swarm.json").read_text())["proxies"]) == 2


def test_sweep_trains_each_proxy_on_its_own_rates(tmp_path, capsys, monkeypatch):
    """The proxies define one mixture name with other rates; `sweep` binds each config in a context of its own, so
    each trains on its own draw (in one context the second would find the first's mixture, bound under the same
    name). Training itself is left out: the stage binds the run's data as the trainer does and records its rates."""
    from instructjax.cli import sweep
    from instructjax.train import setup as run_setup

    out = tmp_path / "swarm"
    assert main(["mix", "swarm", "--config", base_config(tmp_path), "--runs", "3", "--seed", "4", "--out", str(out),
                 "--max-repetition", "4", "max_steps=20"]) == 0
    drawn = {p["name"]: {s: w for s, w in p["weights"].items() if w > 0}
             for p in json.loads((out / "swarm.json").read_text())["proxies"]}
    assert len({tuple(r) for r in drawn.values()}) < 3  # two proxies mix the same tasks (at other rates)
    trained = {}

    def train(config, row):
        data = run_setup.bind_data(config, None)
        trained[config.name] = {data.registry.base_name(t): r for t, r in data.resolved.mixture.rates}
        row.result = "done"
        return True

    monkeypatch.setattr(sweep, "train_stage", train)
    monkeypatch.setattr(sweep, "export_stage", lambda config, row: None)
    assert main(["sweep", str(out)]) == 0
    assert trained == drawn and len({json.dumps(r, sort_keys=True) for r in trained.values()}) == 3


def test_plan_puts_the_swarms_compute_beside_one_full_run(tmp_path, capsys):
    """`plan --config SWARM_DIR`: the first proxy's plan, then the swarm's tokens (its proxies times a proxy's, as
    `plan --json` counts one) and FLOPs beside the base config's full run; a directory without swarm.json is one line."""
    base, out = base_config(tmp_path), tmp_path / "swarm"
    assert main(["mix", "swarm", "--config", base, "--runs", "6", "--seed", "2", "--out", str(out),
                 "--max-repetition", "8", "max_steps=20"]) == 0
    capsys.readouterr()
    figures = {}
    for name, config in (("proxy", str(out / "tiny_acp_proxy000.yaml")), ("full", base)):
        main(["plan", "--config", config, "--json"])
        plan = json.loads(capsys.readouterr().out)
        figures[name] = (plan["memory"]["params"], plan["data"]["run_tokens"])
    main(["plan", "--config", str(out)])
    printed = capsys.readouterr().out
    (params, tokens), (full_params, full_tokens) = figures["proxy"], figures["full"]
    assert f"swarm       6 proxies like it: about {6 * tokens:,} tokens, {6 * 6.0 * params * tokens:.3g} " in printed
    assert (f"full run    {base}: {full_params:,} parameters, about {full_tokens:,} tokens, "
            f"{6.0 * full_params * full_tokens:.3g} FLOPs; the swarm is {6 * tokens / full_tokens:.1%} of one full run"
            in printed)
    (tmp_path / "empty").mkdir()
    assert main(["plan", "--config", str(tmp_path / "empty")]) == 2
    assert "is a directory without swarm.json" in capsys.readouterr().err
