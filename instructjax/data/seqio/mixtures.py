"""The seqio face of instructjax's mixtures: each mixture spec as a `seqio.Mixture`, registered by name.

Two modes: *epoch mode* (what all four papers do), a fixed-size random subset of each task
(or all of it), concatenated, shuffled, N epochs: an `EpochMixture`, a `seqio.Mixture` whose rates are
the counts, so seqio's own sampling draws in the same proportions while the instructjax pipeline reads
the exact counts; *rate mode* (seqio's native), endless sampling with relative rates.

`register_paper_mixtures()` registers the papers' mixtures (`data.blends`) in `seqio.MixtureRegistry`: once, on
demand (importing this module registers nothing, unlike T5X's task modules; `data.seqio.lookup` calls it before
it asks seqio for a name); `register_epoch_mixture` / `register_rate_mixture` add your own::

    from instructjax.data.seqio.mixtures import register_epoch_mixture
    register_epoch_mixture("my_blend", {"alpaca": 20_000, "code_alpaca": 20_000, "my_chats": None})
"""

from __future__ import annotations

import seqio

from instructjax.core.errors import ConfigError
from instructjax.data.blends import papers, specs
from instructjax.data.blends.specs import MixtureSpec
from instructjax.data.seqio.tasks import register_builtin_tasks, register_task


class EpochMixture(seqio.Mixture):
    """A Mixture of exact per-task counts (None = every example), concatenated and shuffled."""

    def __init__(self, name: str, counts: dict[str, int | None]):
        self.counts = dict(counts)
        super().__init__(name, [(t, float(n if n is not None else 1.0)) for t, n in self.counts.items()])


def _register_tasks(names: list[str]) -> None:
    for name in names:
        if name not in seqio.TaskRegistry.names():
            register_task(name, specs.task(name))


def register_spec(name: str, spec: MixtureSpec) -> seqio.Mixture:
    """Register mixture `name` (its spec, and a seqio Mixture over seqio Tasks of its tasks)."""
    specs.add_mixture(name, spec)
    _register_tasks(spec.tasks)
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)
    if spec.epoch_mode:
        mixture = EpochMixture(name, dict(spec.counts))
        seqio.MixtureRegistry.add_provider(name, mixture)
        return mixture
    return seqio.MixtureRegistry.add(name, list(spec.rates))


def register_epoch_mixture(name: str, counts: dict[str, int | None]) -> EpochMixture:
    """Register an epoch-mode mixture: `counts[task]` random examples of each task (None = all)."""
    if not counts:
        raise ConfigError(f"mixture {name!r} has no tasks")
    return register_spec(name, MixtureSpec(counts=tuple(counts.items())))


def register_rate_mixture(name: str, rates: dict[str, float]) -> seqio.Mixture:
    """Register a rate-mode mixture: endless sampling with relative `rates[task]`."""
    if not rates:
        raise ConfigError(f"mixture {name!r} has no tasks")
    return register_spec(name, MixtureSpec(rates=tuple(rates.items())))


def register_paper_mixtures() -> None:
    """The standard points of every family of the papers, each with its `_builtin` twin (`data.blends`), and every
    built-in task, in seqio's registries; a name seqio already knows is left as it is (so a second call registers
    nothing)."""
    register_builtin_tasks()
    known = seqio.MixtureRegistry.names()
    for name in papers.paper_names():
        if name not in known:
            register_spec(name, specs.lookup_mixture(name))
