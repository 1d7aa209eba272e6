"""A task's examples as they are encoded: its conversations read (and selected), in the stream's order, encoded
in batches over every core yet exactly as one process encoding one conversation at a time makes them, with
the report of what happened to the rows (`TaskReport`). `examples` keeps these streams and the cache;
`shared` replays one from pieces that several hosts encoded."""

from __future__ import annotations

import importlib
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from instructjax.core.context import current
from instructjax.core.errors import BadRowPolicy, ConfigError, DataError
from instructjax.data import cache
from instructjax.data.blends import specs
from instructjax.data.blends.specs import BUILTIN, TaskSpec
from instructjax.data.encoding.encode import response_token_length
from instructjax.data.encoding.pool import Encoder, Example, Job, Result
from instructjax.data.encoding.templates import DEFAULT_TEMPLATE
from instructjax.data.encoding.tokenizer import Tokenizer
from instructjax.data.schema import Conversation
from instructjax.data.selection.embeddings import MODEL_ENCODERS, get_encoder
from instructjax.data.sources import load, registry, rows, synthetic
from instructjax.data.sources.row_read import RowRead
from instructjax.data.sources.rows import PipelineStats

DEFAULT_MAX_LENGTH = 2048  # outside a run; a run truncates at its data.seq_len


PROMPT_TOO_LONG = "prompt_over_max_length"  # a verifiable prompt longer than the row: skipped, counted


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

    def unusable(self, task: str) -> ConfigError:
        """The one line for a task that kept no example: what was read, and why each row was left out."""
        why = "; ".join(self.lines()) or "no row to read"
        return ConfigError(f"task {task!r} has no usable examples: {self.read:,} row(s) read, none kept ({why})")

    def as_dict(self) -> dict:
        return {"read": self.read, "kept": self.examples, "repaired": dict(self.repaired),
                "skipped": dict(self.skipped), "split": self.split, "truncated": self.truncated,
                "untrainable": self.empty_after_truncation}


def read_conversations(spec: TaskSpec, policy: BadRowPolicy | None = None, shuffle_seed: int | None = None,
                       positions: list[int] | None = None, total: list[int] | None = None,
                       share: rows.Share = rows.alone, stats: PipelineStats | None = None) -> Iterator[Conversation]:
    """The source's Conversations for a spec (hub, local files, or built-in synthetic rows); `positions`, `total`,
    `share` and `stats`: see `load.load_conversations`."""
    return load.load_conversations(spec.source, _files(spec), policy=policy, shuffle_seed=shuffle_seed,
                                   positions=positions, total=total, share=share, stats=stats,
                                   **dict(spec.source_options))


def task_row_read(name: str, spec: TaskSpec, seed: int | None, share: rows.Share = rows.alone,
                  stats: PipelineStats | None = None) -> tuple[RowRead, BadRowPolicy] | None:
    """The task's read as `conversation_items` makes it, as a `row_read.RowRead` (its rows, adapted when asked
    for, counted into `stats`; its pools drawn through `share`) with the policy that drawing its pools counted
    into; None where the read needs every row before the first conversation (a tree source, a selection)."""
    if spec.selection is not None or registry.get_source(spec.source).tree:
        return None
    policy = BadRowPolicy(spec.on_bad_row)
    read = load.open_row_read(spec.source, _files(spec), policy=policy, shuffle_seed=_shuffle_seed(name, spec, seed),
                              share=share, stats=stats, **dict(spec.source_options))  # fmt: skip
    return read, policy


def _files(spec: TaskSpec) -> list[str] | None:
    if spec.data_files == (BUILTIN,):
        return synthetic.ensure_synthetic(spec.source)
    return list(spec.data_files) if spec.data_files is not None else None


def _shuffle_seed(name: str, spec: TaskSpec, seed: int | None) -> int | None:
    """The seed of a subset's random row order (a selection has its own order)."""
    return specs.subset_seed(seed, name) if seed is not None and spec.selection is None else None


def save(where, stream: TaskStream, examples: list[dict], stats: PipelineStats) -> None:
    """Cache the examples `stream` took, with its report; the file is noted in `stats.written`."""
    report = stream.report
    extra = {} if stream.positions is None else {"positions": stream.positions[: len(examples)]}
    cache.save(where, examples, {**report.as_dict(), "rows": report.rows, **extra})
    stats.written.add(str(where))


