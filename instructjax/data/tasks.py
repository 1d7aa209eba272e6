"""seqio Tasks: one per dataset, registered by name in `seqio.TaskRegistry`.

A Task reads a source (hub id, local files, or the built-in synthetic rows), renders each
conversation with a chat template and tokenizes it with its loss mask. Output features are
`tokens` and `loss_mask`; `conversation` (the JSON of the source Conversation, for Mosaic-IT and
previews) and `id` ride along as extra features.

Registering your own dataset takes a few lines::

    from instructjax.data.tasks import TaskSpec, register_task
    register_task("my_chats", TaskSpec(source="sharegpt", data_files=("/data/my_chats.jsonl",)))

Every built-in source is registered twice: `NAME` reads the hub dataset (for users), and
`NAME_builtin` reads the synthetic rows that ship with the package (tests, quickstart).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import datasets
import seqio
import tensorflow as tf

from instructjax.data import sources, synthetic
from instructjax.data.encode import encode_conversation
from instructjax.data.schema import Conversation
from instructjax.data.templates import DEFAULT_TEMPLATE
from instructjax.data.tokenizer import Tokenizer
from instructjax.data.vocab import get_vocabulary
from instructjax.errors import BadRowPolicy, ConfigError

datasets.disable_progress_bars()  # one line per file per task is noise in `data stats`

BUILTIN = "builtin"
BUILTIN_SUFFIX = "_builtin"
DEFAULT_MAX_LENGTH = 2048  # outside a run; a run truncates at its data.seq_len


@dataclass(frozen=True)
class SelectionSpec:
    """Keep `k` of a task's conversations chosen by `method` (see instructjax.data.selection)."""

    method: str
    k: int | None = None
    seed: int = 0
    score_key: str = "score"
    num_clusters: int = 100
    encoder: str | None = None
    encoder_model: str | None = None  # for an encoder that embeds with a model: the run binds its own
    encoder_tokenizer: str | None = None

    def __post_init__(self):
        from instructjax.data.selection import METHODS

        if self.method not in METHODS:
            raise ConfigError(f"selection.method must be one of {METHODS}, got {self.method!r}")
        if self.k is not None and self.k < 1:
            raise ConfigError(f"selection.k must be >= 1 (or null for 'full'), got {self.k}")


@dataclass(frozen=True)
class TaskSpec:
    """How a Task reads and encodes its data.

    `data_files`: None reads the hub dataset, ("builtin",) the synthetic rows, else local files in
    the dataset's native schema. `source_options` are passed to the source adapter (e.g.
    `(("top_k", 1),)` for oasst1). `selection` keeps a subset before encoding (seed 002);
    longest/shortest count response tokens under this task's tokenizer.

    `template`, `tokenizer` and `max_length` (where each example is truncated) left unset take the run's
    (`instructjax.data.binding`); outside a run they are tulu, the built-in default tokenizer and 2048.
    """

    source: str
    data_files: tuple[str, ...] | None = None
    template: str | None = None
    tokenizer: str | None = None
    max_length: int | None = None
    source_options: tuple[tuple[str, object], ...] = ()
    on_bad_row: str = "error"
    selection: SelectionSpec | None = None


@dataclass
class TaskReport:
    """What happened to the rows of one task: nothing is dropped without being counted here.

    `read` rows of the source (in a sampled task, the rows visited), `skipped` per reason, `repaired`
    per repair (adapters), `split` conversations cut into blocks of whole rounds (ShareGPT), `truncated`
    examples, `empty_after_truncation` (nothing left to train: kept out), `examples` kept."""

    read: int = 0
    rows: int = 0  # conversations encoded (after selection)
    examples: int = 0
    truncated: int = 0
    empty_after_truncation: int = 0
    split: int = 0
    skipped: Counter = field(default_factory=Counter)
    repaired: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        out = []
        if self.truncated:
            out.append(f"{self.truncated} example(s) truncated to max_length")
        if self.empty_after_truncation:
            out.append(
                f"{self.empty_after_truncation} example(s) left with no trained token after truncation "
                "(kept out of training)"
            )
        if self.split:
            out.append(f"split {self.split} long conversation(s) into blocks of whole rounds")
        out += [f"repaired {n} row(s): {how}" for how, n in sorted(self.repaired.items())]
        out += [f"skipped {n} row(s): {reason}" for reason, n in sorted(self.skipped.items())]
        return out

    def as_dict(self) -> dict:
        return {"read": self.read, "kept": self.examples, "repaired": dict(self.repaired),
                "skipped": dict(self.skipped), "split": self.split, "truncated": self.truncated,
                "untrainable": self.empty_after_truncation}


