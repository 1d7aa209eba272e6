# Derived from olmix (https://github.com/allenai/olmix: olmix/fit/utils.py, olmix/fit/law.py), the olmix authors,
# Allen Institute for AI, Apache-2.0. Modified for instructjax (JAX, every start at once). See NOTICE.

"""olmix's log-linear mixing law: a target metric (a held-out loss) of a proxy trained on a mixture with source weights
w (one per source, summing to 1) is

    y(w) = exp(log_c) + exp(w . t)          params = [log_c, t_1 .. t_d]

fitted per target as olmix fits it (`LogLinearRegressor`): the Huber loss (delta 0.02) summed over the proxies,
minimised by L-BFGS (history 10, a strong-Wolfe line search) from each of olmix's 300 starting points (`starts`),
in float32; the start whose fit ends with the lowest loss is the fit. Here every start runs at once (`jax.vmap`), until
torch's L-BFGS would stop (the gradient's largest entry under 1e-7, or the loss changing by under 1e-9) or
`max_iterations`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

DELTA = 0.02  # olmix's Huber delta (LogLinearRegressor.fit)
LOG_C_GRID = np.linspace(-2, 1.5, 10)  # olmix's starting log_c values, 30 draws of t each
DRAWS = 30
SEED = 42  # olmix seeds numpy's global generator with 42 before drawing the starts
TOLERANCE = 1e-7  # torch.optim.LBFGS's tolerance_grad
CHANGE = 1e-9  # and its tolerance_change
ROWS = 16  # a table's rows are padded to a multiple of this (weighted 0): one compiled fit for similar sizes


def predict(params: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The law's prediction for each mixture: params [1 + d], weights [n, d] -> [n]."""
    params, weights = np.asarray(params, np.float64), np.asarray(weights, np.float64)
    return np.exp(params[0]) + np.exp(weights @ params[1:])


def starts(sources: int, index: int, seed: int = SEED) -> np.ndarray:
    """olmix's starting points (`init_params_log_linear_law`) [300, 1 + sources]: for each log_c of its grid, 30 draws
    of t, source `index`'s t in (-1, 0] and every other's in [0, 0.1), drawn one after another from numpy's
    generator seeded `seed`. (olmix passes the target's column number as `index`: the source of that number starts
    negative, or none when there are fewer sources.)"""
    rng = np.random.RandomState(seed)
    points = []
    for log_c in LOG_C_GRID:
        for _ in range(DRAWS):
            u = rng.rand(sources)
            points.append([log_c, *np.where(np.arange(sources) == index, -u, u * 0.1)])
    return np.array(points)


def huber_sum(params: jax.Array, weights: jax.Array, target: jax.Array, kept: jax.Array, delta: float = DELTA
              ) -> jax.Array:
    """The Huber loss of the law's predictions, summed over the proxies `kept` (1, or 0: left out) (torch's
    huber_loss, reduction="sum")."""
    error = jnp.abs(target - (jnp.exp(params[0]) + jnp.exp(weights @ params[1:])))
    return jnp.sum(kept * jnp.where(error < delta, 0.5 * error**2, delta * (error - 0.5 * delta)))


