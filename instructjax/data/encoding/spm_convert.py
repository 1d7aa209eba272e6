"""A SentencePiece `.model` as a `tokenizers` engine that gives exactly the `sentencepiece` library's ids.

transformers' own conversion is not exact for LLaMA-style models: it orders BPE merges by piece id
(so "▁▁", id 259 with score -1e9 in LLaMA/Mistral vocabularies, merges before "▁there"; "Hi  there"
becomes "▁▁" "there" instead of sentencepiece's "▁" "▁there"), and its Metaspace pre-tokenizer adds no
dummy prefix to a text that already starts with a space, or after a special token. Here:

- BPE merges are ranked by the score of the piece they make (highest first), which is the order
  sentencepiece's BPE merges in; Unigram models keep their piece scores;
- the dummy prefix is a `Prepend("▁")` normalizer, applied to every text piece exactly as
  sentencepiece encodes each piece between special ids (LLaMA's and Mistral's reference code encodes
  each turn separately: `[bos] + sp.encode(turn) + [eos]`);
- the normalization rules (identity or a precompiled NFKC map) and `remove_extra_whitespaces` follow
  the model's normalizer spec; byte fallback as the model says; control pieces are special tokens.

`tests/data/test_encode.py` checks the result against the `sentencepiece` processor on random text.

A conversion takes about 0.25 s for a 32000-piece model, in every process that loads it (each encode worker,
each host), so it is kept per machine under the temporary directory: `instructjax-tokenizers/spm-<digest>.json`
holds the special tokens on its first line, then the engine's JSON. The digest covers the model's bytes, this
module's code and the `tokenizers` version, so a different model, converter or engine never reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, normalizers
from tokenizers import Tokenizer as Engine

from instructjax.core.errors import ConfigError

# sentencepiece_model.proto piece types and model types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM, BPE = 1, 2


def read_model(path: str):
    """The ModelProto of a `.model` file, or a one-line ConfigError."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
    except Exception as e:  # noqa: BLE001 - protobuf raises DecodeError and others
        raise ConfigError(f"tokenizer file {path}: not a SentencePiece model ({type(e).__name__}: {e})") from None
    if not proto.pieces:
        raise ConfigError(f"tokenizer file {path}: not a SentencePiece model (no pieces)")
    return proto


def special_tokens(proto) -> dict[str, str | None]:
    """bos/eos/unk/pad piece strings of the model (None where the model has none)."""
    spec, pieces = proto.trainer_spec, proto.pieces

    def piece(index: int) -> str | None:
        return pieces[index].piece if 0 <= index < len(pieces) else None

    return {"bos_token": piece(spec.bos_id), "eos_token": piece(spec.eos_id), "unk_token": piece(spec.unk_id),
            "pad_token": piece(spec.pad_id)}


def _bpe(proto) -> models.BPE:
    pieces = proto.pieces
    vocab = {p.piece: i for i, p in enumerate(pieces)}
    mergeable = {p.piece for p in pieces if p.type == NORMAL}
    ranked = []
    for i, p in enumerate(pieces):
        if p.type != NORMAL:
            continue
        for cut in range(1, len(p.piece)):
            left, right = p.piece[:cut], p.piece[cut:]
            if left in mergeable and right in mergeable:
                ranked.append((-p.score, i, cut, left, right))
    ranked.sort()
    unk = pieces[proto.trainer_spec.unk_id].piece
    return models.BPE(vocab=vocab, merges=[(left, right) for *_, left, right in ranked], unk_token=unk,
                      fuse_unk=True, byte_fallback=proto.trainer_spec.byte_fallback)


def _normalizer(proto) -> normalizers.Normalizer | None:
    spec = proto.normalizer_spec
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Replace(Regex("^ | $"), "")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    return normalizers.Sequence(steps)


def engine_from_model(path: str) -> tuple[Engine, dict[str, str | None]]:
    """(the `tokenizers` engine of a SentencePiece `.model`, its special token strings), converted once per
    machine (see the module doc)."""
    with open(path, "rb") as f:
        model = f.read()
    with open(__file__, "rb") as f:
        code = f.read()
    digest = hashlib.sha256(b"\0".join([model, code, tokenizers.__version__.encode()])).hexdigest()[:24]
    kept = os.path.join(tempfile.gettempdir(), "instructjax-tokenizers", f"spm-{digest}.json")
    try:
        with open(kept, encoding="utf-8") as f:
            special = json.loads(f.readline())
            return Engine.from_str(f.read()), special
    except Exception:  # noqa: BLE001 - none kept yet, or unreadable (a torn write): convert again
        pass
    engine, special = _convert(path)
    try:
        os.makedirs(os.path.dirname(kept), exist_ok=True)
        staging = f"{kept}.{os.getpid()}.tmp"
        with open(staging, "w", encoding="utf-8") as f:
            f.write(json.dumps(special) + "\n" + engine.to_str())
        os.replace(staging, kept)  # atomic: a concurrent reader sees the whole file or none
    except OSError:  # a read-only or full temporary directory: convert every time
        pass
    return engine, special


def _convert(path: str) -> tuple[Engine, dict[str, str | None]]:
    proto = read_model(path)
    kind = proto.trainer_spec.model_type
    if kind == BPE:
        model = _bpe(proto)
    elif kind == UNIGRAM:
        model = models.Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=proto.trainer_spec.unk_id,
                               byte_fallback=proto.trainer_spec.byte_fallback)
    else:
        raise ConfigError(f"tokenizer file {path}: SentencePiece model type {kind} is not supported (BPE or Unigram)")
    engine = Engine(model)
    engine.normalizer = _normalizer(proto)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if proto.normalizer_spec.add_dummy_prefix:
        steps.append(decoders.Strip(" ", 1, 0))
    engine.decoder = decoders.Sequence(steps)
    engine.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                               for p in proto.pieces if p.type in (CONTROL, UNKNOWN)])
    user = [AddedToken(p.piece, special=False, normalized=False) for p in proto.pieces if p.type == USER_DEFINED]
    if user:
        engine.add_tokens(user)
    return engine, special_tokens(proto)
