"""Bind a task or mixture to one run: the run's tokenizer, chat template, row length and model.

Tasks are registered once, by name, and say only what they must: a task that leaves `tokenizer`,
`template` or `max_length` unset takes the run's. An example whose prompt fills the whole row has
nothing to train: it is counted in the task's report and kept out before any subset is drawn, so a
mixture's counts are counts of trainable examples. `bind` registers (once) a variant of each task with
those filled in, and a mixture over the variants, so encoding, selection lengths, Mosaic-IT budgets
and `data stats/preview/select --config` all count the tokens the model will see. A task that names
another tokenizer, or a template other than the run's, is a one-line ConfigError.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import seqio

from instructjax.data import mixtures
from instructjax.data import tasks as task_lib
from instructjax.data.embeddings import MODEL_ENCODERS
from instructjax.data.templates import DEFAULT_TEMPLATE
from instructjax.data.tokenizer import Tokenizer
from instructjax.errors import ConfigError


@dataclass(frozen=True)
class Bound:
    """A bound mixture (or task): its registered name, its tasks and the one chat template they share
    (None when the tasks use several), and each task's name as the user wrote it (for metrics)."""

    name: str
    tasks: list[str]
    template: str | None
    sources: list[str]


def bind(name: str, *, tokenizer: str | None, template: str | None = None, max_length: int | None = None,
         model: str | None = None) -> Bound:
    """Bind task or mixture `name` to the run's `tokenizer` (a path, None = the built-in default),
    `template` (None: the tasks' own, else tulu), `max_length` (the run's row length: an example is
    encoded for the row it trains in) and `model` (the run's checkpoint, for selection encoders that
    embed with it)."""
    if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
        raise ConfigError(f"data.mixture={name!r} is not a registered seqio Task or Mixture")
    provider = seqio.get_mixture_or_task(name)
    originals = [t.name for t in provider.tasks] if isinstance(provider, seqio.Mixture) else [name]
    run_tokenizer = Tokenizer.load(tokenizer)
    variants, templates = [], set()
    for task in originals:
        try:
            spec = task_lib.get_spec(task)
        except ConfigError:  # a user's own seqio Task: it brings its tokens; their range is checked later
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
                       max_length=spec.max_length or max_length)
        if spec.selection is not None and spec.selection.encoder in MODEL_ENCODERS:
            if not (spec.selection.encoder_model or model):
                raise ConfigError(f"task {task!r}: selection encoder {spec.selection.encoder!r} embeds with the "
                                  "run's model; set model.init_from (or selection.encoder_model)")
            changes["selection"] = dataclasses.replace(
                spec.selection, encoder_model=spec.selection.encoder_model or model,
                encoder_tokenizer=tokenizer if tokenizer else None)
        variants.append(task_lib.with_options(task, **changes))
    bound = name
    if variants != originals:
        bound = mixtures.remix(name, dict(zip(originals, variants, strict=True))) if isinstance(
            provider, seqio.Mixture) else variants[0]
    return Bound(bound, variants, templates.pop() if len(templates) == 1 else None, originals)
