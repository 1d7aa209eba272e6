"""Data selection for SFT: the top-K longest responses and the baselines of seed 002.

`select(conversations, method, k)` returns `k` of the conversations, each paired with the score
the method ranked it by. Methods (seed 002, Sec. 2-5 and Appendix D):

- ``longest``  the K conversations with the most response tokens (assistant turns under the
               training tokenizer); ties go to the smaller `id`. Order: score descending, then id.
               Score: response tokens.
- ``shortest`` the K with the fewest response tokens (the Sec. 5 ablation). Order: score
               ascending, then id. Score: response tokens.
- ``random``   K drawn uniformly without replacement. Order: the draw. Score: NaN (none).
- ``kmeans``   diversity: k-means with `num_clusters` (100 in the paper) clusters over the
               instruction embeddings, then an equal number drawn at random from every cluster.
               A cluster smaller than its share gives all its members and the shortfall is
               spread evenly over the clusters that still have members (max-min fair water
               filling); when K is not a multiple of the open clusters the last few units go to
               clusters drawn at random. The total is always exactly K. Order: cluster, then id.
               Score: the cluster index.
- ``kcenter``  k-center greedy (Sener & Savarese, 2018) over the instruction embeddings: start
               from one point drawn at random, then repeatedly add the point farthest (Euclidean)
               from its nearest chosen point; ties go to the smaller id. Order: the pick order.
               Score: that distance at pick time (inf for the first pick).
- ``quality``  top-K by the numeric `meta[score_key]` (e.g. the ChatGPT 0-5 rating of AlpaGasus):
               everything scored above the boundary score (the K-th highest) is taken, and the rest
               is drawn at random among the conversations scored exactly at the boundary, as the
               paper did for WizardLM (all 172 fives, then 4,028 drawn from the 4.5s). Order: score
               descending, then id. Score: the rating.
- ``full``     every conversation, in the input order (k must be None or len(conversations)).
               Score: NaN.

Everything is a function of the conversations' ids, contents and the seed, never of the input
order: conversations are put in id order first, and all randomness comes from one
`numpy.random.default_rng(seed)`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict
from itertools import pairwise
from typing import NamedTuple

import numpy as np
from sklearn.cluster import KMeans

from instructjax.core import storage
from instructjax.core.errors import ConfigError, DataError
from instructjax.data.schema import Conversation
from instructjax.data.selection.embeddings import DEFAULT_ENCODER, Encoder, embed, get_encoder

METHODS = ("longest", "shortest", "random", "kmeans", "kcenter", "quality", "full")
# selection for a target, with a model, in the layer that trains (imported by name when a task asks for it)
TARGETED_METHODS = ("less",)
TARGETED = {"less": "instructjax.train.less_select"}
KMEANS_N_INIT = 1  # one k-means++ start, as sklearn's n_init="auto" does for k-means++


class Selected(NamedTuple):
    """One chosen conversation and the score its method ranked it by (see the module doc)."""

    conversation: Conversation
    score: float


def select(
    conversations: list[Conversation],
    method: str,
    k: int | None,
    *,
    seed: int = 0,
    response_length: Callable[[Conversation], int] | None = None,
    encoder: Encoder | str | None = None,
    score_key: str = "score",
    num_clusters: int = 100,
) -> list[Selected]:
    """Choose `k` conversations by `method` (one of METHODS); reproducible from `seed`.

    `response_length(conv)` counts a conversation's response tokens (longest/shortest); by
    default `encode.response_token_length` under the default LLaMA tokenizer (pass your own for
    another training tokenizer). `encoder` embeds the
    instructions for kmeans/kcenter: an Encoder, a registered name, or None for the default.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown selection method {method!r}; choose one of {', '.join(METHODS)}")
    n = len(conversations)
    if method == "full":
        if k is not None and k != n:
            raise ConfigError(f"selection 'full' keeps all {n} conversations; got k={k}")
        return [Selected(c, math.nan) for c in conversations]
    _check_k(k, n, method)
    pool = sorted(conversations, key=lambda c: c.id)
    _check_unique_ids(pool)
    rng = np.random.default_rng(seed)

    if method in ("longest", "shortest"):
        lengths = _response_lengths(pool, response_length or _default_response_length())
        sign = -1 if method == "longest" else 1
        order = sorted(range(n), key=lambda i: (sign * lengths[i], pool[i].id))[:k]
        return [Selected(pool[i], float(lengths[i])) for i in order]
    if method == "random":
        return [Selected(pool[i], math.nan) for i in rng.permutation(n)[:k]]
    if method == "quality":
        return _select_quality(pool, k, score_key, rng)
    vectors = embed(_resolve_encoder(encoder), [instruction_text(c) for c in pool])
    if method == "kmeans":
        return _select_kmeans(pool, vectors, k, num_clusters, seed, rng)
    first = int(rng.integers(n))
    picks, distances = kcenter_greedy(vectors, k, first)
    return [Selected(pool[i], float(d)) for i, d in zip(picks, distances, strict=True)]


