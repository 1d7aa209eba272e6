# Derived from open-instruct (https://github.com/allenai/open-instruct), Copyright 2024 AllenAI, Apache-2.0.
# Modified for instructjax. See NOTICE.

"""Verifiers: a verifiable prompt's reward, `(prediction, ground_truth) -> score in [0, 1]`, by name (a row's
`dataset`, lower-cased). The built-in ones are open-instruct's (`ground_truth_utils`, pinned in
tests/assets/open_instruct), with their semantics: `gsm8k`, `math`, `strict_math`, `ifeval` (IFEvalG's instruction
registry, `verifiers.ifeval`: OLMo 3 / Tulu 3's IF_multi_constraints rows, a list holding `{"instruction_id": [...],
"kwargs": [...]}`), `ifeval_old` (Tulu 3's RLVR-IFeval rows: a JSON `func_name` and its arguments; they name
`ifeval`, so read them with source_options `{remap_verifier: ifeval=ifeval_old}`), `string_matcher`, `string_f1`,
`puzzle`, `flan`. A user's own is a registered function (`@register_verifier("name")` in a module the config imports).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from instructjax.core.context import current
from instructjax.core.errors import ConfigError
from instructjax.data.verifiers import builtin

Verifier = Callable[[str, str], float]
_TABLE = "data.verifiers"


def register_verifier(name: str) -> Callable[[Verifier], Verifier]:
    """Decorator: register `fn(prediction, ground_truth) -> float` as verifier `name` (lower-cased, as open-instruct
    looks a row's `dataset` up), in the current context (`core.context`: a module a config imports registers for
    the process). A name already registered is a ConfigError."""
    key = name.lower()

    def add(fn: Verifier) -> Verifier:
        if not callable(fn):
            raise ConfigError(f"verifier {name!r}: {fn!r} is not a function")
        if key in builtin.VERIFIERS or _registered(key) is not None:
            raise ConfigError(f"verifier {name!r} is already registered")
        current().tables(_TABLE)[0][key] = fn
        return fn

    return add


def _registered(name: str) -> Verifier | None:
    return next((t[name] for t in current().tables(_TABLE) if name in t), None)


def verifier_names() -> list[str]:
    """Every registered verifier's name (the built-in ones and yours)."""
    return sorted({*builtin.VERIFIERS, *(n for table in current().tables(_TABLE) for n in table)})


def check_ground_truth(name: str, ground_truth: str) -> None:
    """One DataError line when a row's ground truth is not verifier `name`'s (the built-in ones that can tell:
    `ifeval`); nothing for the others."""
    check = builtin.GROUND_TRUTH_CHECKS.get(name.lower())
    if check is not None:
        check(ground_truth)


def known_verifier(name: str) -> bool:
    """Whether `name` (any case) names a registered verifier."""
    key = name.lower()
    return key in builtin.VERIFIERS or _registered(key) is not None


def get_verifier(name: str) -> Verifier:
    """The verifier registered as `name` (any case); one ConfigError line listing the known ones otherwise."""
    key = name.lower()
    found = builtin.VERIFIERS.get(key) or _registered(key)
    if found is None:
        raise ConfigError(f"unknown verifier {name!r}; known: {', '.join(verifier_names())}")
    return found


def verify(name: str, prediction: str, ground_truth: str) -> float:
    """The score in [0, 1] verifier `name` gives `prediction` against `ground_truth`."""
    return float(get_verifier(name)(prediction, ground_truth))


def seeded_score(verifier: Verifier, prediction: str, ground_truth: str, key: Sequence[int]) -> float:
    """`verifier(prediction, ground_truth)` with Python's global `random` seeded from `key` for the call, its state
    before put back after: a verifier that draws (IFEvalG's kwargs a row leaves null) draws the same for the same
    key on every host and in every resume. The rollouts' key: (run seed, prompt position in the run, sample)."""
    import random

    import numpy as np

    state = random.getstate()
    random.seed(int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0]))
    try:
        return float(verifier(prediction, ground_truth))
    finally:
        random.setstate(state)


__all__ = ["Verifier", "check_ground_truth", "get_verifier", "known_verifier", "register_verifier", "seeded_score",
           "verifier_names", "verify"]
