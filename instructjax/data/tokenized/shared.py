"""One task's tokenized cache built by all the hosts of a run together, each reading and tokenizing its share.

With H hosts (`hosts.current()`) and a cache directory they all see as one (`hosts.sees_one_directory`: a local
disk of one machine, NFS, or `gs://`), a task whose cache file is missing is built in rounds over units: the rows
of a row source in their visiting order (`row_read.RowRead`: every host opens the files and orders the rows, but
only the host of a row's piece fetches, adapts, cleans and tokenizes it; a pooled source's candidate rows are
shared alike while its pools are drawn, each round of the draw a set of `share<r>-` pieces, and so are the rows
of a pass over the whole source before its first row, ShareGPT's `clean: fastchat`), or, where the read
needs every row before its first conversation (a tree source, a selection), its conversations (a tree source's
trees adapted a share per host first, `tree_read.TreeRead`, as a `share<r>-` set of pieces). A round covers
every unit when the task takes all of them, else as many as the examples still wanted (a skipped or split
conversation gives none or several: rounds go on until there are enough), so no more is read or tokenized than
one process would. A round's units are cut into `PIECES` pieces by position alone (the names `<lo>-<hi>` do not
depend on the host count), host h makes the pieces h, h + H, ... and writes each as one checksummed file into
`<cache file>.pieces/` (`storage.write_bytes`: whole or not at all, so a host that dies leaves no piece that
counts as done). The hosts tell each other a round is done through the key-value store of JAX's runtime
(`core.hosts`); then each reads every piece. Every host then makes the examples from the pieces exactly as one
process would (a piece of rows holds each row's outcome, replayed in order into the task's report; then
`stream.TaskStream` over the recorded results: same examples, order, report, positions and errors), host 0
writes the cache file, and the others load that file: every host trains on the same bytes.

Pieces are kept until the file is written, so a restart after a crash, on any number of hosts, makes only
the pieces that are missing. Two runs building the same task in one directory share pieces (same content, same
names); when the first one finishes and removes them, the other finds the file it wrote and loads it. A piece
holding a failed conversation or a bad row records the error, which is raised again, in its place, on every
restart.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import pickle
import time
from collections.abc import Callable
from typing import Any

import xxhash

from instructjax.core import hosts, storage
from instructjax.core.errors import BadRowPolicy, DataError
from instructjax.data import cache
from instructjax.data.blends import specs
from instructjax.data.encoding.pool import Encoder, Result
from instructjax.data.sources import rows
from instructjax.data.tokenized import stream

PIECES = 64  # pieces per round


def load_or_build(name: str, spec, seed: int | None, count: int | None, where, stats: rows.PipelineStats
                  ) -> tuple[Any, dict] | None:
    """(examples, report) of the task from its cache file `where`, built by all hosts together when missing (what
    this host reads, tokenizes and writes counted into `stats`); None with one host, or when the hosts do not share
    the directory (then each builds its own)."""
    coordinator = hosts.current()
    if coordinator is None or not hosts.sees_one_directory(where.parent):
        return None
    found = cache.load(where)
    looking = hosts.enter(f"have/{specs.base_name(name)}", f"looking for the cache of {name}")  # the name as written:
    have = looking.all_gather([where.name, found is not None])  # hosts with other data differ in the file below
    if any(file != where.name for file, _ in have):  # other data, tokenizer or code: each host alone (and
        return None  # the run's own check of the hosts' epochs names the difference)
    if all(there for _, there in have):
        return found
    return _build(coordinator, name, spec, seed, count, where, stats)


class _Conversations:
    """A task whose read needs every row before its first conversation (a tree source, a selection): a tree
    source's trees are adapted a share per host (`share`), a selection's rows read whole by every host; a unit is
    a conversation, a piece the results of its conversations."""

    def __init__(self, name: str, spec, seed: int | None, share: rows.Share, stats: rows.PipelineStats,
                 pool: bool = True):
        self._items = stream.conversation_items(name, spec, seed, share=share, stats=stats)
        self.convs, self.reads, self.end, self.results, self.stats, self.pool = [], [], None, [], stats, pool

    def upto(self, n: float) -> int:
        """The units there are, up to `n` (read as far as that)."""
        while self.end is None and len(self.convs) < n:
            conv, read = next(self._items)
            if conv is None:
                self.end = (conv, read)
            else:
                self.convs.append(conv)
                self.reads.append(read)
        return len(self.convs)

    @property
    def done(self) -> int:
        return len(self.results)

    @property
    def stopped(self) -> bool:
        return _failed(self.results)

    def encode(self, job, a: int, b: int) -> list:
        return _encode(job, self.convs[a:b], self.stats, self.pool)

    def whole(self, piece, a: int, b: int) -> bool:
        return len(piece) == b - a or _failed(piece)

    def add(self, piece: list) -> None:
        self.results += piece

    def replay(self) -> _Replay:
        whole = self.end is not None and len(self.results) == len(self.convs) and not self.stopped
        return _Replay(self.reads, self.results, self.end if whole else None)

    def alone(self, piece: list, a: int, b: int) -> _Replay:
        """The piece of conversations a..b replayed by itself (what they read counted as the whole read counts it)."""
        return _Replay(self.reads[a:b], piece, None)


class _Rows:
    """A row source's task (`stream.task_row_read`): a unit is a row of its visiting order, which only the host of
    its piece fetches, adapts and tokenizes; a piece is each row's outcome (`row_read.RowOutcome`) and the results
    of the rows' conversations. Every host replays the outcomes in order to count what one process counts."""

    def __init__(self, read, policy, shuffled: bool, pool: bool = True):
        self.read, self.policy, self.shuffled, self.pool = read, policy, shuffled, pool
        self.reads, self.results, self.end, self.done, self.stopped = [], [], None, 0, False

    def upto(self, n: float) -> int:
        return int(min(len(self.read), n))

    def encode(self, job, a: int, b: int) -> tuple[list, list]:
        outcomes, convs = [], []
        for outcome, conversations in self.read.adapt(a, b):
            outcomes.append(outcome)
            convs += conversations
        return outcomes, _encode(job, convs, self.read.stats, self.pool)

    def whole(self, piece, a: int, b: int) -> bool:
        outcomes, results = piece
        return len(outcomes) == b - a and (len(results) == sum(len(o.repairs) for o in outcomes) or _failed(results))

    def add(self, piece: tuple[list, list]) -> None:
        outcomes, results = piece
        results = iter(results)
        for outcome in outcomes:
            try:
                n = outcome.count(self.policy)
            except DataError as exc:  # a bad row, raised where one process raises it
                self.end, self.stopped = (None, self._counted(None, exc)), True
                return
            read = self._counted(outcome.index if self.shuffled else None)
            for _ in range(n):
                self.reads.append(read)
                self.results.append(next(results))
                if isinstance(self.results[-1], _Failed):
                    self.stopped = True
                    return
        self.done += len(outcomes)
        if self.done == len(self.read):
            self.end = (None, self._counted(None))

    def _counted(self, at: int | None, error: Exception | None = None) -> stream.Read:
        p = self.policy
        return stream.Read(p.read, dict(p.skipped), dict(p.repaired), at, error)

    def replay(self) -> _Replay:
        return _Replay(self.reads, self.results, self.end)

    def alone(self, piece: tuple[list, list], a: int, b: int) -> _Replay:
        """The piece of rows a..b replayed by itself: its rows counted under a policy of their own (a bad row raises
        in its place under `on_bad_row: error`)."""
        part = _Rows(self.read, BadRowPolicy(self.policy.on_bad_row), self.shuffled)
        part.add(piece)
        return part.replay()


