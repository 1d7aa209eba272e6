# An extract of olmix/fit/utils.py (allenai/olmix, Apache-2.0; its commit in tests/assets/olmix/COMMIT): the log-linear
# law's exact proposer, lines 3, 11, 13, 15 and 30 (the imports and the logger it uses), 55-65 and 326-345 (`Regressor`
# and `SearchRegressor`, which its signature names), 379-384 and 539-597 (`Proposer`, `LogLinearExactProposer`) copied
# unchanged. It solves with ECOS, which cvxpy 1.9 no longer installs: tests/mix/test_propose.py runs it with Clarabel.
import logging
from typing import Any

import cvxpy as cp
import numpy as np

logger = logging.getLogger(__name__)


class Regressor:
    model: Any

    def fit(self, x, y, idx, **kwargs):
        raise NotImplementedError("Subclasses must implement this method")

    def predict(self, x):
        if not hasattr(self, "model"):
            raise AttributeError("Subclasses must define self.model before calling predict()")
        return self.model.predict(x)



class SearchRegressor(Regressor):
    def __init__(self, **kwargs):
        pass

    def fit(self, x, y, idx, **kwargs):
        target = y[:, idx]
        self.model = {tuple(row): target[i] for i, row in enumerate(x)}

    def predict(self, x):
        preds = []
        for row in x:
            if tuple(row) in self.model:
                preds.append(self.model[tuple(row)])
            else:
                preds.append(np.inf)
        return preds

    def get_searched_weights(self):
        return [np.array(weight) for weight, _ in self.model.items()]



class Proposer:
    def __init__(self):
        pass

    def propose(self, **kwargs):
        raise NotImplementedError("Subclasses must implement this method")


class LogLinearExactProposer(Proposer):
    def propose(
        self,
        predictor: list[SearchRegressor],
        prior_distributions: dict,
        token_counts: dict[str, int],
        constrain_objective: bool = False,
        kl_reg: float | None = 0.05,
        obj_weights: list | None = None,
        target_tokens: int | None = None,
        repetition_factor: float = 4.0,
        **kwargs,
    ):
        if kl_reg is None:
            raise ValueError("kl_reg must be provided for LogLinearExactProposer")

        caps = None
        if constrain_objective:
            desired_tokens = target_tokens
            # Ensure order matches prior_distributions
            available_tokens_per_source = {source: token_counts[source] for source, _ in prior_distributions.items()}
            caps = np.array(list(available_tokens_per_source.values())) * repetition_factor / desired_tokens

        np.array([p.model[0] for p in predictor])  # (n,)
        A = np.array([p.model[1:] for p in predictor])  # (n, d)
        n, d = A.shape
        weights = np.ones(n) / n if obj_weights is None else np.array(obj_weights)

        x = cp.Variable(d)

        logger.info(f"Using prior distribution for KL: {prior_distributions}")
        q = np.array(list(prior_distributions.values()))
        q = np.asarray(q, dtype=float)
        eps = 1e-12
        q = np.maximum(q, eps)  # ensure strictly positive
        q = q / q.sum()

        # c_i doesn’t affect the argmin, but harmless to include if you want the value
        # obj = cp.sum(cp.multiply(weights, C) + cp.exp(A @ x))
        # obj = cp.sum(cp.multiply(weights, cp.exp(A @ x)))       # identical argmin
        loss = cp.sum(cp.multiply(weights, cp.exp(A @ x)))

        # KL(x || q) = sum x*log(x/q) = sum rel_entr(x, q)
        kl = cp.sum(cp.rel_entr(x, q))

        obj = loss + kl_reg * kl

        constraints = [x >= 0, cp.sum(x) == 1]
        if constrain_objective:
            constraints.append(x <= caps)

        prob = cp.Problem(cp.Minimize(obj), constraints)
        prob.solve(solver="ECOS", verbose=True)  # ECOS or SCS are good

        print(prob.value, prob.status)

        return x.value


