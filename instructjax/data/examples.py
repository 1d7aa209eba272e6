"""A task's examples: its rows read, rendered with the chat template, tokenized with the loss mask.

`encoded_examples(name)` gives every example of a task in row order; `encoded_examples(name, count,
seed)` its subset: the first `count` trainable examples in a random order seeded by the run's data seed
and the dataset alone (`specs.subset_seed`), so every mixture holding a dataset draws the same subset, a smaller
subset is a prefix of a larger one, and only the rows taken are read, rendered and tokenized
(`in_file_order`: the same subset, its members in row order). Examples are made as they are asked for, in
batches over every core (`encode_pool`) yet exactly as one process encoding one conversation at a time
makes them, and kept per process, and on disk (`data.cache`: a restart reads them back instead of
tokenizing again). A read that fails is not kept: asking again reads again.
`task_report(name)` says what happened to the rows: nothing is dropped without being counted there. No seqio
or TensorFlow here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

from instructjax.core import storage
from instructjax.core.errors import BadRowPolicy, ConfigError
from instructjax.data import cache, sources, specs, synthetic
from instructjax.data.embeddings import MODEL_ENCODERS
from instructjax.data.encode_pool import Encoder, Job, Result
from instructjax.data.schema import Conversation
from instructjax.data.specs import BUILTIN, SelectionSpec, TaskSpec
from instructjax.data.templates import DEFAULT_TEMPLATE, get_template
from instructjax.data.tokenizer import Tokenizer

DEFAULT_MAX_LENGTH = 2048  # outside a run; a run truncates at its data.seq_len


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


def read_conversations(spec: TaskSpec, policy: BadRowPolicy | None = None, shuffle_seed: int | None = None,
                       positions: list[int] | None = None, total: list[int] | None = None) -> Iterator[Conversation]:
    """The source's Conversations for a spec (hub, local files, or built-in synthetic rows); `positions` and
    `total`: see `sources.load_conversations`."""
    files: list[str] | None
    if spec.data_files == (BUILTIN,):
        files = synthetic.ensure_synthetic(spec.source)
    else:
        files = list(spec.data_files) if spec.data_files is not None else None
    return sources.load_conversations(spec.source, files, policy=policy, shuffle_seed=shuffle_seed,
                                      positions=positions, total=total, **dict(spec.source_options))


def encoded_examples(name: str, count: int | None = None, seed: int | None = None, *,
                     in_file_order: bool = False) -> list[dict]:
    """Encoded examples of task `name` (cached per process), see `task_report`.

    `seed` None: every example, in row order. With `seed`: the first `count` trainable examples in the
    task's seeded random order (`specs.subset_seed`), read, rendered and tokenized only as far as needed;
    `in_file_order`: the same examples in row order (rows by their ordinal over the task's files, a row's
    examples in their own order). A selection task is never shuffled: its order is the selection's.
    Cached on disk when the task reads local files (see `data.cache`)."""
    examples = _encoded_examples(name, count, seed)
    positions = _STREAMS[(name, specs.task(name), seed)].positions if seed is not None else None
    if in_file_order and positions is not None:
        order = sorted(range(len(examples)), key=positions.__getitem__)  # stable: a row's examples keep theirs
        return [examples[i] for i in order]
    return examples


def _encoded_examples(name: str, count: int | None, seed: int | None) -> list[dict]:
    spec = specs.task(name)
    known = _STREAMS.get((name, spec, seed))
    if isinstance(known, _Cached) and (count is None or count > len(known.examples)):
        del _STREAMS[(name, spec, seed)]  # a larger subset than the cached one: read on
    elif known is not None:
        return _take(name, spec, seed, count)
    where = _cache_path(name, spec, count, seed)
    cached = None
    if where is not None:
        from instructjax.data import shared_cache

        CACHE_FILES[name] = where
        cached = shared_cache.load_or_build(name, spec, seed, count, where)  # None: this host alone
        cached = cached if cached is not None else cache.load(where)
    if cached is not None:
        examples, report = cached
        _STREAMS[(name, spec, seed)] = _Cached(examples, report)
        FROM_CACHE.add(name)
        return examples
    examples = _take(name, spec, seed, count)
    if where is not None:
        save(where, _STREAMS[(name, spec, seed)], examples)
    return examples


CACHE_FILES: dict = {}  # task -> the cache file its examples were last asked from (`data prepare` lists them)
FROM_CACHE: set[str] = set()  # the tasks whose examples came from their cache file


def cache_report(tasks: list[str]) -> str:
    """How the run's `tasks` got their examples: from the tokenized cache, or tokenized by this process."""
    from instructjax.data.encode_pool import ENCODED

    where = cache.cache_dir()
    if where is None:
        return f"the tokenized cache is off; {ENCODED[0]:,} conversation(s) tokenized here"
    read = sum(t in FROM_CACHE for t in tasks)
    return (f"{read} of {len(tasks)} task(s) read from the tokenized cache ({where}); {ENCODED[0]:,} "
            "conversation(s) tokenized here")


