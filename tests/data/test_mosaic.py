"""Mosaic-IT: tables match the paper, rules hold item by item, budget, coverage, count distributions.

Rule expectations are recomputed here independently (numpy stable argsorts, plain list logic) from
the source conversations, never read back from what the code recorded.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from instructjax.core.config import MOSAIC_DISTRIBUTIONS as DISTRIBUTIONS
from instructjax.core.config import MosaicSection, load_config
from instructjax.core.errors import ConfigError, DataError
from instructjax.data.mosaic import rules as R
from instructjax.data.mosaic.augment import (
    build_mosaic,
    draw_plan,
    fit_prefix,
    mosaic_epoch,
    sample_count,
)
from instructjax.data.schema import Conversation

WORDS = "apple Banana cherry date Elder fig grape honeydew kiwi lemon Mango nectarine olive pear quince".split()


def make_data(n: int, seed: int = 0, max_words: int = 30) -> list[Conversation]:
    """Single-turn conversations with random instructions and unique, greppable responses."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        instruction = " ".join(rng.choice(WORDS, int(rng.integers(1, max_words))))
        response = f"<<answer {i}>> " + " ".join(rng.choice(WORDS, int(rng.integers(1, 3 * max_words))))
        messages = [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]
        out.append(Conversation(messages=messages, source="alpaca", id=f"alpaca/{i}"))
    return out


def whitespace_tokens(conv: Conversation) -> int:
    """A cheap stand-in for template + tokenizer: Tulu markers + whitespace words."""
    return sum(len(m["content"].split()) + 3 for m in conv.messages) + 1


_SP = None


def sentencepiece_tulu_tokens(conv: Conversation) -> int:
    """Real LLaMA-layout SentencePiece (mistral-common) over the Tulu chat template."""
    global _SP
    if _SP is None:
        import mistral_common
        import sentencepiece as spm

        path = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")
        _SP = spm.SentencePieceProcessor(model_file=path)
    text = "".join(
        f"<|{m['role']}|>\n{m['content']}\n" if m["role"] != "assistant" else f"<|assistant|>\n{m['content']}</s>\n"
        for m in conv.messages
    )
    return len(_SP.encode(text)) + 1  # + BOS


_PROJECT_TOKENIZER = None


def project_tulu_tokens(conv: Conversation) -> int:
    """The pipeline's own count: instructjax Tulu template + Tokenizer (what a caller passes)."""
    global _PROJECT_TOKENIZER
    from instructjax.data.encoding.encode import count_tokens
    from instructjax.data.encoding.tokenizer import Tokenizer

    if _PROJECT_TOKENIZER is None:
        _PROJECT_TOKENIZER = Tokenizer.load()
    return count_tokens(conv, "tulu", _PROJECT_TOKENIZER)


# --- independent reference of the rules ----------------------------------------------------------


def expected_order(rule: str, texts: list[str]) -> list[int]:
    """0-based response order under a Permute rule (not FIX), via numpy stable argsorts."""
    k = len(texts)
    idx = np.arange(k)
    if rule == "REVERSE":
        return list(range(k - 1, -1, -1))
    if rule in ("ODD_EVEN", "EVEN_ODD"):
        odd = [i for i in range(k) if (i + 1) % 2 == 1]
        even = [i for i in range(k) if (i + 1) % 2 == 0]
        return odd + even if rule == "ODD_EVEN" else even + odd
    if rule in ("ALPHA", "REVERSE_ALPHA"):  # Table 9: "the first letter of tasks"
        letters = [next((c.lower() for c in t if c.isalpha()), "") for t in texts]
        _, key = np.unique(np.array(letters), return_inverse=True)
    elif "WORD" in rule:
        key = np.array([len(t.split()) for t in texts])
    else:
        key = np.array([len(t) for t in texts])
    if rule.startswith("REVERSE"):
        key = -key
    return [int(i) for i in np.lexsort((idx, key))]


