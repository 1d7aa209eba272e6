"""A task's examples: its rows read, rendered with the chat template, tokenized with the loss mask.

`encoded_examples(name)` gives every example of a task in row order; `encoded_examples(name, count,
seed)` its subset: the first `count` trainable examples in a random order seeded by the run's data seed
and the dataset alone (`specs.subset_seed`), so every mixture holding a dataset draws the same subset, a smaller
subset is a prefix of a larger one, and only the rows taken are read, rendered and tokenized
(`in_file_order`: the same subset, its members in row order). Examples are made as they are asked for, in
batches over every core (`encoding.pool`) yet exactly as one process encoding one conversation at a time
makes them, and kept per process, and on disk (`data.cache`: a restart reads them back instead of
tokenizing again; once written, this process too reads its examples from the file, their sizes from its
arrays). A read that fails is not kept: asking again reads again.
`task_report(name)` says what happened to the rows: nothing is dropped without being counted there. What a
pipeline's calls read, tokenized and cached is counted into the `PipelineStats` they pass (`cache_report` says it).
No seqio or TensorFlow here.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable

from instructjax.core import hosts, storage
from instructjax.core.context import current
from instructjax.data import cache
from instructjax.data.blends import specs
from instructjax.data.blends.specs import BUILTIN, TaskSpec
from instructjax.data.encoding.templates import DEFAULT_TEMPLATE, MODEL_TEMPLATE, get_template
from instructjax.data.encoding.tokenizer import Tokenizer
from instructjax.data.sources import synthetic
from instructjax.data.sources.data_files import local_files
from instructjax.data.sources.hub import hub_identity
from instructjax.data.sources.rows import PipelineStats
from instructjax.data.tokenized import shared
from instructjax.data.tokenized.stream import (
    DEFAULT_MAX_LENGTH,
    TaskReport,
    TaskStream,
    save,
)


def encoded_examples(name: str, count: int | None = None, seed: int | None = None, *,
                     in_file_order: bool = False, spec: TaskSpec | None = None,
                     stats: PipelineStats | None = None, then: Callable[[], None] | None = None) -> list[dict]:
    """Encoded examples of task `name` (cached per process), see `task_report`.

    `seed` None: every example, in row order. With `seed`: the first `count` trainable examples in the
    task's seeded random order (`specs.subset_seed`), read, rendered and tokenized only as far as needed;
    `in_file_order`: the same examples in row order (rows by their ordinal over the task's files, a row's
    examples in their own order). A selection task is never shuffled: its order is the selection's.
    Cached on disk when the task reads local files (see `data.cache`). `spec`: the task's, as the caller
    resolved it (else looked up by name). `stats`: the caller's pipeline's, which counts what this call reads,
    tokenizes and caches. `then`: the caller's next work, called once the rows this call needs are read (see
    `TaskStream.take`), e.g. `read_ahead` of the next task."""
    spec = spec or specs.task(name)
    examples = _encoded_examples(name, spec, count, seed, stats if stats is not None else PipelineStats(), then)
    positions = streams()[(name, spec, seed)].positions if seed is not None else None
    if in_file_order and positions is not None:
        order = sorted(range(len(examples)), key=positions.__getitem__)  # stable: a row's examples keep theirs
        return [examples[i] for i in order]
    return examples


def _encoded_examples(name: str, spec: TaskSpec, count: int | None, seed: int | None, stats: PipelineStats,
                      then: Callable[[], None] | None = None) -> list[dict]:
    """`encoded_examples` in cache order: examples this process holds, the cache file's, or read (and cached)."""
    known = streams().get((name, spec, seed))
    if isinstance(known, _Cached) and (count is None or count > len(known.examples)):
        del streams()[(name, spec, seed)]  # a larger subset than the cached one: read on
    elif known is not None:
        if isinstance(known, _Cached):  # kept from an earlier call, maybe another pipeline's
            stats.cache_files[name] = known.where
            if known.read_back:
                stats.from_cache.add(name)
        return _take(name, spec, seed, count, stats, then)
    where = _cache_path(name, spec, count, seed)
    cached = None
    if where is not None:
        stats.cache_files[name] = where
        cached = shared.load_or_build(name, spec, seed, count, where, stats)  # None: this host alone
        cached = cached if cached is not None else cache.load(where)
    if cached is not None:
        examples, report = cached
        streams()[(name, spec, seed)] = _Cached(examples, report, where, read_back=True)
        stats.from_cache.add(name)
        return examples
    examples = _take(name, spec, seed, count, stats, then)
    if where is not None:
        save(where, streams()[(name, spec, seed)], examples, stats)
        written = cache.load(where)  # from here on as a restart reads it: sizes known, tokens on disk, not in memory
        if written is not None:
            streams()[(name, spec, seed)] = _Cached(*written, where, read_back=False)
            return written[0]
    return examples


