"""ShareGPT against its reference pipelines, on hand-written rows in the dataset's real schema:

- `clean: fastchat` against FastChat 0.2.36's own `fastchat.data.clean_sharegpt` on a raw HTML dump
  (tests/assets/sharegpt_raw/sharegpt_html.json), conversation by conversation and count by count;
- the default (the Tulu mixtures) against open-instruct's own ShareGPT steps, vendored verbatim in
  tests/helpers/open_instruct_sharegpt.py, on html-cleaned rows; the split against its splitter.
"""

import contextlib
import copy
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastchat.data import clean_sharegpt as fc
from helpers import ASSETS
from helpers import open_instruct_sharegpt as oi
from helpers.pieces import reverse_pickled_share

from instructjax.core.errors import BadRowPolicy, ConfigError, DataError
from instructjax.data.sources import sharegpt
from instructjax.data.sources.dialogues import split_blocks
from instructjax.data.sources.load import load_conversations
from instructjax.data.sources.rows import alone

RAW = ASSETS / "sharegpt_raw" / "sharegpt_html.json"
# FastChat's counters (its summary line) -> our skip reasons
FASTCHAT_REASONS = {"cnt_too_short": "too_short", "cnt_wrong_format": "wrong_format",
                    "cnt_blocked_words": "blocked_words", "cnt_parser_error": "parser_error",
                    "cnt_id_duplication": "duplicate_id", "cnt_plugin": "plugins",
                    "cnt_value_duplication": "duplicate_first_exchange"}
# FastChat's line per dropped conversation -> our skip reason
FASTCHAT_LINES = [("is too short", "too_short"), ("has a wrong format", "wrong_format"),
                  ("contains blocked words", "blocked_words"), ("contains parser errors", "parser_error"),
                  ("is an id duplication", "duplicate_id"), ("contains plugin", "plugins"),
                  ("is a value duplication", "duplicate_first_exchange")]


def fastchat_clean(rows, monkeypatch):
    """FastChat's `clean_html_all` on `rows`: (kept samples, counts per our reason, [(id, our reason)] of the
    dropped ones in order). Its process pool is swapped for threads (same map, same order)."""
    monkeypatch.setattr(fc, "ProcessPoolExecutor", ThreadPoolExecutor)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        kept = fc.clean_html_all(copy.deepcopy(rows), 0, None)
    lines = out.getvalue().splitlines()
    summary = dict(re.findall(r"(cnt_\w+): (\d+)", lines[-1]))
    counts = {FASTCHAT_REASONS[k]: int(n) for k, n in summary.items() if int(n)}
    dropped = []
    for line in lines[:-1]:
        cid, rest = re.match(r"id (\S+) (.*)", line).groups()
        dropped.append((cid, next(reason for words, reason in FASTCHAT_LINES if rest.startswith(words))))
    return kept, counts, dropped


def ours(tmp_path, path, **options):
    policy = BadRowPolicy()
    convs = list(load_conversations("sharegpt", [str(path)], policy=policy, cache_dir=str(tmp_path / "c"), **options))
    return convs, policy


def as_messages(turns):
    return [{"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"]} for t in turns]


@pytest.mark.parametrize("spans", [None, 5])
def test_fastchat_clean_matches_fastchats_cleaner_conversation_by_conversation(tmp_path, monkeypatch, spans, new_command):
    """In one process, and with the rows cleaned in 5 pieces made last to first and pickled (as the hosts of a run
    share the cleaning; each piece's rows fetched 3 at a time), then de-duplicated."""
    rows = json.loads(RAW.read_text())
    kept, counts, dropped = fastchat_clean(rows, monkeypatch)
    assert set(counts) == set(FASTCHAT_REASONS.values())  # the rows exercise every one of FastChat's filters

    new_command()  # not the dump another test cleaned
    monkeypatch.setattr(sharegpt, "CHUNK", 3 if spans else sharegpt.CHUNK)  # a host's rows fetched in chunks
    share = alone if spans is None else reverse_pickled_share(spans)
    convs, policy = ours(tmp_path, RAW, clean="fastchat", share=share)
    assert [(c.id, c.messages) for c in convs] == [(f"sharegpt-{s['id']}", as_messages(s["conversations"]))
                                                   for s in kept]
    assert dict(policy.skipped) == counts and policy.read == len(rows)
    new_command()
    outcomes = sharegpt.prepare([sharegpt_table(RAW, tmp_path)], {"clean": "fastchat"}, share)["cleaned"]
    assert [(rows[k]["id"], o.reason) for k, o in sorted(outcomes.items()) if not isinstance(o, tuple)] == dropped
    # the repairs: VyaZlh4 and Sy5tEm0 lose a leading turn, Tr4iLh9 a trailing human one; Cu7b4Bw is cut at its
    # empty reply (the blocked word after it is never looked at), Zw5pAce at its U+200B-led turn
    assert dict(policy.repaired) == {sharegpt.LEADING: 2, sharegpt.TRAILING: 1, sharegpt.CUT: 2}
    by_id = {c.id: c for c in convs}
    assert by_id["sharegpt-Zw5pAce"].meta["repairs"] == [sharegpt.CUT] and by_id["sharegpt-Zw5pAce"].rounds == 1


