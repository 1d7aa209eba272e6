"""Tokenizer and encode_conversation against the tokenizer libraries themselves: the `sentencepiece`
processor for a `.model`, the raw `tokenizers.Tokenizer.from_file` for a `tokenizer.json`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from helpers.pretrained_models import reference_ids  # noqa: E402  (tests/helpers/pretrained_models.py)
from helpers.text_strategies import FRAGMENTS, responses, texts  # noqa: E402  (tests/helpers/text_strategies.py)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from instructjax.core.errors import ConfigError
from instructjax.data.encoding.encode import (
    Segments,
    count_tokens,
    encode_conversation,
    response_token_length,
)
from instructjax.data.encoding.templates import jinja_template, render, template_names
from instructjax.data.encoding.tokenizer import Tokenizer, default_tokenizer_path
from instructjax.data.schema import Conversation


@st.composite
def conversations(draw):
    messages = [{"role": "system", "content": draw(texts)}] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(texts)})
        messages.append({"role": "assistant", "content": draw(responses)})
    return Conversation(messages, source="test", id="t-0")


HYPO = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load()


@pytest.fixture(scope="module")
def sp():
    """The `sentencepiece` processor of the built-in default model: the reference for a `.model`."""
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=default_tokenizer_path())


def conv_of(*turns, system=None):
    messages = [{"role": "system", "content": system}] if system is not None else []
    for i, t in enumerate(turns):
        messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return Conversation(messages, source="test", id="x")


def trained_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
    return list(zip(edges[::2], edges[1::2], strict=True))


def test_default_tokenizer_is_mistrals_sentencepiece_model(tok, sp):
    assert (tok.vocab_size, tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (32000, 0, 1, 2, None)
    assert tok.eos_token == "</s>" and tok.adds_bos
    assert tok.path == default_tokenizer_path()
    assert Tokenizer.load(None) is tok  # cached
    assert tok.encode("Hello world") == sp.encode("Hello world") == [22557, 1526]  # LLaMA-2 says [15043, 3186]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts)
def test_encode_decode_offsets_equal_sentencepiece(text, tok, sp):
    """Whitespace runs, a leading space, byte fallback: the ids are sentencepiece's own."""
    ids, offsets = tok.encode_with_offsets(text)
    assert ids == tok.encode(text) == sp.encode(text)
    assert tok.decode(ids) == sp.decode(ids)
    assert len(offsets) == len(ids)
    assert all(0 <= a <= b <= len(text) for a, b in offsets)


@HYPO
@given(conv=conversations())
def test_tokens_equal_sentencepiece_and_mask_covers_responses(conv, tok, sp):
    responses_text = [m["content"].strip() for m in conv.messages if m["role"] == "assistant"]
    for name in template_names():
        text = render(conv, name).text
        enc = encode_conversation(conv, name, tok)
        assert enc.tokens.dtype == np.int32 and enc.loss_mask.dtype == np.int32
        assert enc.tokens.tolist() == reference_ids(default_tokenizer_path(), text, bos="<s>", eos="</s>"), name
        # the trained runs are exactly each response followed by the real EOS id (and, for Tulu, the
        # newline after a non-final EOS)
        runs = trained_runs(enc.loss_mask)
        assert len(runs) == len(responses_text), name
        for k, ((a, b), response) in enumerate(zip(runs, responses_text, strict=True)):
            eos_at = a + enc.tokens[a:b].tolist().index(tok.eos_id)
            assert sp.decode(enc.tokens[a:eos_at].tolist()) == response, name
            separator = "\n" if name == "tulu" and k < len(runs) - 1 else ""
            assert sp.decode(enc.tokens[eos_at + 1 : b].tolist()) == separator, name
        assert int((enc.tokens == tok.eos_id).sum()) == len(responses_text)
        assert enc.n_trained == int(enc.loss_mask.sum()) and not enc.truncated
        assert count_tokens(conv, name, tok) == len(enc)


