"""What a train step minimises, as a plug-in of the one step builder (train/step.py `make_step`).

An `Objective` owns what differs between objectives; the step owns the rest, written once (the micro-batch split,
NEFTune's and LoRA dropout's keys, the forward pass, the reference's forward where it runs live, accumulation over
micro-batches, the trained partition and the update):

- `weights(micro_batches)`: the global batch's normalisers, made once before any forward pass (trained tokens, pairs);
- `loss(nll, mb, weights)`: a micro-batch's share of the step's loss (its sums divided by those normalisers, so the
  micro-batches' shares add up to the loss of the whole batch), from each token's negative log-likelihood under the
  trained model [B, L] (float32), and the micro-batch's sums to add up for the metrics;
- `metrics(sums, weights)`: the step's logged values beside `loss`, `grad_norm` and `tokens` (train/metrics.py's
  window adds them up: `loss_sum` over `loss_weight`, `pairs`, per-source sums, and every other value as a sum over
  the step's pairs, logged as their mean);
- `stateful`: it carries a state across steps in the optimizer state: `wrap(tx, ...)` chains its carrier after the
  optimizer, the step hands `state_of(opt_state)` to `loss` among the normalisers and stores `next_state` after the
  update (DoReMi's domain weights, train/objectives/doremi.py);
- `options`: its options class (core/objectives.py), which says what it trains on and what it compares with;
- `reference`: that reference's kind, a type (core/objectives.py): `NoReference`, `StoredLogProbs` or
  `RolloutLogProbs` (the batch carries the reference's log-prob of each target, `features`), or `LiveParams` (the
  step computes them from its fourth argument, the starting model, frozen);
- its plan terms: `words()` (what `plan` prints of it), `reference_bytes(memory)` (a live reference's copy) and
  `rollout_bytes(...)` (what generating a batch takes beside the state: grpo's).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from instructjax.core.config import RunConfig
from instructjax.core.objectives import LiveParams, Options, Reference
from instructjax.data.batches.packing import REFERENCE

Array = jax.Array
STATE = "state"  # a stateful objective's state among the normalisers `loss` receives


class Objective:
    """The interface `make_step` calls (see the module doc); `config` the run's, `num_sources` its mixture's tasks."""

    options: type[Options]  # its options (`objective.<loss>:`), whose class declares its data and its reference
    stateful = False  # carries a state of its own in the optimizer state (`wrap`, `state_of`, `next_state`: DoReMi's)

    def __init__(self, config: RunConfig, num_sources: int = 1):
        self.config, self.num_sources = config, num_sources
        self.options = config.objective.options  # this objective's own: an instance of the class `options` names

    @property
    def name(self) -> str:
        return self.options.loss

    @property
    def reference(self) -> type[Reference]:
        """The kind of reference it compares with (core/objectives.py), as its options set it."""
        return self.options.reference_kind

    @property
    def temperature(self) -> float:
        """What the logits are divided by before the log-probs the loss takes (a rollout's sampling temperature)."""
        return 1.0

    def features(self) -> dict[str, Any]:
        """The batch's features beyond the packed rows' (data/batches/packing.py), name -> dtype."""
        return {REFERENCE: jnp.float32} if self.reference.in_batch else {}

    def weights(self, micro_batches: dict[str, Array]) -> dict[str, Array]:
        raise NotImplementedError

    def loss(self, nll: Array, mb: dict[str, Array], weights: dict[str, Array]) -> tuple[Array, Any]:
        raise NotImplementedError

    def metrics(self, sums: Any, weights: dict[str, Array]) -> dict[str, Array]:
        raise NotImplementedError

    def words(self) -> str:
        """The objective in `plan`'s words ("" for SFT)."""
        return ""

    def rollout_bytes(self, model, sizes: dict[str, int], seq_len: int, memory: dict[str, int]) -> int:
        """A device's bytes for generating the step's batch beside the state (grpo's rollouts; 0 for a batch read)."""
        return 0

    def engine_cache_bytes(self, model, sizes: dict[str, int], seq_len: int) -> int:
        """A device's bytes the rollout engine keeps through the steps (grpo's KV cache, made once a run; 0 else)."""
        return 0

    def reference_bytes(self, memory: dict[str, int]) -> int:
        """A device's bytes for the reference model beside the step's state (`train.memory`'s figures): a copy of
        what trains (the whole model; a LoRA's starting adapters on its own frozen base) where it runs live."""
        return memory["trained_bytes"] if self.reference is LiveParams else 0
