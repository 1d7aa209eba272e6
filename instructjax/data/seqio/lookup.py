"""A user's own seqio Tasks and Mixtures (registered with seqio, not through instructjax): their specs and
examples, so the pipeline trains on them as on its own. Only imported when seqio already is."""

from __future__ import annotations

import numpy as np
import seqio

from instructjax.core.errors import ConfigError
from instructjax.data.blends.specs import MixtureSpec, subset_seed
from instructjax.data.seqio.mixtures import register_paper_mixtures
from instructjax.data.seqio.source import ShardedSource


def mixture_spec(name: str) -> MixtureSpec | None:
    """A seqio Mixture as a spec (exact counts when it carries them, else its rates); a lone seqio Task
    as an epoch-mode mixture of all of it; None when seqio knows neither. instructjax's own tasks and the papers'
    mixtures are registered with seqio first (once), so a user's seqio Mixture over them resolves."""
    register_paper_mixtures()
    if name not in seqio.MixtureRegistry.names() and name not in seqio.TaskRegistry.names():
        return None
    provider = seqio.get_mixture_or_task(name)
    if isinstance(provider, seqio.Task) and isinstance(provider.source, ShardedSource):
        return None  # one of ours, which an earlier command registered with seqio: a name this command does not know
    if not isinstance(provider, seqio.Mixture):
        return MixtureSpec(counts=((name, None),))
    counts = getattr(provider, "counts", None)
    if counts is not None:
        return MixtureSpec(counts=tuple(counts.items()))
    return MixtureSpec(rates=tuple((t.name, provider.get_rate(t)) for t in provider.tasks))


def examples(name: str, count: int | None, seed: int | None, *, in_file_order: bool = False) -> list[dict]:
    """The `tokens` / `loss_mask` examples of a user's seqio Task (its subset of `count` when `seed` is
    set, drawn in the order `specs.subset_seed` gives; `in_file_order`: the subset in the dataset's order)."""
    ds = seqio.get_mixture_or_task(name).get_dataset(sequence_length=None, split="train", shuffle=False,
                                                      use_cached=False)
    out = []
    for ex in ds.as_numpy_iterator():
        if "tokens" not in ex or "loss_mask" not in ex:
            raise ConfigError(f"seqio task {name!r} must output 'tokens' and 'loss_mask' features")
        out.append({"tokens": ex["tokens"], "loss_mask": ex["loss_mask"],
                    "conversation": ex.get("conversation", b"").decode()})
    if seed is not None:
        order = np.random.default_rng(subset_seed(seed, name)).permutation(len(out))
        chosen = order[:count]
        out = [out[i] for i in (np.sort(chosen) if in_file_order else chosen)]
    return out
