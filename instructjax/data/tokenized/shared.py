"""One task's tokenized cache built by all the hosts of a run together, each tokenizing its share of the rows.

With H hosts (`hosts.current()`) and a cache directory they all see as one (`hosts.sees_one_directory`: a local
disk of one machine, NFS, or `gs://`), a task whose cache file is missing is built in rounds. Every host reads
the task's conversations as far as the round needs, as one process would (reading is cheap, tokenizing is
not): a round covers every conversation when the task takes all of them, else as many as the examples still
wanted (a skipped or split conversation gives none or several: rounds go on until there are enough), so no
conversation is read or tokenized that one process would not. A round's conversations are cut into
`PIECES` pieces by position alone (the names `<lo>-<hi>` do not depend on the host count), host h tokenizes the
pieces h, h + H, ... and writes each as one checksummed file into `<cache file>.pieces/` (`storage.write_bytes`:
whole or not at all, so a host that dies leaves no piece that counts as done). The hosts tell each other a
round is done through the key-value store of JAX's runtime (`core.hosts`); then each reads every piece. Every
host then makes the examples from the pieces exactly as one process would (`stream.TaskStream` over the recorded
results: same examples, order, report, positions and errors), host 0 writes the cache file, and the others
load that file: every host trains on the same bytes.

Pieces are kept until the file is written, so a restart after a crash, on any number of hosts, tokenizes only
the pieces that are missing. Two runs building the same task in one directory share pieces (same content, same
names); when the first one finishes and removes them, the other finds the file it wrote and loads it. A piece
holding a failed conversation records the error, which is raised again, in its place, on every restart.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import time
from typing import Any

import xxhash

from instructjax.core import hosts, storage
from instructjax.data import cache
from instructjax.data.blends import specs
from instructjax.data.encoding.pool import Encoder, Result
from instructjax.data.tokenized import stream

PIECES = 64  # pieces per round


def load_or_build(name: str, spec, seed: int | None, count: int | None, where) -> tuple[Any, dict] | None:
    """(examples, report) of the task from its cache file `where`, built by all hosts together when missing;
    None with one host, or when the hosts do not share the directory (then each builds its own)."""
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
    return _build(coordinator, name, spec, seed, count, where)


class _Conversations:
    """The task's conversations, read as far as asked (`upto`), each with its `Read`; `end` once the read ended:
    (None, what was counted at the end, or the read's error)."""

    def __init__(self, name: str, spec, seed: int | None):
        self._items = stream.conversation_items(name, spec, seed)
        self.convs, self.reads, self.end = [], [], None

    def upto(self, n: float) -> int:
        while self.end is None and len(self.convs) < n:
            conv, read = next(self._items)
            if conv is None:
                self.end = (conv, read)
            else:
                self.convs.append(conv)
                self.reads.append(read)
        return len(self.convs)


def _build(coordinator, name: str, spec, seed: int | None, count: int | None, where) -> tuple[Any, dict]:
    read, pieces, job = _Conversations(name, spec, seed), _pieces_dir(where), stream.job_of(spec)
    me, n = coordinator.process_index, coordinator.process_count
    results: list[Result | _Failed] = []
    made = 0  # examples the results so far give
    while (count is None or made < count) and not _failed(results):
        lo = len(results)
        hi = read.upto(math.inf if count is None else lo + count - made)  # one example or more a conversation
        if hi == lo:
            break
        bounds = sorted({lo + (hi - lo) * i // PIECES for i in range(PIECES + 1)})
        spans = list(zip(bounds, bounds[1:], strict=False))
        for a, b in spans[me::n]:
            if _read_piece(pieces, a, b) is None:
                _write_piece(pieces, a, b, _encode(job, read.convs[a:b]))
        round_ = hosts.enter(f"piece/{where.name}/{lo}-{hi}", f"tokenizing its pieces of {name} "
                                                                f"(conversations {lo}-{hi})")  # fmt: skip
        round_.all_gather(True)
        got = [_read_piece(pieces, a, b) for a, b in spans]
        if not all(round_.all_gather(all(g is not None for g in got), "read")):
            return _built_elsewhere(name, where, pieces, spans, got)
        for piece in got:  # up to the first failed conversation, as one process stops there
            results += piece
            if _failed(piece):
                break
        made = sum(_examples_in(r) for r in results)
    hosts.enter(f"read/{where.name}", f"reading the pieces of {name}").all_gather(True)  # host 0 may remove them
    whole = read.end is not None and len(results) == len(read.convs) and not _failed(results)
    replayed = stream.TaskStream(name, spec, seed, results=_Replay(read.reads, results, read.end if whole else None))
    taken = replayed.take(count)  # on every host: an error in the data is raised by all of them alike
    saved = hosts.enter(f"saved/{where.name}", f"writing the cache of {name}")
    if me == 0:
        outcome = "saved"
        try:
            stream.save(where, replayed, taken)
        except Exception as exc:  # noqa: BLE001 - the others stop too, naming it
            outcome = f"host 0 could not write {where}: {' '.join(str(exc).split())[:300]}"
            raise
        finally:
            coordinator.set(saved.key("outcome"), outcome)
        _remove_pieces(pieces)
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
            _remove_pieces(pieces)
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


def _encode(job, convs: list) -> list[Result | _Failed]:
    """The results of `convs` in order (over every core, `encoding.pool`); an error ends them."""
    encoder, out = Encoder(job, iter([*((c, None) for c in convs), (None, None)])), []
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


def _pieces_dir(where):
    return where.parent / f"{where.name}.pieces"


def _write_piece(pieces, a: int, b: int, results: list) -> None:
    """A checksummed pickle, written whole or not at all (`storage.write_bytes`). When another run building the
    same task removes the directory under the write, the piece is not there: the round's read finds it missing
    and loads that run's cache file (`_built_elsewhere`)."""
    payload = pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)
    with contextlib.suppress(FileNotFoundError):
        storage.write_bytes(pieces / f"{a}-{b}", xxhash.xxh3_128_digest(payload) + payload)


def _remove_pieces(pieces) -> None:
    """Remove the pieces once the cache file is written. Another run building the same task may be writing one
    into the directory meanwhile (the removal then fails on a non-empty directory): tried again, and what stays is
    harmless (that run finds this cache file and removes its own)."""
    for attempt in range(5):
        try:
            storage.remove_tree(pieces)
            return
        except OSError:
            time.sleep(0.1 * (attempt + 1))


def _read_piece(pieces, a: int, b: int) -> list | None:
    """A piece's results; None when it is missing or does not check out (then it is tokenized again)."""
    try:
        data = (pieces / f"{a}-{b}").read_bytes()
    except OSError:
        return None
    digest, payload = data[:16], data[16:]
    if xxhash.xxh3_128_digest(payload) != digest:
        return None
    try:
        results = pickle.loads(payload)
    except Exception:  # noqa: BLE001 - written by other code: tokenized again
        return None
    return results if len(results) == b - a or _failed(results) else None
