"""`instructjax mix`: mixture search from a swarm of proxy runs (instructjax/mix/).

    instructjax mix fit --table CSV --weights COLS --target COL [--target COL ...] [--law loglinear|lightgbm]
                        --out FIT_DIR [--json]

fits a mixing law per target to the table's proxies (a row each: its source weights, its targets): olmix's log-linear
law (mix/law.py) or RegMix's LightGBM regression (mix/regmix.py), and writes FIT_DIR/fit.json (the fitted parameters,
or for LightGBM the name of its model file beside it; each target's leave-one-out Spearman and R²: each proxy
predicted by the law refitted without it, from the full fit; LightGBM's 10-fold instead,
and with `--test CSV` the same figures on a held-out table) and FIT_DIR/fit.png (each proxy's target as the law
fitted to the others predicts it, against its own). FIT_DIR may be local or in a bucket.

    instructjax mix propose --fit FIT_DIR [--config BASE.yaml] [--cap SOURCE=W ...] --out proposed.yaml

the mixture the fit predicts best, under caps: cli/mix_propose.py.

    instructjax mix swarm --config BASE.yaml --runs N --seed S --out SWARM_DIR [key=value ...]

writes the proxies' configs, their weights (weights.csv) and swarm.json: cli/mix_swarm.py.

    instructjax mix train SWARM_DIR [--packed K]

trains the swarm's proxies, K at a time stacked in one vmapped step: cli/mix_train.py.

    instructjax mix table SWARM_DIR --target loss:TASK [--target ...] --out table.csv

the trained proxies' targets beside their weights, the table `mix fit` reads: cli/mix_table.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from instructjax.cli import mix_propose, mix_swarm, mix_table, mix_train
from instructjax.core import storage
from instructjax.core.errors import ConfigError

LAWS = ("loglinear", "lightgbm")  # olmix's log-linear law (mix/law.py), RegMix's LightGBM regression (mix/regmix.py)


def register(subparsers) -> None:
    mix = subparsers.add_parser("mix", help="mixture search: fit a mixing law to a swarm of proxy runs")
    sub = mix.add_subparsers(dest="mix_command", required=True)
    p = sub.add_parser("fit", help="fit a mixing law per target to a table of proxies (CSV: weights and targets)")
    p.add_argument("--table", required=True, help="CSV with a header: a row per proxy (local or gs://)")
    p.add_argument("--weights", required=True,
                   help="the source weight columns: a comma-separated list, or a prefix they share (e.g. weight.)")
    p.add_argument("--target", action="append", required=True, metavar="COL",
                   help="a target column to fit (lower is better: a loss); repeat for more")
    p.add_argument("--law", choices=LAWS, default="loglinear",
                   help="the mixing law: olmix's log-linear (the default) or RegMix's LightGBM regression")
    p.add_argument("--test", metavar="CSV", help="a held-out table with the same columns: the fit's figures on it")
    p.add_argument("--out", required=True, help="directory for fit.json and fit.png")
    p.add_argument("--json", action="store_true", help="print fit.json instead of a line per target")
    p.set_defaults(func=run_fit)
    mix_swarm.add_parser(sub)  # `mix swarm`: the proxies' configs (cli/mix_swarm.py)
    mix_propose.add_parser(sub)  # `mix propose`: the best mixture under the fit (cli/mix_propose.py)
    mix_table.add_parser(sub)  # `mix table`: a trained swarm's targets beside its weights (cli/mix_table.py)
    mix_train.add_parser(sub)  # `mix train`: a swarm's proxies, K stacked in one step (cli/mix_train.py)


def spearman(predicted: np.ndarray, actual: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(predicted, actual).statistic)


def r_squared(predicted: np.ndarray, actual: np.ndarray) -> float:
    return float(1 - np.sum((actual - predicted) ** 2) / np.sum((actual - np.mean(actual)) ** 2))


def _same(a: str, b: str) -> bool:
    """Whether two paths name one file (local paths resolved; a URL as written)."""
    if storage.is_remote(a) or storage.is_remote(b):
        return storage.join(a) == storage.join(b)
    return storage.path(a).resolve() == storage.path(b).resolve()


def run_fit(args) -> int:
    from instructjax.mix.table import read_table

    for given in filter(None, (args.table, args.test)):  # what it reads is never what it writes
        if any(_same(given, storage.join(args.out, name)) for name in ("fit.json", "fit.png")):
            raise ConfigError(f"--out {args.out} would write over {given}, the table it reads: give another --out")
    table = read_table(args.table, args.weights, args.target)
    n, d = table.weights.shape
    _check_size(args, n, d)
    test = read_table(args.test, ",".join(table.sources), args.target) if args.test else None
    out = {"law": args.law, "table": args.table, "sources": table.sources, "proxies": n,
           "mean_weights": dict(zip(table.sources, table.weights.mean(axis=0).tolist(), strict=True)), "targets": {}}
    left_out, models = {}, {}
    for index, target in enumerate(args.target):  # olmix fits its table's targets in order: `index` picks its starts
        actual = table.targets[target]
        try:
            entry, predict, left_out[target], model = FITS[args.law](table, actual, index)
        except ValueError as e:
            raise ConfigError(f"{args.table}, target {target!r}: {e}") from None
        models.update(model)
        if test is not None:
            predicted = predict(test.weights)
            entry["test"] = {"table": args.test, "proxies": len(predicted),
                             "spearman": spearman(predicted, test.targets[target]),
                             "r2": r_squared(predicted, test.targets[target])}
        out["targets"][target] = entry
    with storage.writing_dir(args.out) as local:
        (Path(local) / "fit.json").write_text(json.dumps(out, indent=1) + "\n")
        for name, text in models.items():
            (Path(local) / name).write_text(text)
        _draw(Path(local) / "fit.png", table, left_out, args.law)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for target, entry in out["targets"].items():
        loo = entry.get("leave_one_out") or entry["cross_validation"]
        how = f"{loo['folds']}-fold" if "folds" in loo else "leave-one-out"
        held = (f"; on {args.test}: Spearman {entry['test']['spearman']:.3f}, R² {entry['test']['r2']:.3f}"
                if "test" in entry else "")
        print(f"{target}: {how} Spearman {loo['spearman']:.3f}, R² {loo['r2']:.3f} over {n} proxies{held}")
    print(f"wrote {storage.join(args.out, 'fit.json')} and {storage.join(args.out, 'fit.png')}")
    return 0


def _check_size(args, n: int, d: int) -> None:
    """One line where the table has too few proxies for the law."""
    from instructjax.mix import regmix

    if args.law == "loglinear" and n < d + 2:
        raise ConfigError(f"{args.table}: {n} proxies; the log-linear law over {d} sources has {d + 1} parameters, "
                          f"so it needs at least {d + 2} (each proxy left out once)")
    if args.law == "lightgbm" and n < regmix.minimum_proxies():
        raise ConfigError(f"{args.table}: {n} proxies; RegMix's LightGBM splits a node only with {regmix.MIN_LEAF} "
                          f"proxies on each side, so with its {regmix.FOLDS}-fold cross-validation it needs at least "
                          f"{regmix.minimum_proxies()} (use --law loglinear)")


def _figures(predicted: np.ndarray, actual: np.ndarray) -> dict:
    return {"spearman": spearman(predicted, actual), "r2": r_squared(predicted, actual)}


def _fit_loglinear(table, actual: np.ndarray, index: int):
    """olmix's log-linear law: (fit.json's entry, its predictor, each proxy left out, no model files)."""
    from instructjax.mix import law

    fitted = law.fit(table.weights, actual, index=index)
    left = law.leave_one_out(table.weights, actual, fitted)
    entry = {"params": {"log_c": fitted.params[0], "t": dict(zip(table.sources, fitted.params[1:].tolist(), strict=True))},
             "huber_loss": fitted.loss, "leave_one_out": _figures(left, actual)}
    return entry, fitted.predict, left, {}


def _fit_lightgbm(table, actual: np.ndarray, index: int):
    """RegMix's LightGBM: (fit.json's entry, its predictor, each proxy predicted without its fold, the model file)."""
    from instructjax.mix import regmix

    fitted = regmix.fit(table.weights, actual)
    left = regmix.cross_validate(table.weights, actual)
    name = f"lightgbm.{index}.txt"
    entry = {"model": name, "hyperparameters": regmix.HYPERPARAMS,
             "cross_validation": {"folds": min(regmix.FOLDS, len(actual)), **_figures(left, actual)}}
    return entry, fitted.predict, left, {name: fitted.model}


FITS = {"loglinear": _fit_loglinear, "lightgbm": _fit_lightgbm}  # one per LAWS


def _draw(path: Path, table, left_out: dict[str, np.ndarray], law: str = "loglinear") -> None:
    """A panel per target: each proxy's target as the law fitted to the others predicts it, against its own."""
    from instructjax.report.figures import Figure, Panel, Series, draw

    panels = []
    for target, predicted in left_out.items():
        actual = table.targets[target]
        ends = [float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))]
        panels.append(Panel(target, "actual", "predicted (left out)",
                            [Series("proxies", actual.tolist(), predicted.tolist(), style="o"),
                             Series("y = x", ends, ends, style="--", color="gray")]))
    from instructjax.mix.regmix import FOLDS

    title = {"loglinear": "log-linear mixing law, leave-one-out",
             "lightgbm": f"LightGBM (RegMix), {min(FOLDS, len(table.weights))}-fold cross-validation"}[law]
    draw(path, Figure(title, panels))
