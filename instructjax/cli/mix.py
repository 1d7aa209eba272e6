"""`instructjax mix`: mixture search from a swarm of proxy runs (instructjax/mix/).

    instructjax mix fit --table CSV --weights COLS --target COL [--target COL ...] --out FIT_DIR [--json]

fits olmix's log-linear mixing law per target to the table's proxies (a row each: its source weights, its targets)
and writes FIT_DIR/fit.json (the fitted parameters, the Huber loss, each target's leave-one-out Spearman and R²: each
proxy predicted by the law refitted without it, from the full fit,
and with `--test CSV` the same figures on a held-out table) and FIT_DIR/fit.png (each proxy's target as the law
fitted to the others predicts it, against its own). FIT_DIR may be local or in a bucket.

    instructjax mix swarm --config BASE.yaml --runs N --seed S --out SWARM_DIR [key=value ...]

writes the proxies' configs, their weights (weights.csv) and swarm.json: cli/mix_swarm.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from instructjax.cli import mix_swarm
from instructjax.core import storage
from instructjax.core.errors import ConfigError

LAWS = ("loglinear",)  # olmix's log-linear law (mix/law.py)


def register(subparsers) -> None:
    mix = subparsers.add_parser("mix", help="mixture search: fit a mixing law to a swarm of proxy runs")
    sub = mix.add_subparsers(dest="mix_command", required=True)
    p = sub.add_parser("fit", help="fit a mixing law per target to a table of proxies (CSV: weights and targets)")
    p.add_argument("--table", required=True, help="CSV with a header: a row per proxy (local or gs://)")
    p.add_argument("--weights", required=True,
                   help="the source weight columns: a comma-separated list, or a prefix they share (e.g. weight.)")
    p.add_argument("--target", action="append", required=True, metavar="COL",
                   help="a target column to fit (lower is better: a loss); repeat for more")
    p.add_argument("--law", choices=LAWS, default="loglinear", help="the mixing law (default: olmix's log-linear)")
    p.add_argument("--test", metavar="CSV", help="a held-out table with the same columns: the fit's figures on it")
    p.add_argument("--out", required=True, help="directory for fit.json and fit.png")
    p.add_argument("--json", action="store_true", help="print fit.json instead of a line per target")
    p.set_defaults(func=run_fit)
    mix_swarm.add_parser(sub)  # `mix swarm`: the proxies' configs (cli/mix_swarm.py)


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
    from instructjax.mix import law
    from instructjax.mix.table import read_table

    for given in filter(None, (args.table, args.test)):  # what it reads is never what it writes
        if any(_same(given, storage.join(args.out, name)) for name in ("fit.json", "fit.png")):
            raise ConfigError(f"--out {args.out} would write over {given}, the table it reads: give another --out")
    table = read_table(args.table, args.weights, args.target)
    n, d = table.weights.shape
    if n < d + 2:
        raise ConfigError(f"{args.table}: {n} proxies; the log-linear law over {d} sources has {d + 1} parameters, "
                          f"so it needs at least {d + 2} (each proxy left out once)")
    test = read_table(args.test, ",".join(table.sources), args.target) if args.test else None
    out, left_out = {"law": args.law, "table": args.table, "sources": table.sources, "proxies": n, "targets": {}}, {}
    for index, target in enumerate(args.target):  # olmix fits its table's targets in order: `index` picks its starts
        actual = table.targets[target]
        try:
            fitted = law.fit(table.weights, actual, index=index)
            left_out[target] = law.leave_one_out(table.weights, actual, fitted)
        except ValueError as e:
            raise ConfigError(f"{args.table}, target {target!r}: {e}") from None
        entry = {"params": {"log_c": fitted.params[0], "t": dict(zip(table.sources, fitted.params[1:].tolist(), strict=True))},
                 "huber_loss": fitted.loss,
                 "leave_one_out": {"spearman": spearman(left_out[target], actual),
                                   "r2": r_squared(left_out[target], actual)}}
        if test is not None:
            predicted = fitted.predict(test.weights)
            entry["test"] = {"table": args.test, "proxies": len(predicted),
                             "spearman": spearman(predicted, test.targets[target]),
                             "r2": r_squared(predicted, test.targets[target])}
        out["targets"][target] = entry
    with storage.writing_dir(args.out) as local:
        (Path(local) / "fit.json").write_text(json.dumps(out, indent=1) + "\n")
        _draw(Path(local) / "fit.png", table, left_out)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for target, entry in out["targets"].items():
        loo = entry["leave_one_out"]
        held = (f"; on {args.test}: Spearman {entry['test']['spearman']:.3f}, R² {entry['test']['r2']:.3f}"
                if "test" in entry else "")
        print(f"{target}: leave-one-out Spearman {loo['spearman']:.3f}, R² {loo['r2']:.3f} over {n} proxies{held}")
    print(f"wrote {storage.join(args.out, 'fit.json')} and {storage.join(args.out, 'fit.png')}")
    return 0


def _draw(path: Path, table, left_out: dict[str, np.ndarray]) -> None:
    """A panel per target: each proxy's target as the law fitted to the others predicts it, against its own."""
    from instructjax.report.figures import Figure, Panel, Series, draw

    panels = []
    for target, predicted in left_out.items():
        actual = table.targets[target]
        ends = [float(min(actual.min(), predicted.min())), float(max(actual.max(), predicted.max()))]
        panels.append(Panel(target, "actual", "predicted (left out)",
                            [Series("proxies", actual.tolist(), predicted.tolist(), style="o"),
                             Series("y = x", ends, ends, style="--", color="gray")]))
    draw(path, Figure("log-linear mixing law, leave-one-out", panels))
