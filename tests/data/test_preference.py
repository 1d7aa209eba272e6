"""Preference pairs (issue 56, the data layer): the `preference` source on local rows in the three schemas it reads
(HuggingFaceH4/ultrafeedback_binarized, open-instruct's preference mixtures, TRL's conversational preference format),
its bad rows, and the pair encoding against TRL's DPO tokenization (`template: model`) and open-instruct's encoder
(`tulu`)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from instructjax.core.errors import BadRowPolicy, DataError
from instructjax.data.encoding.preference import encode_pair, encode_pairs
from instructjax.data.encoding.tokenizer import Tokenizer, default_tokenizer_path
from instructjax.data.schema import Conversation
from instructjax.data.sources.load import load_conversations
from instructjax.data.sources.preference import pairs
from instructjax.data.sources.registry import PREFERENCE_SOURCES, SOURCES, get_source


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def s(text):
    return {"role": "system", "content": text}


# (id, prompt, chosen completion, rejected completion, score_chosen, score_rejected): written by hand
PAIRS = [
    ("p0", [u("What is the boiling point of water at sea level?")],
     [a("100 degrees Celsius, or 212 degrees Fahrenheit.")], [a("About 50 degrees.")], 9.0, 3.0),
    ("p1", [s("You are a concise assistant."), u("Name a primary color."), a("Red."), u("And another one?")],
     [a("Blue.")], [a("Red again.")], 8.5, 2.0),
    ("p2", [u("Translate 'cat' into French."), a("chat"), u("And 'dog'?")],
     [a("chien")], [a("I am not sure, maybe perro.")], 7.0, 6.5),
]


def ultrafeedback_row(pid, prompt, chosen, rejected, sc, sr):
    """HuggingFaceH4/ultrafeedback_binarized: a string prompt, whole conversations, scores, `messages`."""
    return {"prompt": prompt[-1]["content"], "prompt_id": pid, "chosen": prompt + chosen, "rejected": prompt + rejected,
            "messages": prompt + chosen, "score_chosen": sc, "score_rejected": sr, "id": pid}


def open_instruct_row(pid, prompt, chosen, rejected, sc, sr):
    """open-instruct's preference mixtures: whole conversations, no prompt."""
    return {"id": pid, "source": "ultrafeedback", "chosen": prompt + chosen, "rejected": prompt + rejected,
            "score_chosen": sc, "score_rejected": sr}


def trl_row(pid, prompt, chosen, rejected, sc, sr):
    """TRL's conversational preference format: the prompt's messages, the completions alone."""
    return {"id": pid, "prompt": prompt, "chosen": chosen, "rejected": rejected, "score_chosen": sc,
            "score_rejected": sr}


SCHEMAS = {"ultrafeedback": ultrafeedback_row, "open_instruct": open_instruct_row, "trl": trl_row}


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_registered_as_ultrafeedback_binarized_train_prefs():
    source = get_source("preference")
    assert (source.hub_id, source.hub_split) == ("HuggingFaceH4/ultrafeedback_binarized", "train_prefs")
    assert source is PREFERENCE_SOURCES["preference"]
    assert "preference" not in SOURCES  # not an SFT task, nor one of `all_builtin`'s


def test_the_hub_dataset_is_read_from_its_train_prefs_split(tmp_path, monkeypatch):
    """No data_files: the hub dataset's `train_prefs` split (the hub stood in for by a local file), or the split named."""
    from instructjax.data.sources import hub
    from instructjax.data.sources.rows import RowFile

    path = write_jsonl(tmp_path / "uf.jsonl", [ultrafeedback_row(*p) for p in PAIRS])
    asked = []

    def hub_table(hub_id, config, data_files, split, cache_dir, where):
        asked.append((hub_id, config, split))
        return RowFile(path, str(tmp_path / "cache"))

    monkeypatch.setattr(hub, "hub_table", hub_table)
    assert len(list(load_conversations("preference"))) == 2 * len(PAIRS)
    assert len(list(load_conversations("preference", split="test_prefs"))) == 2 * len(PAIRS)
    assert asked == [("HuggingFaceH4/ultrafeedback_binarized", None, "train_prefs"),
                     ("HuggingFaceH4/ultrafeedback_binarized", None, "test_prefs")]


