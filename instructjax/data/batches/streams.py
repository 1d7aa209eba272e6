"""Moved: which examples a run trains on and in which order is `data.batches.example_order`; this name stays for
imports written before the move."""

from instructjax.data.batches.example_order import ExampleStream, named_rng

__all__ = ["ExampleStream", "named_rng"]
