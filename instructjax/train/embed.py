"""The old name of `instructjax.train.selection_encoder` (the selection paper's "llama-mean" encoder)."""

from instructjax.train.selection_encoder import LlamaMeanEncoder

__all__ = ["LlamaMeanEncoder"]