def save(where, stream: _Stream, examples: list[dict]) -> None:
    """Cache the examples `stream` took, with its report."""
    report = stream.report
    extra = {} if stream.positions is None else {"positions": stream.positions[: len(examples)]}
    cache.save(where, examples, {**report.as_dict(), "rows": report.rows, **extra})


def _take(name: str, spec: TaskSpec, seed: int | None, count: int | None) -> list[dict]:
    """`take(count)` of the task's stream; a read that fails is dropped, so asking again reads again (and
    raises again) rather than returning what was read before the failure."""
    stream = _stream(name, spec, seed)
    try:
        return stream.take(count)
    except BaseException:
        _STREAMS.pop((name, spec, seed), None)
        raise


def _cache_path(name: str, spec: TaskSpec, count: int | None, seed: int | None):
    """Where this task's examples are cached (None: cache off, or a source with neither files nor a hub dataset).
    A hub dataset is known by what `datasets` names its prepared files after (its files' revision)."""
    if cache.cache_dir() is None:
        return None
    hub = None
    if spec.data_files is None:
        try:  # offline with nothing downloaded: no identity, no cache (the read then says what is missing)
            files, hub = [], sources.hub_identity(spec.source)
        except Exception:  # noqa: BLE001
            hub = None
        if hub is None:
            return None
    elif spec.data_files == (BUILTIN,):
        files = synthetic.ensure_synthetic(spec.source)
    else:  # a directory stands for its files (a pooled source's parts): each one's content is in the key
        files = sources.local_files(spec.data_files, spec.source)
    if not all(storage.path(f).is_file() for f in files):
        return None
    template = get_template(spec.template or DEFAULT_TEMPLATE)
    sel = spec.selection
    weights = (cache.model_digest(sel.encoder_model) if sel is not None and sel.encoder in MODEL_ENCODERS
               and sel.encoder_model and storage.path(sel.encoder_model).is_dir() else None)  # fmt: skip
    key = cache.key(files=files, spec_repr=repr(spec), tokenizer_fingerprint=Tokenizer.load(spec.tokenizer).fingerprint,
                    template_repr=_template_identity(template), max_length=spec.max_length or DEFAULT_MAX_LENGTH,
                    count=count, seed=seed, encoder_weights=weights, hub=hub)  # fmt: skip
    return cache.path_of(name, key)


def _template_identity(template) -> str:
    """A template as the cache key sees it (its fields; a function by its qualified name, not its address)."""
    fields = [f"{k}={getattr(v, '__qualname__', v)!r}" for k, v in sorted(vars(template).items())]
    return f"{type(template).__qualname__}({', '.join(fields)})"


class _Cached:
    """A task's examples read back from the cache (stands where its `_Stream` would; `cache.CachedExamples`
    makes each example when it is asked for)."""

    def __init__(self, examples: cache.CachedExamples, report: dict):
        self.examples = examples
        self.report = TaskReport(read=report["read"], rows=report["rows"], examples=report["kept"], repaired=Counter(report["repaired"]),
                                 skipped=Counter(report["skipped"]), split=report["split"],
                                 truncated=report["truncated"], empty_after_truncation=report["untrainable"])
        self.positions: list[int] | None = report.get("positions")

    def take(self, count: int | None) -> cache.CachedExamples:
        return self.examples[:count]


def task_report(name: str, seed: int | None = None) -> TaskReport:
    """What happened to the rows of task `name` so far (the whole task when `seed` is None)."""
    spec = specs.task(name)
    if seed is None:
        _take(name, spec, seed, None)
    return _stream(name, spec, seed).report


class _Read(NamedTuple):
    """What the policy had counted when a conversation was read (what the report says if the caller's
    examples end with it), and its place in row order; `error`: the read failed there."""

    read: int
    skipped: dict
    repaired: dict
    at: int | None = None
    error: Exception | None = None


