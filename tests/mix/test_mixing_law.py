"""olmix's log-linear mixing law (instructjax/mix/law.py) against olmix's own code, pinned in tests/assets/olmix (its
`ScalingLaw` run on the same table from the same starting points, in torch), and `instructjax mix fit` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import pinned

from instructjax.cli import main
from instructjax.mix import law

SOURCES = np.array([-1.5, 0.4, 0.1, 0.25])  # the law the tables below are drawn from: t per source


@pytest.fixture(scope="module")
def olmix():
    """olmix's fit/law.py and the log-linear law's part of fit/utils.py, as olmix imports them."""
    with pinned("olmix"):
        from olmix.fit import law as their_law
        from olmix.fit import utils_loglinear
    return their_law, utils_loglinear


def table(n: int, sources: int, seed: int, noise: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """n proxies' weights (a Dirichlet draw) and a target that follows the law, with noise."""
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(sources), n)
    return weights, 0.8 + np.exp(weights @ SOURCES[:sources]) + rng.normal(0, noise, n)


@pytest.mark.parametrize("sources, index", [(3, 0), (4, 1), (4, 6)])
def test_the_starting_points_are_olmixs(olmix, sources, index):
    """olmix seeds numpy's generator with 42 (`LogLinearRegressor`) and draws its 300 starts one number at a time; a
    target whose column number is not a source's starts no source negative."""
    _, utils = olmix
    np.random.seed(42)
    theirs = np.array(list(utils.init_params_log_linear_law(index, num_domains=sources)))
    ours = law.starts(sources, index)
    assert ours.shape == (300, 1 + sources)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("sources, index, seed", [(3, 0, 0), (4, 1, 1)])
def test_the_fit_predicts_what_olmixs_fit_predicts(olmix, sources, index, seed):
    """On the same table and from the same starting points (3 of olmix's 300, spread over its log_c grid: each of
    olmix's restarts runs 100 L-BFGS steps in torch), our fit's predictions, on the table and on 40 mixtures it never
    saw, are olmix's within 1e-3 relative, and its Huber loss is no higher than olmix's best."""
    their_law, utils = olmix
    weights, target = table(16, sources, seed)
    points = law.starts(sources, index)[::100]
    theirs = np.array(their_law.ScalingLaw(utils.mixing_law).fit(
        weights, target, [p.tolist() for p in points], max_step=100, delta=law.DELTA, eps=0.0, workers=1))
    ours = law.fit(weights, target, index=index, points=points)
    unseen = np.random.default_rng(seed + 10).dirichlet(np.ones(sources), 40)
    for mixtures in (weights, unseen):
        want = utils.LogLinearRegressor(params=theirs.tolist()).predict(mixtures)
        np.testing.assert_allclose(ours.predict(mixtures), want, rtol=1e-3)
    their_loss = float(law.huber_sum(theirs.astype(np.float32), weights.astype(np.float32), target.astype(np.float32),
                                     np.ones(len(target), np.float32)))
    assert ours.loss <= their_loss * (1 + 1e-4)


def test_leave_one_out_is_the_law_fitted_without_each_proxy():
    """`leave_one_out` refits all n at once from the full fit (the left-out proxy weighted 0): each prediction is the
    fit, from the same start, on the table with that row deleted (brute force, row by row)."""
    weights, target = table(9, 3, 2)
    fitted = law.fit(weights, target, points=law.starts(3, 0)[::60])
    together = law.leave_one_out(weights, target, fitted)
    assert np.all(np.abs(together - target) < 0.05)  # the law holds on the left-out rows (noise 0.01)
    for i in range(len(target)):
        kept = np.arange(len(target)) != i
        alone = law.fit(weights[kept], target[kept], points=fitted.params[None]).predict(weights[i : i + 1])[0]
        assert together[i] == pytest.approx(alone, rel=1e-4), i


def _write(path, header, rows) -> str:
    path.write_text("\n".join([",".join(header), *(",".join(map(str, r)) for r in rows)]) + "\n")
    return str(path)


