"""Continuous batching moved to instructjax.model.batching (issue 69: the trainer's rollouts decode with it too;
issue 78: `ContinuousBatcher`, once `SlotEngine`, in model/batching.py and model/batching_shapes.py)."""


def __getattr__(name: str):
    from instructjax.model import engine

    if not name.startswith("__") and hasattr(engine, name):  # one of its names: where it lives now
        value = getattr(engine, name)
        renamed = getattr(value, "__name__", name)
        now = f"it is {renamed}; " if renamed != name else ""
        raise ImportError(f"instructjax.eval.engine.{name} moved: {now}import it from {value.__module__}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