def read_ahead(name: str, spec: TaskSpec, count: int | None = None, seed: int | None = None) -> None:
    """Start reading and encoding task `name`'s examples (as `encoded_examples` with these arguments would) in the
    encoding pool, without waiting: the call for them later takes what is done. Nothing when this process holds
    them, the tokenized cache has them, the hosts of a launch build them together (`shared`), or the pool is not
    up. A read that fails here fails again, in its place, when the examples are asked for."""
    key = (name, spec, seed)
    if key in streams() or key in _ahead() or hosts.current() is not None:
        return
    try:
        where = _cache_path(name, spec, count, seed)
        if where is None or not where.exists():
            _ahead()[key] = TaskStream(name, spec, seed)
            _ahead()[key].read_ahead(count)
    except Exception:  # noqa: BLE001 - raised again where the examples are asked for
        _ahead().pop(key, None)


def cache_report(tasks: list[str], stats: PipelineStats) -> str:
    """How the run's `tasks` got their examples (`stats`: its pipeline's): from the tokenized cache, or tokenized
    by this process."""
    here = f"{stats.rows_read:,} row(s) read and {stats.conversations_tokenized:,} conversation(s) tokenized here"
    where = cache.cache_dir()
    if where is None:
        return f"the tokenized cache is off; {here}"
    read = sum(t in stats.from_cache for t in tasks)
    return f"{read} of {len(tasks)} task(s) read from the tokenized cache ({where}); {here}"


def _take(name: str, spec: TaskSpec, seed: int | None, count: int | None, stats: PipelineStats,
          then: Callable[[], None] | None = None) -> list[dict]:
    """`take(count)` of the task's stream (what it reads and tokenizes counted into `stats`); a read that fails is
    dropped, so asking again reads again (and raises again) rather than returning what was read before the
    failure."""
    stream = _stream(name, spec, seed)
    try:
        return stream.take(count, stats, then)
    except BaseException:
        streams().pop((name, spec, seed), None)
        raise


def cache_holds(name: str) -> bool:
    """Whether the tokenized cache holds a file of task `name`, or of a variant of it bound to a run
    (`name.<digest>`): a listing, nothing read or hashed (a hub dataset's identity is not looked up)."""
    where = cache.cache_dir()
    if where is None or not where.is_dir():
        return False
    stem = name.replace("/", "_")
    return any(p.name.startswith((f"{stem}-", f"{stem}.")) for p in where.iterdir())


def cached_file(name: str, spec: TaskSpec, count: int | None = None, seed: int | None = None):
    """The tokenized cache's file of task `name`'s examples (its subset of `count` drawn with `seed`) where the
    cache holds it, else None (a hub dataset's identity is looked up only where the cache holds a file of its
    name)."""
    if not cache_holds(name):
        return None
    where = _cache_path(name, spec, count, seed)
    return where if where is not None and where.exists() else None


def _cache_path(name: str, spec: TaskSpec, count: int | None, seed: int | None):
    """Where this task's examples are cached (None: cache off, or a source with neither files nor a hub dataset)."""
    if cache.cache_dir() is None:
        return None
    found = cache_key(name, spec, count, seed)
    return None if found is None else cache.path_of(name, found)


