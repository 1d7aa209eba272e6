# Derived from RegMix (https://github.com/sail-sg/regmix: regression_fitting/regression.ipynb), Copyright (c) 2024
# Sea AI Lab, MIT License. Modified for instructjax (a fixed number of trees, cross-validation, caps). See NOTICE.

"""RegMix's mixing law: a LightGBM regression from a proxy's source weights to a target (a held-out loss), one model
per target, with the hyperparameters of RegMix's notebook (`regression.ipynb`, its "Fitting" cell): gbdt, L2
regression, learning rate 1e-2, 1000 trees, seed 42.

The notebook stops adding trees when the loss on its held-out table stops falling for 3 rounds; a fit here has no
held-out table of its own (the one `--test` names is scored, never fitted to), so it grows the notebook's 1000 trees.
olmix (`LightGBMRegressor`) differs: 10000 trees, early-stopped on the training table itself.

`propose` is RegMix's proposal: 100000 mixtures drawn from a Dirichlet around the natural distribution, the mean of
the 128 the law predicts best (the notebook's "Simulate" cells), with the drawn mixtures over a cap left out first
(olmix's `SimulationProposer` filters its draws that way).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HYPERPARAMS = {  # regression.ipynb, "Fitting": its hyper_params
    "task": "train",
    "boosting_type": "gbdt",
    "objective": "regression",
    "metric": ["l1", "l2"],
    "num_iterations": 1000,
    "seed": 42,
    "learning_rate": 1e-2,
    "verbosity": -1,
}
THREADS = 1  # not RegMix's: a swarm's table is small, and LightGBM's threads only cost there (the same trees)
MIN_LEAF = 20  # LightGBM's min_data_in_leaf (RegMix leaves it at the default): a split needs this many each side
FOLDS = 10  # cross-validation: each proxy predicted by the law fitted without its fold (of FOLDS, shuffled)
SEED = 42  # the folds' shuffle and the proposal's draws (the notebook seeds numpy's generator with 42)
SAMPLES = 100_000  # the notebook's simulated mixtures
TOP_K = 128  # and how many of the best it averages


def minimum_proxies(folds: int = FOLDS) -> int:
    """The fewest proxies a table may have: with fewer, the fit of some fold could not split once (a constant)."""
    return -(-2 * MIN_LEAF * folds // (folds - 1))


@dataclass(frozen=True)
class Fit:
    """A fitted law: LightGBM's model, as its text (`Booster.model_to_string`)."""

    model: str

    def predict(self, weights: np.ndarray) -> np.ndarray:
        return predict(self.model, weights)


def predict(model: str, weights: np.ndarray) -> np.ndarray:
    """The law's prediction for each mixture: weights [n, d] -> [n]."""
    import lightgbm

    return lightgbm.Booster(model_str=model).predict(np.asarray(weights, np.float64), num_threads=THREADS)


def fit(weights: np.ndarray, target: np.ndarray) -> Fit:
    """RegMix's regression fitted to proxies' `weights` [n, d] and their `target` [n]."""
    import lightgbm

    data = lightgbm.Dataset(np.asarray(weights, np.float64), np.asarray(target, np.float64),
                            params={"verbosity": -1})
    return Fit(lightgbm.train({**HYPERPARAMS, "num_threads": THREADS}, data).model_to_string())


def cross_validate(weights: np.ndarray, target: np.ndarray, folds: int = FOLDS, seed: int = SEED) -> np.ndarray:
    """Each proxy's target as the law fitted without its fold predicts it [n]: the proxies shuffled (numpy's
    generator seeded `seed`) into min(folds, n) folds (n folds: leave-one-out)."""
    weights, target = np.asarray(weights), np.asarray(target)
    order = np.random.RandomState(seed).permutation(len(target))
    out = np.empty(len(target))
    for held in np.array_split(order, min(folds, len(target))):
        kept = np.setdiff1d(order, held)
        out[held] = fit(weights[kept], target[kept]).predict(weights[held])
    return out


def propose(fits: list[Fit], objective: np.ndarray, natural: np.ndarray, caps: np.ndarray | None = None, *,
            samples: int = SAMPLES, top_k: int = TOP_K, seed: int = SEED) -> np.ndarray:
    """RegMix's proposal [d]: `samples` mixtures from Dirichlet(`natural`) (numpy's generator seeded `seed`), those
    over a cap (`caps` [d], a source's largest weight) left out, the mean of the `top_k` whose predicted objective
    (the fits' predictions weighted by `objective`) is lowest."""
    draws = np.random.RandomState(seed).dirichlet(np.asarray(natural, np.float64), samples)
    if caps is not None:
        draws = draws[(draws <= np.asarray(caps)[None]).all(axis=1)]
        if not len(draws):
            raise ValueError(f"none of {samples} mixtures drawn around the natural distribution is under the caps")
    predicted = sum(w * f.predict(draws) for w, f in zip(objective, fits, strict=True))
    return draws[np.argsort(predicted)[:top_k]].mean(axis=0)
