"""Every source adapter on a hand-written sample of its native hub schema, loaded from local files."""

import itertools
import json

import pandas as pd
import pytest
from helpers.hub_rows import EXPECTED, HUB, NOINPUT, ZH, a, u
from helpers.pieces import reverse_pickled_share
from hypothesis import given, settings
from hypothesis import strategies as st

from instructjax.core.errors import ConfigError
from instructjax.data.sources.load import load_conversations
from instructjax.data.sources.registry import SOURCES


def write_jsonl(tmp_path, rows, name="rows.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def load(tmp_path, name, rows, **options):
    return list(load_conversations(name, [write_jsonl(tmp_path, rows)], cache_dir=str(tmp_path / "c"), **options))


def test_registry_has_the_papers_datasets():
    assert set(SOURCES) == {"superni", "cot", "flan_v2", "dolly", "oasst1", "self_instruct",
                            "unnatural_instructions", "alpaca", "code_alpaca", "gpt4_alpaca", "baize",
                            "sharegpt", "p3", "wizardlm", "lmsys_chat", "magpie",
                            "messages"}  # messages: your own chats, no hub dataset
    assert SOURCES["messages"].hub_id is None
    assert SOURCES["dolly"].hub_id == "databricks/databricks-dolly-15k"
    assert SOURCES["oasst1"].hub_id == "OpenAssistant/oasst1"
    assert SOURCES["lmsys_chat"].hub_id == "lmsys/lmsys-chat-1m"
    assert SOURCES["magpie"].hub_id == "Magpie-Align/Magpie-Pro-300K-Filtered"


@pytest.mark.parametrize("reader", ["json", "datasets"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_hub_rows_load_as_the_reference_pipeline_loads_them(name, reader, tmp_path, monkeypatch):
    """Under the default policy (error on a bad row) the quirks of real rows are repaired or counted, never
    fatal; every kept conversation is as the dataset's reference pipeline makes it, whichever reads the file
    (`rows.SCAN_BYTES`: the json module, or `datasets`' Arrow tables)."""
    from instructjax.core.errors import BadRowPolicy
    from instructjax.data.sources import rows as rows_lib

    if reader == "datasets":
        monkeypatch.setattr(rows_lib, "SCAN_BYTES", -1)

    [path] = [p for p in HUB.iterdir() if p.stem == name]
    policy = BadRowPolicy()
    got = list(load_conversations(name, [str(path)], policy=policy, cache_dir=str(tmp_path / "c")))
    kept, skipped, repaired = EXPECTED[name]
    assert [(c.id, c.messages) for c in got] == kept
    assert dict(policy.skipped) == skipped and dict(policy.repaired) == repaired
    rows = len(json.loads(path.read_text())) if path.suffix == ".json" else len(path.read_text().splitlines())
    assert policy.read == rows


def test_unnatural_instructions_and_alpaca_meta(tmp_path):
    c0 = list(load_conversations("unnatural_instructions", [str(HUB / "unnatural_instructions.jsonl")],
                                 cache_dir=str(tmp_path / "c")))[0]
    assert c0.meta["constraints"] == "The output should be one of the two: 'positive' or 'negative'."
    assert c0.meta["input"] == "The food was cold and the waiter was rude."
    alpaca = list(load_conversations("alpaca", [str(HUB / "alpaca.jsonl")], cache_dir=str(tmp_path / "c")))
    assert alpaca[2].meta["input"] == "" and alpaca[2].meta["repairs"] == [NOINPUT]


def test_oasst1_real_rows_leave_out_failed_review_and_deleted(tmp_path):
    from instructjax.core.errors import BadRowPolicy

    policy = BadRowPolicy()
    got = list(load_conversations("oasst1", [str(HUB / "oasst1.jsonl")], policy=policy, cache_dir=str(tmp_path)))
    question = u('Can you write a short introduction about the relevance of the term "monopsony" in economics?')
    by_id = {c.id: c.messages for c in got}
    # the best reply's follow-up lost its only answer (deleted): the path ends at that reply, which
    # open-instruct's leaf-only walk would drop; the reply that failed review is not a path
    assert by_id == {
        "oasst1-c8e83833-ecbc-44fe-b6db-735228c25a1c": [question, a('"Monopsony" refers to a market structure where '
                                                                    "there is only one buyer for a particular good or "
                                                                    "service.")],
        "oasst1-343ee2d4-87ae-41fd-a768-bdd65959dc4a": [question, a("Monopsony is a market structure in which there is "
                                                                    "a single buyer in a market.")],
    }
    assert dict(policy.skipped) == {"failed_review": 1, "deleted": 1} and policy.read == 6


def test_sharegpt_is_split_by_the_runs_tokenizer_at_the_runs_length(tmp_path):
    """The four Chinese rounds: chars / 4 estimates far fewer tokens than the tokenizer counts; blocks are cut
    so that every block fits max_length under the run's tokenizer and template, and each is as long as
    it can be (the next round would not fit)."""
    from helpers.pretrained_models import reference_ids

    from instructjax.data.binding import bind
    from instructjax.data.blends import specs
    from instructjax.data.encoding.templates import render
    from instructjax.data.encoding.tokenizer import default_tokenizer_path
    from instructjax.data.schema import Conversation
    from instructjax.data.tokenized import examples as examples_lib

    specs.add_task("hub_sharegpt", specs.TaskSpec(source="sharegpt", data_files=(str(HUB / "sharegpt.json"),)))
    max_length = 400
    bound = bind("hub_sharegpt", tokenizer=None, max_length=max_length)
    examples = examples_lib.encoded_examples(bound.name)

    def real_length(messages):
        text = render(Conversation(messages, "s", "x"), "tulu").text
        return len(reference_ids(default_tokenizer_path(), text, bos="<s>", eos="</s>"))

    zh = [(u if k % 2 == 0 else a)(t["value"]) for k, t in enumerate(ZH)]
    assert sum(len(m["content"]) // 4 for m in zh) < max_length < real_length(zh)  # the estimate would not split
    blocks = [Conversation.from_json(e["conversation"]) for e in examples if e["id"].startswith("sharegpt-zh7Lq0a_0")]
    assert len(blocks) > 1 and [b.id for b in blocks] == [f"sharegpt-zh7Lq0a_0-b{k}" for k in range(len(blocks))]
    assert [m for b in blocks for m in b.messages] == zh  # nothing lost or repeated
    for k, block in enumerate(blocks):
        assert real_length(block.messages) <= max_length
        if k + 1 < len(blocks):
            assert real_length(block.messages + blocks[k + 1].messages[:2]) > max_length
    report = examples_lib.task_report(bound.name)
    assert report.split == 1 and report.truncated == 0


def oasst_row(mid, parent, role, text, rank=None, deleted=False):
    return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "rank": rank, "lang": "en",
            "message_tree_id": "t1", "deleted": deleted}


OASST_TREE = [
    oasst_row("p1", None, "prompter", "What is 2+2?"),
    oasst_row("a1", "p1", "assistant", "4", rank=1),
    oasst_row("a2", "p1", "assistant", "It is 4.", rank=0),
    oasst_row("a3", "p1", "assistant", "5", rank=2),
    oasst_row("p2", "a2", "prompter", "And 3+3?", rank=0),
    oasst_row("a4", "p2", "assistant", "6", rank=0),
    oasst_row("p3", "a2", "prompter", "Thanks", rank=1),  # an unanswered follow-up
    oasst_row("a5", "a3", "prompter", "Wrong!", rank=0, deleted=True),
]


def brute_force_paths(rows, top_k=None):
    """Reference: enumerate every root-to-node path, keep those ending at an assistant whose kept
    subtree holds no further assistant; top_k trims siblings by rank at each level."""
    live = {r["message_id"]: r for r in rows if not r["deleted"]}
    kids = {m: sorted((r for r in live.values() if r["parent_id"] == m),
                      key=lambda r: (r["rank"] is None, r["rank"] or 0, r["message_id"])) for m in live}
    kids = {m: (v[:top_k] if top_k else v) for m, v in kids.items()}

    def below(m):
        return [m] + [x for k in kids[m] for x in below(k["message_id"])]

    paths = []

    def dfs(m, path):
        path = path + [m]
        if live[m]["role"] == "assistant" and not any(live[x]["role"] == "assistant" for x in below(m)[1:]):
            paths.append(path)
        for k in kids[m]:
            dfs(k["message_id"], path)

    for m in live:
        if live[m]["parent_id"] is None:
            dfs(m, [])
    return sorted(tuple(live[m]["text"] for m in p) for p in paths)


@pytest.mark.parametrize("top_k", [None, 1, 2])
def test_oasst1_paths_match_brute_force(tmp_path, top_k):
    convs = load(tmp_path, "oasst1", OASST_TREE, top_k=top_k)
    got = sorted(tuple(m["content"] for m in c.messages) for c in convs)
    assert got == brute_force_paths(OASST_TREE, top_k)
    for c in convs:
        assert [m["role"] for m in c.messages] == ["user", "assistant"] * (len(c.messages) // 2)


def test_oasst1_top1_is_the_best_ranked_path(tmp_path):
    [c] = load(tmp_path, "oasst1", OASST_TREE, top_k=1)
    assert c.messages == [u("What is 2+2?"), a("It is 4."), u("And 3+3?"), a("6")]
    assert c.id == "oasst1-a4" and c.meta["ranks"] == [None, 0, 0, 0]


def test_oasst1_all_paths(tmp_path):
    convs = load(tmp_path, "oasst1", OASST_TREE)
    by_id = {c.id: c.messages for c in convs}
    assert set(by_id) == {"oasst1-a1", "oasst1-a3", "oasst1-a4"}
    assert by_id["oasst1-a3"] == [u("What is 2+2?"), a("5")]  # its deleted follow-up is left out


def test_json_array_and_parquet_files(tmp_path):
    rows = [{"instruction": f"Say {i}.", "input": "", "output": str(i)} for i in range(5)]
    json_path = tmp_path / "rows.json"
    json_path.write_text(json.dumps(rows))
    parquet_path = tmp_path / "rows.parquet"
    pd.DataFrame(rows).to_parquet(parquet_path)
    jsonl_path = write_jsonl(tmp_path, rows)
    got = list(load_conversations("alpaca", [str(json_path), str(parquet_path), jsonl_path],
                                  cache_dir=str(tmp_path / "c")))
    assert [c.messages[1]["content"] for c in got] == [str(i) for i in range(5)] * 3
    assert len({c.id for c in got}) == 15  # ids run on across files


def test_unknown_source_and_option():
    with pytest.raises(ConfigError, match="unknown source"):
        list(load_conversations("nope", ["x.jsonl"]))
    with pytest.raises(ConfigError, match="top_k"):
        list(load_conversations("alpaca", ["x.jsonl"], top_k=1))


# ---- a tree source's trees adapted apart (by the hosts of a run) and merged -------------------------------------

def _whole_table_read(tables, policy, top_k=None):
    """Reference: one run of the OASST1 adapter over every row of every file, its events taken as they come."""
    from instructjax.core.errors import DataError
    from instructjax.data.sources import dialogues

    located, where = [], {}
    for table in tables:
        for rownum, row in table.rows():
            policy.read += 1
            if isinstance(row, DataError):
                policy.handle(type(row)(row.problem, reason=row.reason, file=table.path, row=rownum, source="oasst1"))
            else:
                where[len(where)] = (table.path, rownum)
                located.append((len(where) - 1, row))
    kept, orders = [], []
    for order, ordinal, item in dialogues.oasst1_conversations(located, "oasst1", top_k=top_k):
        orders.append(order)
        file, rownum = where[ordinal]
        if isinstance(item, DataError):
            policy.handle(type(item)(item.problem, reason=item.reason, file=file, row=rownum, source="oasst1"))
        else:
            try:
                kept.append(item.validate(file=file, row=rownum))
            except DataError as err:
                policy.handle(err)
    assert orders == sorted(orders)  # the order the merge sorts by is the order they come in
    return kept


def _outcome(read):
    """(conversations, what the policy counted) of `read(policy)`, under both policies; the error's line if raised."""
    from instructjax.core.errors import BadRowPolicy

    out = []
    for on_bad_row in ("skip", "error"):
        policy = BadRowPolicy(on_bad_row)
        try:
            convs = read(policy)
        except Exception as exc:  # noqa: BLE001 - compared
            out.append(f"{type(exc).__name__}: {exc}")
            continue
        out.append(([(c.id, c.messages, c.meta, c.source) for c in convs], dict(policy.skipped),
                    dict(policy.examples), policy.read))
    return out


TANGLED = [  # OASST1 rows with every way a tree goes wrong, in two files
    oasst_row("p1", None, "prompter", "First?"), oasst_row("a1", "p1", "assistant", "One.", rank=1),
    oasst_row("a2", "p1", "assistant", "Uno.", rank=0), oasst_row("q1", None, "prompter", "Second?"),
    oasst_row("b1", "q1", "assistant", "", rank=0),  # an empty reply
    oasst_row("b2", "q1", "assistant", "Two.", rank=1), oasst_row("x", "b1", "prompter", "Below empty"),
    {**oasst_row("b3", "q1", "assistant", "Reviewed out.", rank=2), "review_result": False},
    oasst_row("c1", "a2", "prompter", "Cross", rank=0), oasst_row("c2", "b2", "assistant", "Cross tree", rank=0),
    oasst_row("d1", "d2", "prompter", "Cycle"), oasst_row("d2", "d1", "assistant", "Cycle"),
    oasst_row("o1", "gone", "assistant", "Orphan"), oasst_row("a1", "p1", "assistant", "One again.", rank=3),
    oasst_row("r1", None, "assistant", "An assistant root"), oasst_row("p1", None, "prompter", "Dup root", deleted=True),
    {"message_id": "bad", "parent_id": "q1", "role": "bot", "text": "?"}, oasst_row("e1", "p9", "prompter", "x"),
    oasst_row("p9", None, "prompter", "Late root"), oasst_row("e2", "e1", "assistant", "Late answer", rank=0),
]


def test_oasst1_trees_read_apart_and_merged_equal_one_read_of_the_whole_table(tmp_path):
    """Deleted, failed-review, empty, duplicate-id, cyclic, orphaned, cross-tree and out-of-order messages and
    bad rows, in two files: the trees adapted in pieces made in reverse order and pickled give the conversations,
    counts, first examples and first error of one adapter run over the whole table, under skip and raise."""
    from instructjax.data.sources.rows import RowFile

    files = [write_jsonl(tmp_path, TANGLED[:9], "t0.jsonl"), write_jsonl(tmp_path, TANGLED[9:], "t1.jsonl")]
    outcomes = []
    for top_k, spans in itertools.product((None, 1), (1, 3, 64)):
        want = _outcome(lambda policy, top_k=top_k: _whole_table_read(
            [RowFile(f, str(tmp_path / "c")) for f in files], policy, top_k))
        got = _outcome(lambda policy, top_k=top_k, spans=spans: list(load_conversations(
            "oasst1", files, policy=policy, cache_dir=str(tmp_path / "c"), share=reverse_pickled_share(spans),
            top_k=top_k)))
        assert got == want, (top_k, spans)
        outcomes.append(want)
    (convs, skipped, _, read), raised = outcomes[0]  # every way is met: the test can fail
    assert [c[0] for c in convs] == ["oasst1-a2", "oasst1-a1"] and read == len(TANGLED)
    assert set(skipped) == {"empty_response", "failed_review", "deleted", "role_order", "below_removed", "broken_tree"}
    assert raised.endswith("t1.jsonl, row 8: unknown role 'bot' (expected prompter|assistant)")


@given(rows=st.lists(st.fixed_dictionaries({
    "message_id": st.sampled_from(["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7", 7]),
    "parent_id": st.sampled_from([None, None, "m0", "m1", "m2", "m3", "m4", "m5", "gone", "lost", 3]),
    "role": st.sampled_from(["prompter", "assistant", "assistant", "bot"]),
    "text": st.sampled_from(["hi", "ok", " ", None]), "rank": st.sampled_from([None, 0, 1, 2, "1"]),
    "deleted": st.sampled_from([False, False, False, True]), "review_result": st.sampled_from([None, True, False])}),
    max_size=24), cut=st.integers(0, 24), unreadable=st.sets(st.integers(0, 24), max_size=2),
    spans=st.integers(1, 8), top_k=st.sampled_from([None, 1, 2]))
@settings(max_examples=150, deadline=None)
def test_oasst1_random_forests_read_apart_and_merged_equal_one_read(rows, cut, unreadable, spans, top_k):
    """Random messages over a few ids (duplicates, cycles, orphans, bad fields, rows that could not be read), in
    two files: `tree_read.TreeRead` in reverse pickled pieces equals one adapter run over the whole table."""
    from instructjax.core.errors import DataError
    from instructjax.data.sources.registry import SOURCES
    from instructjax.data.sources.rows import RowFile
    from instructjax.data.sources.tree_read import TreeRead

    numbered = [(n + 1, DataError("malformed JSON", reason="malformed_json") if n in unreadable else row)
                for n, row in enumerate(rows)]  # fmt: skip
    tables = lambda: [RowFile("f0.jsonl", numbered=numbered[:cut]), RowFile("f1.jsonl", numbered=numbered[cut:])]  # noqa: E731
    want = _outcome(lambda policy: _whole_table_read(tables(), policy, top_k))
    got = _outcome(lambda policy: TreeRead(SOURCES["oasst1"], tables(), {"top_k": top_k}).conversations(
        policy, reverse_pickled_share(spans)))
    assert got == want