def units_of(name: str, spec, seed: int | None, share: rows.Share = rows.alone, stats: rows.PipelineStats | None = None,
             *, pool: bool = True) -> _Rows | _Conversations:
    """The task's units; a pooled source's pools drawn, and a tree source's trees adapted, through `share`; the rows
    read and the conversations tokenized here counted into `stats`; `pool` False: encoded in this process alone."""
    stats = stats if stats is not None else rows.PipelineStats()
    read = stream.task_row_read(name, spec, seed, share, stats)
    if read is None:
        return _Conversations(name, spec, seed, share, stats, pool)
    return _Rows(*read, shuffled=seed is not None, pool=pool)


def rounds(units, count: int | None, make) -> tuple[list, list] | None:
    """Add the task's units to `units` in rounds until they give `count` examples (None: every unit), a round
    being as many units as the examples still wanted, cut into `PIECES` spans; `make(lo, hi, spans)` gives the
    round's pieces and whether every host has them all. (spans, pieces) of a round whose pieces were lost."""
    made = 0  # examples the results so far give
    while (count is None or made < count) and not units.stopped:
        lo = units.done
        hi = units.upto(math.inf if count is None else lo + count - made)  # one example or more a unit
        if hi == lo:
            break
        spans = _spans(lo, hi)
        got, complete = make(lo, hi, spans)
        if not complete:
            return spans, got
        for piece in got:  # up to the first failed conversation or bad row, as one process stops there
            units.add(piece)
            if units.stopped:
                break
        made = sum(_examples_in(r) for r in units.results)
    return None


