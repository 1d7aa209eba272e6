"""Batches drawn from a pipeline with the iterator state after each."""

from instructjax.data.batches.pipeline import DataPipeline, IteratorState


def take(pipeline: DataPipeline, n: int) -> list[tuple[dict, IteratorState]]:
    out, it = [], iter(pipeline)
    for _ in range(n):
        out.append((next(it), pipeline.state))
    return out
