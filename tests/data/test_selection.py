"""Data selection (seed 002): every method against an independent reference.

The pools are synthetic conversations built here; response lengths are whitespace word counts
(a real counter, standing in for the training tokenizer, which has its own tests).
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from instructjax.core.errors import ConfigError, DataError
from instructjax.data.schema import Conversation
from instructjax.data.selection.embeddings import (
    TfidfSvdEncoder,
    encoder_names,
    get_encoder,
    register_encoder,
)
from instructjax.data.selection.methods import (
    equal_allocation,
    instruction_text,
    select,
    write_selection,
)

TOPICS = {
    "poem": "write a poem about the sea moon night stars love verse rhyme",
    "code": "implement a python function sort list array algorithm recursion",
    "math": "solve the equation integral derivative algebra number prime",
    "cook": "recipe bake bread flour oven sugar butter dinner soup",
    "travel": "plan a trip to paris rome flight hotel museum beach",
    "health": "exercise sleep diet vitamin doctor heart muscle stretch",
}


def conv(i: int, instruction: str, response: str, **meta) -> Conversation:
    return Conversation(
        messages=[{"role": "user", "content": instruction}, {"role": "assistant", "content": response}],
        source="synthetic",
        id=f"synthetic-{i:04d}",
        meta=meta,
    )


def words(c: Conversation) -> int:
    return sum(len(m["content"].split()) for m in c.messages if m["role"] == "assistant")


def pool_with_lengths(n: int, seed: int = 0, max_len: int = 12) -> list[Conversation]:
    """n conversations whose response lengths repeat a lot (many ties), in shuffled order."""
    rng = random.Random(seed)
    pool = [conv(i, f"question {i}", " ".join(["w"] * rng.randint(1, max_len))) for i in range(n)]
    rng.shuffle(pool)
    return pool


def topic_pool(sizes: dict[str, int], seed: int = 0) -> list[Conversation]:
    """Conversations whose instructions mix words from one topic: clear clusters in TF-IDF space."""
    rng = random.Random(seed)
    pool, i = [], 0
    for topic, size in sizes.items():
        vocab = TOPICS[topic].split()
        for _ in range(size):
            text = " ".join(rng.choices(vocab, k=8))
            pool.append(conv(i, text, f"answer {i}"))
            i += 1
    rng.shuffle(pool)
    return pool


def brute_force_rank(pool: list[Conversation], key, better) -> dict[str, int]:
    """Rank of each conversation = how many others beat it (better key, or equal key and smaller id)."""
    ranks = {}
    for a in pool:
        ranks[a.id] = sum(
            1 for b in pool if b is not a and (better(key(b), key(a)) or (key(b) == key(a) and b.id < a.id))
        )
    return ranks


# ------------------------------------------------------------------ longest / shortest


@pytest.mark.parametrize("method,better", [("longest", lambda x, y: x > y), ("shortest", lambda x, y: x < y)])
@pytest.mark.parametrize("k", [1, 7, 23, 60])
def test_length_selection_is_brute_force_top_k_with_id_ties(method, better, k):
    pool = pool_with_lengths(60)
    ranks = brute_force_rank(pool, words, better)
    expected = sorted((c for c in pool if ranks[c.id] < k), key=lambda c: ranks[c.id])

    got = select(pool, method, k, response_length=words)

    assert [s.conversation.id for s in got] == [c.id for c in expected]
    assert [s.score for s in got] == [float(words(c)) for c in expected]


def test_ties_at_the_boundary_go_to_the_smaller_id():
    lengths = {"d": 5, "b": 5, "e": 3, "a": 5, "c": 1, "f": 1}
    pool = [
        Conversation([{"role": "user", "content": "q"}, {"role": "assistant", "content": "x " * n}], "s", i)
        for i, n in lengths.items()
    ]
    assert [s.conversation.id for s in select(pool, "longest", 2, response_length=words)] == ["a", "b"]
    assert [s.conversation.id for s in select(pool, "longest", 4, response_length=words)] == [
        "a",
        "b",
        "d",
        "e",
    ]
    assert [s.conversation.id for s in select(pool, "shortest", 1, response_length=words)] == ["c"]


def test_length_selection_ignores_input_order():
    pool = pool_with_lengths(50)
    reordered = list(reversed(pool))
    for method in ("longest", "shortest"):
        a = select(pool, method, 13, response_length=words)
        b = select(reordered, method, 13, response_length=words)
        assert [s.conversation.id for s in a] == [s.conversation.id for s in b]


@pytest.mark.slow  # loads transformers for the tokenizer: a few seconds alone, far more on a busy machine
def test_longest_defaults_to_the_llama_tokenizer_count():
    pytest.importorskip("instructjax.data.encoding.encode")
    import sentencepiece

    from instructjax.data.encoding.tokenizer import default_tokenizer_path

    sp = sentencepiece.SentencePieceProcessor(model_file=default_tokenizer_path())
    rng = random.Random(1)
    vocab = "the quick brown fox jumps over lazy dog photosynthesis antidisestablishmentarianism 42 ünïcode".split()
    pool = [conv(i, "q", " ".join(rng.choices(vocab, k=rng.randint(1, 9)))) for i in range(30)]
    reference = lambda c: len(sp.encode(c.messages[-1]["content"]))  # noqa: E731
    expected = select(pool, "longest", 10, response_length=reference)
    got = select(pool, "longest", 10)
    assert [(s.conversation.id, s.score) for s in got] == [(s.conversation.id, s.score) for s in expected]


def test_response_length_must_be_a_count():
    pool = pool_with_lengths(5)
    with pytest.raises(ConfigError, match="response_length returned"):
        select(pool, "longest", 2, response_length=lambda c: 1.5)


# ------------------------------------------------------------------ random


def test_random_is_reproducible_distinct_and_seed_dependent():
    pool = pool_with_lengths(80)
    a = [s.conversation.id for s in select(pool, "random", 20, seed=3)]
    b = [s.conversation.id for s in select(list(reversed(pool)), "random", 20, seed=3)]
    c = [s.conversation.id for s in select(pool, "random", 20, seed=4)]
    assert a == b  # same seed, any input order
    assert len(set(a)) == 20
    assert set(a) != set(c)
    assert all(math.isnan(s.score) for s in select(pool, "random", 5))


def test_random_is_uniform_over_seeds():
    pool = pool_with_lengths(20)
    counts = Counter()
    trials = 400
    for seed in range(trials):
        counts.update(s.conversation.id for s in select(pool, "random", 5, seed=seed))
    expected = trials * 5 / 20  # 100 per conversation
    chi2 = sum((counts[c.id] - expected) ** 2 / expected for c in pool)
    assert chi2 < 43.8  # chi-square(19) at p = 0.001


# ------------------------------------------------------------------ kmeans
#
# The reference is scikit-learn alone, on the raw rows: the test reads each row's instruction the way the
# Conversation schema defines it (its user turns; a system turn is not one), embeds the texts with the recipe
# `embeddings.TfidfSvdEncoder` documents (TF-IDF over words with sublinear tf -> TruncatedSVD(dim) -> unit
# rows, the TF-IDF vectors kept whole when the pool has no more than `dim` dimensions) and runs `KMeans` with
# sklearn's own defaults (k-means++, n_init="auto": one start) and the selection's seed. None of
# instruction_text, the encoder, KMEANS_N_INIT or kmeans_labels is called on the reference side.
#
# The rows repeat each word of their group 1-4 times plus shared filler words 0-2 times: the TF-IDF weights
# take many values, so no point is exactly equidistant from two centres. (With disjoint 0/1 vocabularies every
# cross-topic distance is exactly sqrt(2), which centre such a tie goes to depends on float32 vs float64
# rounding, and two correct pipelines give different partitions: on topic_pool they do for 7 seeds of 8.)

FILLERS = "please explain describe tell me more".split()
SYSTEM = "You are a helpful assistant who answers every question carefully."


def group_rows(groups: dict, seed: int) -> list[dict]:
    """Rows in the Conversation schema, shuffled: for each group (words, extra words, count), `count` rows whose
    user turns repeat the group's words (and one extra word); every third row has a system turn, every fourth
    a second round."""
    rng = random.Random(seed)

    def turn(words: list[str]) -> str:
        out = [w for w in words for _ in range(rng.randint(1, 4))]
        out += [w for w in FILLERS for _ in range(rng.randint(0, 2))]
        rng.shuffle(out)
        return " ".join(out)

    rows, i = [], 0
    for group, (words, extra, count) in groups.items():
        for _ in range(count):
            messages = [{"role": "system", "content": SYSTEM}] if i % 3 == 0 else []
            for r in range(1 + (i % 4 == 0)):
                messages += [{"role": "user", "content": turn(words + rng.sample(extra, min(1, len(extra))))},
                             {"role": "assistant", "content": f"answer {i}.{r}"}]
            rows.append({"id": f"row-{i:04d}", "source": "synthetic", "messages": messages, "meta": {"group": group}})
            i += 1
    rng.shuffle(rows)
    return rows


def six_topic_rows(sizes: dict[str, int], seed: int) -> list[dict]:
    return group_rows({t: (TOPICS[t].split(), [], n) for t, n in sizes.items()}, seed)


def micro_topic_rows(n: int, seed: int) -> list[dict]:
    """`n` narrow topics of 1-5 rows, each its own four words plus one word of a broad topic (100 topics: 312
    rows of 458 words, more than the 256 dimensions the encoder keeps, so its SVD reduces)."""
    rng, broad = random.Random(seed), list(TOPICS)
    return group_rows({j: ([f"{broad[j % 6]}{j}{c}" for c in "abcd"], TOPICS[broad[j % 6]].split(),
                           rng.randint(1, 5)) for j in range(n)}, seed)


def schema_instruction(row: dict) -> str:
    """The instruction of a row as the Conversation schema defines it: its user turns."""
    return " ".join(m["content"] for m in row["messages"] if m["role"] == "user")


def sklearn_lsa(texts: list[str], dim: int = 256, seed: int = 0) -> np.ndarray:
    """TfidfSvdEncoder's documented recipe, in scikit-learn directly (float64 throughout)."""
    tfidf = TfidfVectorizer(sublinear_tf=True, max_features=65_536).fit_transform(texts)
    if dim >= min(tfidf.shape):  # "too small for dim components": the TF-IDF vectors as they are
        return normalize(tfidf.toarray())
    return normalize(TruncatedSVD(n_components=dim, algorithm="randomized", random_state=seed).fit_transform(tfidf))


