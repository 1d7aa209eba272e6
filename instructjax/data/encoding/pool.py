"""A task's conversations -> its examples, in batches and on every core, handed back in read order.

`encode_rows(job, convs)` makes the examples of each conversation: encoded as one batch (`encode_conversations`)
under the job's template, tokenizer and row length; a conversation over the row length, of a source that
splits (ShareGPT), cut into blocks of whole rounds (`dialogues.split_blocks`). The candidate blocks are
measured by a `Segments` memo seeded with the conversation's own encoding: each round is tokenized once
(where it opens a block, once more up to its first newline, or whole where the tokenizer merges across newlines),
the blocks are put together from the same segments, and a block of
several rounds found over the row length (which the memo cannot give) is split again the exact way.

`Encoder` runs `encode_rows` over a stream of conversations, in batches of up to `BATCH`, and hands the
results back one by one in the stream's order. Its first `IN_PROCESS` conversations are encoded in this
process (the tokenizer's own threads then use every core for the token work); after them, or at once when
the pool is already up (`start`), batches go to a shared pool of worker processes (spawned, one per core, each
tokenizing on one thread), `2 x workers` batches in flight. It reads only as far ahead as the caller
still wants examples. A conversation whose batch failed is encoded again alone in this process when it is
handed back, so its error is raised where one process encoding one conversation at a time raises it.
`INSTRUCTJAX_ENCODE_WORKERS`: worker processes (default: the CPUs this process may use, at most
`MAX_WORKERS`); 0 encodes one conversation at a time in this process, reading nothing ahead.
The pool (`encoding.workers`) is shut down after `IDLE_SECONDS` without work (and at exit).
"""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import islice
from typing import Any, NamedTuple

import numpy as np

from instructjax.core.errors import DataError
from instructjax.data.encoding.encode import Encoded, Segments, count_tokens, encode_conversations
from instructjax.data.encoding.preference import encode_completions
from instructjax.data.encoding.prompt import encode_prompts
from instructjax.data.encoding.templates import get_template
from instructjax.data.encoding.tokenizer import Tokenizer
from instructjax.data.encoding.workers import (  # noqa: F401  (the pool's names, at their old import path too)
    IDLE_SECONDS,
    MAX_WORKERS,
    WorkerPool,
    _pool_is_up,
    _submit,
    default_workers,
    shutdown,
    start,
    worker_pool,
)
from instructjax.data.schema import Conversation
from instructjax.data.sources.dialogues import split_blocks
from instructjax.data.sources.rows import PipelineStats

BATCH = 128  # conversations per batch
LAST_PART = 16  # conversations at least in each part of a stream's last batch
IN_PROCESS = 1000  # conversations a stream encodes here before it uses the pool (when the pool is not up)


@dataclass(frozen=True)
class Job:
    """How a task's conversations are encoded (what a worker process needs to know)."""

    template: str
    tokenizer: str  # path (`Tokenizer.path`)
    max_length: int
    split_long: bool  # cut a conversation over max_length into blocks of whole rounds
    system_turn: str = "keep"  # keep, merge or drop a system turn first (`Conversation.with_system_turn`)
    on_bad_row: str = "error"  # "skip": a conversation the template refuses is counted, not raised
    completion_only: bool = False  # a preference side: the mask on its completion alone (`encoding.preference`)
    prompt_only: bool = False  # a verifiable prompt: its generation prompt's ids, nothing trained (`encoding.prompt`)

    def portable(self) -> bool:
        """Whether a fresh process knows the template (a built-in one; one registered at run time may not be)."""
        return get_template(self.template).pieces.__module__ == get_template.__module__


class Example(NamedTuple):
    """One example of a conversation (the conversation itself, or one of its blocks)."""

    conversation: str  # JSON
    id: str
    tokens: np.ndarray
    loss_mask: np.ndarray
    n_trained: int
    truncated: bool


class Result(NamedTuple):
    """A conversation's examples, whether it was split into blocks, and why it was skipped instead ("": it was not:
    the chat template refused it under `on_bad_row: skip`, "template")."""

    examples: list[Example]
    split: bool
    skipped: str = ""