def expected_masked(rule: str, texts: list[str], n: int) -> list[int]:
    """0-based masked indices under a Maskout rule (not FIX)."""
    k = len(texts)
    if rule == "ODD":
        return [i for i in range(k) if (i + 1) % 2 == 1]
    if rule == "EVEN":
        return [i for i in range(k) if (i + 1) % 2 == 0]
    words = np.array([len(t.split()) for t in texts])
    key = -words if rule == "WORD_LONG" else words
    return sorted(int(i) for i in np.lexsort((np.arange(k), key))[:n])


def check_mosaic(out: Conversation, by_id: dict[str, Conversation]) -> None:
    """Every item of the response is the right one, in the right order and format."""
    info = out.meta["mosaic"]
    items = [by_id[i] for i in info["source_ids"]]
    k = len(items)
    assert info["k"] == k and [m["role"] for m in out.messages] == ["user", "assistant"]
    texts = [c.messages[0]["content"] for c in items]
    responses = [c.messages[1]["content"] for c in items]
    fmt = info["format"]
    gap = "\n" if fmt["newline_after_label"] else " "

    def label(n: int) -> str:
        return fmt["serial"].replace("{i}", str(n)) + fmt["punctuation"]

    user = out.messages[0]["content"]
    # every instruction is in the prompt, numbered, in numbering order
    positions = [user.index(f"{label(n)}{gap}{texts[n - 1]}") for n in range(1, k + 1)]
    assert positions == sorted(positions)
    strategy, rule = info["strategy"], info["rule"]
    masked: list[int] = []
    if strategy in ("primary", "format") or k == 1:
        assert rule is None
        order = list(range(k))
    elif strategy == "permute":
        if rule == "FIX":
            order = [n - 1 for n in info["order"]]
            assert sorted(order) == list(range(k))
            assert any(sep.join(str(n) for n in info["order"]) in user for sep in R.LIST_SEPARATORS)
        else:
            order = expected_order(rule, texts)
    elif strategy == "maskout":
        n = max(1, len(info["masked"]))
        if rule == "FIX":
            masked = [m - 1 for m in info["masked"]]
            assert any(sep.join(str(m + 1) for m in masked) in user for sep in R.LIST_SEPARATORS)
        else:
            masked = expected_masked(rule, texts, n)
            if rule in ("WORD_LONG", "WORD_SHORT"):
                assert re.search(rf"\b{len(masked)} ", user)
        assert 1 <= len(masked) < k
        if rule in ("FIX", "WORD_LONG", "WORD_SHORT"):
            assert len(masked) <= max(1, math.floor(k * 0.5))
        order = [i for i in range(k) if i not in masked]
    else:
        raise AssertionError(strategy)
    tags = fmt["tags"]
    if strategy == "primary":
        assert tags is None and not user.startswith("Answer") and user.startswith(label(1))
    else:
        assert label(1) in user.replace(f"{label(1)}{gap}{texts[0]}", "", 1)  # the meta-instruction shows it
    wrap = (lambda r: f"{tags[0]} {r} {tags[1]}") if tags else (lambda r: r)
    expected = "\n\n".join(f"{label(i + 1)}{gap}{wrap(responses[i])}" for i in order)
    assert out.messages[1]["content"] == expected
    assert info["order"] == [i + 1 for i in order] and info["masked"] == [m + 1 for m in masked]
    # the response holds exactly the unmasked answers (each source response is unique)
    found = re.findall(r"<<answer (\d+)>>", out.messages[1]["content"])
    assert found == [items[i].id.split("/")[1] for i in order]


# --- tables --------------------------------------------------------------------------------------