def sharegpt_table(path, tmp_path):
    from instructjax.data.sources.rows import RowFile

    return RowFile(str(path), str(tmp_path / "c"))


def test_fastchat_clean_keeps_the_first_in_file_order_whatever_the_visiting_order(tmp_path, monkeypatch):
    """De-duplication is decided over the whole dump in file order, so a shuffled read (a subset draw) keeps
    exactly the conversations FastChat keeps."""
    in_order, _ = ours(tmp_path, RAW, clean="fastchat")
    shuffled, policy = ours(tmp_path, RAW, clean="fastchat", shuffle_seed=3)
    assert [c.id for c in shuffled] != [c.id for c in in_order]
    assert sorted((c.id, c.to_json()) for c in shuffled) == sorted((c.id, c.to_json()) for c in in_order)
    assert policy.skipped["duplicate_id"] == 1 and policy.skipped["duplicate_first_exchange"] == 1


@pytest.mark.parametrize("spans", [None, 3])
def test_a_bad_row_of_a_raw_dump_is_named_by_file_and_row_when_the_cleaning_is_shared(tmp_path, monkeypatch, spans,
                                                                                      new_command):
    """Rows of a raw dump that cannot be read (no turns, an id of the wrong type, turns that are not objects):
    raised with their file and row, or skipped and counted, the same whether one process cleans the dump or
    the hosts of a run clean it in pieces (3, made last to first and pickled)."""
    rows = json.loads(RAW.read_text())[:6]
    bad = [*rows[:2], {"id": "no-turns"}, {"id": 3.5, "conversations": []}, {"id": "x", "conversations": ["hi"]},
           *rows[2:]]
    path = tmp_path / "dump.json"
    path.write_text(json.dumps(bad))
    share = alone if spans is None else reverse_pickled_share(spans)
    new_command()
    with pytest.raises(DataError) as raised:
        ours(tmp_path, path, clean="fastchat", share=share)
    assert str(raised.value) == f"source sharegpt, file {path}, row 2: missing field 'conversations' (absent or null)"
    policy = BadRowPolicy(on_bad_row="skip")
    new_command()
    convs = list(load_conversations("sharegpt", [str(path)], policy=policy, cache_dir=str(tmp_path / "c"),
                                    clean="fastchat", share=share))
    assert policy.read == len(bad) and sum(policy.skipped.values()) == len(bad) - len(convs)
    assert policy.skipped["missing_field"] == 1 and policy.skipped["wrong_type"] == 2
    assert policy.examples["wrong_type"] == f"source sharegpt, file {path}, row 3: field 'id' is float, expected str or int"


EXTRA_HTML = [  # more of what ShareGPT's HTML holds: tables, links, quotes, nested lists, inline code, noise
    '<div class="markdown prose"><table><thead><tr><th>name</th><th>age</th></tr></thead><tbody><tr><td>Ann</td>'
    '<td>31</td></tr></tbody></table></div>',
    '<p>See <a href="https://example.com/a_b">the docs</a> and <img src="x.png" alt="a chart">.</p>',
    '<blockquote><p>To be, or not to be.</p></blockquote><ul><li>one<ul><li>one_a</li></ul></li><li>two</li></ul>',
    '3 / 3<p>Use <code>snake_case</code> names, *not* camelCase.</p>',
    'Copy12 chars / 2 words<p>Done.</p><h2>Next steps</h2><hr><p>1 / 2 is a half.</p>',
    '<pre><div><span>bash</span><button>Copy code</button></div><div><code>ls -la\n</code></div></pre>',
]