@pytest.mark.parametrize("schema", sorted(SCHEMAS))
def test_the_three_schemas_give_the_same_pairs(schema, tmp_path):
    path = write_jsonl(tmp_path / f"{schema}.jsonl", [SCHEMAS[schema](*p) for p in PAIRS])
    convs = list(load_conversations("preference", [path], cache_dir=str(tmp_path / "cache")))
    got = pairs(convs)
    assert len(got) == len(PAIRS)
    for (chosen, rejected), (pid, prompt, good, bad, sc, sr) in zip(got, PAIRS, strict=True):
        assert chosen.messages == prompt + good and rejected.messages == prompt + bad
        assert (chosen.id, rejected.id) == (f"preference-{pid}/chosen", f"preference-{pid}/rejected")
        for conv, side in ((chosen, "chosen"), (rejected, "rejected")):
            assert conv.meta["pair"] == f"preference-{pid}" and conv.meta["side"] == side
            assert conv.meta["prompt_turns"] == len(prompt)
            assert (conv.meta["score_chosen"], conv.meta["score_rejected"]) == (sc, sr)
            conv.validate()
    with pytest.raises(DataError, match="not the two sides of one pair"):
        pairs(convs[1:3])


def test_bad_pairs_are_skipped_and_counted(tmp_path):
    p = [u("Say hi.")]
    rows = [
        ultrafeedback_row("ok", p, [a("Hi!")], [a("No.")], 1, 0),
        ultrafeedback_row("empty", p, [a("   ")], [a("No.")], 1, 0),  # an empty chosen answer
        ultrafeedback_row("gone", p, [a("Hi!")], [], 1, 0),  # rejected: the prompt alone
        ultrafeedback_row("same", p, [a("Hi!")], [a(" Hi! ")], 1, 0),  # the same once stripped
        trl_row("nothing", p, [], [a("No.")], 1, 0),  # an empty completion list
        open_instruct_row("ok2", p, [a("Hello.")], [a("Go away.")], 1, 0),
    ]
    policy = BadRowPolicy()  # the default raises on a bad row: these are skipped under any policy
    convs = list(load_conversations("preference", [write_jsonl(tmp_path / "bad.jsonl", rows)], policy=policy,
                                    cache_dir=str(tmp_path / "cache")))
    assert [c.id for c in convs] == ["preference-ok/chosen", "preference-ok/rejected", "preference-ok2/chosen",
                                     "preference-ok2/rejected"]
    assert policy.skipped == {"empty_completion": 3, "identical_completions": 1}
    assert policy.read == 6
    assert "row 4" in policy.examples["identical_completions"]  # jsonl rows are named by their line


MISMATCHES = [
    # whole conversations that differ before their last assistant turn
    {"chosen": [u("Hi."), a("Hello!")], "rejected": [u("Hey."), a("Go away.")]},
    {"chosen": [u("Hi."), a("One."), u("More?"), a("Two.")], "rejected": [u("Hi."), a("Uno."), u("More?"), a("No.")]},
    # a string prompt that is not the conversations' last user turn
    {"prompt": "Hello?", "chosen": [u("Hi."), a("Hello!")], "rejected": [u("Hi."), a("Go away.")]},
    # a list prompt that is not the conversations' prompt turns
    {"prompt": [u("Hi."), a("Yo."), u("Ok?")], "chosen": [u("Hi."), a("Yes."), u("Ok?"), a("Fine.")],
     "rejected": [u("Hi."), a("Yes."), u("Ok?"), a("Bad.")]},
]