def conversation_items(name: str, spec: TaskSpec, seed: int | None, total: list[int] | None = None
                       ) -> Iterator[tuple[Conversation | None, _Read]]:
    """The task's conversations in the stream's order, each with `_Read` taken right after it was read; then
    (None, counted at the end, or the read's error). `total` gets the rows the read will visit, once known."""
    policy = BadRowPolicy(spec.on_bad_row)
    shuffle = specs.subset_seed(seed, name) if seed is not None and spec.selection is None else None
    read_at: list[int] | None = [] if shuffle is not None else None  # each conversation's place in row order

    def counted(error: Exception | None = None) -> _Read:
        return _Read(policy.read, dict(policy.skipped), dict(policy.repaired), read_at[-1] if read_at else None,
                     error)

    conversations = read_conversations(spec, policy, shuffle, read_at, total)
    try:
        if spec.selection is not None:  # the selection's order (it reads every row first)
            conversations = iter(_apply_selection(list(conversations), spec.selection, Tokenizer.load(spec.tokenizer)))
    except Exception as exc:  # noqa: BLE001 - raised when the stream is first taken from
        yield None, counted(exc)
        return
    while True:
        try:
            conv = next(conversations, None)
        except Exception as exc:  # noqa: BLE001 - raised when the conversations before it are taken
            yield None, counted(exc)
            return
        yield conv, counted()
        if conv is None:
            return


def job_of(spec: TaskSpec) -> Job:
    """How the task's conversations are encoded."""
    return Job(spec.template or DEFAULT_TEMPLATE, Tokenizer.load(spec.tokenizer).path,
               spec.max_length or DEFAULT_MAX_LENGTH, sources.get_source(spec.source).split_long)


class _Stream:
    """A task's examples, encoded as they are asked for (see `encoded_examples`), in batches over every core
    (`encode_pool.Encoder`) and exactly as one process encoding one conversation at a time makes them: the
    conversations are read ahead, each with what the policy had counted when it was read (`_Read`), and the
    report, the positions and a read error follow the last conversation taken, not the last one read.
    `results`: where the (`_Read`, result) of each conversation come from instead (`shared_cache`: shards)."""

    def __init__(self, name: str, spec: TaskSpec, seed: int | None, results=None):
        self.name, self.report, self.examples = name, TaskReport(), []
        # a shuffled read notes each example's conversation's place in row order in `positions`
        self.positions: list[int] | None = [] if seed is not None and spec.selection is None else None
        self._last = _Read(0, {}, {})
        self.total: list[int] = []  # the rows the read will visit (for progress)
        self._results = results if results is not None else Encoder(
            job_of(spec), conversation_items(name, spec, seed, self.total))

    def take(self, count: int | None) -> list[dict]:
        while count is None or len(self.examples) < count:
            got = self._results.next(None if count is None else count - len(self.examples))
            if got is None:
                break
            self._last, result = got
            if self._last.error is not None:
                raise self._last.error
            if result is None:
                break
            self._add(result)
            if _PROGRESS is not None:
                _PROGRESS(self.name, *self.progress(count))
        report, last = self.report, self._last
        report.read, report.skipped, report.repaired = last.read, Counter(last.skipped), Counter(last.repaired)
        report.examples = len(self.examples)
        return self.examples[:count] if count is not None else list(self.examples)

    def progress(self, count: int | None) -> tuple[int, int | None]:
        """(done, total): examples of `count`, or rows read of the rows there are."""
        if count is not None:
            return min(len(self.examples), count), count
        return self._last.read, self.total[0] if self.total else None

    def _add(self, result: Result) -> None:
        pieces, split = result
        self.report.split += split
        for piece in pieces:
            self.report.rows += 1
            self.report.truncated += int(piece.truncated)
            if piece.n_trained == 0:
                self.report.empty_after_truncation += 1
                continue
            self.examples.append({"tokens": piece.tokens, "loss_mask": piece.loss_mask,
                                  "conversation": piece.conversation, "id": piece.id})
            if self.positions is not None:
                self.positions.append(self._last.at)


_PROGRESS: Callable[[str, int, int | None], None] | None = None


@contextmanager
def progress(callback: Callable[[str, int, int | None], None]) -> Iterator[None]:
    """Within: `callback(task, done, total)` as a task's examples are made (done: examples of its count, or rows
    read of the rows there are; total None: not known)."""
    global _PROGRESS
    _PROGRESS = callback
    try:
        yield
    finally:
        _PROGRESS = None


_STREAMS: dict[tuple, _Stream] = {}


def _stream(name: str, spec: TaskSpec, seed: int | None) -> _Stream:
    key = (name, spec, seed)
    if key not in _STREAMS:
        _STREAMS[key] = _Stream(name, spec, seed)
    return _STREAMS[key]


def _apply_selection(convs: list[Conversation], sel: SelectionSpec, tokenizer: Tokenizer) -> list[Conversation]:
    """The conversations `sel` keeps, in the selection's order (rows, i.e. report.rows, count only these)."""
    from instructjax.data.embeddings import get_encoder
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
