"""Bind a task or mixture to one run: the run's tokenizer, chat template, row length and model.

Tasks are registered once, by name, and say only what they must: a task that leaves `tokenizer`,
`template` or `max_length` unset takes the run's. `bind` registers (once) a variant of each task with
those filled in, and a mixture over the variants, so encoding, selection lengths, Mosaic-IT budgets and
`data stats/preview/select --config` all count the tokens the model will see. An example whose prompt
fills the whole row has nothing to train: it is counted in the task's report and kept out before any
subset is drawn, so a mixture's counts are counts of trainable examples. A preference task's example is a pair
(both completions of one prompt, in one row): each side is truncated at half the row. A task that names another
tokenizer, or a template other than the run's, is a one-line ConfigError.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from instructjax.core.errors import ConfigError
from instructjax.data.blends import specs
from instructjax.data.encoding.templates import DEFAULT_TEMPLATE
from instructjax.data.encoding.tokenizer import Tokenizer


@dataclass(frozen=True)
class Resolved:
    """A task or mixture with its specs looked up once, handed down to the stages that read it: the task
    names in the mixture's order, each one's spec (None: a user's own seqio Task), the mixture's spec (None:
    a single task)."""

    name: str
    tasks: tuple[str, ...]
    specs: tuple[specs.TaskSpec | None, ...]
    mixture: specs.MixtureSpec | None

    def spec(self, task: str) -> specs.TaskSpec | None:
        return self.specs[self.tasks.index(task)]


@dataclass(frozen=True)
class Bound:
    """A bound mixture (or task): its registered name, its tasks, the one chat template they share (None
    when they use several), each task's name as the user wrote it (for reports and metrics), and the bound
    mixture resolved (`Resolved`)."""

    name: str
    tasks: list[str]
    template: str | None
    sources: list[str]
    resolved: Resolved


def specs_of(name: str, registry: specs.Registry | None = None) -> Resolved | None:
    """A task or mixture of `registry` (None: the default one, `specs.default_registry()`), or a user's own seqio
    Task or Mixture (looked up in seqio's registries only when seqio is imported: a seqio-registered name needs
    it), resolved; None when `name` is none of these."""
    registry = registry or specs.default_registry()
    found = registry.tasks_of(name)
    if found is None and "seqio" in sys.modules:  # a user's seqio Task needs seqio imported (by their module)
        from instructjax.data.seqio import lookup

        mixture = lookup.mixture_spec(name)
        if mixture is not None:
            registry.add_foreign_mixture(name, mixture)
            found = mixture.tasks, mixture
    if found is None:
        return None
    tasks, mixture = found
    return Resolved(name, tuple(tasks), tuple(registry.lookup_task(t) for t in tasks), mixture)




def uses_model_encoder(name: str | Resolved, registry: specs.Registry | None = None) -> bool:
    """True when a task of `name` selects its examples with an encoder that runs a model (the model's weights:
    `instructjax.train.selection_encoder`, loaded when the encoder is asked for)."""
    found = name if isinstance(name, Resolved) else specs_of(name, registry)
    return any(s is not None and s.selection is not None and s.selection.with_model
               for s in (found.specs if found else ()))


def bind(name: str | Resolved, *, tokenizer: str | None, template: str | None = None, max_length: int | None = None,
         model: str | None = None, on_bad_row: str | None = None, system_turn: str | None = None,
         registry: specs.Registry | None = None) -> Bound:
    """Bind task or mixture `name` (or as `specs_of` gave it) of `registry` (None: the default one) to the run's `tokenizer` (a path, None = the built-in default),
    `template` (None: the tasks' own, else tulu), `max_length` (the run's row length), `model` (the
    run's checkpoint, for selection encoders that embed with it), `on_bad_row` (None: each task's own) and
    `system_turn` (None: each task's own; `core.config.DataSection`). A
    user's own seqio Task (not an instructjax task) is left as it is: it brings its tokens, whose range the
    pipeline checks."""
    registry = registry or specs.default_registry()
    found = name if isinstance(name, Resolved) else specs_of(name, registry)
    if found is None:
        raise registry.unknown(name)
    name, originals, mixture = found.name, list(found.tasks), found.mixture
    run_tokenizer = Tokenizer.load(tokenizer)
    variants, templates = [], set()
    for task, spec in zip(found.tasks, found.specs, strict=True):
        if spec is None:  # a user's own seqio Task in a seqio Mixture
            variants.append(task)
            continue
        if spec.tokenizer is not None and Tokenizer.load(spec.tokenizer) != run_tokenizer:
            raise ConfigError(f"task {task!r} tokenizes with {spec.tokenizer}, but the run's is "
                              f"{run_tokenizer.words}; remove the task's tokenizer (it takes the run's)")
        if template is not None and spec.template is not None and spec.template != template:
            raise ConfigError(f"task {task!r} uses the {spec.template!r} chat template, the run's is {template!r}")
        task_template = template or spec.template or DEFAULT_TEMPLATE
        templates.add(task_template)
        side_length = max_length // 2 if spec.preference and max_length else max_length  # a pair fills one row
        changes = dict(tokenizer=tokenizer if tokenizer else None, template=task_template,
                       max_length=spec.max_length or side_length, on_bad_row=on_bad_row or spec.on_bad_row,
                       system_turn=system_turn or spec.system_turn)
        if spec.selection is not None and spec.selection.with_model:
            if not (spec.selection.encoder_model or model):
                raise ConfigError(f"task {task!r}: selection {spec.selection.encoder or spec.selection.method!r} "
                                  "runs the run's model; set model.init_from (or selection.encoder_model)")
            changes["selection"] = dataclasses.replace(
                spec.selection, encoder_model=spec.selection.encoder_model or model,
                encoder_tokenizer=tokenizer if tokenizer else None)
        variants.append(registry.with_options(task, **changes))
    bound = name
    if variants != originals:
        bound = registry.remix(name, dict(zip(originals, variants, strict=True))) if mixture else variants[0]
    resolved = found if bound == name else specs_of(bound, registry)
    return Bound(bound, variants, templates.pop() if len(templates) == 1 else None, originals, resolved)