@pytest.mark.parametrize("k", range(len(MISMATCHES)))
def test_a_prompt_mismatch_is_one_data_error_naming_the_row(k, tmp_path):
    rows = [trl_row(*PAIRS[0]), {"id": "bad", **MISMATCHES[k]}]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError) as err:
        list(load_conversations("preference", [path], cache_dir=str(tmp_path / "cache")))
    assert err.value.reason == "prompt_mismatch" and err.value.row == 2 and err.value.file == path
    assert f"file {path}, row 2" in str(err.value)
    policy = BadRowPolicy(on_bad_row="skip")
    assert len(list(load_conversations("preference", [path], policy=policy, cache_dir=str(tmp_path / "cache")))) == 2
    assert policy.skipped == {"prompt_mismatch": 1}


def test_a_completion_without_a_prompt_is_a_schema_break():
    from instructjax.data.sources.preference import preference

    with pytest.raises(DataError, match="no 'prompt'") as err:
        preference({"chosen": [a("Hi.")], "rejected": [a("No.")]}, "preference", 0)
    assert err.value.reason == "missing_field"


# ---- encoding: `template: model` against TRL's DPO tokenization -------------------------------------------------

FAMILIES = ("llama3", "qwen2.5", "qwen3", "gemma2", "phi3", "mistral")
NO_SYSTEM = ("gemma2", "mistral")  # their templates refuse a system turn


def family_pairs(name: str) -> list[tuple[list, list, list]]:
    out = []
    for _, prompt, good, bad, _, _ in PAIRS:
        out.append(([m for m in prompt if m["role"] != "system"] if name in NO_SYSTEM else prompt, good, bad))
    return out


def convs_of(prompt, good, bad) -> tuple[Conversation, Conversation]:
    meta = {"pair": "x", "prompt_turns": len(prompt)}
    return (Conversation(prompt + good, "t", "x/chosen", {**meta, "side": "chosen"}),
            Conversation(prompt + bad, "t", "x/rejected", {**meta, "side": "rejected"}))