def sklearn_labels(rows: list[dict], num_clusters: int, seed: int) -> dict[str, int]:
    """Each row's cluster: sklearn KMeans (its defaults) on sklearn_lsa of the id-ordered instructions."""
    ordered = sorted(rows, key=lambda r: r["id"])
    vectors = sklearn_lsa([schema_instruction(r) for r in ordered])
    labels = KMeans(n_clusters=num_clusters, random_state=seed).fit_predict(vectors)
    return {r["id"]: int(label) for r, label in zip(ordered, labels, strict=True)}


def groups(label_of: dict[str, object]) -> set[frozenset[str]]:
    """The partition of ids that a labelling makes (label names aside)."""
    members = {}
    for i, label in label_of.items():
        members.setdefault(label, set()).add(i)
    return {frozenset(m) for m in members.values()}


def conversations(rows: list[dict]) -> list[Conversation]:
    return [Conversation(**row).validate() for row in rows]


def assert_max_min_fair(taken: dict[int, int], sizes: dict[int, int], k: int):
    """Equal shares capped at cluster size: no cluster with members left has 2 fewer than another."""
    assert sum(taken.values()) == k
    for a in sizes:
        assert 0 <= taken.get(a, 0) <= sizes[a]
        if taken.get(a, 0) < sizes[a]:
            assert all(taken.get(a, 0) >= taken.get(b, 0) - 1 for b in sizes)


