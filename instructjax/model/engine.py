"""Continuous batching's old module (before issue 78): `SlotEngine` is `instructjax.model.batching.ContinuousBatcher`
now, its shapes in `instructjax.model.batching_shapes`. These names keep working from here."""

from instructjax.model.batching import ContinuousBatcher, Sampling, SlotsError, Stats
from instructjax.model.batching_shapes import (
           FILL_TOKENS,
           MIN_PREFIX,
           bucket,
           decode_width,
           fill_budget,
           fill_rows,
           shared_prefixes,
           widest_fill,
)

SlotEngine = ContinuousBatcher

__all__ = ["FILL_TOKENS", "MIN_PREFIX", "ContinuousBatcher", "Sampling", "SlotEngine", "SlotsError", "Stats", "bucket",
           "decode_width", "fill_budget", "fill_rows", "shared_prefixes", "widest_fill"]
