"""Continuous batching's memory estimates' old module (before issue 78): `instructjax.model.batching_memory` now.
These names keep working from here."""

from instructjax.model.batching_memory import cache_bytes_per_device, layer_weights, step_bytes, weight_bytes

__all__ = ["cache_bytes_per_device", "layer_weights", "step_bytes", "weight_bytes"]
