"""DoReMi's proxy (`data.reweighting: {method: doremi, ...}`; Xie et al., 2023): SFT's next-token loss, each trained
token weighted by its domain's weight (a domain: a task of the mixture), the weights updated every step before the
loss from each domain's excess over the reference run's model (`train.doremi`, as DoReMi's
`training_step` does: update, then the loss under the new weights).

The reference's log-probs are computed once before the first step and carried by the batches (`reference: cached`,
train/reference.py: the reference run's newest checkpoint stands as the model they come from); the weights ride in the
optimizer state (`doremi.carrier`), read and replaced by the step (`state_of`, `next_state`). Logged beside SFT's
values: the weights after the step, their running mean and each domain's score."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from instructjax.core.objectives import Reference, StoredLogProbs
from instructjax.data.batches.packing import REFERENCE
from instructjax.train import doremi
from instructjax.train.objectives.base import STATE, Array
from instructjax.train.objectives.sft import SFT


class DoReMi(SFT):
    stateful = True

    @property
    def reference(self) -> type[Reference]:
        return StoredLogProbs  # the reference run's model's log-probs (train/reference.py)

    def wrap(self, tx, sampling=None):
        """`tx` followed by the carrier of the weights, started at `sampling` (uniform by default: `plan`)."""
        import optax

        rates = jnp.full(self.num_sources, 1.0 / self.num_sources) if sampling is None else sampling
        return optax.chain(tx, doremi.carrier(rates))

    def state_of(self, opt_state) -> doremi.Reweighting:
        return doremi.carried(opt_state)

    def next_state(self, opt_state, sums):
        """`opt_state` with the weights the step's loss used (the micro-batch's, `loss`: there is one)."""
        return doremi.with_carried(opt_state, sums[3])

    def loss(self, nll: Array, mb: dict[str, Array], weights: dict[str, Array]):
        state: doremi.Reweighting = weights[STATE]
        section = self.config.data.reweighting
        trained = mb["loss_weights"] > 0
        excess = jax.lax.stop_gradient(nll) + mb[REFERENCE]  # the proxy's loss minus the reference's (-log-prob)
        domains = doremi.update(state.domains, excess, trained, mb["source_ids"], section.eta, section.eps)
        share = doremi.weighted_loss(nll, trained, mb["source_ids"], jax.lax.stop_gradient(domains.weights),
                                     state.sampling)
        _, sums = super().loss(nll, mb, weights)
        return share, (*sums, doremi.Reweighting(domains, state.sampling))

    def metrics(self, sums, weights: dict[str, Array]) -> dict[str, Array]:
        domains = sums[3].domains
        return {**super().metrics(sums[:3], weights), "doremi/weights": domains.weights,
                "doremi/average": domains.average, "doremi/scores": domains.scores}
