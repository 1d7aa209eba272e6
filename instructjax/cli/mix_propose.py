"""`instructjax mix propose`: the mixture a fitted mixing law (`mix fit`'s FIT_DIR) predicts best.

    instructjax mix propose --fit FIT_DIR [--config BASE.yaml] [--target-weights T=W,...] [--kl LAMBDA]
                            [--cap SOURCE=W ...] --out proposed.yaml

A log-linear fit is solved exactly (olmix's exact proposer, mix/propose.py): the targets' weighted sum minimised under
the caps, regularised toward the natural distribution by `--kl` (olmix's 0.05 by default). A LightGBM fit proposes as
RegMix does (mix/regmix.py `propose`): the mean of the 128 best of 100000 mixtures drawn around the natural
distribution, those over a cap left out; it takes no --kl. The natural distribution is the swarm's mean mixture
(fit.json's `mean_weights`: olmix and RegMix draw their swarms around it).
With --config the proposal is a run config: the base config with a rate-mode mixture `<data.mixture>_proposed` of the
proposed rates (a task of weight under 1e-6 left out) in its `define:` block; without, a YAML of the weights. For three
sources a ternary plot of the fitted surface, the swarm's proxies and the proposal is written beside it (.png).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import yaml

from instructjax.core import storage
from instructjax.core.errors import ConfigError

SUFFIX = "_proposed"  # the proposed mixture's name: the base's with this
SMALLEST = 1e-6  # a weight under this is no rate


def add_parser(sub) -> None:
    """`mix propose`'s arguments (on `instructjax mix`'s subparsers)."""
    p = sub.add_parser("propose", help="the mixture a fitted law predicts best, under caps: a run config or weights")
    p.add_argument("--fit", required=True, help="a `mix fit` directory (its fit.json)")
    p.add_argument("--config", help="a base run config: the proposal is it with its mixture's rates replaced")
    p.add_argument("--target-weights", metavar="T=W,...",
                   help="the objective: the targets named, weighted (default: every target, 1/targets each)")
    p.add_argument("--kl", type=float, help="the KL term's weight toward the natural distribution (log-linear "
                                            "only; default olmix's 0.05)")
    p.add_argument("--cap", action="append", default=[], metavar="SOURCE=W",
                   help="a source's largest weight (its column or its name without the columns' prefix); repeat")
    p.add_argument("--out", required=True, help="the proposal's YAML (and, for three sources, a .png beside it)")
    p.set_defaults(func=run_propose)


def short_names(sources: list[str]) -> list[str]:
    """The sources without the prefix every one shares up to a separator (`weight.alpaca` -> `alpaca`)."""
    prefix = sources[0][: min(len(s) for s in sources)]
    while not all(s.startswith(prefix) for s in sources):
        prefix = prefix[:-1]
    cut = max(prefix.rfind(c) for c in "._/:-") + 1
    return [s[cut:] for s in sources]


def _pairs(text: str, what: str) -> list[tuple[str, float]]:
    out = []
    for item in filter(None, (i.strip() for i in text.split(","))):
        name, sep, value = item.rpartition("=")
        try:
            out.append((name.strip(), float(value)))
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ConfigError(f"{what} {item!r}: expected NAME=NUMBER")
    return out


def _read_fit(fit_dir: str) -> dict:
    try:
        fit = json.loads(storage.path(storage.join(fit_dir, "fit.json")).read_text())
    except FileNotFoundError:
        raise ConfigError(f"--fit {fit_dir}: no fit.json (a `instructjax mix fit` directory)") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{storage.join(fit_dir, 'fit.json')}: not JSON ({e})") from None
    if fit.get("law") not in ("loglinear", "lightgbm") or "mean_weights" not in fit:
        raise ConfigError(f"{storage.join(fit_dir, 'fit.json')}: not a fit `instructjax mix fit` wrote")
    return fit


def _objective(fit: dict, spec: str | None) -> tuple[list[str], np.ndarray | None]:
    """The targets of the objective and their weights (None: olmix's default, 1/targets each)."""
    if not spec:
        return list(fit["targets"]), None
    pairs = _pairs(spec, "--target-weights")
    unknown = [t for t, _ in pairs if t not in fit["targets"]]
    if unknown:
        raise ConfigError(f"--target-weights: no target {', '.join(map(repr, unknown))} in the fit (its targets: "
                          f"{', '.join(fit['targets'])})")
    return [t for t, _ in pairs], np.array([w for _, w in pairs])


def _caps(given: list[str], sources: list[str], names: list[str]) -> np.ndarray | None:
    """Each source's largest weight (1 where not capped); None without --cap."""
    if not given:
        return None
    caps = np.ones(len(sources))
    for name, value in _pairs(",".join(given), "--cap"):
        at = sources.index(name) if name in sources else names.index(name) if name in names else None
        if at is None:
            raise ConfigError(f"--cap {name}={value:g}: no source {name!r} in the fit (its sources: {', '.join(names)})")
        caps[at] = value
    return caps


def _propose(fit: dict, fit_dir: str, targets: list[str], objective: np.ndarray | None, caps, kl: float | None):
    """(the proposal [d], a function predicting each target [targets, m] of mixtures [m, d])."""
    from instructjax.mix import propose, regmix

    natural = np.array([fit["mean_weights"][s] for s in fit["sources"]])
    if fit["law"] == "loglinear":
        from instructjax.mix.law import predict

        params = [np.array([fit["targets"][t]["params"]["log_c"], *(fit["targets"][t]["params"]["t"][s]
                                                                    for s in fit["sources"])]) for t in targets]
        weights = propose.exact(np.array([p[1:] for p in params]), objective, natural, caps,
                                propose.KL if kl is None else kl)
        return weights, lambda w: np.array([predict(p, w) for p in params])
    if kl is not None:
        raise ConfigError("--kl: a LightGBM fit is proposed as RegMix proposes (the best of mixtures drawn around the "
                          "natural distribution), with no KL term; only a log-linear fit takes --kl")
    fits = [regmix.Fit(storage.path(storage.join(fit_dir, fit["targets"][t]["model"])).read_text()) for t in targets]
    even = np.ones(len(targets)) / len(targets) if objective is None else objective
    return regmix.propose(fits, even, natural, caps), lambda w: np.array([f.predict(w) for f in fits])


def run_propose(args) -> int:
    from instructjax.mix import propose

    fit = _read_fit(args.fit)
    sources = fit["sources"]
    names = short_names(sources)
    targets, objective = _objective(fit, args.target_weights)
    caps = _caps(args.cap, sources, names)
    try:
        propose.check_caps(names, caps)
        weights, predict = _propose(fit, args.fit, targets, objective, caps, args.kl)
    except ValueError as e:
        raise ConfigError(f"mix propose: {e}") from None
    predicted = predict(weights[None])[:, 0]
    document = (_proposed_config(args.config, names, weights) if args.config else
                {"weights": {n: float(w) for n, w in zip(names, weights, strict=True)}})
    head = (f"# instructjax mix propose --fit {args.fit}: the {fit['law']} law's best mixture"
            f"{f' as a run of {args.config}' if args.config else ''}; predicted "
            f"{', '.join(f'{t} {y:.4f}' for t, y in zip(targets, predicted, strict=True))}\n")
    storage.write_text(args.out, head + yaml.safe_dump(document, sort_keys=False))
    wrote = [args.out]
    if len(sources) == 3:
        wrote.append(_ternary(args.out, fit, names, predict, objective, weights))
    print("proposed: " + ", ".join(f"{n} {w:.4f}" for n, w in zip(names, weights, strict=True)))
    print(f"wrote {' and '.join(wrote)}")
    return 0


def _proposed_config(path: str, names: list[str], weights: np.ndarray) -> dict:
    """The base config (as its file has it) with a rate-mode mixture of the proposed rates named in `data.mixture`:
    the fit's sources must be the base mixture's tasks."""
    from instructjax.cli import load_run_config
    from instructjax.core.shipped import config_file
    from instructjax.train import setup as run_setup

    config = load_run_config(path)
    registry = run_setup.run_registry(config)
    resolved = run_setup.checked_mixture(config, registry)
    if resolved is None:
        raise registry.unknown(config.data.mixture, "a registered task or mixture (data.mixture)")
    tasks = list(resolved.tasks)
    if sorted(tasks) != sorted(names):
        raise ConfigError(f"{path}: mixture {config.data.mixture!r} has tasks {', '.join(tasks)}; the fit's sources "
                          f"are {', '.join(names)}")
    base = yaml.safe_load(storage.path(config_file(path)).read_text()) or {}
    base.pop("experiment", None)  # the base's paper row: the proposal is none
    rates = {n: float(w) for n, w in zip(names, weights, strict=True) if w >= SMALLEST}
    mixture = f"{config.data.mixture}{SUFFIX}"
    define = dict(base.get("define") or {})
    define["mixtures"] = {**(define.get("mixtures") or {}), mixture: {"mode": "rate", "rates": rates}}
    return {**base, "define": define, "data": {**(base.get("data") or {}), "mixture": mixture}}


def _ternary(out: str, fit: dict, names: list[str], predict, objective, weights: np.ndarray) -> str:
    """The ternary plot beside `out` (its name with .png for .yaml): the objective's surface, the swarm, the proposal."""
    from instructjax.mix import ternary
    from instructjax.mix.table import read_table

    try:
        proxies = read_table(fit["table"], ",".join(fit["sources"]), []).weights
    except ConfigError:
        proxies = None  # the swarm's table has moved: the surface and the proposal alone
    even = objective if objective is not None else np.ones(len(fit["targets"])) / len(fit["targets"])
    png = (out[: out.rfind(".")] if out.endswith((".yaml", ".yml")) else out) + ".png"
    with tempfile.TemporaryDirectory() as local:
        drawn = ternary.draw(Path(local) / "ternary.png", names, lambda w: even @ predict(w), proxies, weights,
                             f"{fit['law']} law: the proposal")
        storage.write_bytes(png, drawn.read_bytes())
    return png
