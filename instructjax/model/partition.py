"""What trains: a model's parameters split by their Variable type, decided once (`of`).

Where the model holds adapters (`nnx.LoRAParam`, model/lora.py) they alone train and the rest (the base, a QLoRA's
quantized codes among it) is frozen; otherwise every parameter trains. The `Partition` keeps that decision as the
paths of the trained leaves, so that it applies to any tree shaped like the parameters (the parameters' plain dicts
as a step and a checkpoint hold them, their shardings, their gradients): the train step differentiates and updates
`trainable(params)` alone, AdamW's state is made over it, a LoRA on `init_from` saves and restores it alone, and the
memory estimate counts its gradients and moments (flax's `nnx.split(model, nnx.LoRAParam, ...)`, Tunix's
`nnx.Optimizer(wrt=nnx.LoRAParam)`).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flax import nnx

from instructjax.model.config import DecoderConfig
from instructjax.model.decoder import abstract_model
from instructjax.model.lora import TRAINS


@dataclass(frozen=True)
class Partition:
    """The trained leaves of a params tree, by path (each a tuple of the nested dicts' keys); the rest is frozen."""

    trained: frozenset[tuple]
    adapters: bool  # the trained leaves are adapters (a frozen base beside them), not the whole model

    @classmethod
    def of_state(cls, state: nnx.State) -> Partition:
        """The partition of a model's parameters (`nnx.state`, abstract or real): its `lora.TRAINS` variables where
        it has any, else all of them."""
        flat = [(tuple(path), variable) for path, variable in nnx.to_flat_state(state)]
        adapters = frozenset(path for path, variable in flat if isinstance(variable, TRAINS))
        return cls(adapters or frozenset(path for path, _ in flat), bool(adapters))

    def trainable(self, tree: Any) -> Any:
        """The trained leaves of a params-shaped tree (nested dicts), in its nesting (a full fine-tune's: the tree)."""
        return _select(tree, self.trained, True) if self.adapters else tree

    def frozen(self, tree: Any) -> Any:
        """Everything else ({} for a full fine-tune)."""
        return _select(tree, self.trained, False) if self.adapters else {}

    def combine(self, trained: Any, frozen: Any) -> Any:
        """The two parts as one tree (`combine(trainable(t), frozen(t))` is `t`)."""
        return _combine(trained, frozen) if self.adapters else trained


@functools.lru_cache(maxsize=16)
def of(config: DecoderConfig) -> Partition:
    """The partition of the model `config` builds (abstractly: nothing is allocated)."""
    return Partition.of_state(nnx.state(abstract_model(config), nnx.Param))


def _select(tree: Any, trained: frozenset[tuple], keep: bool, path: tuple = ()) -> Any:
    if not isinstance(tree, Mapping):
        return tree  # a leaf, or optax's placeholder (tree_map_params)
    out = {}
    for key, value in tree.items():
        here = (*path, key)
        if isinstance(value, Mapping):
            sub = _select(value, trained, keep, here)
            if sub:
                out[key] = sub
        elif (here in trained) == keep:
            out[key] = value
    return out


def _combine(a: Any, b: Any) -> Any:
    if not isinstance(a, Mapping):
        return a
    out = dict(b)
    for key, value in a.items():
        out[key] = _combine(value, b[key]) if key in b and isinstance(value, Mapping) else value
    return out