def test_mix_fit_writes_the_law_its_leave_one_out_figures_and_a_test_tables(tmp_path, capsys):
    """`instructjax mix fit` on a table drawn from the law: fit.json holds the fitted t per source (near the law's),
    a leave-one-out Spearman and R² near 1, the held-out table's figures; fit.png is drawn."""
    weights, target = table(10, 3, 3, noise=0.002)
    test_weights, test_target = table(12, 3, 4, noise=0.002)
    header = ["run", "weight.a", "weight.b", "weight.c", "loss"]
    train = _write(tmp_path / "swarm.csv", header, [[f"p{i}", *w, y] for i, (w, y) in enumerate(zip(weights, target, strict=True))])
    test = _write(tmp_path / "test.csv", header, [[f"q{i}", *w, y] for i, (w, y) in
                                                  enumerate(zip(test_weights, test_target, strict=True))])
    out = tmp_path / "fit"
    assert main(["mix", "fit", "--table", train, "--weights", "weight.", "--target", "loss", "--test", test,
                 "--out", str(out)]) == 0
    fitted = json.loads((out / "fit.json").read_text())
    entry = fitted["targets"]["loss"]
    assert fitted["sources"] == ["weight.a", "weight.b", "weight.c"] and fitted["proxies"] == 10
    np.testing.assert_allclose(list(entry["params"]["t"].values()), SOURCES[:3], atol=0.15)
    assert entry["leave_one_out"]["spearman"] > 0.9 and entry["leave_one_out"]["r2"] > 0.9
    assert entry["test"]["proxies"] == 12 and entry["test"]["spearman"] > 0.9
    assert (out / "fit.png").stat().st_size > 0
    assert "loss: leave-one-out Spearman" in capsys.readouterr().out


def test_mix_fit_bad_tables_are_one_line(tmp_path, capsys):
    """Too few proxies for the law's parameters, a target some proxies lack (named), a cell that is not a number,
    an unknown column, one weight column, a negative weight, an --out holding the table itself: each one line and
    exit 2, nothing written."""
    header = ["weight.a", "weight.b", "weight.c", "loss"]
    rows = [[0.2, 0.3, 0.5, 1.1], [0.6, 0.2, 0.2, 1.0], [0.1, 0.1, 0.8, 1.3], [0.3, 0.3, 0.4, 1.2]]
    cases = {
        "few": (rows, "4 proxies; the log-linear law over 3 sources has 4 parameters, so it needs at least 5"),
        "missing": ([*rows, [0.5, 0.4, 0.1, ""], [0.4, 0.4, 0.2, 1.0], [0.1, 0.8, 0.1, ""]],
                    "target 'loss' is missing from 2 of 7 proxies (line(s) 6, 8)"),
        "text": ([*rows, [0.5, "half", 0.1, 1.0]], "line 6, column 'weight.b': 'half' is not a number"),
    }
    for name, (body, said) in cases.items():
        path = _write(tmp_path / f"{name}.csv", header, body)
        assert main(["mix", "fit", "--table", path, "--weights", "weight.", "--target", "loss",
                     "--out", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, (name, err)
        assert not (tmp_path / name).exists()
    path = _write(tmp_path / "ok.csv", header, [*rows, [0.5, 0.4, 0.1, 1.0]])
    for args, said in ((["--weights", "weight.", "--target", "acc"], "no target column 'acc'"),
                       (["--weights", "weight.a", "--target", "loss"], "--weights 'weight.a' names 1 column(s)"),
                       (["--weights", "weight.a,weight.z", "--target", "loss"], "no column 'weight.z'")):
        assert main(["mix", "fit", "--table", path, *args, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err
    negative = _write(tmp_path / "negative.csv", header, [*rows, [0.5, -0.1, 0.6, 1.0]])
    assert main(["mix", "fit", "--table", negative, "--weights", "weight.", "--target", "loss",
                 "--out", str(tmp_path / "x")]) == 2
    assert "line 6, column 'weight.b': a weight of -0.1" in capsys.readouterr().err
    inside = tmp_path / "fits"
    inside.mkdir()
    own = _write(inside / "fit.json", header, [*rows, [0.5, 0.4, 0.1, 1.0]])  # the table where the fit would go
    assert main(["mix", "fit", "--table", own, "--weights", "weight.", "--target", "loss", "--out",
                 str(tmp_path / "." / "fits")]) == 2
    assert "would write over" in capsys.readouterr().err
    assert (inside / "fit.json").read_text().startswith("weight.a,") and not (tmp_path / "x").exists()