def test_tables_have_the_papers_counts_and_rows():
    assert len(set(R.SERIAL_FORMATS)) == 10
    assert len(set(R.PARSING_BRACKETS)) == 27
    assert len(set(R.PARSING_TEXTS)) == 17
    # rows printed in Table 8
    for serial in ("{i}", "({i})", "[{i}]", "<{i}>", "<<{i}>>", "### {i}", "## {i}", "##{i}##"):
        assert serial in R.SERIAL_FORMATS
    for bracket in (("(", ")"), ("[", "]"), ("<", ">"), ("<<", ">>"), ("#", "#"), ("*", "*"), ("@", "@")):
        assert bracket in R.PARSING_BRACKETS
    for pair in (("BEGIN", "END"), ("RESPONSE", "END OF RESPONSE"), ("START POINT", "END POINT"), ("RES", "/RES")):
        assert pair in R.PARSING_TEXTS
    assert set(R.PERMUTE_RULES) == {
        "FIX", "REVERSE", "ALPHA", "REVERSE_ALPHA", "LENGTH_WORD", "REVERSE_LENGTH_WORD",
        "LENGTH_CHAR", "REVERSE_LENGTH_CHAR", "ODD_EVEN", "EVEN_ODD",
    }  # fmt: skip
    assert set(R.MASKOUT_RULES) == {"FIX", "WORD_LONG", "WORD_SHORT", "ODD", "EVEN"}


# --- rules, property-tested ----------------------------------------------------------------------

texts_strategy = st.lists(
    st.lists(st.sampled_from(WORDS + ["a", "A", "zebra"]), min_size=1, max_size=8).map(" ".join),
    min_size=2,
    max_size=12,
)


@settings(max_examples=150, deadline=None)
@given(texts=texts_strategy, rule=st.sampled_from([r for r in R.PERMUTE_RULES if r != "FIX"]))
def test_permute_rules_match_reference(texts, rule):
    assert R.permute_order(rule, texts) == expected_order(rule, texts)


def test_alpha_orders_by_the_first_letter_only():
    """Table 9: "Respond in the (reverse) alphabetical order of the first letter of tasks" - tasks that share
    a first letter keep their numbering order, whatever follows it (hand-computed)."""
    texts = ["zebra crossing rules", "Apple pie recipe", "apricot jam", "1. banana bread", "Avocado toast"]
    # first letters: z, a, a, b, a
    assert R.permute_order("ALPHA", texts) == [1, 2, 4, 3, 0]
    assert R.permute_order("REVERSE_ALPHA", texts) == [0, 3, 1, 2, 4]
    assert R.permute_order("ALPHA", ["azure", "apple"]) == [0, 1]  # the whole text would put apple first
    assert R.permute_order("ALPHA", ["b", "42", "a"]) == [1, 2, 0]  # no letter sorts first


@settings(max_examples=150, deadline=None)
@given(texts=texts_strategy, rule=st.sampled_from(["WORD_LONG", "WORD_SHORT", "ODD", "EVEN"]), ratio=st.floats(0.1, 0.5))
def test_maskout_rules_match_reference(texts, rule, ratio):
    n = R.mask_count(len(texts), ratio)
    assert n == max(1, math.floor(len(texts) * ratio))
    masked = R.maskout_indices(rule, texts, n)
    assert masked == expected_masked(rule, texts, n)
    assert 1 <= len(masked) < len(texts)


@pytest.mark.parametrize("strategy", ["primary", "format", "permute", "maskout", "mix"])
def test_every_mosaic_is_right_item_by_item(strategy):
    data = make_data(400, seed=3)
    by_id = {c.id: c for c in data}
    rules_seen = Counter()
    for seed in range(6):
        out, stats = mosaic_epoch(
            data, MosaicSection(strategy=strategy, max_length=100_000), seed=seed, epoch=0, count_tokens=whitespace_tokens
        )
        assert stats.over_budget == stats.reduced == 0
        for conv in out:
            check_mosaic(conv, by_id)
            rules_seen[(conv.meta["mosaic"]["strategy"], conv.meta["mosaic"]["rule"])] += 1
    if strategy in ("mix", "permute"):
        assert {r for s, r in rules_seen if s == "permute"} == set(R.PERMUTE_RULES)
    if strategy in ("mix", "maskout"):
        assert {r for s, r in rules_seen if s == "maskout"} == set(R.MASKOUT_RULES)