def cache_key(name: str, spec: TaskSpec, count: int | None, seed: int | None) -> str | None:
    """The key of this task's examples in the tokenized cache (`cache.key`; None: a source with neither files nor a
    hub dataset). A hub dataset is known by what `datasets` names its prepared files after (its files' revision)."""
    hub = None
    if spec.data_files is None:
        try:  # offline with nothing downloaded: no identity, no cache (the read then says what is missing)
            files, hub = [], hub_identity(spec.source)
        except Exception:  # noqa: BLE001
            hub = None
        if hub is None:
            return None
    elif spec.data_files == (BUILTIN,):
        files = synthetic.ensure_synthetic(spec.source)
    else:  # a directory stands for its files (a pooled source's parts): each one's content is in the key
        files = local_files(spec.data_files, spec.source)
    if not all(storage.path(f).is_file() for f in files):
        return None
    template = get_template(spec.template or DEFAULT_TEMPLATE)
    sel = spec.selection
    weights = (cache.model_digest(sel.encoder_model) if sel is not None and sel.with_model
               and sel.encoder_model and storage.path(sel.encoder_model).is_dir() else None)  # fmt: skip
    if weights is not None and sel.target and storage.path(sel.target).is_file():  # a targeted selection's target
        weights += storage.digest(sel.target)
    tokenizer = Tokenizer.load(spec.tokenizer)
    return cache.key(files=files, spec_repr=repr(spec), tokenizer_fingerprint=tokenizer.fingerprint,
                     template_repr=_template_identity(template, tokenizer),
                     max_length=spec.max_length or DEFAULT_MAX_LENGTH, count=count, seed=seed, encoder_weights=weights,
                     hub=hub)  # fmt: skip


def _template_identity(template, tokenizer: Tokenizer) -> str:
    """A template as the cache key sees it (its fields; a function by its qualified name, not its address; the
    model's own template by its Jinja text)."""
    fields = [f"{k}={getattr(v, '__qualname__', v)!r}" for k, v in sorted(vars(template).items())]
    if template.name == MODEL_TEMPLATE:
        fields.append(hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()[:16])
    return f"{type(template).__qualname__}({', '.join(fields)})"


class _Cached:
    """A task's examples read back from the cache file `where` (stands where its `TaskStream` would;
    `cache.CachedExamples` makes each example when it is asked for); `read_back`: found there, not written here."""

    def __init__(self, examples: cache.CachedExamples, report: dict, where, *, read_back: bool):
        self.examples, self.where, self.read_back = examples, where, read_back
        self.report = TaskReport(read=report["read"], rows=report["rows"], examples=report["kept"], repaired=Counter(report["repaired"]),
                                 skipped=Counter(report["skipped"]), split=report["split"],
                                 truncated=report["truncated"], empty_after_truncation=report["untrainable"])
        self.positions: list[int] | None = report.get("positions")

    def take(self, count: int | None, stats: PipelineStats | None = None,
             then: Callable[[], None] | None = None) -> cache.CachedExamples:
        if then is not None:  # nothing to read: the caller's next work starts now
            then()
        return self.examples[:count]


def task_report(name: str, seed: int | None = None, *, spec: TaskSpec | None = None,
                stats: PipelineStats | None = None) -> TaskReport:
    """What happened to the rows of task `name` so far (the whole task when `seed` is None: read to its end, counted
    into `stats`); `spec`: the task's, as the caller resolved it (else looked up by name)."""
    spec = spec or specs.task(name)
    if seed is None:
        _take(name, spec, seed, None, stats if stats is not None else PipelineStats())
    return _stream(name, spec, seed).report


def streams() -> dict[tuple, TaskStream]:
    """The current command's task streams and examples read so far, by (task, spec, seed) (`core.context`)."""
    return current().slot("data.streams", lambda _: {})


def _ahead() -> dict[tuple, TaskStream]:
    """Task streams `read_ahead` started, by (task, spec, seed), until their examples are asked for."""
    return current().slot("data.read_ahead", lambda _: {})


def _stream(name: str, spec: TaskSpec, seed: int | None) -> TaskStream:
    key = (name, spec, seed)
    if key not in streams():
        streams()[key] = _ahead().pop(key, None) or TaskStream(name, spec, seed)
    return streams()[key]
