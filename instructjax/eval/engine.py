"""Continuous batching moved to instructjax.model.engine (issue 69: the trainer's rollouts decode with it too)."""


def __getattr__(name: str):
    from instructjax.model import engine

    if not name.startswith("__") and hasattr(engine, name):  # one of its names: where it lives now
        raise ImportError(f"instructjax.eval.engine.{name} moved: import it from instructjax.model.engine")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
