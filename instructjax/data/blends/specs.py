"""Tasks and mixtures as data: what a task reads and how it encodes it, what a mixture holds, by name.

The pipeline, run binding, `data stats` and `plan` read these, so none of them imports seqio or
TensorFlow; `data.seqio.tasks` and `data.seqio.mixtures` register every spec in seqio's registries too (the
public face: `seqio.get_mixture_or_task(...)` works on them once registered). A `Registry` holds them by name,
and a run hands its registry on (`data.binding`); names resolve on first lookup: `NAME` and `NAME_builtin` for
every source (`sources.SOURCES`), the papers' mixtures from their names (`blends.papers`), everything registered
with `add_task` / `add_mixture` (a config's `define:` block, your own code: these module functions write into
`default_registry()`, the one the run loader passes on).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
from dataclasses import dataclass

from instructjax.core.coerce import build_section
from instructjax.core.context import Context, current
from instructjax.core.errors import ConfigError
from instructjax.data.blends import papers
from instructjax.data.sources.registry import ALL_SOURCES, PREFERENCE_SOURCES, SOURCES, VERIFIABLE_SOURCES
from instructjax.data.sources.synthetic import BUILTIN, BUILTIN_SUFFIX  # noqa: F401  (names of the built-in tasks)


@dataclass(frozen=True)
class SelectionSpec:
    """Keep `k` (or a `fraction`) of a task's conversations chosen by `method` (see
    instructjax.data.selection.methods). `less` (targeted, `train/less_select.py`) selects for a `target` (a task or
    mixture, or a file of `target_source` rows) with the run's model (or `encoder_model`); `less` holds its settings
    (`LessSettings`' fields: warmup_fraction, dim, ...) and `directory` where its warm-up and features go (None: under
    the tokenized cache, by the pool, model and settings)."""

    method: str
    k: int | None = None
    seed: int = 0
    score_key: str = "score"
    num_clusters: int = 100
    encoder: str | None = None
    encoder_model: str | None = None  # the model an encoder embeds with, or LESS selects with: the run binds its own
    encoder_tokenizer: str | None = None
    fraction: float | None = None
    target: str | None = None
    target_source: str = "messages"
    less: tuple[tuple[str, object], ...] = ()
    directory: str | None = None

    def __post_init__(self):
        from instructjax.data.selection.methods import METHODS, TARGETED_METHODS

        if self.method not in METHODS + TARGETED_METHODS:
            raise ConfigError(f"selection.method must be one of {METHODS + TARGETED_METHODS}, got {self.method!r}")
        if self.k is not None and self.k < 1:
            raise ConfigError(f"selection.k must be >= 1 (or null for 'full'), got {self.k}")
        if self.fraction is not None and not 0 < self.fraction <= 1:
            raise ConfigError(f"selection.fraction must be in (0, 1], got {self.fraction}")
        if self.method in TARGETED_METHODS and (not self.target or (self.k is None) == (self.fraction is None)):
            raise ConfigError(f"selection {self.method!r} needs a target and one of k and fraction")

    @property
    def with_model(self) -> bool:
        """Whether the selection runs a model (an embedding encoder, or a targeted method): the run binds its own."""
        from instructjax.data.selection.embeddings import MODEL_ENCODERS
        from instructjax.data.selection.methods import TARGETED_METHODS

        return self.encoder in MODEL_ENCODERS or self.method in TARGETED_METHODS


@dataclass(frozen=True)
class TaskSpec:
    """How a task reads and encodes its data.

    `data_files`: None reads the hub dataset, ("builtin",) the synthetic rows, else local files in the
    dataset's native schema (a directory: the files in it). `source_options` go to the source (e.g.
    `(("top_k", 1),)` for oasst1, `(("per_part", 500),)` for a pooled source such as P3; see `sources`).
    `selection` keeps a subset before encoding (seed 002); longest/shortest count response tokens under
    this task's tokenizer. `template`, `tokenizer` and `max_length` (where each example is truncated)
    left unset take the run's (`data.binding`); outside a run: tulu, the built-in tokenizer and 2048.
    """

    source: str
    data_files: tuple[str, ...] | None = None
    template: str | None = None
    tokenizer: str | None = None
    max_length: int | None = None
    source_options: tuple[tuple[str, object], ...] = ()
    on_bad_row: str = "error"
    selection: SelectionSpec | None = None
    system_turn: str = "keep"  # keep, merge or drop the system turn before the template (core/config.py)

    def __post_init__(self):
        if self.source not in ALL_SOURCES:
            known = ", ".join(sorted(ALL_SOURCES))
            raise ConfigError(f"unknown source {self.source!r} (known: {known})")

    @property
    def preference(self) -> bool:
        """Whether the task's examples are preference pairs (a `PREFERENCE_SOURCES` source): each example is a
        chosen and a rejected completion of one prompt, trained by a preference loss (`objective:`)."""
        return self.source in PREFERENCE_SOURCES

    @property
    def verifiable(self) -> bool:
        """Whether the task's examples are verifiable prompts (a `VERIFIABLE_SOURCES` source): each example is a
        prompt's tokens (no trained token) and its meta a `ground_truth` for a verifier, rewarded by RL (`objective:`)."""
        return self.source in VERIFIABLE_SOURCES


