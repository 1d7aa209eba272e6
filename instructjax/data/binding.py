"""Bind a task or mixture to one run: the run's tokenizer, chat template, row length and model.

Tasks are registered once, by name, and say only what they must: a task that leaves `tokenizer`,
`template` or `max_length` unset takes the run's. `bind` registers (once) a variant of each task with
those filled in, and a mixture over the variants, so encoding, selection lengths, Mosaic-IT budgets and
`data stats/preview/select --config` all count the tokens the model will see. An example whose prompt
fills the whole row has nothing to train: it is counted in the task's report and kept out before any
subset is drawn, so a mixture's counts are counts of trainable examples. A task that names another
tokenizer, or a template other than the run's, is a one-line ConfigError.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass

from instructjax.core.errors import ConfigError
from instructjax.data import specs
from instructjax.data.embeddings import MODEL_ENCODERS
from instructjax.data.templates import DEFAULT_TEMPLATE
from instructjax.data.tokenizer import Tokenizer


@dataclass(frozen=True)
class Bound:
    """A bound mixture (or task): its registered name, its tasks, the one chat template they share (None
    when they use several), and each task's name as the user wrote it (for reports and metrics)."""

    name: str
    tasks: list[str]
    template: str | None
    sources: list[str]


def resolve(name: str) -> tuple[list[str], specs.MixtureSpec | None] | None:
    """(task names, mixture spec or None) of a task or mixture, or of a user's own seqio Task or Mixture
    (looked up in seqio's registries only when seqio is imported: a seqio-registered name needs it)."""
    found = specs.tasks_of(name)
    if found is None and "seqio" in sys.modules:
        from instructjax.data import seqio_lookup

        mixture = seqio_lookup.mixture_spec(name)
        if mixture is not None:
            specs.add_foreign_mixture(name, mixture)
            found = mixture.tasks, mixture
    return found


def uses_model_encoder(name: str) -> bool:
    """True when a task of `name` selects its examples with an encoder that runs a model (its code must be
    imported first: `instructjax.train.embed`)."""
    found = resolve(name)
    task_specs = [specs.lookup_task(t) for t in (found[0] if found else [])]
    return any(s is not None and s.selection is not None and s.selection.encoder in MODEL_ENCODERS for s in task_specs)


def bind(name: str, *, tokenizer: str | None, template: str | None = None, max_length: int | None = None,
         model: str | None = None, on_bad_row: str | None = None) -> Bound:
    """Bind task or mixture `name` to the run's `tokenizer` (a path, None = the built-in default),
    `template` (None: the tasks' own, else tulu), `max_length` (the run's row length), `model` (the
    run's checkpoint, for selection encoders that embed with it) and `on_bad_row` (None: each task's own). A
    user's own seqio Task (not an instructjax task) is left as it is: it brings its tokens, whose range the
    pipeline checks."""
    found = resolve(name)
    if found is None:
        raise specs.unknown(name)
    originals, mixture = found
    run_tokenizer = Tokenizer.load(tokenizer)
    variants, templates = [], set()
    for task in originals:
        spec = specs.lookup_task(task)
        if spec is None:  # a user's own seqio Task in a seqio Mixture
            variants.append(task)
            continue
        if spec.tokenizer is not None and Tokenizer.load(spec.tokenizer) != run_tokenizer:
            raise ConfigError(f"task {task!r} tokenizes with {spec.tokenizer}, but the model's tokenizer is "
                              f"{run_tokenizer.path}; remove the task's tokenizer (it takes the run's)")
        if template is not None and spec.template is not None and spec.template != template:
            raise ConfigError(f"task {task!r} uses the {spec.template!r} chat template, the run's is {template!r}")
        task_template = template or spec.template or DEFAULT_TEMPLATE
        templates.add(task_template)
        changes = dict(tokenizer=tokenizer if tokenizer else None, template=task_template,
                       max_length=spec.max_length or max_length, on_bad_row=on_bad_row or spec.on_bad_row)
        if spec.selection is not None and spec.selection.encoder in MODEL_ENCODERS:
            if not (spec.selection.encoder_model or model):
                raise ConfigError(f"task {task!r}: selection encoder {spec.selection.encoder!r} embeds with the "
                                  "run's model; set model.init_from (or selection.encoder_model)")
            changes["selection"] = dataclasses.replace(
                spec.selection, encoder_model=spec.selection.encoder_model or model,
                encoder_tokenizer=tokenizer if tokenizer else None)
        variants.append(specs.with_options(task, **changes))
    bound = name
    if variants != originals:
        bound = specs.remix(name, dict(zip(originals, variants, strict=True))) if mixture else variants[0]
    return Bound(bound, variants, templates.pop() if len(templates) == 1 else None, originals)
