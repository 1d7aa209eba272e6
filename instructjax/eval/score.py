"""Per-token log-probabilities of token sequences under the JAX model (batched, length-bucketed)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from instructjax.core.errors import ConfigError
from instructjax.core.sharding import host_rows, replicated
from instructjax.eval.interface import TokenScores
from instructjax.model.decoder import Decoder


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _score(graphdef, state, tokens, segment_ids):
    model = nnx.merge(graphdef, state)
    positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
    logits = model(tokens, positions, segment_ids).astype(jnp.float32)[:, :-1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    targets = tokens[:, 1:]
    chosen = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    return replicated(chosen), replicated(jnp.argmax(logits, axis=-1) == targets)


def _bucket(n: int, minimum: int = 16) -> int:
    return max(minimum, 1 << (n - 1).bit_length())


def _placed(mesh, *arrays: np.ndarray) -> list:
    """Host arrays [batch, ...] on the mesh, rows over (data, fsdp), each host feeding its own devices' rows (as
    they are without a mesh)."""
    return [jnp.asarray(a) if mesh is None else host_rows(a, mesh) for a in arrays]


def _scope(mesh):
    return jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext()


def score_ids(model: Decoder, sequences: Sequence[Sequence[int]], batch_size: int = 8, *,
              mesh=None) -> list[TokenScores]:
    """Scores of every sequence (each at least 2 ids), in input order; long ones first to bound recompiles. On a
    `mesh` (where the model's parameters lie) a batch's rows split over (data, fsdp)."""
    if any(len(s) < 2 for s in sequences):
        raise ValueError("score_ids: each sequence needs at least two ids (a context and one scored token)")
    if mesh is not None:
        shards = mesh.shape["data"] * mesh.shape["fsdp"]
        batch_size = -(-batch_size // shards) * shards
    graphdef, state = nnx.split(model)
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    results: list[TokenScores | None] = [None] * len(sequences)
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        width = _bucket(len(sequences[idx[0]]))
        tokens = np.zeros((batch_size, width), np.int32)
        segments = np.zeros((batch_size, width), np.int32)
        for row, i in enumerate(idx):
            tokens[row, : len(sequences[i])] = sequences[i]
            segments[row, : len(sequences[i])] = 1
        with _scope(mesh):
            logp, greedy = jax.device_get(_score(graphdef, state, *_placed(mesh, tokens, segments)))
        for row, i in enumerate(idx):
            n = len(sequences[i]) - 1
            results[i] = TokenScores(np.asarray(logp[row, :n]), np.asarray(greedy[row, :n]))
    return results  # type: ignore[return-value]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _next(graphdef, state, tokens, segment_ids, last, candidates):
    model = nnx.merge(graphdef, state)
    positions = jnp.maximum(jnp.cumsum(segment_ids, axis=1) - 1, 0)
    logits = model(tokens, positions, segment_ids).astype(jnp.float32)
    at_last = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]
    return jax.nn.log_softmax(at_last[:, candidates], axis=-1)


def next_token_logprobs(model: Decoder, sequences: Sequence[Sequence[int]], candidates: Sequence[int],
                        batch_size: int = 8) -> np.ndarray:
    """[len(sequences), len(candidates)]: each sequence's next-token log-probabilities over `candidates` alone
    (softmax over the candidates' logits, as open-instruct's MMLU script reads an answer letter)."""
    if any(len(s) < 1 for s in sequences):
        raise ValueError("next_token_logprobs: each sequence needs at least one id")
    graphdef, state = nnx.split(model)
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    out = np.zeros((len(sequences), len(candidates)), np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        width = _bucket(len(sequences[idx[0]]))
        tokens = np.zeros((batch_size, width), np.int32)
        segments = np.zeros((batch_size, width), np.int32)
        last = np.zeros((batch_size,), np.int32)
        for row, i in enumerate(idx):
            tokens[row, : len(sequences[i])] = sequences[i]
            segments[row, : len(sequences[i])] = 1
            last[row] = len(sequences[i]) - 1
        logp = jax.device_get(_next(graphdef, state, jnp.asarray(tokens), jnp.asarray(segments), jnp.asarray(last),
                                    jnp.asarray(list(candidates), jnp.int32)))
        for row, i in enumerate(idx):
            out[i] = logp[row]
    return out


def score_texts(engine, hf_tokenizer, texts: Sequence[str]) -> list[list[tuple[str, float]]]:
    """(token text, log-prob) for every token after BOS of each text, scored by `engine` (eval.interface.Engine)."""
    encoded = [hf_tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    short = next((t for t, ids in zip(texts, encoded, strict=True) if len(ids) < 2), None)
    if short is not None:  # the first token has no context to be scored in
        raise ConfigError(f"score: {short!r} is {len(hf_tokenizer(short, add_special_tokens=True)['input_ids'])} "
                          "token(s) with this tokenizer (which adds no BOS before it): a text needs at least two, "
                          "a context and a token to score")
    scores = engine.score(encoded)
    return [[(hf_tokenizer.convert_ids_to_tokens(tok), float(lp)) for tok, lp in zip(ids[1:], s.logprobs, strict=True)]
            for ids, s in zip(encoded, scores, strict=True)]
