"""The run's tokenizer: the model's own tokenizer files, run by the `tokenizers` (Rust) engine as written.

What a path may be:
- an HF tokenizer directory with `tokenizer.json`: the engine is that file exactly as
  `tokenizers.Tokenizer.from_file` reads it; the special tokens, `add_bos_token` and the chat template
  come from `tokenizer_config.json` (or `special_tokens_map.json`);
- a SentencePiece `.model` file, or a directory holding only `tokenizer.model`: converted so that the
  engine gives the `sentencepiece` library's own ids (`instructjax.data.encoding.spm_convert`);
- None: the built-in default, Mistral-7B's 32000-piece SentencePiece model from the `mistral-common`
  package. It is only for from-scratch presets: a pretrained model brings its own tokenizer.

Which ids are right, per model family (both are tested against the raw file / `sentencepiece`):
- SentencePiece models (LLaMA-1/2, Mistral): every text piece between special tokens gets the dummy
  prefix "▁", as `sentencepiece` encodes each piece and as their hub `tokenizer.json` says (a legacy
  `Prepend("▁")` normalizer). transformers 5's `LlamaTokenizer` replaces that normalizer with
  `Metaspace(prepend_scheme="first")` unless `legacy: true`, which changes the ids after every `</s>`;
  we follow the file, and export with the generic `PreTrainedTokenizerFast` class so transformers, vLLM
  and lm-eval read the exported `tokenizer.json` as written and see the ids we trained on.
- Byte-level BPE (GPT-2 style, LLaMA-3): no prefix rule; the raw file and transformers agree.

One rule for BOS: it is added where the tokenizer adds one (`add_bos_token`, else its post-processor),
in training (`encode.py`), in the exported chat template (`{{ bos_token }}` first) and in generation.
Text after a special token (BOS, or an EOS between turns) is encoded the way the engine encodes it
inside a string holding that special token (`encode_continued`). Literal special-token strings inside
a text (e.g. a user writing "</s>") are plain text: special ids are only ever inserted by code.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from itertools import chain

import numpy as np
from tokenizers import Tokenizer as Engine
from tokenizers import processors

from instructjax.core import storage
from instructjax.core.errors import ConfigError
from instructjax.data.encoding import spm_convert
from instructjax.data.encoding.piece_spans import PieceSpans, engine_ids

SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
EXPORT_CLASS = "PreTrainedTokenizerFast"  # generic: transformers 4 and 5, vLLM read tokenizer.json as written
NAMED_FILE = "instructjax_named.txt"  # in a copy `materialize` made: the words naming the tokenizer as the user gave it


def default_tokenizer_path() -> str:
    """Mistral-7B's SentencePiece model (32000 pieces, byte fallback, unk/bos/eos = 0/1/2) from `mistral-common`.

    Not LLaMA's: "Hello world" is [22557, 1526] here, [15043, 3186] in LLaMA-2. For from-scratch presets only.
    """
    import mistral_common

    return os.path.join(os.path.dirname(mistral_common.__file__), "data", "tokenizer.model.v1")


def _token_text(value) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"tokenizer file {path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"tokenizer file {path}: expected a JSON object")
    return data


def _chat_template(directory: str, config: dict) -> str | None:
    jinja = os.path.join(directory, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            return f.read()
    template = config.get("chat_template")
    if isinstance(template, list):  # [{name, template}, ...]: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def _read(where: str) -> tuple[Engine, dict, bool | None, str | None]:
    """(engine, special token strings, add_bos_token or None if unsaid, chat template) of a tokenizer path (local,
    or a URL read from its local copy: `storage.local_copy`)."""
    try:
        path = storage.local_copy(where)
    except FileNotFoundError:
        raise ConfigError(f"tokenizer path {where} does not exist") from None
    if os.path.isfile(path):  # a bare SentencePiece model: BOS first, as LLaMA's and Mistral's code adds it
        engine, special = spm_convert.engine_from_model(path)
        return engine, special, special["bos_token"] is not None, None
    if not os.path.isdir(path):
        raise ConfigError(f"tokenizer path {where} does not exist")
    config_path = os.path.join(path, "tokenizer_config.json")
    config = _read_json(config_path) if os.path.isfile(config_path) else {}
    special_map_path = os.path.join(path, "special_tokens_map.json")
    special_map = _read_json(special_map_path) if os.path.isfile(special_map_path) else {}
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        try:
            engine = Engine.from_file(os.path.join(path, "tokenizer.json"))
        except Exception as e:  # noqa: BLE001 - the Rust engine raises plain Exceptions
            raise ConfigError(f"tokenizer file {os.path.join(path, 'tokenizer.json')}: cannot load ({e})") from None
        special = {}
    elif os.path.isfile(os.path.join(path, "tokenizer.model")):
        engine, special = spm_convert.engine_from_model(os.path.join(path, "tokenizer.model"))
        config.setdefault("add_bos_token", special["bos_token"] is not None)
    else:
        raise ConfigError(f"tokenizer directory {where}: no tokenizer.json or tokenizer.model")
    for key in SPECIAL_KEYS:  # the config's word wins over the model file's
        text = _token_text(config.get(key, special_map.get(key)))
        if key in config or key in special_map:
            special[key] = text
    add_bos = config.get("add_bos_token")
    return engine, special, (bool(add_bos) if add_bos is not None else None), _chat_template(path, config)


def _continuation_engine(engine: Engine) -> Engine:
    """A copy of `engine` that encodes a text as it does right after a special token.

    A Metaspace pre-tokenizer with `prepend_scheme="first"` adds the dummy prefix only to the piece at the
    start of the whole input; the copy never adds it. Every other engine treats the two alike (a
    `Prepend` normalizer runs on each piece between special tokens), and the engine itself is returned.
    """
    spec = json.loads(engine.to_str())

    def first_to_never(node) -> bool:
        if not isinstance(node, dict):
            return False
        if node.get("type") == "Sequence":
            return any([first_to_never(p) for p in node.get("pretokenizers", [])])
        if node.get("type") == "Metaspace" and node.get("prepend_scheme") == "first":
            node["prepend_scheme"] = "never"
            return True
        return False

    if not first_to_never(spec.get("pre_tokenizer")):
        return engine
    continuation = Engine.from_str(json.dumps(spec))
    continuation.encode_special_tokens = True
    return continuation


class Tokenizer:
    """Text <-> ids for training, selection, export and generation. Build with `Tokenizer.load(path)`."""

    def __init__(self, path: str):
        self.path = path
        # as messages name it: "tokenizer PATH" as the user gave it, or, for a copy of a checkpoint's tokenizer
        # (`materialize`), the words the copy was made with (not the temporary directory)
        self.words: str = _named(path) or f"tokenizer {path}"
        raw, special, add_bos, self.chat_template = _read(path)
        vocab = raw.get_vocab(with_added_tokens=True)
        self.vocab_size: int = max(vocab.values()) + 1
        ids = {key: (vocab.get(special[key]) if special.get(key) else None) for key in SPECIAL_KEYS}
        for key in SPECIAL_KEYS:
            if special.get(key) and ids[key] is None:
                raise ConfigError(f"{self.words}: its {key} {special[key]!r} is not in "
                                  "the vocabulary")
        self.bos_token, self.eos_token = special.get("bos_token"), special.get("eos_token")
        self.unk_token, self.pad_token = special.get("unk_token"), special.get("pad_token")
        self.bos_id, self.eos_id, self.unk_id, self.pad_id = (ids[k] for k in SPECIAL_KEYS)
        if self.eos_id is None:
            raise ConfigError(f"{self.words}: has no end-of-sequence token (eos_token in "
                              "tokenizer_config.json)")
        if add_bos is None:  # unsaid: what the post-processor does
            add_bos = self.bos_id is not None and raw.encode("a", add_special_tokens=True).ids[:1] == [self.bos_id]
        self.adds_bos: bool = bool(add_bos) and self.bos_id is not None
        raw.post_processor = (processors.TemplateProcessing(single=f"{self.bos_token} $A", pair=f"{self.bos_token} $A $B",
                                                            special_tokens=[(self.bos_token, self.bos_id)])
                              if self.adds_bos else None)  # fmt: skip
        self._serialized = raw.to_str()
        self._engine = raw
        self._engine.encode_special_tokens = True
        self._continuation = _continuation_engine(self._engine)
        self._piece_spans = PieceSpans.of(self._engine)
        self.fingerprint: str = hashlib.sha256(
            json.dumps([self._serialized, [getattr(self, k) for k in SPECIAL_KEYS], self.adds_bos]).encode()).hexdigest()[:16]

    @classmethod
    def load(cls, path: str | None = None) -> Tokenizer:
        """Load (cached per path): None -> the built-in default; a `.model` file; an HF tokenizer directory (local
        or a URL: gs://...)."""
        return _load_cached(_resolved(path, os.getcwd()) if path else default_tokenizer_path())

    def __reduce__(self):  # pickles as its path (its name comes with it): cheap to send to tf.data / worker processes
        return (_load_cached, (self.path,))

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, vocab_size={self.vocab_size})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Tokenizer) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def encode(self, text: str) -> list[int]:
        """Ids of `text` as the start of a sequence, without BOS/EOS."""
        return self._engine.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` over many texts at once (faster than a Python loop)."""
        return [e.ids for e in self._engine.encode_batch(texts, add_special_tokens=False)]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and the (start, end) character span in `text` that each id covers."""
        enc = self._engine.encode(text, add_special_tokens=False)
        return enc.ids, enc.offsets

    def encode_continued(self, texts: list[str], *, after_special: bool = False
                         ) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """Ids and offsets of texts that follow one another in one sequence, separated by special ids.

        The first text is a sequence start unless `after_special` (it follows BOS); every other text
        follows a special id. This is how the engine tokenizes one string holding those special tokens.
        """
        out = []
        if texts and not after_special:
            first = self._engine.encode(texts[0], add_special_tokens=False)
            out.append((first.ids, first.offsets))
            texts = texts[1:]
        if texts:
            out += [(e.ids, e.offsets) for e in self._continuation.encode_batch(texts, add_special_tokens=False)]
        return out

    def encode_offsets(self, texts: list[str], *, continued: bool = False
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Many texts, each encoded on its own (as a sequence start, or `continued`: right after a special
        token, as in `encode_continued`), in one call of the engine's batch path: (ids int32[n], each id's
        character span in its text int64[n, 2], ids per text int64[len(texts)]), the texts' ids end to end.

        The spans are the engine's own offsets. For a SentencePiece-style engine (`piece_spans.PieceSpans`) they are
        computed from the ids, which skips the engine's offset tracking and reading a tuple per token."""
        engine = self._continuation if continued else self._engine
        if self._piece_spans is not None:
            ids, lengths = self._piece_spans.ids(texts)  # the same engine for a continued text (no pre-tokenizer)
            spans = self._piece_spans(ids, lengths, texts)
            if spans is not None:
                return ids, spans, lengths
        encodings = engine.encode_batch(texts, add_special_tokens=False)
        ids, lengths = engine_ids(encodings)
        spans = chain.from_iterable(chain.from_iterable(e.offsets for e in encodings))
        return ids, np.fromiter(spans, np.int64, 2 * ids.size).reshape(ids.size, 2), lengths

    @functools.cached_property
    def hard_break(self) -> str | None:
        """A character the engine never merges across, or None: the newline, for a SentencePiece-style engine
        (`piece_spans.PieceSpans`: one BPE word per text, the same engine after a special token) none of whose merges takes
        in the newline's symbol (the character, or its byte token <0x0A>). Then the ids of a text from a newline
        on are those of any text that ends the same way from that newline on (`encode.Segments` reuses them)."""
        if self._piece_spans is None or self._continuation is not self._engine:
            return None
        model = json.loads(self._engine.model.__getstate__())
        if any(model.get(k) for k in ("dropout", "ignore_merges", "continuing_subword_prefix", "end_of_word_suffix")):
            return None
        symbol = "\n" if "\n" in model["vocab"] else "<0x0A>"
        sides = (merge.split(" ") if isinstance(merge, str) else merge for merge in model["merges"])
        return "\n" if symbol in model["vocab"] and not any(symbol in pair for pair in sides) else None

    def special_id(self, token: str) -> int:
        """The id of a special (added) token or of EOS/BOS, by its text."""
        if token == self.eos_token:
            return self.eos_id
        found = self._engine.token_to_id(token)
        if found is None:
            raise ConfigError(f"{self.words}: {token!r} is not one of its tokens")
        return found

    @functools.cached_property
    def added_tokens(self) -> dict[str, tuple[bool, bool]]:
        """The tokenizer's added tokens (its special tokens and any others the file adds): text -> (lstrip,
        rstrip), whether the token takes in the whitespace on its left / right (Phi-3's `<|end|>` its right)."""
        return {t.content: (t.lstrip, t.rstrip) for t in self._engine.get_added_tokens_decoder().values()}

    @functools.cached_property
    def special_ids(self) -> frozenset[int]:
        """The ids of the added tokens and of BOS, EOS, UNK and PAD: the template's markers, not text."""
        added = [self._engine.token_to_id(t) for t in self.added_tokens]
        return frozenset(i for i in [*added, self.bos_id, self.eos_id, self.unk_id, self.pad_id] if i is not None)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Text of `ids` (a list or numpy array); special ids (BOS, EOS, UNK, PAD) dropped by default."""
        return self._engine.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    # ---- the HF files ------------------------------------------------------------------------------

    def files(self, chat_template: str | None = None) -> dict[str, str]:
        """The HF tokenizer files (name -> text): `tokenizer.json` as the engine reads it, and a
        `tokenizer_config.json` naming the generic fast class, the special tokens and `chat_template`
        (default: the tokenizer's own)."""
        template = chat_template if chat_template is not None else self.chat_template
        config = {"tokenizer_class": EXPORT_CLASS, "add_bos_token": self.adds_bos, "add_eos_token": False,
                  "clean_up_tokenization_spaces": False, "model_max_length": 1 << 30}
        config.update({key: getattr(self, key) for key in SPECIAL_KEYS if getattr(self, key) is not None})
        files = {"tokenizer.json": self._serialized, "tokenizer_config.json": json.dumps(config, indent=2)}
        if template is not None:
            config["chat_template"] = template  # transformers < 4.43 reads it here, later ones the .jinja file
            files["tokenizer_config.json"] = json.dumps(config, indent=2)
            files["chat_template.jinja"] = template
        return files

    def save(self, directory: str, chat_template: str | None = None) -> str:
        """Write `files(chat_template)` into `directory` (an HF tokenizer directory); returns it."""
        os.makedirs(directory, exist_ok=True)
        for name, text in self.files(chat_template).items():
            with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
                f.write(text)
        return directory

    def to_hf(self, chat_template: str | None = None):
        """A transformers tokenizer over the same engine (for `apply_chat_template`, lm-eval, generation)."""
        from transformers import PreTrainedTokenizerFast

        kwargs = {key: getattr(self, key) for key in SPECIAL_KEYS if getattr(self, key) is not None}
        hf = PreTrainedTokenizerFast(tokenizer_object=Engine.from_str(self._serialized), clean_up_tokenization_spaces=False,
                                     **kwargs)  # fmt: skip
        template = chat_template if chat_template is not None else self.chat_template
        if template is not None:
            hf.chat_template = template
        return hf


@functools.lru_cache(maxsize=64)
def _resolved(path: str, cwd: str) -> str:
    """`path` made absolute from `cwd` (a worker loads the tokenizer for every batch: made once)."""
    return str(storage.path(path))


@functools.lru_cache(maxsize=16)
def _load_cached(path: str) -> Tokenizer:
    return Tokenizer(path)


def _named(where: str) -> str | None:
    """The words a copy `materialize` made is named by (None: any other path)."""
    file = os.path.join(where, NAMED_FILE)
    if not os.path.isfile(file):
        return None
    with open(file, encoding="utf-8") as f:
        return f.read() or None


def materialize(files: dict[str, str], *, named: str | None = None) -> str:
    """A tokenizer directory holding `files` (from `Tokenizer.files`), content-addressed under the temp
    directory so the same files (and name) always give the same path (and one cached `Tokenizer`). `named`: how
    messages name that tokenizer (`Tokenizer.words`), e.g. "the tokenizer of model.init_from=CKPT", never by its
    copy; written beside the files (`NAMED_FILE`), so the tokenizer loaded from the copy, in this process or
    another, carries it."""
    files = {**files, NAMED_FILE: named} if named else files
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:20]
    parent = os.path.join(tempfile.gettempdir(), "instructjax-tokenizers")
    directory = os.path.join(parent, digest)
    if not os.path.isdir(directory):
        os.makedirs(parent, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{digest}-", dir=parent)
        for name, text in files.items():
            with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
                f.write(text)
        try:
            os.rename(staging, directory)  # atomic: a concurrent writer either wins or finds it done
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return directory


_REPLY = "\ue005"  # an assistant reply whose ending the chat template is asked for


def turn_end_ids(hf_tokenizer) -> list[int]:
    """EOS and the special token the chat template closes an assistant turn with (Qwen's `<|im_end|>`,
    Llama-3's `<|eot_id|>`, Gemma's `<end_of_turn>`): a model trained on the template stops with it."""
    ids = [hf_tokenizer.eos_token_id]
    if not getattr(hf_tokenizer, "chat_template", None):
        return ids
    try:
        text = hf_tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant",
                                                 "content": _REPLY}], tokenize=False)
    except Exception:  # noqa: BLE001  a template that refuses the probe: EOS alone
        return ids
    tail = text.split(_REPLY, 1)[-1].lstrip()
    added = hf_tokenizer.get_added_vocab()
    first = next((token for token in sorted(added, key=len, reverse=True) if tail.startswith(token)), None)
    return ids + ([added[first]] if first is not None and added[first] not in ids else [])