@dataclass(frozen=True)
class MixtureSpec:
    """Tasks with exact counts (epoch mode: a fixed subset of each, None = all, shuffled, N epochs) or
    with relative rates (rate mode: seqio's endless sampling)."""

    counts: tuple[tuple[str, int | None], ...] = ()
    rates: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        if bool(self.counts) == bool(self.rates):
            raise ConfigError("a mixture has counts (epoch mode) or rates (rate mode), and at least one task")
        if any(n is not None and n <= 0 for _, n in self.counts):
            raise ConfigError(f"mixture counts must be positive or null (all), got {dict(self.counts)}")
        if any(r <= 0 for _, r in self.rates):
            raise ConfigError(f"mixture rates must be positive, got {dict(self.rates)}")

    @property
    def epoch_mode(self) -> bool:
        return bool(self.counts)

    @property
    def tasks(self) -> list[str]:
        return [t for t, _ in (self.counts or self.rates)]


class Registry:
    """Tasks and mixtures by name, and the variants `bind` makes of them: one object a run is handed and passes
    on (`data.binding`), rather than state each stage reads behind the others' backs. `default_registry()` is
    the one the public functions below (`add_task`, `define`, ...) write into: what a user's own modules
    (`imports:`) register, and what the run loader passes on. Anchors: levanter's draccus `ChoiceRegistry`,
    EasyLM's `DatasetFactory`."""

    def __init__(self, parent: Registry | None = None):
        self.parent = parent  # read, never written: what a user's modules registered before this command
        self.tasks: dict[str, TaskSpec] = {}
        self.mixtures: dict[str, MixtureSpec] = {}
        self.variants: dict[str, str] = {}  # a variant of a task or mixture -> the name it was made from

    def add_task(self, name: str, spec: TaskSpec) -> None:
        """Register (or replace) task `name`."""
        self.tasks[name] = spec

    def add_mixture(self, name: str, spec: MixtureSpec) -> None:
        """Register (or replace) mixture `name`; its tasks must resolve."""
        missing = [t for t in spec.tasks if self.lookup_task(t) is None]
        if missing:
            raise ConfigError(f"mixture {name!r}: unknown task(s) {missing}; register them first")
        self.mixtures[name] = spec

    def add_foreign_mixture(self, name: str, spec: MixtureSpec) -> None:
        """Register the spec of a mixture whose tasks are not all instructjax tasks (a user's seqio Mixture)."""
        self.mixtures[name] = spec

    def lookup_task(self, name: str) -> TaskSpec | None:
        """The task called `name` (the built-in `SOURCE` / `SOURCE_builtin` ones made on first lookup)."""
        if name not in self.tasks and self.parent is not None:
            return self.parent.lookup_task(name)
        if name not in self.tasks:
            source = name.removesuffix(BUILTIN_SUFFIX)
            if source in ALL_SOURCES:
                self.tasks[name] = TaskSpec(source=source, data_files=(BUILTIN,) if name != source else None)
        return self.tasks.get(name)

    def lookup_mixture(self, name: str) -> MixtureSpec | None:
        """The mixture called `name` (the papers' mixtures made from their names on first lookup)."""
        if name not in self.mixtures and self.parent is not None:
            return self.parent.lookup_mixture(name)
        if name not in self.mixtures:
            counts = papers.paper_counts(name)
            if counts is not None:
                self.add_mixture(name, MixtureSpec(counts=counts))
        return self.mixtures.get(name)

    def task(self, name: str) -> TaskSpec:
        """The task called `name`, or a one-line ConfigError."""
        spec = self.lookup_task(name)
        if spec is None:
            raise self.unknown(name, "an instructjax task")
        return spec

    def tasks_of(self, name: str) -> tuple[list[str], MixtureSpec | None] | None:
        """(task names, mixture spec or None) of a mixture or task called `name`; None if neither."""
        mixture = self.lookup_mixture(name)
        if mixture is not None:
            return mixture.tasks, mixture
        return ([name], None) if self.lookup_task(name) is not None else None

    def suggest(self, name: str) -> list[str]:
        """Up to three known names (not variants) closest to `name`: the "did you mean" of `unknown`."""
        known = {*papers.paper_names(), *SOURCES, *(f"{s}{BUILTIN_SUFFIX}" for s in SOURCES)}
        registry = self
        while registry is not None:
            known |= {*registry.tasks, *registry.mixtures}
            registry = registry.parent
        return difflib.get_close_matches(name, sorted(k for k in known if self.base_name(k) == k), n=3, cutoff=0.6)

    def unknown(self, name: str, what: str = "a registered task or mixture") -> ConfigError:
        """`NAME is not a registered task or mixture; did you mean ...?` (the closest known names)."""
        close = self.suggest(name)
        hint = f"did you mean {' or '.join(close)}?" if close else "README: defining your own task or mixture"
        return ConfigError(f"{name!r} is not {what}; {hint}")

    def base_name(self, name: str) -> str:
        """The name a variant (`with_options`, `remix`) was made from: what reports and metrics show."""
        if name in self.variants or self.parent is None:
            return self.variants.get(name, name)
        return self.parent.base_name(name)

    def subset_seed(self, seed: int, task: str) -> int:
        """The seed of a task's subset draw (see the module function `subset_seed`)."""
        return int.from_bytes(hashlib.sha256(f"{seed}/{self.base_name(task)}".encode()).digest()[:8], "little")

    def with_options(self, name: str, **changes) -> str:
        """Register (once) and return a variant of task `name` with TaskSpec fields changed."""
        original = self.task(name)
        spec = dataclasses.replace(original, **changes)
        if spec == original:
            return name
        variant = f"{self.base_name(name)}.{_digest(spec)}"
        if self.lookup_task(variant) is None:
            self.add_task(variant, spec)
            self.variants[variant] = self.base_name(name)
        return variant

    def remix(self, name: str, task_map: dict[str, str]) -> str:
        """Register (once) and return mixture `name` over other tasks (`task_map`: old -> new), same counts or
        rates."""
        spec = self.lookup_mixture(name)
        if spec is None:
            raise ConfigError(f"{name!r} is not a registered mixture")
        # named by the mixture's own counts or rates too: a variant made in a parent registry from another
        # definition of `name` (one config bound outside any command, then another config's `define:`) is not this one
        variant = f"{self.base_name(name)}.{_digest((spec, sorted(task_map.items())))}"
        if self.lookup_mixture(variant) is None:
            self.add_mixture(variant, MixtureSpec(counts=tuple((task_map[t], n) for t, n in spec.counts),
                                                  rates=tuple((task_map[t], r) for t, r in spec.rates)))
            self.variants[variant] = self.base_name(name)
        return variant

    def define(self, block: dict) -> None:
        """Register a config's own tasks and mixtures (its `define:` block; see the module function `define`)."""
        for name, values in (block.get("tasks") or {}).items():
            values = dict(values)
            if values.get("data_files") is not None:
                files = values["data_files"]
                values["data_files"] = tuple([files] if isinstance(files, str) else files)
            if "source_options" in values:
                values["source_options"] = tuple(sorted(values["source_options"].items()))
            if isinstance((values.get("selection") or {}).get("less"), dict):  # LESS's settings, hashable
                less = values["selection"]["less"]
                values["selection"] = {**values["selection"], "less": tuple(
                    sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in less.items()))}
            self.add_task(name, build_section(TaskSpec, values, f"define.tasks.{name}"))
        for name, values in (block.get("mixtures") or {}).items():
            mode = values.get("mode", "epoch")
            if mode not in ("epoch", "rate"):
                raise ConfigError(f"define.mixtures.{name}.mode must be 'epoch' or 'rate', got {mode!r}")
            entries = tuple((values.get("counts" if mode == "epoch" else "rates") or {}).items())
            if not entries:
                raise ConfigError(f"mixture {name!r} has no tasks")
            self.add_mixture(name, MixtureSpec(counts=entries) if mode == "epoch" else MixtureSpec(rates=entries))