def encode_rows(job: Job, convs: list[Conversation]) -> list[Result]:
    """The examples of each conversation (see the module doc), its system turn kept, merged or dropped first; under
    `on_bad_row: skip` a conversation the chat template refuses is a `Result` with no examples, skipped for it."""
    tokenizer = Tokenizer.load(job.tokenizer)
    convs = [c.with_system_turn(job.system_turn) for c in convs]
    whole = not (job.completion_only or job.prompt_only)  # a conversation trained whole (which may split)
    segments = Segments(tokenizer) if job.split_long and whole else None  # a memo for the blocks
    encode = encode_completions if job.completion_only else encode_prompts if job.prompt_only else encode_conversations
    try:
        encoded = encode(convs, job.template, tokenizer, job.max_length, segments)
    except DataError as e:
        if job.on_bad_row != "skip" or e.reason != "template":
            raise
        if len(convs) == 1:
            return [Result([], False, "template")]
        alone = dataclasses.replace(job, system_turn="keep")  # each conversation again, to find the refused ones
        return [result for conv in convs for result in encode_rows(alone, [conv])]
    out = []
    for conv, enc in zip(convs, encoded, strict=True):
        pieces = [(conv, enc)]
        if enc.truncated and segments is not None and conv.rounds > 1:
            pieces = _blocks(conv, job, tokenizer, segments)
        out.append(Result([Example(_to_json(c), c.id, e.tokens, e.loss_mask, e.n_trained, e.truncated)
                           for c, e in pieces], len(pieces) > 1))
    return out


def _to_json(conv: Conversation) -> str:
    """`conv.to_json()`, without its deep copy (`dataclasses.asdict`) where the values are plain JSON."""
    try:
        return json.dumps({"id": conv.id, "messages": conv.messages, "meta": conv.meta, "source": conv.source},
                          ensure_ascii=False, sort_keys=True)
    except TypeError:  # something asdict converts (a dataclass in meta), or that neither can write
        return conv.to_json()


def _blocks(conv: Conversation, job: Job, tokenizer: Tokenizer, segments: Segments | None
            ) -> list[tuple[Conversation, Encoded]]:
    """`conv` cut into blocks of whole rounds within max_length tokens, as Vicuna splits ShareGPT (ids get a
    "-b<k>" suffix), each with its encoding; `segments` None measures every candidate block afresh."""

    def length(messages: list[dict[str, str]]) -> int:
        return count_tokens(Conversation(messages, conv.source, conv.id), job.template, tokenizer, segments)

    found = split_blocks(conv.messages, job.max_length, length)
    blocks = [conv] if len(found) == 1 else [
        Conversation(b, conv.source, f"{conv.id}-b{k}", {**conv.meta, "block": k, "blocks": len(found)})
        for k, b in enumerate(found)]  # fmt: skip
    encs = encode_conversations(blocks, job.template, tokenizer, job.max_length, segments)
    if segments is not None and any(e.truncated and b.rounds > 1 for b, e in zip(blocks, encs, strict=True)):
        return _blocks(conv, job, tokenizer, None)  # the segments' sum fell short of a block's encoding
    return list(zip(blocks, encs, strict=True))


class _Packed(NamedTuple):
    """A batch's results in few objects (quick to pickle): the examples' tokens and loss masks end to end."""

    tokens: np.ndarray  # int32
    loss_mask: np.ndarray  # uint8
    ends: list[int]  # each example's end in tokens
    fields: list[tuple[str, str, int, bool]]  # each example's conversation, id, n_trained, truncated
    results: list[tuple[int, bool, str] | None]  # each conversation's examples, split and skip, None: failed


def _pack(results: list[Result | None]) -> _Packed:
    examples = [ex for r in results if r is not None for ex in r[0]]
    return _Packed(np.concatenate([ex.tokens for ex in examples] or [np.zeros(0, np.int32)]),
                   np.concatenate([ex.loss_mask for ex in examples] or [np.zeros(0, np.int32)]).astype(np.uint8),
                   np.cumsum([ex.tokens.shape[0] for ex in examples], dtype=np.int64).tolist(),
                   [(ex.conversation, ex.id, ex.n_trained, ex.truncated) for ex in examples],
                   [None if r is None else (len(r.examples), r.split, r.skipped) for r in results])


def _unpack(packed: _Packed) -> list[Result | None]:
    mask = packed.loss_mask.astype(np.int32)
    examples = [Example(conversation, cid, packed.tokens[a:b], mask[a:b], n, cut) for a, b, (conversation, cid, n, cut)
                in zip([0, *packed.ends[:-1]], packed.ends, packed.fields, strict=True)]
    out: list[Result | None] = []
    at = 0
    for r in packed.results:
        out.append(None if r is None else Result(examples[at : at + r[0]], r[1], r[2]))
        at += r[0] if r is not None else 0
    return out


def _encode_packed(job: Job, convs: list[Conversation]) -> _Packed:
    """What a worker process does with a batch: `_encode_each`, packed."""
    return _pack(_encode_each(job, convs))


def _encode_each(job: Job, convs: list[Conversation]) -> list[Result | None]:
    """`encode_rows`, with None for a conversation that fails (the batch is then encoded one by one)."""
    try:
        return encode_rows(job, convs)
    except Exception:  # noqa: BLE001 - raised again where the conversation is handed back
        out: list[Result | None] = []
        for conv in convs:
            try:
                out += encode_rows(job, [conv])
            except Exception:  # noqa: BLE001
                out.append(None)
        return out