def test_html_to_markdown_is_fastchats():
    rows = json.loads(RAW.read_text())
    values = [t["value"] for r in rows for t in r["conversations"]] + EXTRA_HTML
    for value in values:
        try:
            expected = fc.html_to_markdown(value)
        except Exception as exc:  # the parser error row: both reject it
            with pytest.raises(type(exc)):
                sharegpt.html_to_markdown(value)
            continue
        assert sharegpt.html_to_markdown(value) == expected, value


def test_fastchat_clean_is_for_a_raw_dump_and_the_option_is_checked(tmp_path):
    with pytest.raises(ConfigError, match="raw HTML dump"):
        list(load_conversations("sharegpt", clean="fastchat"))  # the hub release is already cleaned
    with pytest.raises(ConfigError, match="clean must be"):
        ours(tmp_path, RAW, clean="vicuna")


# ---- the default: open-instruct's steps on the html-cleaned release (turn values already markdown) ----

def h(value):
    return {"from": "human", "value": value}


def g(value):
    return {"from": "gpt", "value": value}


def turn(speaker, value):
    return {"from": speaker, "value": value}


HTML_CLEANED = [
    {"id": "QWJhYvA_0", "conversations": [h("Summarize Product Launch Formula.\n"), g("\n\nBuild anticipation, open the "
                                           "cart for a limited time, then follow up.\n\n"), h("Shorter?"), g("Hype, sell, follow up.")]},
    {"id": "VyaZlh4_0", "conversations": [g("Hello! How can I help?"), h("What is the capital of Australia?"),
                                           g("Canberra.")]},  # a leading gpt turn: its round is gpt, human
    {"id": "i6IyJda_0", "conversations": [h("I want a cover letter."), h("For a data analyst job."), g("Sure.")]},
    {"id": "A5AbcES_0", "conversations": [h("Write a haiku about autumn."), g("Crisp leaves drift and fall."),
                                           h("Now winter.")]},  # an unanswered last turn
    {"id": "kP9q2Lm_0", "conversations": [h("Explain recursion."), turn("chatgpt", "A function calling itself.")]},
    {"id": "uSr5Ab1_0", "conversations": [turn("user", "What is 2 + 2?"), g("4")]},
    {"id": "Bn1Xo3D_0", "conversations": [h("Banana bread recipe?"), turn("bing", "Mash three bananas...")]},
    {"id": "sYs7em0_0", "conversations": [turn("system", "Be brief."), h("Hi"), g("Hello.")]},
    {"id": "hGbIng1_0", "conversations": [h("Name a color."), g("Blue."), turn("bing", "Searching...")]},  # odd: cut
    {"id": "wT6rrHm_0", "conversations": []},
    {"id": "On3tUrn_0", "conversations": [h("Anyone there?")]},
    {"id": "mrllZ6u_0", "conversations": [h("What does HTTP stand for?"), g("Hypertext Transfer Protocol."),
                                           h("And HTTPS?"), g("")]},  # an empty last reply
    {"id": "wsOnly0_0", "conversations": [h("Say nothing."), g("  \n")]},  # the only reply is blank
    {"id": "eMptyUs_0", "conversations": [h(""), g("It looks like your message is empty. How can I help?")]},
    {"id": "dUp1234_0", "conversations": [h("Tell me a joke."), g("Why did the chicken cross the road?")]},
    {"id": "dUp1234_0", "conversations": [h("Tell me a joke."), g("Why did the chicken cross the road?")]},
    {"id": "hTmlRaw_0", "conversations": [h("Hi there, friend"), g('<div class="markdown prose"><p>Hello!</p></div>')]},
]
EMPTY_REPLY_CUT = {"mrllZ6u_0": 2, "wsOnly0_0": 0}  # ours: messages kept before the empty reply open-instruct trains


class WordTokenizer:
    """Stands for the LLaMA tokenizer in open-instruct's splitter: a BOS and one token per word."""

    class Encoding:
        def __init__(self, ids):
            self.input_ids = ids

    def __call__(self, text):
        return self.Encoding([1] + text.split())