def trl_dpo(hf, rows: list[dict], max_length: int | None) -> list[tuple[list[int], list[int], list[int], list[int]]]:
    """TRL 1.16's DPOTrainer tokenization of whole-conversation rows (it extracts the prompt itself), then its
    collator's truncation: per row left after its filter, (chosen ids, chosen completion mask, rejected ids, ...)."""
    from datasets import Dataset
    from trl.trainer.dpo_trainer import DataCollatorForPreference, DPOTrainer

    args = SimpleNamespace(dataset_num_proc=None, max_length=max_length, truncation_mode="keep_start")
    data = DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=hf), Dataset.from_list(rows), hf, args, "train")
    out = []
    for example in data:
        batch = DataCollatorForPreference(pad_token_id=0, max_length=max_length)(
            [{k: example[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}])
        ids, keep, mask = (batch[k].tolist() for k in ("input_ids", "attention_mask", "completion_mask"))
        sides = [([t for t, m in zip(ids[i], keep[i], strict=True) if m],
                  [c for c, m in zip(mask[i], keep[i], strict=True) if m]) for i in (0, 1)]
        out.append((*sides[0], *sides[1]))
    return out


@pytest.fixture(scope="module")
def family_tokenizers(tmp_path_factory):
    import transformers
    from helpers.chat_templates import build

    root = tmp_path_factory.mktemp("chat_templates")
    return {name: (Tokenizer.load(path := build(name, root / name)), transformers.AutoTokenizer.from_pretrained(path))
            for name in FAMILIES}


@pytest.mark.parametrize("name", FAMILIES)
def test_model_template_pairs_equal_trls_dpo_tokenization(family_tokenizers, name):
    """Our ids of each side = TRL's prompt ids + completion ids, and our mask's ones are exactly TRL's completion
    positions (TRL's prompt is the prompt with the template's generation prompt; its completion everything after,
    so the prompt's own assistant turns are never trained); with `max_length`, both keep the first tokens and both
    leave out the same pairs (TRL's filter: a prompt that fills `max_length`; ours: no trained token left)."""
    ours, hf = family_tokenizers[name]
    cases = family_pairs(name)
    rows = [{"chosen": p + g, "rejected": p + b} for p, g, b in cases]
    full = [encode_pair(*convs_of(*case), "model", ours) for case in cases]
    assert all(np.asarray(c.loss_mask[: 5]).sum() == 0 for c, _ in full)
    for max_length in (None, 40, min(len(c) for c, _ in full) - 3):
        reference = trl_dpo(hf, rows, max_length)
        policy = BadRowPolicy()
        got = encode_pairs([convs_of(*case) for case in cases], "model", ours, max_length, policy)
        assert len(got) == len(reference) == len(cases) - sum(policy.skipped.values()), (name, max_length)
        for (chosen, rejected), (c_ids, c_mask, r_ids, r_mask) in zip(got, reference, strict=True):
            assert chosen.tokens.tolist() == c_ids and chosen.loss_mask.tolist() == c_mask, (name, max_length)
            assert rejected.tokens.tolist() == r_ids and rejected.loss_mask.tolist() == r_mask, (name, max_length)
    assert max_length < len(full[0][0])  # the last round truncated


# ---- encoding: `tulu` against open-instruct's encoder ----------------------------------------------------------

@pytest.fixture(scope="module")
def library_tokenizers(tmp_path_factory):
    """(path, BOS, EOS): a byte-level BPE with its own EOS and no BOS (trained here), and the built-in default."""
    from helpers import pretrained_models as pm

    return {"bpe": (pm.bpe_tokenizer(str(tmp_path_factory.mktemp("bpe"))), None, "<|endoftext|>"),
            "default": (default_tokenizer_path(), "<s>", "</s>")}


def final_run_start(mask: np.ndarray) -> int:
    """Where the last run of ones of `mask` begins: the final assistant turn's trained tokens."""
    ones = np.flatnonzero(mask)
    gaps = np.flatnonzero(np.diff(ones) > 1)
    return int(ones[gaps[-1] + 1] if len(gaps) else ones[0])


@pytest.mark.parametrize("kind", ["bpe", "default"])
def test_tulu_pairs_equal_open_instructs_encoder_on_the_final_completion(kind, library_tokenizers):
    """Each side's ids = open-instruct's `encode_with_messages_format` (copied verbatim, tests/helpers/upstream_code.py)
    of the whole conversation; our mask = its labels' trained positions from the final assistant turn on (its
    preference rule, `last_turn_tulu_tokenize_and_truncate_v1`, trains the last turn only), with `max_length` too."""
    pytest.importorskip("torch")
    from helpers.pretrained_models import open_instruct_example

    path, bos, eos = library_tokenizers[kind]
    tok = Tokenizer.load(path)
    for _, prompt, good, bad, _, _ in PAIRS:
        chosen, rejected = convs_of(prompt, good, bad)
        for max_length in (None, 30, 12):
            ours = encode_pair(chosen, rejected, "tulu", tok, max_length)
            for conv, enc in zip((chosen, rejected), ours, strict=True):
                _, whole = open_instruct_example(path, conv.messages, bos=bos, eos=eos)
                start = final_run_start(whole)
                ids, mask = open_instruct_example(path, conv.messages, bos=bos, eos=eos,
                                                  max_seq_length=max_length or 1 << 30)
                assert enc.tokens.tolist() == ids, (kind, conv.id, max_length)
                expected = mask * (np.arange(len(mask)) >= start)
                assert enc.loss_mask.tolist() == expected.tolist(), (kind, conv.id, max_length)
                if max_length is None and len(prompt) > 2:
                    assert whole[:start].sum() > 0  # the prompt's own assistant turn: trained in SFT, not here
                assert enc.empty_after_truncation == (expected.sum() == 0)
