"""A run's logged scalars as TensorBoard shows them, timings aside."""

from pathlib import Path

TIMINGS = {"tokens_per_sec", "step_seconds"}


def tensorboard_scalars(run_dir) -> dict[tuple[str, int], float]:
    """(tag, step) -> value as TensorBoard shows it: events in the order written, and a restart's
    SessionLog.START at step s (tensorboardX's purge_step) discarding what was logged at steps >= s."""
    import tensorflow as tf

    scalars: dict[tuple[str, int], float] = {}
    for path in sorted((Path(run_dir) / "tensorboard").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            if event.HasField("session_log") and event.session_log.status == event.session_log.START:
                scalars = {k: v for k, v in scalars.items() if k[1] < event.step}
            for value in event.summary.value:
                if value.tag not in TIMINGS:
                    scalars[(value.tag, event.step)] = value.simple_value
    return scalars