def test_strategy_mix_probabilities():
    """mix: format / +permute / +maskout each 1/3; permute and maskout ablations: 1/2 (Sec. 4.2)."""
    rng = np.random.default_rng(0)
    n = 6000
    for strategy, expected in [("mix", {"format": 1 / 3, "permute": 1 / 3, "maskout": 1 / 3}),
                               ("permute", {"format": 0.5, "permute": 0.5}),
                               ("maskout", {"format": 0.5, "maskout": 0.5})]:  # fmt: skip
        counts = Counter(draw_plan(rng, strategy, 5).strategy for _ in range(n))
        assert set(counts) == set(expected)
        keys = sorted(expected)
        p = scipy_stats.chisquare([counts[k] for k in keys], [n * expected[k] for k in keys]).pvalue
        assert p > 1e-3, (strategy, counts)


# --- budget, coverage, determinism ---------------------------------------------------------------


@pytest.mark.parametrize(
    "count_tokens", [whitespace_tokens, sentencepiece_tulu_tokens, project_tulu_tokens], ids=["ws", "spm", "tulu"]
)
def test_budget_is_respected_and_every_example_appears_once(count_tokens):
    expensive = count_tokens is project_tulu_tokens  # HF tokenizer + template: keep this case small
    data = make_data(120 if expensive else 300, seed=5, max_words=60)
    system = Conversation(
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
        source="alpaca", id="alpaca/sys",
    )  # fmt: skip
    multi = Conversation(
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
         {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
        source="sharegpt", id="sharegpt/0",
    )  # fmt: skip
    # a budget that any single example fits with its formatting, but ~10 of them do not
    budget = 2 * max(count_tokens(c) for c in data if c.id != "alpaca/7") + 100
    data[7].messages[0]["content"] += " long" * budget  # too long even alone (and even if masked out)
    data += [system, multi]
    by_id = {c.id: c for c in data}
    config = MosaicSection(max_length=budget)
    for epoch in range(1 if expensive else 3):
        out, stats = mosaic_epoch(data, config, seed=11, epoch=epoch, count_tokens=count_tokens)
        seen = []
        for conv in out:
            if "mosaic" in conv.meta:
                assert count_tokens(conv) <= config.max_length
                check_mosaic(conv, by_id)
                seen += conv.meta["mosaic"]["source_ids"]
            else:
                assert conv is by_id[conv.id]  # passed through unchanged
                seen.append(conv.id)
        assert sorted(seen) == sorted(by_id)  # each source example exactly once per pass
        assert stats.over_budget_ids == ["alpaca/7"] and stats.passthrough == 2
        assert stats.reduced > 0 and stats.sequences_out == len(out) == stats.mosaics + 3
        assert sum(stats.k_histogram.values()) == stats.mosaics
        # cheap on the tokenizer: about one count per mosaic, a few more per reduced one
        assert stats.count_tokens_calls <= stats.mosaics + 4 * (stats.reduced + stats.over_budget)


def test_fit_prefix_finds_the_longest_fitting_prefix():
    """Against brute force, including estimates that are far off (lengths not proportional to chars)."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        k = int(rng.integers(1, 12))
        lengths = rng.integers(1, 50, size=k)
        weird = rng.integers(1, 200, size=k)  # chars unrelated to tokens
        group = [Conversation([{"role": "user", "content": "x" * int(w)}, {"role": "assistant", "content": "y"}], "s", str(i))
                 for i, w in enumerate(weird)]  # fmt: skip
        budget = int(rng.integers(1, 200))

        def build(m: int, group=group) -> Conversation:
            return Conversation(group[0].messages if m == 1 else group[m - 1].messages, "s", str(m), {"m": m})

        def count(c: Conversation, lengths=lengths) -> int:
            return 5 + int(lengths[: c.meta["m"]].sum())

        best, m, tokens = fit_prefix(group, build, count, budget)
        brute = max([j for j in range(1, k + 1) if 5 + lengths[:j].sum() <= budget] or [0])
        assert m == brute and (best is None) == (brute == 0)
        if best is not None:
            assert tokens == count(best) <= budget


def test_same_seed_same_output_different_epochs_differ():
    data = make_data(200, seed=1)
    config = MosaicSection(max_length=400)

    def run(seed, epoch):
        out, _ = mosaic_epoch(data, config, seed=seed, epoch=epoch, count_tokens=whitespace_tokens)
        return [c.to_json() for c in out]

    a = run(0, 0)
    assert a == run(0, 0)
    assert a != run(0, 1) and a != run(1, 0)
    groups = lambda out: {tuple(__import__("json").loads(c)["meta"]["mosaic"]["source_ids"]) for c in out}  # noqa: E731
    assert len(groups(a) & groups(run(0, 1))) < 0.1 * len(a)  # a fresh mosaic pass, not a reshuffle


# --- count distributions (Appendix A) ------------------------------------------------------------


def analytic_pmf(distribution: str, k_max: int, params: dict) -> np.ndarray:
    """P(k) for k = 1..k_max of k = k_max - floor(x), x redrawn unless 0 <= x < k_max (scipy CDFs)."""
    if distribution == "uniform":
        return np.full(k_max, 1 / k_max)
    if distribution == "fixed":
        return np.eye(k_max)[-1]
    dist = {
        "exponential": lambda p: scipy_stats.expon(scale=p["scale"]),
        "lognormal": lambda p: scipy_stats.lognorm(s=p["sigma"], scale=np.exp(p["mean"])),
        "logistic": lambda p: scipy_stats.logistic(loc=p["loc"], scale=p["scale"]),
        "pareto": lambda p: scipy_stats.lomax(c=p["a"]),
    }[distribution]({**DISTRIBUTIONS[distribution], **params})
    k = np.arange(1, k_max + 1)
    mass = dist.cdf(k_max - k + 1) - dist.cdf(k_max - k)  # floor(x) = k_max - k
    return mass / (dist.cdf(k_max) - dist.cdf(0))


@pytest.mark.parametrize(
    "distribution,k_max,params",
    [("uniform", 10, {}), ("uniform", 4, {}), ("exponential", 10, {}), ("lognormal", 10, {}),
     ("logistic", 10, {}), ("pareto", 10, {}), ("pareto", 6, {"a": 2.0}), ("logistic", 12, {"loc": 3.0})],
)  # fmt: skip
def test_count_histogram_matches_distribution(distribution, k_max, params):
    config = MosaicSection(distribution=distribution, k_max=k_max, distribution_params=params)
    rng = np.random.default_rng(123)
    n = 20_000
    hist = np.bincount([sample_count(rng, config) for _ in range(n)], minlength=k_max + 1)
    assert hist[0] == 0 and len(hist) == k_max + 1
    pmf = analytic_pmf(distribution, k_max, params)
    keep = pmf * n >= 5  # chi-square needs enough expected mass per cell; the rest must be ~empty
    assert hist[1:][~keep].sum() <= max(5, 3 * pmf[~keep].sum() * n)
    observed = np.append(hist[1:][keep], hist[1:][~keep].sum())
    expected = np.append(pmf[keep] * n, pmf[~keep].sum() * n)
    if expected[-1] == 0:
        observed, expected = observed[:-1], expected[:-1]
    p = scipy_stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue
    assert p > 1e-3, (distribution, hist, pmf * n)


def test_fixed_distribution_and_requested_histogram_in_an_epoch():
    data = make_data(3000, seed=2, max_words=5)
    out, stats = mosaic_epoch(data, MosaicSection(distribution="fixed"), seed=0, epoch=0, count_tokens=whitespace_tokens)
    assert set(stats.requested_k_histogram) == {10} and stats.k_histogram[10] == 300
    out, stats = mosaic_epoch(data, MosaicSection(), seed=0, epoch=0, count_tokens=whitespace_tokens)
    observed = [stats.requested_k_histogram[k] for k in range(1, 11)]
    assert scipy_stats.chisquare(observed).pvalue > 1e-3  # uniform 1..10


# --- errors --------------------------------------------------------------------------------------


def test_bad_config_and_bad_rows_give_one_clear_error():
    with pytest.raises(ConfigError, match="strategy"):
        MosaicSection(strategy="shuffle")
    with pytest.raises(ConfigError, match="distribution"):
        MosaicSection(distribution="poisson")
    with pytest.raises(ConfigError, match="sigma"):
        MosaicSection(distribution="exponential", distribution_params={"sigma": 1.0})
    with pytest.raises(ConfigError, match="k_max"):
        MosaicSection(k_max=0)
    with pytest.raises(ConfigError, match="data.mosaic.kmax: unknown key; did you mean k_max"):
        load_config(None, ["data.mosaic.strategy=mix", "data.mosaic.kmax=3"])
    built = load_config(None, ["data.mosaic.distribution=pareto", "data.mosaic.k_max=6"]).data.mosaic
    assert isinstance(built, MosaicSection) and built.params == {"a": 1.0}
    bad = Conversation([{"role": "user", "content": "q"}], source="alpaca", id="alpaca/9")
    with pytest.raises(DataError, match="alpaca/9"):
        mosaic_epoch(make_data(3) + [bad], MosaicSection(), seed=0, epoch=0, count_tokens=whitespace_tokens)


def test_single_item_mosaic_is_format_only():
    data = make_data(1)
    rng = np.random.default_rng(0)
    for _ in range(50):
        plan = draw_plan(rng, "mix", 1)
        conv = build_mosaic(data, plan, conv_id="m", source="alpaca")
        assert conv.meta["mosaic"]["strategy"] == "format" and conv.meta["mosaic"]["order"] == [1]
        check_mosaic(conv, {c.id: c for c in data})


@pytest.mark.slow
def test_a_run_records_the_mosaics_it_trained_on_and_table5_reads_them(tmp_path):
    """A Mosaic-IT run writes RUN_DIR/mosaic_k.json: each epoch's mosaics by k as made (fixed k = 6, cut to fit
    512 tokens), equal to the k of the mosaics its data stream gives that epoch (counted here from their source
    ids); seed 003's Table 5 "Mix <= 5" is their share with k <= 5."""
    from collections import Counter

    from instructjax.cli import main
    from instructjax.core.config import load_config
    from instructjax.report.mosaic_it import _mix_at_most_5
    from instructjax.report.runs import read_run
    from instructjax.train.setup import bind_run, open_pipeline

    run_dir = tmp_path / "run"
    overrides = ["model.preset=tiny", "model.dtype=float32", "data.mixture=acp_ACP_n2500_builtin", "data.seq_len=512",
                 "data.global_batch=8", "data.mosaic.k_max=6", "data.mosaic.distribution=fixed", "max_steps=2",
                 "optim.epochs=1", "checkpoint.every=1000", f"run_dir={run_dir}", "name=mosaic_k"]
    assert main(["train", "--config", "/dev/null", *overrides]) == 0
    record = json.loads((run_dir / "mosaic_k.json").read_text())
    config = load_config(run_dir / "config.yaml")
    stream = open_pipeline(bind_run(config)).stream
    brute = Counter()
    assert "0" in record
    for epoch in record:  # the passes the pipeline made (it may prepare the next epoch's ahead)
        made = Counter(len(c.meta["mosaic"]["source_ids"]) for c in stream.mosaic_conversations(int(epoch))
                       if "mosaic" in c.meta)
        assert record[epoch] == {str(k): n for k, n in sorted(made.items())}
        brute += made
    assert max(brute) == 6 and min(brute) < 6  # some mosaics were cut to fit the row
    (tmp_path / "c.yaml").write_text((run_dir / "config.yaml").read_text())
    share = 100 * sum(n for k, n in brute.items() if k <= 5) / sum(brute.values())
    assert _mix_at_most_5(read_run(tmp_path / "c.yaml")) == pytest.approx(share)
