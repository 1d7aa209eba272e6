"""`instructjax mix propose` (instructjax/mix/propose.py, cli/mix_propose.py): olmix's exact proposer for the
log-linear law against olmix's own (`LogLinearExactProposer`, pinned in tests/assets/olmix), and the command end to
end: the proposal as weights or as a run config, the ternary plot, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from helpers import pinned

from instructjax.cli import main
from instructjax.mix import propose

TASKS = ["alpaca_builtin", "code_alpaca_builtin", "p3_builtin"]  # acp_ACP_builtin's tasks
LAW = np.array([-1.2, 0.5, -0.4])  # t per source of the table below


@pytest.fixture(scope="module")
def olmix():
    """olmix's LogLinearExactProposer as olmix imports it; it solves with ECOS, which cvxpy 1.9 does not install, so
    its solve runs with Clarabel (the solver name swapped in cvxpy's `Problem.solve`, nothing else)."""
    import cvxpy

    with pinned("olmix"):
        from olmix.fit import utils_proposer
    solve = cvxpy.Problem.solve

    def clarabel(self, *args, **kwargs):
        kwargs.update(solver="CLARABEL" if kwargs.get("solver") == "ECOS" else kwargs.get("solver"), verbose=False)
        return solve(self, *args, **kwargs)

    cvxpy.Problem.solve = clarabel
    yield utils_proposer
    cvxpy.Problem.solve = solve


class Fitted:
    """What olmix's proposer reads of a fitted `LogLinearRegressor`: its params [log_c, t...] as `model`."""

    def __init__(self, params):
        self.model = list(params)


CASES = {  # (t per target [targets, d], target weights or None, natural, tokens per source, budget, repetition, kl)
    "three, no caps": ([[-1.2, 0.5, -0.4]], None, [0.5, 0.3, 0.2], None, None, None, 0.05),
    "three, capped": ([[-1.2, 0.5, -0.4]], None, [0.5, 0.3, 0.2], [100, 400, 200], 1000, 2.0, 0.05),
    "five, two targets, weighted": ([[-0.9, 0.3, 0.1, -0.6, 0.2], [0.4, -0.8, 0.2, 0.1, -0.3]], [0.7, 0.3],
                                    [0.1, 0.2, 0.3, 0.25, 0.15], [50, 900, 300, 200, 100], 1000, 1.5, 0.2),
    "four, no KL to speak of": ([[-2.0, 0.4, 0.9, -1.1]], None, [0.25, 0.25, 0.25, 0.25], [80, 500, 500, 300],
                                1000, 4.0, 1e-3),
}


@pytest.mark.parametrize("case", CASES)
def test_the_exact_proposal_is_olmixs(olmix, case):
    """On the same fitted law (olmix's params per target), the same natural distribution and the same caps (olmix's:
    tokens x repetition / budget), the proposal's weights equal olmix's within 1e-3 (L1)."""
    t, objective, natural, tokens, budget, repetition, kl = CASES[case]
    sources = [f"s{i}" for i in range(len(natural))]
    prior = dict(zip(sources, natural, strict=True))
    fits = [Fitted([0.1, *row]) for row in t]
    kwargs = {}
    if tokens is not None:
        kwargs = {"constrain_objective": True, "target_tokens": budget, "repetition_factor": repetition}
    theirs = olmix.LogLinearExactProposer().propose(fits, prior, dict(zip(sources, tokens or natural, strict=True)),
                                                    kl_reg=kl, obj_weights=objective, **kwargs)
    caps = None if tokens is None else np.array(tokens) * repetition / budget
    ours = propose.exact(np.array(t), objective, np.array(natural), caps, kl)
    assert np.abs(ours - np.asarray(theirs)).sum() < 1e-3, (ours, theirs)
    assert ours.sum() == pytest.approx(1) and (caps is None or np.all(ours <= caps + 1e-6))


def _fit(tmp_path, law: str = "loglinear") -> str:
    """`mix fit` on a table of 12 proxies over acp_ACP_builtin's three tasks, drawn from LAW (a little noise)."""
    rng = np.random.default_rng(5)
    weights = rng.dirichlet(np.ones(3), 12)
    target = 0.9 + np.exp(weights @ LAW) + rng.normal(0, 0.002, 12)
    rows = [",".join(map(str, [*w, y])) for w, y in zip(weights, target, strict=True)]
    table = tmp_path / "swarm.csv"
    table.write_text("\n".join([",".join([*(f"weight.{t}" for t in TASKS), "loss"]), *rows]) + "\n")
    out = str(tmp_path / "fit")
    assert main(["mix", "fit", "--table", str(table), "--weights", "weight.", "--target", "loss", "--law", law,
                 "--out", out]) == 0
    return out


def test_propose_writes_the_proposal_and_its_ternary_plot(tmp_path, capsys, olmix):
    """`mix propose` on a log-linear fit of three sources: the weights are olmix's proposal on fit.json's law (the
    swarm's mean mixture as the natural distribution, the --cap a cap), beside them the ternary plot."""
    fit = _fit(tmp_path)
    capsys.readouterr()
    out = tmp_path / "proposed.yaml"
    assert main(["mix", "propose", "--fit", fit, "--cap", "alpaca_builtin=0.6", "--kl", "0.1", "--out", str(out)]) == 0
    proposed = yaml.safe_load(out.read_text())["weights"]
    assert list(proposed) == TASKS
    fitted = json.loads((tmp_path / "fit" / "fit.json").read_text())
    params = fitted["targets"]["loss"]["params"]
    sources = fitted["sources"]
    prior = fitted["mean_weights"]
    theirs = olmix.LogLinearExactProposer().propose(
        [Fitted([params["log_c"], *(params["t"][s] for s in sources)])], prior, dict(zip(sources, [60, 100, 100], strict=True)),
        constrain_objective=True, target_tokens=100, repetition_factor=1.0, kl_reg=0.1)  # caps 0.6, 1, 1
    assert np.abs(np.array(list(proposed.values())) - theirs).sum() < 1e-3
    assert proposed["alpaca_builtin"] == pytest.approx(0.6, abs=1e-4)  # the law wants more of it than the cap allows
    assert (tmp_path / "proposed.png").stat().st_size > 0
    assert "wrote" in capsys.readouterr().out


def test_propose_with_a_config_writes_a_run_config_of_the_proposed_rates(tmp_path):
    """With --config the proposal is the base config whose data.mixture is a rate-mode mixture of the proposed
    rates (acp_ACP_builtin is epoch mode): it loads, and its mixture resolves to those rates."""
    from instructjax.cli import load_run_config
    from instructjax.train import setup as run_setup

    fit = _fit(tmp_path)
    base = tmp_path / "base.yaml"
    base.write_text(f"name: base\nrun_dir: {tmp_path / 'runs'}\nmax_steps: 40\nmodel: {{preset: tiny}}\n"
                    "data: {mixture: acp_ACP_builtin, seq_len: 128, global_batch: 4}\n")
    out = tmp_path / "run.yaml"
    assert main(["mix", "propose", "--fit", fit, "--config", str(base), "--out", str(out)]) == 0
    weights = main(["mix", "propose", "--fit", fit, "--out", str(tmp_path / "weights.yaml")]) == 0 and yaml.safe_load(
        (tmp_path / "weights.yaml").read_text())["weights"]
    config = load_run_config(str(out))
    assert config.data.mixture == "acp_ACP_builtin_proposed" and config.data.seq_len == 128
    spec = run_setup.run_registry(config).lookup_mixture(config.data.mixture)
    assert dict(spec.rates) == pytest.approx({t: w for t, w in weights.items() if w >= 1e-6})


def test_propose_from_a_lightgbm_fit_is_regmixs_simulation(tmp_path, capsys):
    """A LightGBM fit proposes by RegMix's simulation (regmix.propose on the fit's model, the draws over the cap left
    out); --kl, which only the log-linear proposal has, is one line."""
    from instructjax.mix import regmix

    rng = np.random.default_rng(6)
    weights = rng.dirichlet(np.ones(3), 60)
    rows = [",".join(map(str, [*w, 0.9 + np.exp(w @ LAW)])) for w in weights]
    (tmp_path / "swarm.csv").write_text("\n".join(["weight.a,weight.b,weight.c,loss", *rows]) + "\n")
    fit = str(tmp_path / "fit")
    assert main(["mix", "fit", "--table", str(tmp_path / "swarm.csv"), "--weights", "weight.", "--target", "loss",
                 "--law", "lightgbm", "--out", fit]) == 0
    assert main(["mix", "propose", "--fit", fit, "--cap", "b=0.5", "--out", str(tmp_path / "p.yaml")]) == 0
    proposed = yaml.safe_load((tmp_path / "p.yaml").read_text())["weights"]
    fitted = json.loads((tmp_path / "fit" / "fit.json").read_text())
    model = regmix.Fit((tmp_path / "fit" / fitted["targets"]["loss"]["model"]).read_text())
    want = regmix.propose([model], np.ones(1), np.array(list(fitted["mean_weights"].values())), np.array([1, 0.5, 1]))
    np.testing.assert_allclose(list(proposed.values()), want)
    assert proposed["a"] > 0.5 and (tmp_path / "p.png").exists()  # source a lowers the loss most (LAW)
    assert main(["mix", "propose", "--fit", fit, "--kl", "0.1", "--out", str(tmp_path / "kl.yaml")]) == 2
    assert "only a log-linear fit takes --kl" in capsys.readouterr().err and not (tmp_path / "kl.yaml").exists()


def test_propose_bad_input_is_one_line(tmp_path, capsys):
    """A --fit without fit.json, caps no mixture fits (named), an unknown --cap source, a target the fit lacks, --kl
    on a LightGBM fit, a config whose mixture's tasks are not the fit's sources: one line, exit 2, nothing written."""
    fit = _fit(tmp_path)
    other = tmp_path / "other.yaml"
    other.write_text(f"name: other\nrun_dir: {tmp_path / 'runs'}\nmodel: {{preset: tiny}}\n"
                     "data: {mixture: acp_AC_builtin}\n")
    cases = {
        "no fit": (["--fit", str(tmp_path)], f"--fit {tmp_path}: no fit.json"),
        "caps": (["--fit", fit, "--cap", "alpaca_builtin=0.3,code_alpaca_builtin=0.3", "--cap", "p3_builtin=0.2"],
                 "no mixture is under the caps: alpaca_builtin <= 0.3, code_alpaca_builtin <= 0.3, p3_builtin <= 0.2"),
        "unknown": (["--fit", fit, "--cap", "dolly=0.5"], "--cap dolly=0.5: no source 'dolly' in the fit"),
        "not a number": (["--fit", fit, "--cap", "p3_builtin=half"], "--cap 'p3_builtin=half': expected NAME=NUMBER"),
        "target": (["--fit", fit, "--target-weights", "acc=1"], "--target-weights: no target 'acc' in the fit"),
        "config": (["--fit", fit, "--config", str(other)], "the fit's sources are alpaca_builtin, code_alpaca_builtin"),
    }
    capsys.readouterr()
    for name, (args, said) in cases.items():
        out = tmp_path / f"{name}.yaml"
        assert main(["mix", "propose", *args, "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, (name, err)
        assert not out.exists() and not out.with_suffix(".png").exists()
