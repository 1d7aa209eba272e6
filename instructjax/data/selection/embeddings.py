"""Sentence encoders for diversity selection (k-means, k-center), pluggable by name.

An encoder turns texts into one row vector each: `Encoder.encode(texts) -> float32[N, D]`.
The paper (seed 002, Sec. 3) embeds each training instruction with LLaMA-2-7B, averaging the
last hidden layer over all tokens: "llama-mean", `instructjax.train.selection_encoder` (it runs a model:
imported when first asked for, from the table of built-in encoders). The offline default is a scikit-learn encoder (TF-IDF followed by truncated SVD, i.e. latent
semantic analysis), L2-normalized so Euclidean distance ranks like cosine distance.

    encoder = get_encoder("tfidf-svd", dim=256, seed=0)
    vectors = encoder.encode(["Write a poem.", "Sum 2 and 3."])

Register another one with `register_encoder("llama-mean", factory)`, where `factory(**kwargs)`
returns an object with an `encode` method.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np

from instructjax.core.context import current
from instructjax.core.errors import ConfigError, DataError


@runtime_checkable
class Encoder(Protocol):
    """Anything that embeds a list of texts as a float array of shape [len(texts), D]."""

    def encode(self, texts: list[str]) -> np.ndarray: ...


class TfidfSvdEncoder:
    """Offline default: TF-IDF (words, sublinear tf) -> TruncatedSVD(dim) -> unit rows.

    Fit on the texts it is asked to encode (the whole pool being selected from), so the vectors
    of one call are comparable with each other, not with those of another call. Deterministic
    for a given `seed`. When the pool is too small for `dim` components the TF-IDF vectors are
    kept as they are (dense, unit rows).
    """

    def __init__(self, dim: int = 256, seed: int = 0, max_features: int | None = 65_536):
        if dim < 1:
            raise ConfigError(f"tfidf-svd encoder: dim must be >= 1, got {dim}")
        self.dim = dim
        self.seed = seed
        self.max_features = max_features

    def encode(self, texts: list[str]) -> np.ndarray:
        # scikit-learn is imported here, not with the module: every run binds its data through this module
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.preprocessing import normalize

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vectorizer = TfidfVectorizer(
            sublinear_tf=True, max_features=self.max_features, dtype=np.float32
        )  # word bigrams would cost ~50x the time (the vocabulary explodes) for little gain
        try:
            tfidf = vectorizer.fit_transform(texts)
        except ValueError as e:  # every text empty or stop-words only
            raise DataError(f"cannot embed the instructions: {e}", reason="empty_text") from e
        if self.dim >= min(tfidf.shape):  # rank <= min(shape): nothing to reduce, every distance kept as is
            vectors = tfidf.toarray()
        else:
            svd = TruncatedSVD(n_components=self.dim, algorithm="randomized", random_state=self.seed)
            vectors = svd.fit_transform(tfidf)
        return normalize(vectors).astype(np.float32)


# The built-in encoders, "module:factory", imported on first use. The ones that embed with a model (built with
# model= and tokenizer=: MODEL_ENCODERS) live with the model code, above this layer, and load jax when asked for.
BUILTIN_ENCODERS = {
    "tfidf-svd": f"{__name__}:TfidfSvdEncoder",
    "llama-mean": "instructjax.train.selection_encoder:LlamaMeanEncoder",
}
MODEL_ENCODERS = ("llama-mean",)

DEFAULT_ENCODER = "tfidf-svd"


def register_encoder(name: str, factory: Callable[..., Encoder]) -> None:
    """Make `get_encoder(name, **kwargs)` build an encoder with `factory(**kwargs)` (yours, before the built-in ones),
    in the current context (`core.context`: a module a config imports registers for the process)."""
    current().tables("data.encoders")[0][name] = factory


def encoder_names() -> list[str]:
    """Names `get_encoder` accepts."""
    return sorted({*BUILTIN_ENCODERS, *(n for table in current().tables("data.encoders") for n in table)})


def encoder_factory(name: str) -> Callable[..., Encoder]:
    """What `get_encoder(name, ...)` calls: a registered one, else the built-in one (its module imported now)."""
    for table in current().tables("data.encoders"):
        if name in table:
            return table[name]
    if name not in BUILTIN_ENCODERS:
        raise ConfigError(f"unknown encoder {name!r}; known: {', '.join(encoder_names())}")

    module, _, factory = BUILTIN_ENCODERS[name].partition(":")
    return getattr(importlib.import_module(module), factory)


def get_encoder(name: str = DEFAULT_ENCODER, **kwargs) -> Encoder:
    """Build the encoder `name` (ConfigError naming the known ones if there is none)."""
    return encoder_factory(name)(**kwargs)


def embed(encoder: Encoder, texts: list[str]) -> np.ndarray:
    """`encoder.encode(texts)` as float32 [N, D], checked for shape and finite values."""
    vectors = np.asarray(encoder.encode(texts), dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(texts):
        raise ConfigError(
            f"encoder {type(encoder).__name__} returned shape {vectors.shape} for {len(texts)} texts; "
            "expected [N, D]"
        )
    if not np.isfinite(vectors).all():
        raise ConfigError(f"encoder {type(encoder).__name__} returned non-finite values")
    return vectors
