"""One task's tokenized cache built by all the hosts of a run together, each tokenizing its share of the rows.

With H hosts (`coordination.current()`) and a cache directory they all see as one (`coordination.
sees_one_directory`: a local disk of one machine, NFS, or `gs://`), a task whose cache file is missing is built
so: every host reads the task's conversations (reading is cheap, tokenizing is not) and, in rounds, tokenizes
the 1/H contiguous piece of the next conversations that is its own, writing the results as one piece file into
`<cache file>.pieces/` (checksummed, written under a temporary name and renamed: a host that dies leaves no
piece that counts as done). The hosts tell each other a round is done through the key-value store of JAX's
distributed runtime (waiting at most `INSTRUCTJAX_SHARED_TIMEOUT`); then each reads every piece. A round covers
every conversation when the task takes all of them, else as many as the examples still wanted (a skipped or
split conversation gives none or several: rounds go on until there are enough), so no conversation is
tokenized that one process would not tokenize. Every
host then makes the examples from the pieces exactly as one process would (`examples._Stream` over the
recorded results: same examples, order, report, positions and errors), host 0 writes the cache file, and the
others load that file: every host trains on the same bytes. Pieces are kept until the file is written, so a restart after a crash
tokenizes only the pieces that are missing.
"""

from __future__ import annotations

import pickle
import uuid
from typing import Any

import xxhash

from instructjax.data import cache, coordination, examples
from instructjax.data.encode_pool import Encoder, Result

ENCODED = [0]  # conversations this process tokenized into pieces (a test counts them)


def load_or_build(name: str, spec, seed: int | None, count: int | None, where) -> tuple[Any, dict] | None:
    """(examples, report) of the task from its cache file `where`, built by all hosts together when missing;
    None with one host, or when the hosts do not share the directory (then each builds its own)."""
    hosts = coordination.current()
    if hosts is None or not coordination.sees_one_directory(where.parent):
        return None
    found = cache.load(where)
    have = coordination.all_gather(hosts, coordination.next_name("have"), [where.name, found is not None],
                                   f"looking for the cache of {name}")  # fmt: skip
    if any(file != where.name for file, _ in have):  # other data, tokenizer or code: each host alone (and
        return None  # the run's own check of the hosts' epochs names the difference)
    if all(there for _, there in have):
        return found
    _build(hosts, name, spec, seed, count, where)
    return cache.load(where)


def _build(hosts, name: str, spec, seed: int | None, count: int | None, where) -> None:
    items = list(examples.conversation_items(name, spec, seed))
    end = items.pop()  # (None, what was counted at the end of the read, or the read's error)
    convs, reads = [c for c, _ in items], [r for _, r in items]
    pieces, job = _pieces_dir(where), examples.job_of(spec)
    results: list[Result | _Failed] = []
    me, n = hosts.process_index, hosts.process_count
    made = 0  # examples the results so far give
    while len(results) < len(convs) and (count is None or made < count) and not _failed(results):
        lo = len(results)
        wanted = len(convs) - lo if count is None else count - made  # a conversation gives one example or more
        hi = min(len(convs), lo + wanted)
        bounds = [lo + (hi - lo) * h // n for h in range(n + 1)]
        a, b = bounds[me], bounds[me + 1]
        if a < b and _read_piece(pieces, a, b) is None:
            _write_piece(pieces, a, b, _encode(job, convs[a:b]))
        coordination.all_gather(hosts, coordination.next_name("piece"), [a, b],
                                f"tokenizing its piece of {name} (conversations {lo}-{hi})")  # fmt: skip
        for h in range(n):
            got = _read_piece(pieces, bounds[h], bounds[h + 1]) if bounds[h] < bounds[h + 1] else []
            if got is None:
                raise coordination.HostsTimeout(f"host {h} said it wrote {pieces}/{bounds[h]}-{bounds[h + 1]}, "
                                                "but this host cannot read it")  # fmt: skip
            results += got
        made = sum(_examples_in(r) for r in results)
    coordination.all_gather(hosts, coordination.next_name("read"), True,
                            f"reading the pieces of {name}")  # then host 0 may remove them  # fmt: skip
    whole = len(results) == len(convs) and not _failed(results)
    stream = examples._Stream(name, spec, seed, results=_Replay(reads, results, end if whole else None))
    taken = stream.take(count)  # on every host: an error in the data is raised by all of them alike
    saved = coordination.next_name("saved")
    if me == 0:
        examples.save(where, stream, taken)
        hosts.set(saved, "saved")
        coordination.remove_tree(pieces)
    else:
        coordination.get(hosts, saved, 0, f"writing the cache of {name}")


class _Failed:
    """A conversation whose tokenizing raised: the error, raised again where one process would raise it."""

    def __init__(self, error: Exception):
        self.error = error


def _failed(results: list) -> bool:
    return bool(results) and isinstance(results[-1], _Failed)


def _examples_in(result) -> int:
    return 0 if isinstance(result, _Failed) else sum(piece.n_trained > 0 for piece in result[0])


def _encode(job, convs: list) -> list[Result | _Failed]:
    """The results of `convs` in order (over every core, `encode_pool`); an error ends them."""
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
        ENCODED[0] += 1
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
    """Checksummed pickle, written under a temporary name and renamed (local, NFS or `etils.epath`)."""
    payload = pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL)
    pieces.mkdir(parents=True, exist_ok=True)
    final, tmp = pieces / f"{a}-{b}", pieces / f".{a}-{b}.{uuid.uuid4().hex}.tmp"
    with tmp.open("wb") as f:
        f.write(xxhash.xxh3_128_digest(payload) + payload)
    tmp.rename(final)


def _read_piece(pieces, a: int, b: int) -> list | None:
    """A piece's results; None when it is missing or does not check out (then it is tokenized again)."""
    path = pieces / f"{a}-{b}"
    try:
        with path.open("rb") as f:
            data = f.read()
    except (FileNotFoundError, OSError):
        return None
    digest, payload = data[:16], data[16:]
    if xxhash.xxh3_128_digest(payload) != digest:
        return None
    results = pickle.loads(payload)
    return results if len(results) == b - a or _failed(results) else None