_SPECS: dict[str, TaskSpec] = {}
VARIANT_OF: dict[str, str] = {}  # a registered variant of a task or mixture -> the name it was made from


def output_features(tokenizer_path: str | None = None) -> dict[str, seqio.Feature]:
    """`tokens` (our vocabulary) and `loss_mask` (0/1 per token)."""
    return {
        "tokens": seqio.Feature(get_vocabulary(tokenizer_path), add_eos=False, dtype=tf.int32),
        "loss_mask": seqio.Feature(seqio.PassThroughVocabulary(2), add_eos=False, dtype=tf.int32),
    }


def read_conversations(spec: TaskSpec, policy: BadRowPolicy | None = None, shuffle_seed: int | None = None
                       ) -> Iterator[Conversation]:
    """The source's Conversations for a spec (hub, local files, or built-in synthetic rows)."""
    files: list[str] | None
    if spec.data_files == (BUILTIN,):
        files = synthetic.ensure_synthetic(spec.source)
    else:
        files = list(spec.data_files) if spec.data_files is not None else None
    return sources.load_conversations(spec.source, files, policy=policy, shuffle_seed=shuffle_seed,
                                      **dict(spec.source_options))


def subset_seed(seed: int, task: str) -> int:
    """The seed of a task's subset draw: a function of the run's data seed and the dataset alone, so every
    mixture holding the dataset draws the same subset, and a smaller subset is a prefix of a larger one."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{base_name(task)}".encode()).digest()[:8], "little")


def encoded_examples(name: str, count: int | None = None, seed: int | None = None) -> list[dict]:
    """Encoded examples of task `name` (cached per process), see `task_report`.

    `seed` None: every example, in row order. With `seed`: the first `count` trainable examples in the
    task's seeded random order (`subset_seed`), read, rendered and tokenized only as far as needed."""
    return _stream(name, get_spec(name), seed).take(count)


def task_report(name: str, seed: int | None = None) -> TaskReport:
    """What happened to the rows of task `name` so far (the whole task when `seed` is None)."""
    stream = _stream(name, get_spec(name), seed)
    if seed is None:
        stream.take(None)
    return stream.report


class _Stream:
    """A task's examples, encoded as they are asked for (see `encoded_examples`)."""

    def __init__(self, name: str, spec: TaskSpec, seed: int | None):
        self.spec, self.report, self.examples = spec, TaskReport(), []
        self.tokenizer = Tokenizer.load(spec.tokenizer)
        self.template = spec.template or DEFAULT_TEMPLATE
        self.max_length = spec.max_length or DEFAULT_MAX_LENGTH
        self.policy = BadRowPolicy(spec.on_bad_row)
        shuffle = subset_seed(seed, name) if seed is not None and spec.selection is None else None
        conversations = read_conversations(spec, self.policy, shuffle)
        if spec.selection is not None:
            conversations = iter(_apply_selection(list(conversations), spec.selection, self.tokenizer))
        self._conversations = conversations
        self._split_long = sources.get_source(spec.source).split_long

    def take(self, count: int | None) -> list[dict]:
        while count is None or len(self.examples) < count:
            conv = next(self._conversations, None)
            if conv is None:
                break
            self._add(conv)
        report = self.report
        report.read, report.skipped, report.repaired = self.policy.read, Counter(self.policy.skipped), Counter(
            self.policy.repaired)
        report.examples = len(self.examples)
        return self.examples[:count] if count is not None else list(self.examples)

    def _add(self, conv: Conversation) -> None:
        enc = encode_conversation(conv, self.template, self.tokenizer, max_length=self.max_length)
        pieces = [(conv, enc)]
        if enc.truncated and self._split_long and conv.rounds > 1:
            pieces = [(block, encode_conversation(block, self.template, self.tokenizer, max_length=self.max_length))
                      for block in self._blocks(conv)]
            self.report.split += len(pieces) > 1
        for piece, piece_enc in pieces:
            self.report.rows += 1
            self.report.truncated += int(piece_enc.truncated)
            if piece_enc.n_trained == 0:
                self.report.empty_after_truncation += 1
                continue
            self.examples.append({"tokens": piece_enc.tokens, "loss_mask": piece_enc.loss_mask,
                                  "conversation": piece.to_json(), "id": piece.id})

    def _blocks(self, conv: Conversation) -> list[Conversation]:
        """Blocks of whole rounds within max_length tokens (the run's tokenizer and template), as Vicuna
        splits ShareGPT; ids get a "-b<k>" suffix."""
        from instructjax.data.adapters import split_blocks
        from instructjax.data.encode import count_tokens

        def length(messages):
            return count_tokens(Conversation(messages, conv.source, conv.id), self.template, self.tokenizer)

        blocks = split_blocks(conv.messages, self.max_length, length)
        if len(blocks) == 1:
            return [conv]
        return [Conversation(b, conv.source, f"{conv.id}-b{k}", {**conv.meta, "block": k, "blocks": len(blocks)})
                for k, b in enumerate(blocks)]