def test_tulu_mask_by_hand(tok, sp):
    conv = conv_of("What is 2+2?", "It is 4.", "And 3+3?", "6", system="Be exact.")
    enc = encode_conversation(conv, "tulu", tok)
    pieces = [sp.id_to_piece(int(i)) for i in enc.tokens]
    trained = [p for p, m in zip(pieces, enc.loss_mask, strict=True) if m]
    # the newline after the first EOS is trained (open-instruct's rule); sentencepiece gives it its own
    # dummy prefix, and both tokens are trained; "<|user|>" after it is not
    assert trained == ["It", "▁is", "▁", "4", ".", "</s>", "▁", "<0x0A>", "6", "</s>"]
    assert pieces[0] == "<s>" and enc.loss_mask[0] == 0
    after_eos = pieces.index("</s>") + 1
    assert pieces[after_eos : after_eos + 3] == ["▁", "<0x0A>", "<"] and enc.loss_mask[after_eos : after_eos + 3].tolist() == [1, 1, 0]


def test_literal_eos_text_in_content_is_not_an_eos_id(tok):
    conv = conv_of("Say </s> please", "Here: </s> done")
    enc = encode_conversation(conv, "tulu", tok)
    assert int((enc.tokens == tok.eos_id).sum()) == 1  # only the one after the response
    assert "</s>" in tok.decode(enc.tokens[enc.loss_mask == 1][:-1].tolist())


@settings(max_examples=15, deadline=None)
@given(conv=conversations(), name=st.sampled_from(["tulu", "alpaca", "wizardlm", "vicuna"]))
def test_truncation_at_every_boundary(conv, name):
    tok = Tokenizer.load()
    full = encode_conversation(conv, name, tok)
    n = len(full)
    for max_length in range(1, n + 2):
        cut = encode_conversation(conv, name, tok, max_length=max_length)
        assert np.array_equal(cut.tokens, full.tokens[:max_length])
        assert np.array_equal(cut.loss_mask, full.loss_mask[:max_length])
        assert cut.n_trained == int(full.loss_mask[:max_length].sum())
        assert cut.truncated == (max_length < n)
        assert cut.empty_after_truncation == (full.loss_mask[:max_length].sum() == 0)


def test_truncation_that_leaves_nothing_is_flagged(tok):
    conv = conv_of("A long question " * 20, "Short.")
    prompt_len = int(np.argmax(encode_conversation(conv, "tulu", tok).loss_mask))
    enc = encode_conversation(conv, "tulu", tok, max_length=prompt_len)
    assert enc.truncated and enc.n_trained == 0 and enc.empty_after_truncation
    with pytest.raises(ConfigError, match="max_length"):
        encode_conversation(conv, "tulu", tok, max_length=0)


def test_response_token_length(tok, sp):
    conv = conv_of("q", "  The answer is 42.  ", "more?", "Yes, plenty more.\n", system="s")
    expected = sum(len(sp.encode(r.strip())) for r in ["  The answer is 42.  ", "Yes, plenty more.\n"])
    assert response_token_length(conv, tok) == expected


# ---- tokenizers from Hugging Face directories --------------------------------------------------------


def _transformers_llama_dir(tmp_path) -> str:
    """What transformers 5 writes for a LLaMA SentencePiece model: Metaspace(prepend_scheme="first")."""
    from transformers import LlamaTokenizer

    link = tmp_path / "spm"
    link.mkdir()
    os.symlink(default_tokenizer_path(), link / "tokenizer.model")
    LlamaTokenizer.from_pretrained(str(link), add_bos_token=True).save_pretrained(tmp_path / "metaspace")
    return str(tmp_path / "metaspace")


