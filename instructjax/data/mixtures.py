"""seqio Mixtures of the papers, in the two modes of DESIGN.md.

*Epoch mode* (what all four papers do): a fixed-size random subset of each task (or all of it),
concatenated, shuffled, trained for N epochs. It is an `EpochMixture`, a `seqio.Mixture` whose
rates are the counts, so seqio's own sampling draws in the same proportions, while the instructjax
pipeline reads the exact counts. *Rate mode* (seqio's native): endless sampling with relative rates.

Defining a new mixture is one call, in your own module or in a config file's `data.mixture` block::

    from instructjax.data.mixtures import register_epoch_mixture
    register_epoch_mixture("my_blend", {"alpaca": 20_000, "code_alpaca": 20_000, "my_chats": None})

Families of the papers are functions of their parameter (`acp_ratio(1.5)`, `acp_count(5000)`),
registered on first use; the standard points are registered on import, each also as a `_builtin`
twin reading the synthetic rows that ship with the package.
"""

from __future__ import annotations

import seqio

from instructjax.data import tasks as task_lib
from instructjax.errors import ConfigError

# seed 000: A = Alpaca (general), C = CodeAlpaca, P = P3 (specialized); 20K random examples each.
ACP_SOURCES = {"A": "alpaca", "C": "code_alpaca", "P": "p3"}
ACP_SETTINGS = ("A", "C", "P", "AC", "AP", "CP", "ACP")  # "None" is the base model, no training
ACP_PER_SOURCE = 20_000
ACP_RATIOS = (0.5, 1.0, 1.5, 2.0)
ACP_COUNTS = (2_500, 5_000, 10_000, 20_000)  # data-count sweep: same n of each type (CodeAlpaca has 20K)

# seed 004: FLAN V2 and CoT are sampled to 100K (Table 1); mixtures concatenate whole datasets.
TULU_SAMPLED = {"flan_v2": 100_000, "cot": 100_000}
TULU_HUMAN = ("flan_v2", "cot", "dolly", "oasst1")
TULU_HUMAN_GPT = TULU_HUMAN + ("gpt4_alpaca", "code_alpaca", "sharegpt")
TULU_TABLE3 = (
    "superni", "cot", "flan_v2", "dolly", "oasst1", "self_instruct", "unnatural_instructions",
    "alpaca", "code_alpaca", "gpt4_alpaca", "baize", "sharegpt",
)  # fmt: skip

# Built-in twins scale the papers' counts down to the synthetic data's size.
BUILTIN_SCALE = 1 / 100


class EpochMixture(seqio.Mixture):
    """A Mixture of exact per-task counts (None = every example), concatenated and shuffled."""

    def __init__(self, name: str, counts: dict[str, int | None]):
        self.counts = dict(counts)
        sizes = {t: (n if n is not None else 1.0) for t, n in self.counts.items()}
        super().__init__(name, [(t, float(r)) for t, r in sizes.items()])


def register_epoch_mixture(name: str, counts: dict[str, int | None]) -> EpochMixture:
    """Register an epoch-mode mixture: `counts[task]` random examples of each task (None = all)."""
    _check_tasks(name, counts)
    for task, n in counts.items():
        if n is not None and n <= 0:
            raise ConfigError(f"mixture {name!r}: count for {task!r} must be positive, got {n}")
    _remove(name)
    mixture = EpochMixture(name, counts)
    seqio.MixtureRegistry.add_provider(name, mixture)
    return mixture


def register_rate_mixture(name: str, rates: dict[str, float]) -> seqio.Mixture:
    """Register a rate-mode mixture: endless sampling with relative `rates[task]`."""
    _check_tasks(name, rates)
    if any(r <= 0 for r in rates.values()):
        raise ConfigError(f"mixture {name!r}: rates must be positive, got {rates}")
    _remove(name)
    return seqio.MixtureRegistry.add(name, list(rates.items()))


def remix(name: str, task_map: dict[str, str]) -> str:
    """Register (once) mixture `name` over other tasks (`task_map`: old task -> new task), with the same
    counts or rates, and return its name (e.g. a mixture of the variants bound to a run)."""
    import hashlib

    provider = seqio.get_mixture_or_task(name)
    digest = hashlib.sha1(repr(sorted(task_map.items())).encode()).hexdigest()[:8]
    base = task_lib.base_name(name)
    variant = f"{base}.{digest}"
    if variant not in seqio.MixtureRegistry.names():
        if isinstance(provider, EpochMixture):
            register_epoch_mixture(variant, {task_map[t]: n for t, n in provider.counts.items()})
        else:
            register_rate_mixture(variant, {task_map[t.name]: provider.get_rate(t) for t in provider.tasks})
        task_lib.VARIANT_OF[variant] = base
    return variant


def is_epoch_mixture(name: str) -> bool:
    return isinstance(seqio.get_mixture_or_task(name), EpochMixture)


