# Derived from olmix (https://github.com/allenai/olmix: olmix/generate/synthesize_mixture.py,
# `generate_weights_dirichlet` and `sort_and_deduplicate`), the olmix authors, Allen Institute for AI, Apache-2.0.
# Modified for instructjax (flat sources only, numpy's and Python's generators passed in). See NOTICE.

"""olmix's swarm: the source weights of N proxy runs, drawn around the natural distribution (each source's share of
the tokens) with caps on how often a source may repeat. Flat sources only (olmix's topics and quality buckets
within a source are left out: a task is a source).

For each of `runs x sample_multiplier` rounds, as olmix's `generate_weights_dirichlet` draws them:
1. `candidates`: one Dirichlet draw around the (tempered) natural distribution at each of 15 concentrations spaced
   logarithmically from `min_strength` to `max_strength`, each source's single topic drawn too (always 1, up to
   rounding), as olmix draws it (olmix's branch for equal strengths fails on its own draws: they must differ);
2. those within the caps (`caps`: a source's tokens x `max_repetition` / the proxy's token budget, at most 1);
   Python's `random.choice` picks one;
3. `snap`: weights under `minimum_weight` to 0, the rest rounded to multiples of it, renormalised; dropped if that
   broke a cap, or if a source would repeat more than `max_repetition` times (`repetitions`).
Then the near-duplicates are dropped (`deduplicate`) and `random.sample` picks `runs` of them. The same seed gives
olmix's weights: numpy's legacy generator (`np.random.seed`) and Python's (`random.seed`), each seeded with it, are
used in olmix's order.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass

import numpy as np

STRENGTHS = 15  # concentrations per round (olmix's np.logspace(..., 15))
DUPLICATE = 1e-5  # weights this close are one mixture (olmix's sort_and_deduplicate threshold)
HASHED_ABOVE = 10_000  # olmix dedupes by rounding instead of pairwise comparison above this many samples


@dataclass(frozen=True)
class Settings:
    """The generator's settings, olmix's defaults (its `SwarmConfig`, `ConfigDefaults`)."""

    min_strength: float = 0.1
    max_strength: float = 5.0
    minimum_weight: float = 2e-3
    sample_multiplier: int = 10
    max_repetition: float = 1.0  # olmix's repetition_factor
    temperature: float = 1.0  # olmix's mix_temperature: the natural distribution ** t, renormalised (t < 1)

    def __post_init__(self):
        if not 0 < self.min_strength < self.max_strength:
            raise ValueError(f"the Dirichlet's strengths must satisfy 0 < min ({self.min_strength}) < max "
                             f"({self.max_strength})")
        if not 0 < self.minimum_weight < 1 or self.sample_multiplier < 1 or self.max_repetition <= 0:
            raise ValueError("minimum weight in (0, 1), sample multiplier >= 1 and maximum repetition > 0, got "
                             f"{self.minimum_weight}, {self.sample_multiplier}, {self.max_repetition}")
        if not 0 < self.temperature <= 1:
            raise ValueError(f"the temperature must be in (0, 1], got {self.temperature}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Swarm:
    """`weights` [runs, sources] (each row sums to 1) and each source's `repetition` [runs, sources] (its tokens in
    the budget over the tokens it holds, at least 1), `sources` sorted by name."""

    sources: list[str]
    weights: np.ndarray
    repetition: np.ndarray


def natural(tokens: dict[str, int]) -> dict[str, float]:
    """Each source's share of the tokens (olmix's `calculate_priors`), sources sorted by name."""
    total = sum(tokens.values())
    return {name: tokens[name] / total for name in sorted(tokens)}


def caps(tokens: np.ndarray, budget: int, max_repetition: float) -> np.ndarray:
    """The largest weight of each source: what it holds at `max_repetition`, over the proxy's token budget."""
    return np.minimum(tokens * max_repetition / budget, 1.0)


def prior(shares: np.ndarray, temperature: float) -> np.ndarray:
    """The Dirichlet's centre: the natural distribution, renormalised, tempered below a temperature of 1."""
    shares = shares / shares.sum()
    if temperature < 1.0:
        shares = shares**temperature
        return shares / np.sum(shares)
    return shares