SIX_TOPICS = {"poem": 40, "code": 30, "math": 3, "cook": 25, "travel": 2, "health": 20}


@pytest.mark.parametrize("k", [30, 31, 47])
def test_kmeans_takes_equally_from_sklearn_clusters(k):
    # six topics, two of them smaller than an equal share of 30/6 = 5
    rows = six_topic_rows(SIX_TOPICS, seed=0)
    label_of = sklearn_labels(rows, 6, seed=1)
    sizes = Counter(label_of.values())
    # the data is what the test needs: sklearn's six clusters are the six topics, small ones included
    assert groups(label_of) == groups({r["id"]: r["meta"]["group"] for r in rows}), \
        "sklearn's k-means no longer finds the six topics from this seed: choose another seed for the test"

    got = select(conversations(rows), "kmeans", k, num_clusters=6, seed=1)

    ids = [s.conversation.id for s in got]
    assert len(set(ids)) == k
    taken = Counter(label_of[i] for i in ids)
    assert_max_min_fair(taken, sizes, k)
    assert all(taken[c] == sizes[c] for c in sizes if sizes[c] < 4)  # the 2- and 3-row topics are exhausted
    # the score is the cluster; clusters are listed in order, ids in order within one
    assert [(s.score, s.conversation.id) for s in got] == sorted((s.score, s.conversation.id) for s in got)
    # the cluster index reported is sklearn's cluster of that conversation, up to relabelling
    pairs = {(int(s.score), label_of[s.conversation.id]) for s in got}
    assert len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs}) == 6