def _check_tasks(name: str, tasks: dict) -> None:
    if not tasks:
        raise ConfigError(f"mixture {name!r} has no tasks")
    missing = [t for t in tasks if t not in seqio.TaskRegistry.names()]
    if missing:
        raise ConfigError(f"mixture {name!r}: unknown task(s) {missing}; register them first")


def _remove(name: str) -> None:
    if name in seqio.MixtureRegistry.names():
        seqio.MixtureRegistry.remove(name)


def _variant(source: str, builtin: bool) -> str:
    return source + task_lib.BUILTIN_SUFFIX if builtin else source


def _scaled(n: int | None, builtin: bool) -> int | None:
    return None if n is None else (max(1, round(n * BUILTIN_SCALE)) if builtin else n)


def _tulu_count(source: str, builtin: bool) -> int | None:
    """FLAN V2 and CoT sampled to 100K; the built-in rows are already that sample, so whole."""
    return None if builtin else TULU_SAMPLED.get(source)


def acp_setting(setting: str, *, per_source: int = ACP_PER_SOURCE, builtin: bool = False) -> str:
    """Seed 000's settings (A, C, P, AC, AP, CP, ACP): `per_source` random examples of each type."""
    if setting not in ACP_SETTINGS:
        raise ConfigError(f"unknown A/C/P setting {setting!r}; one of {ACP_SETTINGS}")
    name = f"acp_{setting}" + (f"_n{per_source}" if per_source != ACP_PER_SOURCE else "")
    name += task_lib.BUILTIN_SUFFIX if builtin else ""
    counts = {_variant(ACP_SOURCES[t], builtin): _scaled(per_source, builtin) for t in setting}
    register_epoch_mixture(name, counts)
    return name


def acp_ratio(ratio: float, *, general: int = ACP_PER_SOURCE, builtin: bool = False) -> str:
    """Seed 000's ratio sweep: Alpaca fixed at `general`, the specialized share (P3 + CodeAlpaca,
    split equally) at `ratio` x general; at 2.0 every type has `general` examples (the ACP setting)."""
    if ratio <= 0:
        raise ConfigError(f"specialized:general ratio must be positive, got {ratio}")
    name = f"acp_ratio_{ratio:g}" + (task_lib.BUILTIN_SUFFIX if builtin else "")
    specialized = round(ratio * general / 2)
    counts = {
        _variant("alpaca", builtin): _scaled(general, builtin),
        _variant("code_alpaca", builtin): _scaled(specialized, builtin),
        _variant("p3", builtin): _scaled(specialized, builtin),
    }
    register_epoch_mixture(name, counts)
    return name


def acp_count(n: int, *, builtin: bool = False) -> str:
    """Seed 000's data-count sweep: the same `n` examples of each of A, C and P."""
    return acp_setting("ACP", per_source=n, builtin=builtin)


def tulu_mixture(which: str, *, builtin: bool = False) -> str:
    """Seed 004's mixtures: "human" (FLAN V2, CoT, Dolly, OASST1) or "human_gpt" (+ GPT4-Alpaca,
    Code-Alpaca, ShareGPT); datasets concatenated whole, FLAN V2 and CoT sampled to 100K."""
    sources = {"human": TULU_HUMAN, "human_gpt": TULU_HUMAN_GPT}.get(which)
    if sources is None:
        raise ConfigError(f"unknown Tulu mixture {which!r}; 'human' or 'human_gpt'")
    name = f"tulu_{which}" + (task_lib.BUILTIN_SUFFIX if builtin else "")
    counts = {_variant(s, builtin): _tulu_count(s, builtin) for s in sources}
    register_epoch_mixture(name, counts)
    return name


def tulu_single(source: str, *, builtin: bool = False) -> str:
    """One dataset of seed 004's Table 3 as an epoch mixture (CoT/FLAN V2 sampled to 100K)."""
    if source not in TULU_TABLE3:
        raise ConfigError(f"{source!r} is not a Table 3 dataset; one of {TULU_TABLE3}")
    name = f"tulu_single_{source}" + (task_lib.BUILTIN_SUFFIX if builtin else "")
    register_epoch_mixture(name, {_variant(source, builtin): _tulu_count(source, builtin)})
    return name


def register_paper_mixtures() -> None:
    """Register the standard points of every family, each with its `_builtin` twin, and
    `all_builtin` (every built-in dataset whole: `instructjax data stats all_builtin`)."""
    register_epoch_mixture("all_builtin", {s + task_lib.BUILTIN_SUFFIX: None for s in task_lib.sources.SOURCES})
    for builtin in (False, True):
        for setting in ACP_SETTINGS:
            acp_setting(setting, builtin=builtin)
        for ratio in ACP_RATIOS:
            acp_ratio(ratio, builtin=builtin)
        for n in ACP_COUNTS:
            acp_count(n, builtin=builtin)
        for which in ("human", "human_gpt"):
            tulu_mixture(which, builtin=builtin)
        for source in TULU_TABLE3:
            tulu_single(source, builtin=builtin)


register_paper_mixtures()