_STREAMS: dict[tuple, _Stream] = {}


def _stream(name: str, spec: TaskSpec, seed: int | None) -> _Stream:
    key = (name, spec, seed)
    if key not in _STREAMS:
        _STREAMS[key] = _Stream(name, spec, seed)
    return _STREAMS[key]


def _apply_selection(convs: list[Conversation], sel: SelectionSpec, tokenizer: Tokenizer) -> list[Conversation]:
    """The conversations `sel` keeps, in the selection's order (rows, i.e. report.rows, count only these)."""
    from instructjax.data.embeddings import MODEL_ENCODERS, get_encoder
    from instructjax.data.encode import response_token_length
    from instructjax.data.selection import select

    encoder = sel.encoder
    if encoder in MODEL_ENCODERS:
        if sel.encoder_model is None:
            raise ConfigError(f"selection encoder {encoder!r} embeds with a model: train through a config with "
                              "model.init_from, or set selection.encoder_model")
        encoder = get_encoder(encoder, model=sel.encoder_model, tokenizer=sel.encoder_tokenizer)
    chosen = select(
        convs, sel.method, sel.k, seed=sel.seed, score_key=sel.score_key, num_clusters=sel.num_clusters,
        encoder=encoder, response_length=lambda c: response_token_length(c, tokenizer),
    )
    return [s.conversation for s in chosen]


def _dataset_fn(name: str):
    def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
        del split, shuffle_files, seed  # one split; order is decided by the pipeline's seed
        signature = {
            "tokens": tf.TensorSpec([None], tf.int32),
            "loss_mask": tf.TensorSpec([None], tf.int32),
            "conversation": tf.TensorSpec([], tf.string),
            "id": tf.TensorSpec([], tf.string),
        }
        return tf.data.Dataset.from_generator(lambda: iter(encoded_examples(name)), output_signature=signature)

    return dataset_fn


def register_task(name: str, spec: TaskSpec, *, overwrite: bool = True) -> seqio.Task:
    """Register `name` in `seqio.TaskRegistry` reading and encoding data as `spec` says."""
    if spec.source not in sources.SOURCES:
        known = ", ".join(sorted(sources.SOURCES))
        raise ConfigError(f"task {name!r}: unknown source {spec.source!r} (known: {known})")
    if overwrite and name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
        for key in [k for k in _STREAMS if k[0] == name]:
            del _STREAMS[key]
    _SPECS[name] = spec
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(_dataset_fn(name), splits=["train"]),
        preprocessors=[],
        output_features=output_features(spec.tokenizer),
    )


def is_task(name: str) -> bool:
    """True for a task registered through `register_task` (not a user's plain seqio Task)."""
    return name in _SPECS


def get_spec(name: str) -> TaskSpec:
    """The TaskSpec a task was registered with (only tasks registered through `register_task`)."""
    if name not in _SPECS:
        raise ConfigError(f"{name!r} is not an instructjax task (registered: {len(_SPECS)} tasks)")
    return _SPECS[name]


def with_options(name: str, **changes) -> str:
    """Register (once) and return a variant of task `name` with TaskSpec fields changed."""
    spec = dataclasses.replace(get_spec(name), **changes)
    if spec == get_spec(name):
        return name
    variant = f"{base_name(name)}.{hashlib.sha1(repr(spec).encode()).hexdigest()[:8]}"
    if variant not in _SPECS:
        register_task(variant, spec)
        VARIANT_OF[variant] = base_name(name)
    return variant


def base_name(name: str) -> str:
    """The name a variant of a task or mixture (`with_options`, `mixtures.remix`) was made from: what
    reports and metrics show."""
    return VARIANT_OF.get(name, name)


def register_builtin_tasks() -> None:
    """Every source as `NAME` (hub) and `NAME_builtin` (synthetic rows shipped with the package)."""
    for source in sources.SOURCES:
        if source not in _SPECS:
            register_task(source, TaskSpec(source=source), overwrite=False)
        if source + BUILTIN_SUFFIX not in _SPECS:
            register_task(source + BUILTIN_SUFFIX, TaskSpec(source=source, data_files=(BUILTIN,)), overwrite=False)


register_builtin_tasks()