def instruction_text(conversation: Conversation) -> str:
    """What diversity selection embeds: the user turns (instruction plus any input), joined."""
    return "\n".join(m["content"] for m in conversation.messages if m["role"] == "user")


def equal_allocation(cluster_sizes: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """How many to take from each cluster: equal shares, capped at each cluster's size.

    Water filling: every cluster with members left gets `remaining // open` more (or all it has);
    repeat until the shares no longer divide, then give one more to `remaining` open clusters
    drawn at random. Needs k <= sum(cluster_sizes).
    """
    sizes = np.asarray(cluster_sizes, dtype=np.int64)
    taken = np.zeros_like(sizes)
    remaining = k
    while remaining > 0:
        open_clusters = np.flatnonzero(taken < sizes)
        share = remaining // len(open_clusters)
        if share == 0:
            taken[rng.choice(open_clusters, size=remaining, replace=False)] += 1
            break
        add = np.minimum(share, sizes[open_clusters] - taken[open_clusters])
        taken[open_clusters] += add
        remaining -= int(add.sum())
    return taken


def kmeans_labels(vectors: np.ndarray, num_clusters: int, seed: int) -> np.ndarray:
    """sklearn k-means (k-means++ init, `KMEANS_N_INIT` starts, random_state=seed) cluster labels."""
    model = KMeans(n_clusters=num_clusters, n_init=KMEANS_N_INIT, random_state=seed)
    return model.fit_predict(vectors)


def kcenter_greedy(vectors: np.ndarray, k: int, first: int) -> tuple[list[int], list[float]]:
    """Greedy k-center from `first`: each step adds the row farthest from its nearest chosen row.

    Returns the chosen row indices in pick order and, for each, its distance to the nearest row
    chosen before it (inf for `first`). Ties go to the lower row index. O(k * N * D).
    """
    points = np.asarray(vectors, dtype=np.float64)
    squared_norms = np.einsum("nd,nd->n", points, points)

    def distances_to(
        i: int,
    ) -> np.ndarray:  # |x - c|^2 = |x|^2 + |c|^2 - 2 x.c: one mat-vec, no N x D temporary
        return np.sqrt(np.maximum(squared_norms + squared_norms[i] - 2.0 * (points @ points[i]), 0.0))

    nearest = distances_to(first)
    nearest[first] = -np.inf  # chosen rows never win again, even among duplicates
    picks, distances = [first], [math.inf]
    for _ in range(k - 1):
        i = int(np.argmax(nearest))
        picks.append(i)
        distances.append(float(nearest[i]))
        np.minimum(nearest, distances_to(i), out=nearest)
        nearest[i] = -np.inf
    return picks, distances


def write_selection(selected: list[Selected], path: str | os.PathLike, *, method: str | None = None) -> None:
    """Write one JSON line per chosen conversation, in order, for inspection and reuse.

    Each line is the conversation's own fields (readable back with `Conversation.from_json`) plus
    `"selection": {"rank": i, "score": s, "method": method}`; a NaN or infinite score is null.
    """
    lines = []
    for rank, (conversation, score) in enumerate(selected):
        row = asdict(conversation)
        row["selection"] = {"rank": rank, "score": score if math.isfinite(score) else None, "method": method}
        lines.append(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
    storage.write_text(path, "".join(lines))  # local or in a bucket


# --------------------------------------------------------------------------- helpers


def _check_k(k: int | None, n: int, method: str) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ConfigError(f"selection {method!r} needs an integer k, got {k!r}")
    if not 1 <= k <= n:
        raise ConfigError(f"selection {method!r}: k={k} must be between 1 and the {n} conversations")


def _check_unique_ids(pool: list[Conversation]) -> None:
    for before, after in pairwise(pool):
        if before.id == after.id:
            raise DataError(
                f"duplicate conversation id {after.id!r}: selection breaks ties by id, ids must be unique",
                reason="duplicate_id",
                row=after.id,
                source=after.source,
            )


def _default_response_length() -> Callable[[Conversation], int]:
    """Response tokens under the default training tokenizer (`encode.response_token_length`)."""
    try:
        from instructjax.data.encoding.encode import response_token_length
        from instructjax.data.encoding.tokenizer import Tokenizer
    except ImportError as e:
        raise ConfigError(
            f"longest/shortest selection needs a response_length counter and the default one is "
            f"unavailable ({e}); pass response_length=..."
        ) from e
    tokenizer = Tokenizer.load()
    return lambda conversation: response_token_length(conversation, tokenizer)


def _response_lengths(pool: list[Conversation], response_length: Callable[[Conversation], int]) -> list[int]:
    lengths = []
    for c in pool:
        length = response_length(c)
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise ConfigError(
                f"response_length returned {length!r} for conversation {c.id!r}; expected int >= 0"
            )
        lengths.append(int(length))
    return lengths


def _resolve_encoder(encoder: Encoder | str | None) -> Encoder:
    if encoder is None or isinstance(encoder, str):
        return get_encoder(encoder or DEFAULT_ENCODER)
    if not isinstance(encoder, Encoder):
        raise ConfigError(f"encoder must be an Encoder or a registered name, got {type(encoder).__name__}")
    return encoder


def _quality_scores(pool: list[Conversation], score_key: str) -> np.ndarray:
    scores = []
    for c in pool:
        if score_key not in c.meta:
            raise DataError(
                f"quality selection needs meta[{score_key!r}], which this conversation lacks",
                reason="missing_field",
                row=c.id,
                source=c.source,
            )
        value = c.meta[score_key]
        try:
            if isinstance(value, bool):
                raise ValueError
            score = float(value)
        except (TypeError, ValueError):
            score = math.nan
        if not math.isfinite(score):
            raise DataError(
                f"meta[{score_key!r}] is {value!r}, expected a finite number",
                reason="wrong_type",
                row=c.id,
                source=c.source,
            )
        scores.append(score)
    return np.asarray(scores, dtype=np.float64)


def _select_quality(
    pool: list[Conversation], k: int, score_key: str, rng: np.random.Generator
) -> list[Selected]:
    scores = _quality_scores(pool, score_key)
    boundary = np.sort(scores)[::-1][k - 1]
    above = np.flatnonzero(scores > boundary)
    at_boundary = np.flatnonzero(scores == boundary)
    fill = rng.choice(at_boundary, size=k - len(above), replace=False)
    chosen = sorted(np.concatenate([above, fill]).tolist(), key=lambda i: (-scores[i], pool[i].id))
    return [Selected(pool[i], float(scores[i])) for i in chosen]


def _select_kmeans(
    pool: list[Conversation],
    vectors: np.ndarray,
    k: int,
    num_clusters: int,
    seed: int,
    rng: np.random.Generator,
) -> list[Selected]:
    if not isinstance(num_clusters, (int, np.integer)) or not 1 <= num_clusters <= len(pool):
        raise ConfigError(
            f"kmeans selection: num_clusters={num_clusters} must be between 1 and the {len(pool)} conversations"
        )
    labels = kmeans_labels(vectors, num_clusters, seed)
    members = [np.flatnonzero(labels == c) for c in range(num_clusters)]  # id order within a cluster
    quota = equal_allocation(np.array([len(m) for m in members]), k, rng)
    selected = []
    for cluster, (rows, take) in enumerate(zip(members, quota, strict=True)):
        drawn = np.sort(rng.choice(rows, size=int(take), replace=False))
        selected.extend(Selected(pool[i], float(cluster)) for i in drawn)
    return selected
