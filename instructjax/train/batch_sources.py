"""The batches a run opens for its objective's kind of data (core/objectives.py `Data`): examples and preference
pairs are read from the data (`train.setup.resolve_run` opens their pipeline, data/batches/pipeline.py); rollouts
are made by the run as it trains, from its verifiable prompts (train/rollout.py). Each is a pipeline whose
`batch_source` gives the trainer its batches (data/batches/source.py)."""

from __future__ import annotations

from collections.abc import Callable

from instructjax.core.objectives import Data, Examples, Pairs, Rollouts
from instructjax.train.rollout import open_rollouts


def _from_the_data(bound, process_index: int, process_count: int) -> None:
    return None  # `resolve_run` opens the run's data pipeline


OPENERS: dict[type[Data], Callable] = {Examples: _from_the_data, Pairs: _from_the_data, Rollouts: open_rollouts}


def open_batches(bound, process_index: int = 0, process_count: int = 1):
    """The pipeline of the run `bound` (`train.setup.BoundRun`) for its objective's kind of data, or None where it
    reads its data's examples or pairs (`resolve_run` opens those)."""
    return OPENERS[bound.config.objective.options.data](bound, process_index, process_count)