def _digest(value) -> str:
    return hashlib.sha1(repr(value).encode()).hexdigest()[:8]


def registry_of(context: Context) -> Registry:
    """`context`'s registry: its own, reading through its parent's (`core.context`)."""
    return context.slot("data.registry",
                        lambda made: Registry(registry_of(made.parent) if made.parent is not None else None))


def default_registry() -> Registry:
    """The current command's registry (`core.context`): the one the public functions here write into (a user's own
    modules, a config's `define:`) and that the run loader passes on to binding, the pipeline and the reports."""
    return registry_of(current())


def add_task(name: str, spec: TaskSpec) -> None:
    """Register (or replace) task `name` (in the default registry)."""
    default_registry().add_task(name, spec)


def add_mixture(name: str, spec: MixtureSpec) -> None:
    """Register (or replace) mixture `name` (in the default registry); its tasks must resolve."""
    default_registry().add_mixture(name, spec)


def add_foreign_mixture(name: str, spec: MixtureSpec) -> None:
    """Register the spec of a mixture whose tasks are not all instructjax tasks (a user's seqio Mixture)."""
    default_registry().add_foreign_mixture(name, spec)


def lookup_task(name: str) -> TaskSpec | None:
    """The task called `name` (the built-in `SOURCE` / `SOURCE_builtin` ones made on first lookup)."""
    return default_registry().lookup_task(name)


