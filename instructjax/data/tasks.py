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
import functools
import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import datasets
import numpy as np
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
    """What happened to the rows of one task: nothing is dropped without being counted here."""

    rows: int = 0
    examples: int = 0
    truncated: int = 0
    empty_after_truncation: int = 0
    skipped: Counter = field(default_factory=Counter)

    def lines(self) -> list[str]:
        out = []
        if self.truncated:
            out.append(f"{self.truncated} example(s) truncated to max_length")
        if self.empty_after_truncation:
            out.append(
                f"{self.empty_after_truncation} example(s) left with no trained token after truncation "
                "(kept out of training)"
            )
        out += [f"skipped {n} bad row(s): {reason}" for reason, n in sorted(self.skipped.items())]
        return out


_SPECS: dict[str, TaskSpec] = {}
_REPORTS: dict[str, TaskReport] = {}
VARIANT_OF: dict[str, str] = {}  # a registered variant of a task or mixture -> the name it was made from


def output_features(tokenizer_path: str | None = None) -> dict[str, seqio.Feature]:
    """`tokens` (our vocabulary) and `loss_mask` (0/1 per token)."""
    return {
        "tokens": seqio.Feature(get_vocabulary(tokenizer_path), add_eos=False, dtype=tf.int32),
        "loss_mask": seqio.Feature(seqio.PassThroughVocabulary(2), add_eos=False, dtype=tf.int32),
    }


def read_conversations(spec: TaskSpec, policy: BadRowPolicy | None = None) -> Iterator[Conversation]:
    """The source's Conversations for a spec (hub, local files, or built-in synthetic rows)."""
    files: list[str] | None
    if spec.data_files == (BUILTIN,):
        files = synthetic.ensure_synthetic(spec.source)
    else:
        files = list(spec.data_files) if spec.data_files is not None else None
    return sources.load_conversations(spec.source, files, policy=policy, **dict(spec.source_options))


def encoded_examples(name: str) -> list[dict[str, np.ndarray | str]]:
    """Read and encode every row of task `name` (cached per process); see `task_report(name)`."""
    return list(_encode_task(name, get_spec(name)))


@functools.cache
def _encode_task(name: str, spec: TaskSpec) -> tuple[dict, ...]:
    tokenizer = Tokenizer.load(spec.tokenizer)
    policy = BadRowPolicy(spec.on_bad_row)
    report = TaskReport()
    out = []
    conversations = read_conversations(spec, policy)
    if spec.selection is not None:
        conversations = _apply_selection(list(conversations), spec.selection, tokenizer)
    template, max_length = spec.template or DEFAULT_TEMPLATE, spec.max_length or DEFAULT_MAX_LENGTH
    for conv in conversations:
        report.rows += 1
        enc = encode_conversation(conv, template, tokenizer, max_length=max_length)
        report.truncated += int(enc.truncated)
        if enc.n_trained == 0:
            report.empty_after_truncation += 1
            continue
        out.append(
            {
                "tokens": enc.tokens,
                "loss_mask": enc.loss_mask,
                "conversation": conv.to_json(),
                "id": conv.id,
            }
        )
    report.examples = len(out)
    report.skipped = Counter(policy.skipped)
    _REPORTS[name] = report
    return tuple(out)


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


def task_report(name: str) -> TaskReport:
    """The report of the last encoding of task `name` (encodes it if needed)."""
    if name not in _REPORTS:
        encoded_examples(name)
    return _REPORTS[name]


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
        _encode_task.cache_clear()
        _REPORTS.pop(name, None)
    _SPECS[name] = spec
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(_dataset_fn(name), splits=["train"]),
        preprocessors=[],
        output_features=output_features(spec.tokenizer),
    )


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