def _legacy_llama_dir(tmp_path) -> str:
    """A LLaMA-1/2-hub-style tokenizer.json: Prepend("▁") normalizer, no pre-tokenizer, BOS post-processor,
    and a tokenizer_config.json naming LlamaTokenizer without a `legacy` flag."""
    path = _transformers_llama_dir(tmp_path)
    spec = json.loads((tmp_path / "metaspace" / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    spec["pre_tokenizer"] = None
    spec["post_processor"] = {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                              {"Sequence": {"id": "A", "type_id": 0}}], "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
                              "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}  # fmt: skip
    (tmp_path / "metaspace" / "tokenizer.json").write_text(json.dumps(spec))
    config = json.loads((tmp_path / "metaspace" / "tokenizer_config.json").read_text())
    config.pop("legacy", None)
    (tmp_path / "metaspace" / "tokenizer_config.json").write_text(json.dumps({**config, "add_bos_token": True}))
    return path


def _byte_level_bpe_dir(tmp_path) -> str:
    """A small byte-level BPE (LLaMA-3/GPT-2 style) trained here: a BOS token exists but is not added."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rust = RustTokenizer(models.BPE())
    rust.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    rust.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    rust.train_from_iterator([" ".join(FRAGMENTS) * 3, "Below is an instruction that describes a task. " * 5], trainer)
    PreTrainedTokenizerFast(tokenizer_object=rust, bos_token="<|begin_of_text|>",
                            eos_token="<|end_of_text|>").save_pretrained(tmp_path)
    return str(tmp_path)


def _saved_default_dir(tmp_path) -> str:
    return Tokenizer.load().save(str(tmp_path / "saved"))


DIRS = {  # kind -> (builder, does the tokenizer add BOS)
    "saved_default": (_saved_default_dir, True),
    "legacy_llama": (_legacy_llama_dir, True),
    "metaspace_first": (_transformers_llama_dir, True),
    "byte_level_bpe": (_byte_level_bpe_dir, False),
}


@pytest.mark.parametrize("kind", list(DIRS))
def test_hf_directory_tokenizers_equal_the_raw_file(kind, tmp_path):
    """Ids of BOS (where added) + the rendered text = `tokenizers.Tokenizer.from_file` on that one string,
    including after every special token (the legacy Prepend normalizer adds "▁" there, Metaspace "first"
    does not)."""
    from tokenizers import Tokenizer as Raw

    build, adds_bos = DIRS[kind]
    path = build(tmp_path)
    ours = Tokenizer.load(path)
    assert ours.adds_bos == adds_bos
    raw = Raw.from_file(os.path.join(path, "tokenizer.json"))
    conv = conv_of("Hi  there\n    return x", " Hello!\n\n  日本語 ", "café?", "Привет 😀", system="System: be brief.")
    for name in template_names():
        text = render(conv, name, eos_token=ours.eos_token).text
        enc = encode_conversation(conv, name, ours)
        bos = ours.bos_token if adds_bos else None
        assert enc.tokens.tolist() == reference_ids(path, text, bos=bos, eos=ours.eos_token), (kind, name)
        runs = [(a, a + enc.tokens[a:b].tolist().index(ours.eos_id), b) for a, b in trained_runs(enc.loss_mask)]
        assert [raw.decode(enc.tokens[a:e].tolist()).strip() for a, e, _ in runs] == ["Hello!\n\n  日本語", "Привет 😀"]
        after_eos = [raw.decode(enc.tokens[e + 1 : b].tolist()).strip(" ") for _, e, b in runs]
        assert after_eos == (["\n", ""] if name == "tulu" else ["", ""]), (kind, name)
    if kind == "saved_default":
        assert ours == Tokenizer.load() and ours.encode("a  b\n c") == Tokenizer.load().encode("a  b\n c")


def test_transformers_5_rewrites_a_legacy_llama_tokenizer_and_our_export_does_not(tmp_path):
    """transformers 5 loads a LLaMA-1/2 `tokenizer.json` as a LlamaTokenizer with Metaspace("first") in place
    of its Prepend normalizer, so the ids after `</s>` differ from the file's. The file is right for this
    family (it is what sentencepiece, and Meta's per-turn encoding, give); what we export names the generic
    fast class, so transformers reads it as written."""
    from transformers import AutoTokenizer

    path = _legacy_llama_dir(tmp_path)
    text = "<s><|user|>\nHi\n<|assistant|>\nHello</s>\n<|user|>\nMore"
    raw_ids = reference_ids(path, text[3:], bos="<s>", eos="</s>")
    assert AutoTokenizer.from_pretrained(path)(text, add_special_tokens=False).input_ids != raw_ids
    exported = Tokenizer.load(path).save(str(tmp_path / "exported"))
    assert AutoTokenizer.from_pretrained(exported)(text, add_special_tokens=False).input_ids == raw_ids


def test_bad_tokenizer_paths(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Tokenizer.load(str(tmp_path / "missing"))
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(ConfigError, match="bad.model"):
        Tokenizer.load(str(bad))


def test_pickles_as_its_path(tok):
    import pickle

    assert pickle.loads(pickle.dumps(tok)) is tok


def test_a_copy_carries_the_name_it_was_made_with_into_other_processes(tok):
    """`materialize(named=...)`: the tokenizer loaded from the copy is named so (`words`), here and in a process
    that unpickles it (a worker), with no state kept beside it; the same files named otherwise are another copy."""
    import pickle
    import subprocess
    import sys

    from instructjax.data.encoding.tokenizer import materialize

    named = Tokenizer.load(materialize(tok.files(), named="the tokenizer of model.init_from=/ckpt"))
    plain = Tokenizer.load(materialize(tok.files()))
    assert named.words == "the tokenizer of model.init_from=/ckpt" and plain.words == f"tokenizer {plain.path}"
    assert named == plain == tok and named.path != plain.path
    code = "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read()).words)"
    there = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(named), capture_output=True, timeout=300)
    assert there.stdout.decode().strip() == named.words, there.stderr.decode()[-2000:]


SPM_KINDS = {  # trainer options of locally trained SentencePiece models, besides the LLaMA-like default
    "bpe_nfkc_collapse": dict(model_type="bpe", normalization_rule_name="nmt_nfkc", remove_extra_whitespaces=True),
    "unigram": dict(model_type="unigram", byte_fallback=True, normalization_rule_name="identity",
                    remove_extra_whitespaces=False),
    "bpe_no_dummy_prefix": dict(model_type="bpe", byte_fallback=True, add_dummy_prefix=False,
                                normalization_rule_name="identity", remove_extra_whitespaces=False),
}


@pytest.fixture(scope="module")
def trained_spm(tmp_path_factory):
    import sentencepiece as spm
    from helpers.pretrained_models import corpus

    out = {}
    for kind, options in SPM_KINDS.items():
        prefix = str(tmp_path_factory.mktemp(kind) / "m")
        spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus()), model_prefix=prefix, vocab_size=600,
                                       hard_vocab_limit=False, minloglevel=2, num_threads=1, **options)
        out[kind] = (Tokenizer.load(prefix + ".model"), spm.SentencePieceProcessor(model_file=prefix + ".model"))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=texts)
def test_converted_sentencepiece_models_give_sentencepieces_ids(text, trained_spm):
    for kind, (ours, sp) in trained_spm.items():
        assert ours.encode(text) == sp.encode(text), kind


def test_a_converted_model_is_kept_per_machine_and_read_back_exactly(trained_spm, tmp_path, monkeypatch):
    """The conversion is kept under the temporary directory and read back (no second conversion) with
    sentencepiece's own ids; a torn kept file is converted again; other bytes at the same path are another model."""
    import shutil
    import tempfile

    from instructjax.data.encoding import spm_convert

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    samples = [*FRAGMENTS[:20], "Hi  there", " leading", "x\n\ny", "\U0001F9EC ꙮ"]
    (_, sp_bpe), (_, sp_uni) = trained_spm["bpe_nfkc_collapse"], trained_spm["unigram"]
    path = str(tmp_path / "tokenizer.model")
    shutil.copy(trained_spm["bpe_nfkc_collapse"][0].path, path)

    def ids(engine) -> list[list[int]]:
        return [e.ids for e in engine.encode_batch(samples, add_special_tokens=False)]

    first, special = spm_convert.engine_from_model(path)
    [kept] = (tmp_path / "instructjax-tokenizers").glob("spm-*.json")
    real_convert = spm_convert._convert
    monkeypatch.setattr(spm_convert, "_convert", lambda _: pytest.fail("converted again"))
    again, special_again = spm_convert.engine_from_model(path)
    assert ids(again) == ids(first) == [sp_bpe.encode(t) for t in samples] and special_again == special
    kept.write_bytes(kept.read_bytes()[: kept.stat().st_size // 2])  # torn
    monkeypatch.setattr(spm_convert, "_convert", real_convert)
    assert ids(spm_convert.engine_from_model(path)[0]) == [sp_bpe.encode(t) for t in samples]
    shutil.copy(trained_spm["unigram"][0].path, path)  # other bytes, same path
    assert ids(spm_convert.engine_from_model(path)[0]) == [sp_uni.encode(t) for t in samples]
    assert len(list((tmp_path / "instructjax-tokenizers").glob("spm-*.json"))) == 2


@pytest.fixture(scope="module")
def every_tokenizer(tmp_path_factory, trained_spm):
    """kind -> Tokenizer: the built-in one, the HF directories above and the trained SentencePiece models."""
    out = {"built_in": Tokenizer.load()}
    for kind, (build, _) in DIRS.items():
        out[kind] = Tokenizer.load(build(tmp_path_factory.mktemp(kind)))
    return {**out, **{kind: ours for kind, (ours, _) in trained_spm.items()}}


SPM_STYLE = ("built_in", "saved_default", "legacy_llama", "bpe_no_dummy_prefix")  # `_PieceSpans` engines
SPAN_TEXTS = st.lists(st.one_of(texts, st.sampled_from(["", " ", "▁", "▁▁x", "\x00", "\U0001F9EC\u0301", "ꙮ ꙮ"])),
                      max_size=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=SPAN_TEXTS, continued=st.booleans())
def test_batch_encode_gives_the_engines_own_ids_and_offsets(batch, continued, every_tokenizer):
    """`encode_offsets` (the loss mask's input) = the Rust engine's own `encode_batch` ids and offsets, for every
    kind of tokenizer; the SentencePiece-style ones compute the spans from the ids, and must not fall back."""
    for kind, ours in every_tokenizer.items():
        engine = ours._continuation if continued else ours._engine
        encodings = engine.encode_batch(batch, add_special_tokens=False)
        ids, spans, lengths = ours.encode_offsets(batch, continued=continued)
        assert lengths.tolist() == [len(e.ids) for e in encodings], kind
        assert ids.tolist() == [i for e in encodings for i in e.ids], kind
        assert spans.tolist() == [list(span) for e in encodings for span in e.offsets], (kind, batch)
        if kind in SPM_STYLE:
            assert ours._piece_spans is not None and ours._piece_spans(ids, lengths, batch) is not None, kind


BREAK_TEXTS = st.lists(st.sampled_from([*FRAGMENTS, "\n", "▁", " \n ", "\U0001F9EC\u0301", "\x00", "\r\n"]),
                       max_size=8).map("".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=BREAK_TEXTS, after=BREAK_TEXTS, start=st.booleans())
def test_a_segment_after_a_known_ones_newline_gets_the_engines_own_ids_and_offsets(before, after, start,
                                                                                  every_tokenizer):
    """`Segments`: a segment that is the text after a known segment's first newline (a ShareGPT block's first
    round) = the engine's own ids and offsets of it, encoded whole, for every kind of tokenizer; the
    SentencePiece-style ones (whose BPE never merges the newline) must take the known segment's tokens."""
    donor = before.replace("\n", "") + "\n" + after
    for kind, tok in every_tokenizer.items():
        memo = Segments(tok)
        memo.get([(donor, not start)])
        ((ids, offsets),) = memo.get([(after, start)])
        encoding = (tok._engine if start else tok._continuation).encode(after, add_special_tokens=False)
        assert ids.tolist() == encoding.ids, (kind, donor)
        assert offsets.tolist() == [list(span) for span in encoding.offsets], (kind, donor)
        assert memo.derived == (kind in SPM_STYLE and "\n" in after), kind


def test_a_tokenizer_that_merges_the_newline_has_no_hard_break(tmp_path):
    """The built-in engine with one more merge, "\n" + "▁" (a newline then a space, one token): a text's ids after
    its newline then depend on what follows the newline's left, so no segment may take them from another."""
    spec = json.loads(Tokenizer.load()._serialized)
    spec["model"]["vocab"] |= {"\n": 32000, "\n▁": 32001}
    spec["model"]["merges"].insert(0, ["\n", "▁"])  # before every other merge
    saved = Tokenizer.load().save(str(tmp_path / "merging"))
    (tmp_path / "merging" / "tokenizer.json").write_text(json.dumps(spec))
    tok = Tokenizer.load(saved)
    assert tok._piece_spans is not None and tok.hard_break is None and Tokenizer.load().hard_break == "\n"
    memo = Segments(tok)
    memo.get([("x\n\n a", False)])  # "\n a" after the first newline: "▁\n a" alone, which merges "\n▁"
    ((ids, _),) = memo.get([("\n a", False)])
    assert ids.tolist() == tok._engine.encode("\n a", add_special_tokens=False).ids and 32001 in ids.tolist()
    assert memo.derived == 0


# ---- the loss mask against the papers' own code and transformers' assistant mask ----------------------

MULTI_TURN = [  # multi-turn rows, with and without a system turn, text that stresses tokenizers
    conv_of("Hi  there\n    return x", " Hello!\n\n  日本語 ", "café?", "Привет 😀", "And 3+3?", "6.", system="Be brief."),
    conv_of("What is 2+2?", "It is 4.", "def f():", "    return x\n", system="You are terse.\n"),
    conv_of("q1", "a1", "q2: ASSISTANT: <|user|>", "### Response: a2"),
    conv_of("Name a color.", "Blue."),
]


@pytest.fixture(scope="module")
def library_tokenizers(tmp_path_factory):
    """kind -> (path, BOS, EOS): a byte-level BPE with its own EOS and no BOS, and a SentencePiece BPE
    (both trained here, `tests/helpers/pretrained_models.py`), and the built-in default."""
    from helpers import pretrained_models as pm

    return {
        "bpe": (pm.bpe_tokenizer(str(tmp_path_factory.mktemp("bpe"))), None, "<|endoftext|>"),
        "spm": (pm.spm_tokenizer(str(tmp_path_factory.mktemp("spm"))), "<s>", "</s>"),
        "default": (default_tokenizer_path(), "<s>", "</s>"),
    }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(conv=conversations())
@example(conv=MULTI_TURN[0])
@example(conv=MULTI_TURN[1])
def test_tulu_mask_equals_open_instructs_own_code(conv, library_tokenizers):
    """Ids and loss mask = open-instruct's `encode_with_messages_format` (copied verbatim, tests/helpers/upstream_code.py)
    on the tokenizer libraries' ids: every token but the non-assistant messages (and "<|assistant|>\\n") is
    trained, the newline after a non-final EOS included."""
    pytest.importorskip("torch")
    from helpers.pretrained_models import open_instruct_example

    for kind, (path, bos, eos) in library_tokenizers.items():
        enc = encode_conversation(conv, "tulu", Tokenizer.load(path))
        ids, mask = open_instruct_example(path, conv.messages, bos=bos, eos=eos)
        assert enc.tokens.tolist() == ids, kind
        assert enc.loss_mask.tolist() == mask.tolist(), kind


def transformers_assistant_mask(hf, conv: Conversation, name: str, ours: Tokenizer) -> np.ndarray:
    """transformers' assistant mask of `conv` through the exported tokenizer `hf`, checked to give our ids."""
    got = hf.apply_chat_template(conv.messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert list(got["input_ids"]) == encode_conversation(conv, name, ours).tokens.tolist(), name
    return np.asarray(got["assistant_masks"], np.int32)


def _span_end_quirk() -> bool:
    """Whether this transformers ends a `{% generation %}` span's mask at the *first* token holding its last
    character (before 5.24; from 5.24 on its mask is ours exactly)."""
    import transformers
    from packaging.version import Version

    return Version(transformers.__version__) < Version("5.24")


def left_out_by_transformers(ids: list[int], pieces: list[str], name: str, eos_id: int) -> list[int]:
    """Positions of the "<0x0A>" of a dummy-prefixed Tulu separator ("</s>", "▁", "<0x0A>"), the one place
    transformers' character-based assistant mask could not reach before 5.24 (see the test below)."""
    if not _span_end_quirk():
        return []
    return [i + 1 for i in range(1, len(ids) - 1)
            if name == "tulu" and ids[i - 1] == eos_id and pieces[i : i + 2] == ["▁", "<0x0A>"]]


@pytest.mark.parametrize("kind", list(DIRS))
def test_exported_chat_template_masks_the_trained_tokens(kind, tmp_path):
    """transformers' `apply_chat_template(tokenize=True, return_dict=True, return_assistant_tokens_mask=True)`
    (TRL's assistant-only loss) on the tokenizer `instructjax export` writes (`Tokenizer.save` with the run's
    `jinja_template(name, bos=...)`, as `convert/saved.py` does) gives our ids and loss mask, for every
    template, with one exception before transformers 5.24: it marked the tokens from the one holding a `{% generation %}`
    span's first character to the *first* one holding its last, so where a legacy SentencePiece tokenizer
    (Prepend normalizer: LLaMA-1/2, the default) encodes Tulu's trained "\\n" after a non-final EOS as a
    dummy prefix "▁" plus the byte "<0x0A>", both covering that one character, it left "<0x0A>" out."""
    from transformers import AutoTokenizer

    build, _ = DIRS[kind]
    ours = Tokenizer.load(build(tmp_path))
    for name in template_names():
        exported = ours.save(str(tmp_path / f"exported_{name}"), jinja_template(name, bos=ours.adds_bos))
        hf = AutoTokenizer.from_pretrained(exported)
        for conv in MULTI_TURN:
            theirs = transformers_assistant_mask(hf, conv, name, ours)
            enc = encode_conversation(conv, name, ours)
            ids = enc.tokens.tolist()
            left_out = left_out_by_transformers(ids, hf.convert_ids_to_tokens(ids), name, ours.eos_id)
            turns = sum(m["role"] == "assistant" for m in conv.messages)
            quirk = _span_end_quirk() and kind in ("saved_default", "legacy_llama") and name == "tulu"
            assert len(left_out) == (turns - 1 if quirk else 0)
            expected = enc.loss_mask.copy()
            expected[left_out] = 0
            assert theirs.tolist() == expected.tolist(), (kind, name, conv.messages)


@pytest.fixture(scope="module")
def exported_default(tmp_path_factory):
    """template -> the built-in tokenizer as exported with that template, loaded by transformers."""
    from transformers import AutoTokenizer

    tok = Tokenizer.load()
    return {name: AutoTokenizer.from_pretrained(tok.save(str(tmp_path_factory.mktemp(name)),
                                                         jinja_template(name, bos=tok.adds_bos)))
            for name in template_names()}


@HYPO
@given(conv=conversations())
def test_exported_chat_template_masks_any_conversation(conv, tok, exported_default):
    for name, hf in exported_default.items():
        enc = encode_conversation(conv, name, tok)
        ids = enc.tokens.tolist()
        expected = enc.loss_mask.copy()
        expected[left_out_by_transformers(ids, hf.convert_ids_to_tokens(ids), name, tok.eos_id)] = 0
        assert transformers_assistant_mask(hf, conv, name, tok).tolist() == expected.tolist(), name


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40).flatmap(lambda n: st.tuples(
    st.just(n), st.lists(st.tuples(st.integers(0, n), st.integers(0, n)), max_size=6),
    st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 4)), min_size=1, max_size=12))))
def test_token_overlap_with_trained_spans_by_brute_force(case):
    """The mask's character tests (a token overlaps a trained span; the character at a zero-width token or a
    special token is in one) over spans that may be empty, overlap or touch, against sets of characters."""
    from instructjax.data.encoding.encode import _covered, _disjoint, _overlapped

    n, spans, tokens = case
    spans = [(min(a, b), max(a, b)) for a, b in spans]
    chars = {c for a, b in spans for c in range(a, b)}
    merged = _disjoint(np.asarray(spans, np.int64).reshape(-1, 2))
    first = np.asarray([f for f, _ in tokens], np.int64)
    last = np.asarray([min(n, f + w) for f, w in tokens], np.int64)
    want = [bool(chars & set(range(f, b))) for f, b in zip(first.tolist(), last.tolist(), strict=True)]
    assert _overlapped(merged, first, last).tolist() == want
    assert _covered(merged, first).tolist() == [f in chars for f in first.tolist()]
