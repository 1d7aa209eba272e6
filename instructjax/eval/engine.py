"""Continuous batching moved to instructjax.model.engine (issue 69: the trainer's rollouts decode with it too)."""


def __getattr__(name: str):
    raise ImportError(f"instructjax.eval.engine.{name} moved: import it from instructjax.model.engine")