def lookup_mixture(name: str) -> MixtureSpec | None:
    """The mixture called `name` (the papers' mixtures made from their names on first lookup)."""
    return default_registry().lookup_mixture(name)


def task(name: str) -> TaskSpec:
    """The task called `name`, or a one-line ConfigError."""
    return default_registry().task(name)


def tasks_of(name: str) -> tuple[list[str], MixtureSpec | None] | None:
    """(task names, mixture spec or None) of a mixture or task called `name`; None if neither."""
    return default_registry().tasks_of(name)


def unknown(name: str, what: str = "a registered task or mixture") -> ConfigError:
    """`NAME is not a registered task or mixture; did you mean ...?` (the closest known names)."""
    return default_registry().unknown(name, what)


def subset_seed(seed: int, task: str) -> int:
    """The seed of a task's subset draw: a function of the run's data seed and the dataset alone, so every
    mixture holding the dataset draws the same subset, and a smaller subset is a prefix of a larger one."""
    return default_registry().subset_seed(seed, task)


def base_name(name: str) -> str:
    """The name a variant (`with_options`, `remix`) was made from: what reports and metrics show."""
    return default_registry().base_name(name)


def with_options(name: str, **changes) -> str:
    """Register (once) and return a variant of task `name` with TaskSpec fields changed."""
    return default_registry().with_options(name, **changes)


def remix(name: str, task_map: dict[str, str]) -> str:
    """Register (once) and return mixture `name` over other tasks (`task_map`: old -> new), same counts or rates."""
    return default_registry().remix(name, task_map)


def define(block: dict) -> None:
    """Register a config's own tasks and mixtures (its `define:` block)::

    define:
      tasks:    {my_chats: {source: sharegpt, data_files: [/data/chats.jsonl], template: tulu}}
      mixtures: {my_blend: {mode: epoch, counts: {alpaca: 20000, my_chats: null}},
                 my_rates: {mode: rate, rates: {alpaca: 1.0, my_chats: 2.0}}}
    """
    default_registry().define(block)
