"""LMSYS-Chat-1M ("Vicuna 1M") and Magpie (seed 003's Table 3) read from hand-written rows in their hub schemas
(tests/assets/hub/): the conversations each makes, the repairs and skips it counts, its filters."""


import pytest
from helpers import ASSETS

from instructjax.core.errors import BadRowPolicy
from instructjax.data.sources.load import load_conversations
from instructjax.data.sources.synthetic import synthetic_rows

DATA = ASSETS / "hub"


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def load(name, tmp_path, **options):
    policy = BadRowPolicy(on_bad_row="error")
    convs = list(load_conversations(name, [str(DATA / f"{name}.jsonl")], policy=policy,
                                    cache_dir=str(tmp_path / "c"), **options))
    return convs, policy


def test_lmsys_rows_as_messages_with_their_quirks_counted(tmp_path):
    convs, policy = load("lmsys_chat", tmp_path)
    assert [c.id for c in convs] == ["lmsys_chat-a1", "lmsys_chat-a2", "lmsys_chat-a3", "lmsys_chat-a4",
                                     "lmsys_chat-a5", "lmsys_chat-a6"]
    assert convs[0].messages == [u("What is the capital of France?"), a("Paris.")]
    assert len(convs[1].messages) == 4
    assert convs[2].messages == [u("Tell me a joke."), a("Why did the scarecrow win an award? He was outstanding "
                                                          "in his field.")]
    assert convs[2].meta["repairs"] == ["dropped a trailing unanswered user turn"]
    assert (convs[3].meta["language"], convs[4].meta["flagged"], convs[5].meta["redacted"]) == ("Portuguese", True, True)
    assert convs[0].meta["model"] == "vicuna-13b" and not convs[0].meta["flagged"]
    assert dict(policy.skipped) == {"no_answered_round": 1, "too_short": 1}  # an empty reply; a lone user turn


def test_lmsys_filters_drop_and_count(tmp_path):
    convs, policy = load("lmsys_chat", tmp_path, languages=["English"], drop_flagged=True, drop_redacted=True)
    assert [c.id for c in convs] == ["lmsys_chat-a1", "lmsys_chat-a2", "lmsys_chat-a3"]
    assert dict(policy.skipped) == {"language": 1, "flagged": 1, "redacted": 1, "no_answered_round": 1,
                                    "too_short": 1}


def test_magpie_rows_keep_their_annotations(tmp_path):
    convs, policy = load("magpie", tmp_path)
    assert [c.id for c in convs] == ["magpie-m1", "magpie-m2"]
    assert convs[1].messages == [u("Explain photosynthesis briefly."), a("Plants turn light, water and CO2 into "
                                                                         "sugar and oxygen.")]
    assert convs[0].meta["task_category"] == "Coding & Debugging" and convs[0].meta["instruct_reward"] == 3.2
    assert sum(policy.skipped.values()) == 1  # the empty reply


@pytest.mark.parametrize("name", ["lmsys_chat", "magpie"])
def test_built_in_rows_are_in_the_hub_schema(name, tmp_path):
    rows = synthetic_rows(name, 50)
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(__import__("json").dumps(r) + "\n" for r in rows))
    policy = BadRowPolicy(on_bad_row="error")
    convs = list(load_conversations(name, [str(path)], policy=policy, cache_dir=str(tmp_path / "c")))
    assert len(convs) + sum(policy.skipped.values()) == 50 and len(convs) > 40
