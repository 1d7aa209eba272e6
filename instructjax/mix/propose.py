# Derived from olmix (https://github.com/allenai/olmix: olmix/fit/utils.py, LogLinearExactProposer), the olmix
# authors, Allen Institute for AI, Apache-2.0. Modified for instructjax (the caps as an argument, Clarabel). See NOTICE.

"""The mixture a fitted law predicts best, under caps on each source's weight.

`exact` is olmix's exact proposer for the log-linear law (`LogLinearExactProposer`): with the law y_j(w) =
exp(log_c_j) + exp(w . t_j) per target j, the mixture minimising

    sum_j a_j exp(w . t_j) + kl * KL(w || natural)      subject to w >= 0, sum(w) = 1, w <= caps

(exp(log_c_j) moves no argmin; a_j: the targets' weights, 1/targets by default) is a convex problem, solved by cvxpy.
olmix solves it with ECOS, which cvxpy no longer installs; here with Clarabel, the interior-point solver cvxpy ships
(the same optimum within solver tolerance: tests/mix/test_propose.py runs olmix's own proposer).
"""

from __future__ import annotations

import numpy as np

KL = 0.05  # olmix's kl_reg default
EPS = 1e-12  # olmix floors the natural distribution at this before normalising it


def check_caps(sources: list[str], caps: np.ndarray | None) -> None:
    """A ValueError unless some mixture is under `caps` (every cap >= 0, and together they reach 1)."""
    if caps is None:
        return
    caps = np.asarray(caps, np.float64)
    negative = [s for s, c in zip(sources, caps, strict=True) if c < 0]
    if negative:
        raise ValueError(f"a negative cap for {', '.join(negative)}")
    if caps.sum() < 1:
        raise ValueError(f"no mixture is under the caps: {', '.join(f'{s} <= {c:g}' for s, c in zip(sources, caps, strict=True))} "
                         f"add up to {caps.sum():g} < 1")


def exact(t: np.ndarray, objective: np.ndarray | None, natural: np.ndarray, caps: np.ndarray | None = None,
          kl: float = KL, solver: str = "CLARABEL") -> np.ndarray:
    """The log-linear law's best mixture [d] (module doc): `t` [targets, d] the fitted exponents, `objective`
    [targets] the targets' weights (None: equal, 1/targets), `natural` [d] the distribution the KL term pulls
    toward, `caps` [d] each source's largest weight (None: no caps)."""
    import cvxpy as cp

    t = np.atleast_2d(np.asarray(t, np.float64))
    n, d = t.shape
    a = np.ones(n) / n if objective is None else np.asarray(objective, np.float64)
    q = np.maximum(np.asarray(natural, np.float64), EPS)
    q = q / q.sum()
    x = cp.Variable(d)
    loss = cp.sum(cp.multiply(a, cp.exp(t @ x))) + kl * cp.sum(cp.rel_entr(x, q))
    constraints = [x >= 0, cp.sum(x) == 1]
    if caps is not None:
        constraints.append(x <= np.asarray(caps, np.float64))
    problem = cp.Problem(cp.Minimize(loss), constraints)
    problem.solve(solver=solver)
    if x.value is None or problem.status not in ("optimal", "optimal_inaccurate"):
        raise ValueError(f"the proposal's problem is {problem.status}")
    return np.clip(np.asarray(x.value), 0, None) / np.clip(np.asarray(x.value), 0, None).sum()