class Read(NamedTuple):
    """What the policy had counted when a conversation was read (what the report says if the caller's
    examples end with it), and its place in row order; `error`: the read failed there."""

    read: int
    skipped: dict
    repaired: dict
    at: int | None = None
    error: Exception | None = None


def conversation_items(name: str, spec: TaskSpec, seed: int | None, total: list[int] | None = None,
                       share: rows.Share = rows.alone, stats: PipelineStats | None = None
                       ) -> Iterator[tuple[Conversation | None, Read]]:
    """The task's conversations in the stream's order, each with `Read` taken right after it was read; then
    (None, counted at the end, or the read's error). `total` gets the rows the read will visit, once known; `share`
    maps a tree source's adapting (over the hosts of a run); `stats` counts the rows read."""
    policy = BadRowPolicy(spec.on_bad_row)
    shuffle = _shuffle_seed(name, spec, seed)
    read_at: list[int] | None = [] if shuffle is not None else None  # each conversation's place in row order

    def counted(error: Exception | None = None) -> Read:
        return Read(policy.read, dict(policy.skipped), dict(policy.repaired), read_at[-1] if read_at else None,
                     error)

    conversations = read_conversations(spec, policy, shuffle, read_at, total, share, stats)
    try:
        if spec.selection is not None:  # the selection's order (it reads every row first)
            conversations = iter(_apply_selection(list(conversations), spec))
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
               spec.max_length or DEFAULT_MAX_LENGTH, registry.get_source(spec.source).split_long, spec.system_turn,
               spec.on_bad_row, completion_only=spec.preference, prompt_only=spec.verifiable)