def test_kmeans_with_the_papers_100_clusters_is_even_and_reproducible():
    rows = micro_topic_rows(100, seed=0)  # 312 conversations
    label_of = sklearn_labels(rows, 100, seed=5)
    sizes = Counter(label_of.values())
    assert len(sizes) == 100 and min(sizes.values()) < 2 < max(sizes.values())  # some exhausted, some not
    pool = conversations(rows)
    got = select(pool, "kmeans", 200, seed=5)
    taken = Counter(label_of[s.conversation.id] for s in got)
    assert_max_min_fair(taken, sizes, 200)
    pairs = {(int(s.score), label_of[s.conversation.id]) for s in got}
    assert len(pairs) == len({p[0] for p in pairs}) == len({p[1] for p in pairs}) == 100
    again = select(list(reversed(pool)), "kmeans", 200, seed=5)
    assert [s.conversation.id for s in got] == [s.conversation.id for s in again]


def test_equal_allocation_matches_brute_force_water_level():
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 12, size=rng.integers(1, 9))
        if sizes.sum() == 0:
            continue
        k = int(rng.integers(1, sizes.sum() + 1))
        taken = equal_allocation(sizes, k, np.random.default_rng(1))
        # brute force: the largest level L with sum(min(size, L)) <= k; the rest get L+1
        level = max(L for L in range(13) if np.minimum(sizes, L).sum() <= k)
        base = np.minimum(sizes, level)
        extra = taken - base
        assert taken.sum() == k
        assert set(extra.tolist()) <= {0, 1}
        assert np.all(extra[sizes <= level] == 0)


# ------------------------------------------------------------------ kcenter


class LookupEncoder:
    """An encoder given as a table: instruction text -> fixed vector."""

    def __init__(self, table: dict[str, np.ndarray]):
        self.table = table

    def encode(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.table[t] for t in texts])


def brute_force_kcenter(points: np.ndarray, k: int, first: int) -> list[int]:
    """Sener & Savarese greedy, written out: argmax over unchosen of min distance to chosen."""
    chosen = [first]
    while len(chosen) < k:
        best, best_d = None, -1.0
        for i in range(len(points)):
            if i in chosen:
                continue
            d = min(math.dist(points[i], points[j]) for j in chosen)
            if d > best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kcenter_matches_brute_force_greedy(seed):
    rng = np.random.default_rng(100 + seed)
    n = 40
    points = rng.normal(size=(n, 5))
    pool = [conv(i, f"instruction {i}", "r") for i in range(n)]  # ids sort like indices
    encoder = LookupEncoder({instruction_text(c): points[i] for i, c in enumerate(pool)})

    got = select(pool[::-1], "kcenter", 12, seed=seed, encoder=encoder)

    picked = [int(s.conversation.id.split("-")[1]) for s in got]
    assert picked == brute_force_kcenter(points, 12, picked[0])
    assert math.isinf(got[0].score)
    for j in range(1, 12):
        expected = min(math.dist(points[picked[j]], points[p]) for p in picked[:j])
        assert got[j].score == pytest.approx(expected)
    assert [s.conversation.id for s in select(pool, "kcenter", 12, seed=seed, encoder=encoder)] == [
        s.conversation.id for s in got
    ]