def open_instruct(rows, tmp_path, monkeypatch, max_length=10**9):
    """open-instruct's own steps (`split_sharegpt_conversations.py`'s main, then `convert_sharegpt_data`) ->
    its messages per example id, values stripped as its `encode_with_messages_format` strips them."""
    monkeypatch.setattr(oi, "ProcessPoolExecutor", ThreadPoolExecutor)
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        split = oi.filter_invalid_roles(oi.split_all(copy.deepcopy(rows), None, None, WordTokenizer(), max_length))
        (tmp_path / "raw").mkdir()
        (tmp_path / "raw" / "sharegpt_html_cleaned_and_split.json").write_text(json.dumps(split))
        oi.convert_sharegpt_data(str(tmp_path / "raw"), str(tmp_path / "out"))
    lines = (tmp_path / "out" / "sharegpt_data.jsonl").read_text().splitlines()
    return [(ex["id"], [{**m, "content": m["content"].strip()} for m in ex["messages"]])
            for ex in map(json.loads, lines)]


def write_json(tmp_path, rows):
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(rows))
    return path


def test_default_reads_the_html_cleaned_release_as_open_instruct_does(tmp_path, monkeypatch):
    theirs = open_instruct(HTML_CLEANED, tmp_path, monkeypatch)
    convs, policy = ours(tmp_path, write_json(tmp_path, HTML_CLEANED))
    expected = []
    for example_id, messages in theirs:  # "sharegpt_<id>_0": one block each (no split at this length)
        cid = example_id.removeprefix("sharegpt_").removesuffix("_0")
        if cid in EMPTY_REPLY_CUT:  # the one deviation: we cut before an empty reply
            n = EMPTY_REPLY_CUT[cid]
            assert messages[n + 1]["role"] == "assistant" and messages[n + 1]["content"] == ""
            messages = messages[:n]
        if messages:
            expected.append((f"sharegpt-{cid}", messages))
    assert [(c.id, c.messages) for c in convs] == expected
    assert dict(policy.skipped) == {"role_order": 2, "other_speaker": 4, "too_short": 2, "no_answered_round": 1}
    assert dict(policy.repaired) == {sharegpt.UNPAIRED: 2, sharegpt.EMPTY_REPLY: 1}
    assert policy.read == len(HTML_CLEANED) == len(convs) + sum(policy.skipped.values())
    by_id = {c.id: c.messages for c in convs}
    assert by_id["sharegpt-hTmlRaw_0"][1]["content"].startswith("<div")  # HTML given here is trained as HTML


def rounds(*words):
    """A conversation of rounds; each round (w_user, w_reply) words."""
    messages = []
    for k, (wu, wg) in enumerate(words):
        messages += [{"role": "user", "content": " ".join([f"q{k}"] * wu)},
                     {"role": "assistant", "content": " ".join([f"a{k}"] * wg)}]
    return messages


def open_instruct_length(messages):
    """open-instruct's measure: each turn's tokens (BOS included) + 6."""
    return sum(len(WordTokenizer()(m["content"]).input_ids) + 6 for m in messages)


A, B, LONG = (3, 23), (3, 3), (3, 93)  # 40, 20 and 110 under that measure; rows of 100


@pytest.mark.parametrize("case, ours_extra", [
    ((A, B), None),                       # fits: one block
    ((A, A, A, B), None),                 # split, the last block fits
    ((A, A, A), [[2]]),                   # the last round opens a block: open-instruct loses it (a bug)
    ((A, LONG, A, B), [[1]]),             # an over-long round: open-instruct drops it, we keep it alone
    ((LONG,), [[0]]),                     # a conversation of one over-long round: likewise
])
def test_split_is_open_instructs_but_for_the_documented_cases(case, ours_extra, tmp_path, monkeypatch):
    messages = rounds(*case)
    row = {"id": "x", "conversations": [{"from": ("human", "gpt")[k % 2], "value": m["content"]}
                                        for k, m in enumerate(messages)]}
    theirs = [m for _, m in open_instruct([row], tmp_path, monkeypatch, max_length=100)]
    blocks = split_blocks(messages, 100, open_instruct_length)
    assert all(open_instruct_length(b) <= 100 for b in blocks if len(b) > 2)
    added = [messages[2 * k: 2 * k + 2] for block in (ours_extra or []) for k in block]
    assert sorted(map(str, blocks)) == sorted(map(str, theirs + added))
