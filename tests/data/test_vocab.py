"""The seqio Vocabulary: python and TF encode/decode agree with the Tokenizer; works inside a seqio Task."""

from __future__ import annotations

import numpy as np
import pytest
import seqio
import tensorflow as tf

from instructjax.data.encoding.tokenizer import Tokenizer
from instructjax.data.seqio.vocab import TokenizerVocabulary, get_vocabulary

TEXTS = [
    "Hello world",
    "Hello  world\n    return x",
    "日本語 café naïve 😀",
    "",
    " leading space",
    "<|user|>\nWhat is 2+2?",
    "literal </s> stays text",
]


@pytest.fixture(scope="module")
def vocab():
    return get_vocabulary()


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.load()


def test_ids_and_sizes(vocab, tok):
    assert isinstance(vocab, seqio.Vocabulary)
    assert (vocab.vocab_size, vocab.unk_id, vocab.bos_id, vocab.eos_id) == (32000, 0, 1, 2)
    assert vocab.pad_id == 0  # LLaMA has no pad: seqio's default; padding is read from segment ids
    assert get_vocabulary(None) is vocab and get_vocabulary(tok.path) == vocab
    assert hash(get_vocabulary(tok.path)) == hash(vocab)


def test_python_encode_decode_match_tokenizer(vocab, tok):
    for text in TEXTS:
        ids = vocab.encode(text)
        assert list(ids) == tok.encode(text)
        assert vocab.decode(ids) == tok.decode(ids)
    # seqio's decode stops at the first EOS
    ids = tok.encode("one") + [tok.eos_id] + tok.encode("two")
    assert vocab.decode(ids) == "one"


def test_tf_encode_matches_tokenizer(vocab, tok):
    for text in TEXTS:
        got = vocab.encode_tf(tf.constant(text))
        assert got.dtype == tf.int32 and got.shape.rank == 1
        assert got.numpy().tolist() == tok.encode(text)
    batch = vocab.encode_tf(tf.constant(TEXTS))
    assert isinstance(batch, tf.RaggedTensor)
    assert batch.to_list() == [tok.encode(t) for t in TEXTS]


def test_tf_decode_matches_tokenizer(vocab, tok):
    rows = [tok.encode("first row"), tok.encode("second, longer row here")]
    width = max(map(len, rows))
    padded = np.zeros((2, width + 2), np.int32)  # 0 is <unk> in LLaMA: decode drops it as a special id
    for i, r in enumerate(rows):
        padded[i, : len(r)] = r
    padded[0, len(rows[0])] = tok.eos_id
    padded[0, len(rows[0]) + 1 :] = tok.encode("x")[0]  # after EOS: cut off by seqio
    out = vocab.decode_tf(tf.constant(padded)).numpy().tolist()
    assert [s.decode() for s in out] == ["first row", "second, longer row here"]
    assert vocab.decode_tf(tf.constant(rows[1], tf.int32)).numpy().decode() == "second, longer row here"


def test_in_a_seqio_task_pipeline(vocab, tok):
    def dataset_fn(split, shuffle_files, seed=None):
        return tf.data.Dataset.from_tensor_slices({"targets": TEXTS})

    name = "instructjax_test_vocab_task"
    seqio.TaskRegistry.remove(name)
    task = seqio.Task(
        name,
        source=seqio.FunctionDataSource(dataset_fn, splits=["train"]),
        preprocessors=[seqio.preprocessors.tokenize],
        output_features={"targets": seqio.Feature(vocab, add_eos=False)},
    )
    try:
        rows = list(task.get_dataset(split="train", shuffle=False, sequence_length=None).as_numpy_iterator())
    finally:
        seqio.TaskRegistry.remove(name)
    assert [r["targets"].tolist() for r in rows] == [tok.encode(t) for t in TEXTS]
    assert [r["targets_pretokenized"].decode() for r in rows] == TEXTS


def test_hf_directory_vocabulary(tmp_path, tok):
    tok.to_hf().save_pretrained(tmp_path)
    hf_vocab = get_vocabulary(str(tmp_path))
    assert isinstance(hf_vocab, TokenizerVocabulary) and hf_vocab != get_vocabulary()
    text = "Hello  world\n    return x"
    assert hf_vocab.encode_tf(tf.constant(text)).numpy().tolist() == tok.encode(text)