def test_kcenter_first_pick_depends_on_seed_and_duplicates_are_not_repicked():
    pool = [conv(i, "same text" if i < 5 else f"text {i}", "r") for i in range(10)]
    table = {instruction_text(c): np.ones(3) for c in pool}
    got = select(pool, "kcenter", 10, encoder=LookupEncoder(table))  # all points equal
    assert sorted(s.conversation.id for s in got) == sorted(c.id for c in pool)
    firsts = {
        select(pool, "kcenter", 1, seed=s, encoder=LookupEncoder(table))[0].conversation.id for s in range(20)
    }
    assert len(firsts) > 1


def test_kcenter_with_default_encoder_runs_on_text():
    pool = topic_pool({t: 10 for t in TOPICS})
    got = select(pool, "kcenter", 6)
    assert len({s.conversation.id for s in got}) == 6
    assert all(s.score > 0 for s in got[1:])


# ------------------------------------------------------------------ quality


def scored_pool() -> list[Conversation]:
    scores = [5.0] * 4 + [4.5] * 15 + [4.0] * 10 + [3.0] * 6
    random.Random(0).shuffle(scores)
    return [conv(i, f"q{i}", "a", score=s) for i, s in enumerate(scores)]


def test_quality_takes_all_above_boundary_and_fills_from_the_boundary():
    pool = scored_pool()
    got = select(pool, "quality", 10, seed=0)
    by_score = Counter(s.score for s in got)
    assert by_score == {5.0: 4, 4.5: 6}  # all the 5s, then 6 of the 4.5s
    assert {s.conversation.id for s in got if s.score == 5.0} == {
        c.id for c in pool if c.meta["score"] == 5.0
    }
    assert [s.score for s in got] == sorted((s.score for s in got), reverse=True)
    # reproducible, and the fill depends on the seed
    fill = lambda seed: {s.conversation.id for s in select(pool, "quality", 10, seed=seed) if s.score == 4.5}  # noqa: E731
    assert fill(0) == {s.conversation.id for s in got if s.score == 4.5}
    assert len({frozenset(fill(seed)) for seed in range(10)}) > 1
    # every boundary conversation can be drawn
    assert set().union(*(fill(seed) for seed in range(30))) == {c.id for c in pool if c.meta["score"] == 4.5}


def test_quality_without_fill_and_with_integer_or_string_scores():
    pool = scored_pool()
    assert Counter(s.score for s in select(pool, "quality", 4)) == {5.0: 4}
    assert Counter(s.score for s in select(pool, "quality", 19)) == {5.0: 4, 4.5: 15}
    ints = [conv(i, "q", "a", rating=str(i % 3)) for i in range(9)]
    assert sorted(s.score for s in select(ints, "quality", 4, score_key="rating")) == [1.0, 2.0, 2.0, 2.0]


# ------------------------------------------------------------------ full, bad input, output


def test_full_keeps_everything_in_input_order():
    pool = pool_with_lengths(7)
    assert [s.conversation for s in select(pool, "full", None)] == pool
    assert len(select(pool, "full", 7)) == 7


def test_bad_arguments_raise_one_clear_error():
    pool = scored_pool()
    with pytest.raises(ConfigError, match="between 1 and the 35"):
        select(pool, "random", 36)
    with pytest.raises(ConfigError, match="between 1 and"):
        select(pool, "random", 0)
    with pytest.raises(ConfigError, match="integer k"):
        select(pool, "random", None)
    with pytest.raises(ConfigError, match="unknown selection method 'longset'"):
        select(pool, "longset", 3)
    with pytest.raises(ConfigError, match="keeps all 35"):
        select(pool, "full", 3)
    with pytest.raises(ConfigError, match="num_clusters=100"):
        select(pool, "kmeans", 3)
    with pytest.raises(ConfigError, match="unknown encoder 'nope'"):
        select(pool, "kcenter", 3, encoder="nope")

    missing = pool[:5] + [conv(99, "q", "a")]
    with pytest.raises(DataError, match=r"row synthetic-0099: quality selection needs meta\['score'\]") as e:
        select(missing, "quality", 2)
    assert e.value.reason == "missing_field"
    with pytest.raises(DataError, match="expected a finite number") as e:
        select([conv(1, "q", "a", score="high"), conv(2, "q", "a", score=3)], "quality", 1)
    assert e.value.row == "synthetic-0001"
    with pytest.raises(DataError, match="duplicate conversation id 'synthetic-0001'"):
        select([conv(1, "q", "a"), conv(1, "r", "b")], "random", 1)