def _spans(lo: int, hi: int) -> list[tuple[int, int]]:
    """lo..hi cut into `PIECES` spans by position alone."""
    bounds = sorted({lo + (hi - lo) * i // PIECES for i in range(PIECES + 1)})
    return list(zip(bounds, bounds[1:], strict=False))


def _build(coordinator, name: str, spec, seed: int | None, count: int | None, where, stats: rows.PipelineStats
           ) -> tuple[Any, dict]:
    pieces, job = pieces_dir(where), stream.job_of(spec)
    me, n = coordinator.process_index, coordinator.process_count
    shares = itertools.count()

    def share(fn, items: list) -> list:
        """`fn` over `items` (a pool draw's candidate rows, a tree source's trees), each host making its spans; a
        span whose piece is gone (another run finished the task and removed them) is made here."""
        key, spans = f"share{next(shares)}-", _spans(0, len(items))
        for a, b in spans[me::n]:
            if read_piece(pieces, key, a, b, _counted) is None:
                write_piece(pieces, key, a, b, fn(items[a:b]))
        hosts.enter(f"{key[:-1]}/{where.name}", f"adapting its share of the rows of {name}").all_gather(True)
        out = []
        for a, b in spans:
            got = read_piece(pieces, key, a, b, _counted)
            out += fn(items[a:b]) if got is None else got
        return out

    units = units_of(name, spec, seed, share, stats)

    def make(lo: int, hi: int, spans: list) -> tuple[list, bool]:
        for a, b in spans[me::n]:
            if read_piece(pieces, "", a, b, units.whole) is None:
                write_piece(pieces, "", a, b, units.encode(job, a, b))
        round_ = hosts.enter(f"piece/{where.name}/{lo}-{hi}", f"tokenizing its pieces of {name} ({lo}-{hi})")
        round_.all_gather(True)
        got = [read_piece(pieces, "", a, b, units.whole) for a, b in spans]
        return got, all(round_.all_gather(all(g is not None for g in got), "read"))

    lost = rounds(units, count, make)
    if lost is not None:
        return _built_elsewhere(name, where, pieces, *lost)
    hosts.enter(f"read/{where.name}", f"reading the pieces of {name}").all_gather(True)  # host 0 may remove them
    replayed = stream.TaskStream(name, spec, seed, results=units.replay())
    taken = replayed.take(count)  # on every host: an error in the data is raised by all of them alike
    saved = hosts.enter(f"saved/{where.name}", f"writing the cache of {name}")
    if me == 0:
        outcome = "saved"
        try:
            stream.save(where, replayed, taken, stats)
        except Exception as exc:  # noqa: BLE001 - the others stop too, naming it
            outcome = f"host 0 could not write {where}: {' '.join(str(exc).split())[:300]}"
            raise
        finally:
            coordinator.set(saved.key("outcome"), outcome)
        remove_pieces(pieces)
    else:
        outcome = hosts.get(coordinator, saved.key("outcome"), 0, f"writing the cache of {name}")
        if outcome != "saved":
            raise hosts.HostsTimeout(outcome)
    loaded = cache.load(where)
    if loaded is None:
        raise hosts.HostsTimeout(f"host 0 wrote the cache of {name}, but this host cannot read {where}")
    return loaded


def _built_elsewhere(name: str, where, pieces, spans, got) -> tuple[Any, dict]:
    """A piece a host wrote is gone: another run building the same task finished and removed the pieces. Its
    cache file is then there (the same bytes this run would write); otherwise the pieces were lost."""
    loaded = cache.load(where)
    agreed = hosts.enter(f"elsewhere/{where.name}", f"loading the cache of {name}").all_gather(loaded is not None)
    if all(agreed):
        if hosts.current().process_index == 0:  # a piece this run wrote after the other run removed them
            remove_pieces(pieces)
        return loaded
    a, b = next(span for span, g in zip(spans, got, strict=True) if g is None)
    raise hosts.HostsTimeout(f"a host said it wrote {pieces}/{a}-{b}, but another cannot read it, and the cache "
                             f"of {name} is not there either")


class _Failed:
    """A conversation whose tokenizing raised: the error, raised again where one process would raise it."""

    def __init__(self, error: Exception):
        self.error = error


def _failed(results: list) -> bool:
    return bool(results) and isinstance(results[-1], _Failed)


def _examples_in(result) -> int:
    return 0 if isinstance(result, _Failed) else sum(piece.n_trained > 0 for piece in result[0])


def _encode(job, convs: list, stats: rows.PipelineStats, pool: bool = True) -> list[Result | _Failed]:
    """The results of `convs` in order (over every core, `encoding.pool`, unless `pool` is False; counted into
    `stats`); an error ends them."""
    encoder, out = Encoder(job, iter([*((c, None) for c in convs), (None, None)]), stats=stats, pool=pool), []
    while True:
        try:
            got = encoder.next(None)
        except Exception as exc:  # noqa: BLE001 - kept, raised again when the examples reach it
            out.append(_Failed(exc))
            break
        if got is None or got[1] is None:
            break
        out.append(got[1])
    return out


class _Replay:
    """`Encoder.next` over recorded results: (read, result) per conversation, then (`end`, None) when every
    conversation was tokenized (`end`: the read's last count, or its error)."""

    def __init__(self, reads: list, results: list, end):
        self.reads, self.results, self.end, self.at = reads, results, end, 0

    def next(self, wanted: int | None):
        i, self.at = self.at, self.at + 1
        if i < len(self.results):
            if isinstance(self.results[i], _Failed):
                raise self.results[i].error
            return self.reads[i], self.results[i]
        if i == len(self.results) and self.end is not None:
            return self.end[1], None
        return None


def _counted(piece: list, a: int, b: int) -> bool:
    """A piece of a `share`: one result per item."""
    return len(piece) == b - a


def pieces_dir(where):
    return where.parent / f"{where.name}.pieces"


def write_piece(pieces, key: str, a: int, b: int, results: list) -> None:
    """A checksummed pickle, written whole or not at all (`storage.write_bytes`). When another run building the
    same task removes the directory under the write, the piece is not there: the round's read finds it missing
    and loads that run's cache file (`_built_elsewhere`)."""
    payload = pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)
    with contextlib.suppress(FileNotFoundError):
        storage.write_bytes(pieces / f"{key}{a}-{b}", xxhash.xxh3_128_digest(payload) + payload)


def remove_pieces(pieces) -> None:
    """Remove the pieces once the cache file is written. Another run building the same task may be writing one
    into the directory meanwhile (the removal then fails on a non-empty directory): tried again, and what stays is
    harmless (that run finds this cache file and removes its own)."""
    for attempt in range(5):
        try:
            storage.remove_tree(pieces)
            return
        except OSError:
            time.sleep(0.1 * (attempt + 1))


def read_piece(pieces, key: str, a: int, b: int, whole: Callable[[Any, int, int], bool]) -> list | tuple | None:
    """The piece `<key><a>-<b>`; None when it is missing or does not check out, `whole` included (then it is
    made again)."""
    try:
        data = (pieces / f"{key}{a}-{b}").read_bytes()
    except OSError:
        return None
    digest, payload = data[:16], data[16:]
    if xxhash.xxh3_128_digest(payload) != digest:
        return None
    try:
        results = pickle.loads(payload)
    except Exception:  # noqa: BLE001 - written by other code: tokenized again
        return None
    try:
        return results if whole(results, a, b) else None
    except (TypeError, ValueError, AttributeError):  # a piece of another layout (other code): tokenized again
        return None
