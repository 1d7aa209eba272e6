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
- `reference`: what it compares with: `none`, `cached` (the batch carries the reference's log-prob of each target,
  `features`) or `live` (the step computes them from its fourth argument, the starting model, frozen);
- its plan terms: `words()` (what `plan` prints of it), `reference_bytes(memory)` (a live reference's copy) and
  `rollout_bytes(...)` (what generating a batch takes beside the state: grpo's).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from instructjax.core.config import RunConfig
from instructjax.data.batches.packing import REFERENCE

Array = jax.Array
REFERENCES = ("none", "cached", "live")
STATE = "state"  # a stateful objective's state among the normalisers `loss` receives


class Objective:
    """The interface `make_step` calls (see the module doc); `config` the run's, `num_sources` its mixture's tasks."""

    name = ""
    pairs = False  # trains on preference pairs (a pair: one row's segments 2k - 1 and 2k)
    stateful = False  # carries a state of its own in the optimizer state (`wrap`, `state_of`, `next_state`: DoReMi's)

    def __init__(self, config: RunConfig, num_sources: int = 1):
        self.config, self.section, self.num_sources = config, config.objective, num_sources

    @property
    def reference(self) -> str:
        """Where the reference model's log-probs come from: `none`, `cached` or `live` (REFERENCES)."""
        return "none"

    @property
    def temperature(self) -> float:
        """What the logits are divided by before the log-probs the loss takes (a rollout's sampling temperature)."""
        return 1.0

    def features(self) -> dict[str, Any]:
        """The batch's features beyond the packed rows' (data/batches/packing.py), name -> dtype."""
        return {REFERENCE: jnp.float32} if self.reference == "cached" else {}

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
        return memory["trained_bytes"] if self.reference == "live" else 0