def strengths(settings: Settings) -> np.ndarray:
    """The Dirichlet's concentrations of one round."""
    return np.logspace(np.log10(settings.min_strength), np.log10(settings.max_strength), STRENGTHS)


def candidates(rng: np.random.RandomState, centre: np.ndarray, concentrations: np.ndarray) -> list[np.ndarray]:
    """One round's draws: the sources' weights at each concentration, then each source's one topic at each (olmix
    draws a topic level even for a source without topics: its weight 1, drawn all the same)."""
    sources = [rng.dirichlet(centre * s, 1)[0] for s in concentrations]
    topics = np.array([[rng.dirichlet(np.array([1.0]) * s, 1)[0, 0] for s in concentrations] for _ in centre])
    return [topics[:, i] * source for i, source in enumerate(sources)]


def snap(weights: np.ndarray, minimum: float) -> np.ndarray:
    """Weights under `minimum` to 0, the rest renormalised, rounded to multiples of `minimum`, renormalised."""
    weights = np.where(weights < minimum, 0, weights)
    weights = weights / np.sum(weights)
    weights = np.round(weights / minimum) * minimum
    return weights / np.sum(weights)


def repetitions(weights: np.ndarray, tokens: np.ndarray, budget: int) -> np.ndarray:
    """How many times each source's tokens the budget takes at these weights (olmix rounds up to 1/1000)."""
    required = np.array([int(w * budget) for w in weights])
    return np.ceil(required / tokens * 1000) / 1000


def deduplicate(samples: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The samples in order, less each whose weights equal an earlier one's (within `DUPLICATE`, as np.allclose
    compares them; above HASHED_ABOVE samples, rounded to multiples of it, as olmix does)."""
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    if len(samples) > HASHED_ABOVE:
        seen: set[tuple[int, ...]] = set()
        for sample in samples:
            key = tuple(np.round(sample[0] / DUPLICATE).astype(int))
            if key not in seen:
                seen.add(key)
                kept.append(sample)
        return kept
    stack = np.empty((0, len(samples[0][0]))) if samples else None
    for sample in samples:
        if not np.any(np.all(np.abs(sample[0] - stack) <= DUPLICATE + 1e-5 * np.abs(stack), axis=1)):
            kept.append(sample)
            stack = np.vstack([stack, sample[0]])
    return kept


def draw(tokens: dict[str, int], budget: int, runs: int, seed: int, settings: Settings = Settings()) -> Swarm:
    """`runs` mixtures of the sources in `tokens` (name -> tokens it holds) for proxies trained on `budget` tokens,
    as olmix draws them with `seed`; a ValueError when too few mixtures satisfy the caps."""
    sources = sorted(tokens)
    held = np.array([tokens[s] for s in sources])
    centre = prior(np.array(list(natural(tokens).values())), settings.temperature)
    upper = caps(held, budget, settings.max_repetition)
    concentrations = strengths(settings)
    numbers, python = np.random.RandomState(seed), random.Random(seed)
    collected = []
    for _ in range(runs * settings.sample_multiplier):
        within = [c for c in candidates(numbers, centre, concentrations) if np.all((c >= 0) & (c <= upper))]
        if not within:
            continue
        weights = snap(python.choice(within), settings.minimum_weight)
        if np.any((weights < 0) | (weights > upper)):
            continue
        repeated = repetitions(weights, held, budget)
        if np.any(repeated > settings.max_repetition):
            continue
        collected.append((weights, np.maximum(1, repeated)))
    unique = deduplicate(collected)
    if len(collected) < runs or len(unique) < runs:
        raise ValueError(f"{len(unique)} distinct mixture(s) of {runs * settings.sample_multiplier} rounds satisfy the "
                         f"caps, fewer than the {runs} asked for")
    chosen = python.sample(unique, runs)
    return Swarm(sources, np.stack([w for w, _ in chosen]), np.stack([r for _, r in chosen]))