def _minimise(start: jax.Array, weights: jax.Array, target: jax.Array, kept: jax.Array, delta: float,
              max_iterations: int) -> tuple[jax.Array, jax.Array]:
    """L-BFGS from one start: (params, loss)."""
    loss = lambda p: huber_sum(p, weights, target, kept, delta)  # noqa: E731
    optimizer = optax.lbfgs(memory_size=10, linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=25))
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry):
        params, state, _, last, i = carry
        value, grad = value_and_grad(params, state=state)
        updates, state = optimizer.update(grad, state, params, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(params, updates), state, jnp.max(jnp.abs(grad)), jnp.stack([last[1], value]), i + 1

    def going(carry):  # torch's L-BFGS rules: the gradient or the loss's change below its tolerance; a NaN (diverged)
        _, _, gmax, last, i = carry
        return (gmax > TOLERANCE) & (jnp.abs(last[1] - last[0]) > CHANGE) & (i < max_iterations)

    first = (start, optimizer.init(start), jnp.float32(jnp.inf), jnp.array([jnp.inf, 0.0], jnp.float32), 0)
    params, *_ = jax.lax.while_loop(going, step, first)
    return params, loss(params)


@partial(jax.jit, static_argnames=("max_iterations",))
def _fit_starts(points: jax.Array, weights: jax.Array, target: jax.Array, kept: jax.Array, delta: float,
                max_iterations: int) -> tuple[jax.Array, jax.Array]:
    """Every start's fit, for each row of `kept` [fits, n]: (params [fits, starts, 1 + d], losses [fits, starts])."""
    starts_ = jax.vmap(_minimise, in_axes=(0, None, None, None, None, None))
    return jax.vmap(starts_, in_axes=(None, None, None, 0, None, None))(points, weights, target, kept, delta,
                                                                          max_iterations)


def _best(params: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, float]:
    """The start whose fit ends with the lowest loss (a diverged one, NaN, never)."""
    losses = np.where(np.isfinite(losses), losses, np.inf)
    best = int(np.argmin(losses))
    if not np.isfinite(losses[best]):
        raise ValueError("the log-linear law could not be fitted from any start (every fit diverged)")
    return np.asarray(params[best], np.float64), float(losses[best])


@dataclass(frozen=True)
class Fit:
    """A fitted law: its params [1 + d] and Huber loss (summed) on the table it was fitted to."""

    params: np.ndarray
    loss: float

    def predict(self, weights: np.ndarray) -> np.ndarray:
        return predict(self.params, weights)


def _fits(weights: np.ndarray, target: np.ndarray, kept: np.ndarray, index: int, points: np.ndarray | None,
          delta: float, max_iterations: int) -> list[Fit]:
    """A fit per row of `kept` [fits, n], every start at once; the rows padded to a multiple of ROWS (weighted 0), so
    that tables of similar sizes share one compiled program."""
    n = len(target)
    pad = -n % ROWS
    weights = np.pad(np.asarray(weights, np.float32), ((0, pad), (0, 0)))
    target, kept = np.pad(np.asarray(target, np.float32), (0, pad)), np.pad(np.asarray(kept, np.float32), ((0, 0), (0, pad)))
    points = starts(weights.shape[1], index) if points is None else np.asarray(points)
    params, losses = _fit_starts(jnp.asarray(points, jnp.float32), jnp.asarray(weights), jnp.asarray(target),
                                 jnp.asarray(kept), delta, max_iterations)
    return [Fit(*_best(p, loss)) for p, loss in zip(np.asarray(params), np.asarray(losses), strict=True)]


def fit(weights: np.ndarray, target: np.ndarray, *, index: int = 0, points: np.ndarray | None = None,
        delta: float = DELTA, max_iterations: int = 2000) -> Fit:
    """The law fitted to proxies' `weights` [n, d] and their `target` [n], from `points` (default: olmix's `starts`
    for `index`, the target's column number in olmix's table)."""
    kept = np.ones((1, len(target)))
    return _fits(weights, target, kept, index, points, delta, max_iterations)[0]


def leave_one_out(weights: np.ndarray, target: np.ndarray, fitted: Fit, *, delta: float = DELTA,
                  max_iterations: int = 2000) -> np.ndarray:
    """Each proxy's target as the law fitted to every other proxy predicts it [n]: each refit starts from `fitted`
    (the law fitted to every proxy; a proxy left out moves the optimum a little), all n at once."""
    weights = np.asarray(weights)
    fits = _fits(weights, target, 1 - np.eye(len(target)), 0, fitted.params[None], delta, max_iterations)
    return np.array([f.predict(weights[i : i + 1])[0] for i, f in enumerate(fits)])