class TaskStream:
    """A task's examples, encoded as they are asked for (see `encoded_examples`), in batches over every core
    (`encoding.pool.Encoder`) and exactly as one process encoding one conversation at a time makes them: the
    conversations are read ahead, each with what the policy had counted when it was read (`Read`), and the
    report, the positions and a read error follow the last conversation taken, not the last one read.
    `results`: where the (`Read`, result) of each conversation come from instead (`tokenized.shared`: pieces).
    `counted`: the rows it read and the conversations it tokenized, all along (`take` adds what was read since the
    last take, a `read_ahead` included, to its caller's stats: a stream kept between pipelines counts into the one
    that asked)."""

    def __init__(self, name: str, spec: TaskSpec, seed: int | None, results=None):
        self.name, self.report, self.examples = name, TaskReport(), []
        self.refused: Counter = Counter()  # conversations the chat template refused, skipped (on_bad_row: skip)
        # a shuffled read notes each example's conversation's place in row order in `positions`
        self.positions: list[int] | None = [] if seed is not None and spec.selection is None else None
        self._last = Read(0, {}, {})
        self.total: list[int] = []  # the rows the read will visit (for progress)
        self.counted = PipelineStats()
        self._credited = (0, 0)  # the rows read and conversations tokenized that a take has added to its caller's
        self.preference = spec.preference  # pairs: a chosen side's example waits here for its rejected side
        self.prompts = spec.verifiable  # verifiable prompts: no token is trained, a prompt over max_length is left out
        self._chosen: Example | str | None = None  # (a string: the reason the chosen side was skipped)
        self._results = results if results is not None else Encoder(
            job_of(spec), conversation_items(name, spec, seed, self.total, stats=self.counted), stats=self.counted)

    def take(self, count: int | None, stats: PipelineStats | None = None,
             then: Callable[[], None] | None = None) -> list[dict]:
        """The first `count` examples (None: every one), read and tokenized as far as needed; what that read and
        tokenized is added to `stats`. `then`: called once when the last conversation needed has been read (its
        batches still encoding in the pool): the caller's next work starts while they finish."""
        try:
            return self._take(count, then)
        finally:
            now = (self.counted.rows_read, self.counted.conversations_tokenized)
            if stats is not None:
                stats.rows_read += now[0] - self._credited[0]
                stats.conversations_tokenized += now[1] - self._credited[1]
            self._credited = now

    def read_ahead(self, count: int | None) -> None:
        """Start reading and encoding the first `count` examples (None: every one) in the pool, without waiting."""
        if isinstance(self._results, Encoder):
            self._results.read_ahead(None if count is None else count - len(self.examples))

    def _take(self, count: int | None, then: Callable[[], None] | None = None) -> list[dict]:
        while count is None or len(self.examples) < count:
            got = self._results.next(None if count is None else count - len(self.examples))
            if then is not None and (got is None or self._has_read(count)):
                then, call = None, then
                call()
            if got is None:
                break
            self._last, result = got
            if self._last.error is not None:
                raise self._last.error
            if result is None:
                break
            self._add(result)
            for callback in _watchers()[-1:]:
                callback(self.name, *self.progress(count))
        if then is not None:
            then()
        report, last = self.report, self._last
        report.read, report.repaired = last.read, Counter(last.repaired)
        report.skipped = Counter(last.skipped) + self.refused
        report.examples = len(self.examples)
        return self.examples[:count] if count is not None else list(self.examples)

    def _has_read(self, count: int | None) -> bool:
        """Whether the conversations read cover what `count` still needs (None: the read has reached its end)."""
        has_read = getattr(self._results, "has_read", None)  # `tokenized.shared`'s pieces: never read ahead
        return has_read is not None and has_read(None if count is None else count - len(self.examples))

    def progress(self, count: int | None) -> tuple[int, int | None]:
        """(done, total): examples of `count`, or rows read of the rows there are."""
        if count is not None:
            return min(len(self.examples), count), count
        return self._last.read, self.total[0] if self.total else None

    def _add(self, result: Result) -> None:
        if self.preference:
            return self._add_side(result)
        pieces, split, skipped = result
        if skipped:
            self.refused[skipped] += 1
        self.report.split += split
        for piece in pieces:
            self.report.rows += 1
            if self.prompts and piece.truncated:  # cut, it would ask for the wrong thing
                self.refused[PROMPT_TOO_LONG] += 1
                continue
            self.report.truncated += int(piece.truncated)
            if piece.n_trained == 0 and not self.prompts:
                self.report.empty_after_truncation += 1
                continue
            self.examples.append({"tokens": piece.tokens, "loss_mask": piece.loss_mask,
                                  "conversation": piece.conversation, "id": piece.id})
            if self.positions is not None:
                self.positions.append(self._last.at)


    def _add_side(self, result: Result) -> None:
        """One side of a preference pair (the source yields chosen, then rejected): the pair is one example, the
        chosen side's tokens then the rejected side's (`rejected_at`: where it begins), each with its completion's
        mask. A pair whose side the template refused, or that truncation left a side with nothing to train, is
        counted once and kept out."""
        pieces, _, skipped = result
        side: Example | str = pieces[0] if pieces else skipped
        expected = "/chosen" if self._chosen is None else "/rejected"
        if isinstance(side, Example) and not side.id.endswith(expected):
            raise DataError(f"task {self.name!r}: the preference source did not give the two sides of a pair in order "
                            f"(at {side.id!r})", reason="unpaired")
        if self._chosen is None:
            self._chosen = side
            return
        chosen, self._chosen = self._chosen, None
        if isinstance(side, str) or isinstance(chosen, str):
            self.refused[side if isinstance(side, str) else chosen] += 1
            return
        self.report.rows += 1
        self.report.truncated += int(chosen.truncated or side.truncated)
        if chosen.n_trained == 0 or side.n_trained == 0:
            self.report.empty_after_truncation += 1
            return
        self.examples.append({"tokens": np.concatenate([chosen.tokens, side.tokens]),
                              "loss_mask": np.concatenate([chosen.loss_mask, side.loss_mask]),
                              "conversation": chosen.conversation, "id": chosen.id.removesuffix("/chosen"),
                              "rejected_at": len(chosen.tokens)})
        if self.positions is not None:
            self.positions.append(self._last.at)


def _watchers() -> list[Callable[[str, int, int | None], None]]:
    return current().slot("data.progress", lambda _: [])  # the command's `progress` callbacks, innermost last


@contextmanager
def progress(callback: Callable[[str, int, int | None], None]) -> Iterator[None]:
    """Within: `callback(task, done, total)` as a task's examples are made (done: examples of its count, or rows
    read of the rows there are; total None: not known)."""
    _watchers().append(callback)
    try:
        yield
    finally:
        _watchers().remove(callback)


def _apply_selection(convs: list[Conversation], spec: TaskSpec) -> list[Conversation]:
    """The conversations `spec.selection` keeps, in the selection's order (`TaskReport.rows` counts only these); a
    targeted method (LESS) runs in the layer that trains, imported by name (`selection.methods.TARGETED`)."""
    from instructjax.data.selection.methods import TARGETED, select

    sel, tokenizer = spec.selection, Tokenizer.load(spec.tokenizer)
    if sel.method in TARGETED:
        return importlib.import_module(TARGETED[sel.method]).select_conversations(convs, spec)
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