def test_write_selection_round_trips(tmp_path):
    pool = pool_with_lengths(12)
    got = select(pool, "longest", 4, response_length=words)
    path = tmp_path / "selected.jsonl"
    write_selection(got, path, method="longest")
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    for rank, (line, s) in enumerate(zip(lines, got, strict=True)):
        assert Conversation.from_json(line) == s.conversation
        assert json.loads(line)["selection"] == {"rank": rank, "score": s.score, "method": "longest"}
    kcenter = select(
        pool,
        "kcenter",
        3,
        encoder=LookupEncoder({instruction_text(c): np.eye(12)[i] for i, c in enumerate(pool)}),
    )
    write_selection(kcenter, path)
    assert json.loads(path.read_text().splitlines()[0])["selection"]["score"] is None  # inf -> null


# ------------------------------------------------------------------ encoders


def test_tfidf_svd_encoder_is_deterministic_and_normalized():
    texts = [instruction_text(c) for c in topic_pool({t: 8 for t in TOPICS})]
    a = get_encoder("tfidf-svd", dim=16).encode(texts)
    b = TfidfSvdEncoder(dim=16).encode(texts)
    assert a.shape == (48, 16) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(a, b)
    # same-topic texts are closer than cross-topic ones on average
    sims = a @ a.T
    topic = [next(t for t, v in TOPICS.items() if text.split()[0] in v.split()) for text in texts]
    same = np.array([[x == y for y in topic] for x in topic])
    assert sims[same].mean() > sims[~same].mean() + 0.3
    assert TfidfSvdEncoder().encode(["one text only"]).shape[0] == 1


@pytest.mark.parametrize("rows,dim", [
    (six_topic_rows({t: 60 for t in TOPICS}, seed=0), 256),  # 360 rows x 58 words: TF-IDF kept whole
    (micro_topic_rows(8, seed=0), 256),  # 28 rows x 62 words: kept whole
    (six_topic_rows(SIX_TOPICS, seed=0), 16),  # 120 rows x 58 words, reduced to 16 components
    (micro_topic_rows(100, seed=0), 256),  # 312 rows x 458 words, reduced to 256
], ids=["kept-few-words", "kept-few-rows", "reduced-16", "reduced-256"])
def test_tfidf_svd_encoder_is_its_documented_sklearn_recipe(rows, dim):
    """What selection embeds (the encoder on `instruction_text`) against `sklearn_lsa` on the schema's user
    turns: the same vectors up to a rotation (an SVD's basis and signs are its own), i.e. the same Gram
    matrix. Before the fix the encoder kept min(dim, N-1, words-1) components, dropping one direction of
    every small pool where its documentation keeps the TF-IDF vectors (the two "kept" cases: Gram entries off
    by 0.03 and 0.014)."""
    ordered = sorted(rows, key=lambda r: r["id"])
    ours = TfidfSvdEncoder(dim=dim).encode([instruction_text(c) for c in conversations(ordered)])
    reference = sklearn_lsa([schema_instruction(r) for r in ordered], dim)
    assert ours.dtype == np.float32 and ours.shape[0] == len(rows)
    np.testing.assert_allclose(ours.astype(np.float64) @ ours.T.astype(np.float64), reference @ reference.T,
                               atol=1e-5)


def test_encoder_registry_plugs_in_by_name():
    register_encoder("test-lookup", lambda table: LookupEncoder(table))
    assert "test-lookup" in encoder_names()
    pool = [conv(i, f"t{i}", "r") for i in range(6)]
    table = {f"t{i}": np.array([float(i), 0.0]) for i in range(6)}
    got = select(pool, "kcenter", 2, seed=0, encoder=get_encoder("test-lookup", table=table))
    first = int(got[0].conversation.id.split("-")[1])
    assert int(got[1].conversation.id.split("-")[1]) == (0 if first >= 3 else 5)  # the farthest end
    with pytest.raises(ConfigError, match="returned shape"):
        select(pool, "kcenter", 2, encoder=LookupEncoder({f"t{i}": np.zeros((2, 2)) for i in range(6)}))