class _Batch:
    """Items of the stream in order, with their results, or the future that brings them (`workers` > 0:
    encoded in the pool of that many processes; 0: here, now)."""

    def __init__(self, job: Job, items: list[tuple[Conversation | None, Any]], workers: int):
        self.items, self.taken, self.workers = items, 0, workers
        self._job, self._convs = job, [c for c, _ in items if c is not None]
        self.results: list | Future = (_submit(workers, _encode_packed, job, self._convs) if workers and self._convs
                                       else _encode_each(job, self._convs) if self._convs else [])

    def pop(self) -> tuple[Conversation | None, Any, Result | None]:
        if isinstance(self.results, Future):
            try:
                self.results = _unpack(self.results.result())
            except Exception as exc:  # noqa: BLE001 - a worker died (killed, out of memory), ...: this batch here
                if isinstance(exc, BrokenProcessPool):
                    shutdown()
                self.results = _encode_each(self._job, self._convs)
        conv, tag = self.items[self.taken]
        self.taken += 1
        return conv, tag, self.results[self.taken - 1] if conv is not None else None  # None: only last

    def __len__(self) -> int:
        return len(self.items) - self.taken


class Encoder:
    """(conversation, tag) items in read order -> (tag, result) in that order (see the module doc). An item
    whose conversation is None ends the stream (its tag says why); its result is None. The conversations it reads
    are counted into `stats.conversations_tokenized` here, in the calling process, whichever process encodes them."""

    def __init__(self, job: Job, items: Iterator[tuple[Conversation | None, Any]], workers: int | None = None,
                 stats: PipelineStats | None = None, *, pool: bool = True):
        self.job, self._items = job, items
        self.stats = stats if stats is not None else PipelineStats()
        self.workers = default_workers() if workers is None else workers
        # a pool needs a template that a fresh process knows, and a process that may have children; `pool` False:
        # batches encoded here all along (a Beam worker: the runner's processes use the cores)
        self._poolable = (pool and self.workers > 0 and job.portable()
                          and not multiprocessing.current_process().daemon)
        self._queue: deque[_Batch] = deque()
        self._queued = 0  # items read and not handed back yet
        self._pooled = 0  # batches in the queue sent to the pool
        self._ended = False
        self._here = 0  # conversations encoded in this process

    def next(self, wanted: int | None) -> tuple[Any, Result | None] | None:
        """The next item's tag and result, None after the last; `wanted`: examples the caller still needs
        (None: every one), so that no more conversations than that are read ahead."""
        self._read(math.inf if wanted is None else wanted)
        if not self._queue:
            return None
        head = self._queue[0]
        conv, tag, result = head.pop()
        self._queued -= 1
        if not head:
            self._queue.popleft()
            self._pooled -= head.workers > 0
        if conv is not None and result is None:  # its batch failed: alone, here, to raise its error
            result = encode_rows(self.job, [conv])[0]
        return tag, result

    def has_read(self, wanted: int | None) -> bool:
        """Whether the conversations read so far (and not handed back) are at least `wanted` (None: the stream has
        been read to its end); their batches may still be encoding."""
        return self._ended or (wanted is not None and self._queued >= wanted)

    def read_ahead(self, wanted: int | None) -> None:
        """Read and send to the pool the batches of up to `wanted` examples (None: every one) without waiting for
        any: the pool's workers start on them while the caller finishes other work. Nothing when the pool is not
        up (the first conversations are then encoded here, when asked for)."""
        if self._poolable and _pool_is_up():
            self._read(math.inf if wanted is None else wanted)

    def _read(self, wanted: float) -> None:
        if not self._poolable or (self._here < IN_PROCESS and not _pool_is_up()):
            if not self._queue:  # one batch at a time, here
                self._here += self._batch(1 if self.workers == 0 else min(BATCH, wanted), 0)
            return
        while not self._ended and self._queued < wanted and self._pooled < 2 * self.workers:
            left = (wanted - self._queued) / self.workers
            self._batch(BATCH if left == math.inf else max(1, min(BATCH, math.ceil(left))), self.workers)

    def _batch(self, n: int, workers: int) -> int:
        """Read up to `n` items into a batch (encoded here, or in a pool of `workers`); its conversations. The
        stream's last batch goes to the pool cut in up to `workers` parts, which its workers encode side by side
        (not one of them alone, the others idle at the end of a task)."""
        items = [] if self._ended else list(islice(self._items, n))
        self._ended = len(items) < n or items[-1][0] is None
        parts = (max(1, min(workers, len(items) // LAST_PART)) if self._ended else 1) if items else 0
        bounds = [len(items) * k // parts for k in range(parts + 1)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            self._queued += b - a
            self._pooled += workers > 0
            self._queue.append(_Batch(self.job, items[a:b], workers))
        conversations = sum(c is not None for c, _ in items)
        self.stats.conversations_tokenized += conversations
        return conversations
