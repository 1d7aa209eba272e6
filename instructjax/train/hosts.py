"""The hosts of a run for the data layer (`data.coordination`): JAX's distributed runtime key-value store and
barriers, installed once `jax.distributed` is up, so that hosts build one tokenized cache together."""

from __future__ import annotations

import jax

from instructjax.data import coordination


class JaxHosts:
    """`coordination.Coordinator` over `jax.distributed`'s client: a wait past its timeout is a TimeoutError."""

    def __init__(self):
        from jax._src import distributed

        self.client = distributed.global_state.client
        self.process_index, self.process_count = jax.process_index(), jax.process_count()

    def set(self, key: str, value: str) -> None:
        self.client.key_value_set(key, value)

    def get(self, key: str, timeout_s: float) -> str:
        return _bounded(self.client.blocking_key_value_get, key, int(timeout_s * 1000))

    def barrier(self, name: str, timeout_s: float) -> None:
        _bounded(self.client.wait_at_barrier, name, int(timeout_s * 1000))


def _bounded(call, *args):
    try:
        return call(*args)
    except Exception as exc:  # the runtime's own error type: a deadline is a TimeoutError, the rest as raised
        if "DEADLINE_EXCEEDED" in str(exc) or "timed out" in str(exc).lower():
            raise TimeoutError(str(exc)) from None
        raise


def install() -> None:
    """Let the data layer's hosts share work when this run has several processes (else each works alone)."""
    coordination.use(JaxHosts() if jax.process_count() > 1 else None)
