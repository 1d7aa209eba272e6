"""Tokenized tasks cached on disk, so a restart goes to its first step without re-reading and re-tokenizing.

One file per (task spec, subset) keyed by the sha256 of everything the examples depend on: the data
files' content (`storage.fingerprint`: a local file's xxh3-128, ten times faster than a sha256 over gigabytes;
a file in a bucket by the store's own checksum), the tokenizer (its fingerprint), the chat template, the max
length, the rest of the task spec, the subset (count, seed) and the data layer's own source code; a hub dataset
(no files of its own) by what `datasets` names its prepared files after. A file is written whole or not at all
(`storage`: a temporary name and a rename on a disk, one upload in a bucket), so concurrent writers (several
hosts, two runs) and a crash never leave a partial file under the real name; a file that does not check out
(its length, then the xxh3-128 checksums of its header and of its whole payload, all verified before any of
it is used), or cannot be read at all, is reported in one line, rebuilt and replaced. Directory:
`INSTRUCTJAX_CACHE_DIR` (default `~/.cache/instructjax/tokenized`), local or a URL (`gs://...`: a file there
is read from its local copy, `storage.local_copy`, and written locally first, then uploaded);
`INSTRUCTJAX_CACHE_DIR=off` turns the cache off. Several hosts share one directory through
`data.tokenized.shared`.

Layout: a magic line; flat arrays, each 64-byte aligned: the tokens and loss masks of all examples end
to end (in the narrowest integer type that holds them), per-example offsets, trained-token counts and
token ranges, the conversations and the ids (JSON) as utf-8; a JSON header (where each array lies, the
task report, the payload's checksum); a trailer (the header's offset, length and checksum, an end mark).
A reader verifies the file, then memory-maps it: `CachedExamples` makes an example when it is asked for
(a file is never changed in place, only replaced by a rename, so a mapped file stays what was verified).
"""

from __future__ import annotations

import functools
import hashlib
import json
import mmap
import operator
import os
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xxhash

from instructjax.core import storage
from instructjax.core.context import current

FORMAT = 2
_MAGIC = b"instructjax-tokenized-cache 2\n"
_END = b"ijxcache"
_TRAILER = struct.Struct("<QQ16s8s")  # header offset, header length, header xxh3-128, end mark
_ALIGN = 64
_READ = 16 << 20  # bytes hashed per read when verifying


def cache_dir() -> storage.Path | None:
    """The cache directory, or None when the cache is off."""
    where = os.environ.get("INSTRUCTJAX_CACHE_DIR", "~/.cache/instructjax/tokenized")
    if where.lower() in ("off", "none", "0", ""):
        return None
    checked = current().slot("data.cache_dirs_checked", lambda _: set())
    if where not in checked:  # a cache in a bucket that does not exist: one line, once a command, before anything
        storage.check_bucket(where, "INSTRUCTJAX_CACHE_DIR")  # is tokenized
        checked.add(where)
    return storage.path(where)


def model_digest(path: str) -> str | None:
    """The content of the weights a selection encoder will read from `path` (`storage.fingerprint` of each file):
    every file of a Hugging Face directory, or of an instructjax checkpoint's newest step; None when `path`
    holds neither."""
    root = storage.path(path)
    if (root / "config.json").is_file():
        files = sorted(p.name for p in root.iterdir() if p.is_file())
    else:
        steps = "checkpoints/" if (root / "checkpoints").is_dir() else ""
        numbered = [p.name for p in (root / steps).iterdir() if p.name.isdigit()] if (root / steps).is_dir() else []
        if not numbered:
            return None
        newest = f"{steps}{max(numbered, key=int)}"
        files = sorted(f"{newest}/{name}" for name in storage.listing(root / newest))
    h = hashlib.sha256()
    for name in files:
        h.update(f"{name}:{storage.fingerprint(root / name)}\n".encode())
    return h.hexdigest()


@functools.cache
def _code_digest() -> str:
    """sha256 of the data layer's source: a change to how rows are read or encoded invalidates the cache (read once
    per process: the code a process runs is the code it started with)."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return h.hexdigest()


def key(*, files: list[str], spec_repr: str, tokenizer_fingerprint: str, template_repr: str, max_length: int,
        count: int | None, seed: int | None, encoder_weights: str | None = None, hub: list[str] | None = None) -> str:
    """The cache key of one task's encoded examples (`encoder_weights`: `model_digest` of the model a
    selection encoder embeds with, whose path alone is in the spec; `hub`: a hub dataset's identity, for a
    task with no local files)."""
    parts = {"format": FORMAT, "files": [storage.fingerprint(f) for f in files], "spec": spec_repr,
             "tokenizer": tokenizer_fingerprint, "template": template_repr, "max_length": max_length,
             "count": count, "seed": seed, "code": _code_digest()}  # fmt: skip
    if encoder_weights is not None:
        parts["encoder_weights"] = encoder_weights
    if hub is not None:
        parts["hub"] = hub
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def path_of(name: str, cache_key: str) -> storage.Path | None:
    where = cache_dir()
    return None if where is None else where / f"{name.replace('/', '_')}-{cache_key[:24]}.tok"


class CachedExamples(Sequence):
    """A task's examples read back from a cache file: memory-mapped arrays, each example (a dict like
    the encoder's: int32 `tokens` and `loss_mask`, `conversation`, `id`, a pair's `rejected_at`) made when it is asked for. A
    slice is a view; `sizes` and `token_range` answer without touching the tokens."""

    def __init__(self, arrays: dict[str, np.ndarray], start: int = 0, stop: int | None = None):
        self._a = arrays
        self._start = start
        self._stop = len(arrays["offsets"]) - 1 if stop is None else stop

    def __len__(self) -> int:
        return self._stop - self._start

    def __getitem__(self, i):
        if isinstance(i, slice):
            start, stop, step = i.indices(len(self))
            if step != 1:
                return [self[j] for j in range(start, stop, step)]
            return CachedExamples(self._a, self._start + start, self._start + max(start, stop))
        i = operator.index(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} of {len(self)}")
        j = self._start + i % len(self)
        a = self._a
        lo, hi = int(a["offsets"][j]), int(a["offsets"][j + 1])
        return {"tokens": a["tokens"][lo:hi].astype(np.int32), "loss_mask": a["loss_mask"][lo:hi].astype(np.int32),
                "conversation": _text(a["conversations"], a["conversation_offsets"], j),
                "id": json.loads(_text(a["ids"], a["id_offsets"], j)),
                **({"rejected_at": int(a["rejected_at"][j])} if "rejected_at" in a else {})}  # fmt: skip

    def sizes(self) -> tuple[np.ndarray, np.ndarray]:
        """(token lengths, trained weights when packed whole: nonzero loss_mask[1:]) of the examples."""
        offsets = self._a["offsets"][self._start : self._stop + 1]
        return np.diff(offsets), self._a["trained"][self._start : self._stop].astype(np.int64)

    def token_range(self) -> tuple[int, int] | None:
        """(smallest, largest) token id of the examples; None when they hold no token."""
        lengths = self.sizes()[0]
        if not lengths.any():
            return None
        mine = slice(self._start, self._stop)
        return (int(self._a["token_min"][mine][lengths > 0].min()),
                int(self._a["token_max"][mine][lengths > 0].max()))  # fmt: skip


def _text(blob: np.ndarray, offsets: np.ndarray, j: int) -> str:
    return blob[int(offsets[j]) : int(offsets[j + 1])].tobytes().decode()


def load(path) -> tuple[CachedExamples, dict] | None:
    """(examples, report) from a cache file; None when absent, and when unreadable or not whole (reported in one
    line, then rebuilt)."""
    local = None
    try:
        local = storage.local_copy(path)  # a file in a bucket: downloaded (inside: a failed download is reported)
        with open(local, "rb") as f:  # closed here; the memory map outlives it
            header = _verified_header(f)
            view = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        arrays = {name: np.frombuffer(view, np.dtype(dtype), count=count, offset=offset)
                  for name, (offset, dtype, count) in header["arrays"].items()}  # fmt: skip
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is rebuilt
        print(f"instructjax: warning: tokenized cache {path} is unreadable ({' '.join(str(exc).split())[:300]}); "
              "rebuilding it", file=sys.stderr, flush=True)
        if local is not None and storage.is_remote(path):
            Path(local).unlink(missing_ok=True)
        return None
    return CachedExamples(arrays), header["report"]


def _verified_header(f) -> dict:
    """The header of an open cache file whose length, header and payload check out (else ValueError)."""
    size = os.fstat(f.fileno()).st_size
    if size < len(_MAGIC) + _TRAILER.size:
        raise ValueError(f"it is {size} bytes long (a torn write)")
    f.seek(size - _TRAILER.size)
    offset, length, digest, end = _TRAILER.unpack(f.read(_TRAILER.size))
    if end != _END or offset + length + _TRAILER.size != size:
        raise ValueError("its trailer is missing or wrong (a torn write, or not a cache file)")
    f.seek(offset)
    raw = f.read(length)
    if xxhash.xxh3_128_digest(raw) != digest:
        raise ValueError("its header's checksum does not match (a torn or corrupted write)")
    header = json.loads(raw)
    if header.get("format") != FORMAT:
        raise ValueError(f"its format is {header.get('format')}, not {FORMAT}")
    f.seek(0)
    magic = f.read(len(_MAGIC))
    if magic != _MAGIC:
        raise ValueError("not a cache file of this format")
    h, buffer, left = xxhash.xxh3_128(magic), bytearray(_READ), offset - len(magic)
    view = memoryview(buffer)
    while left:
        n = f.readinto(view[: min(left, _READ)])
        if not n:
            raise ValueError("it ends early (a torn write)")
        h.update(view[:n])
        left -= n
    if h.hexdigest() != header["payload"]:
        raise ValueError("its checksum does not match (a torn or corrupted write)")
    return header


def _narrow(lo: int, hi: int) -> np.dtype:
    """The smallest integer type that holds lo..hi."""
    for dtype in (np.uint8, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


class _Writer:
    """Appends 64-byte-aligned arrays to a file, hashing every byte; records where each one lies."""

    def __init__(self, f):
        self.f, self.hash, self.at, self.arrays = f, xxhash.xxh3_128(), 0, {}

    def raw(self, data: bytes | memoryview) -> None:
        self.f.write(data)
        self.hash.update(data)
        self.at += len(data)

    def array(self, name: str, dtype: np.dtype, chunks) -> None:
        """Array `name` of `dtype`, written chunk by chunk (each chunk converted losslessly)."""
        self.raw(b"\0" * (-self.at % _ALIGN))
        start, count = self.at, 0
        for chunk in chunks:
            data = np.ascontiguousarray(chunk, dtype)
            self.raw(memoryview(data).cast("B"))
            count += data.size
        self.arrays[name] = [start, dtype.str, count]


def _batched(seq: list, n: int = 4096):
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


def save(path, examples: Sequence[dict], report: dict) -> None:
    """Write whole or not at all: readers see the old file, the new one, or none. The file is written to a local
    temporary file first, then renamed into place (a local directory) or uploaded (`storage.upload`)."""
    path = storage.path(path)
    remote = storage.is_remote(path)
    folder = storage.staging_dir() if remote else os.fspath(path.parent)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = storage.temporary_file(folder, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            _write(f, examples, report)
            f.flush()
            os.fsync(f.fileno())
        if remote:
            storage.upload(tmp, path, keep=True)  # the local copy a later `load` reads
        else:
            os.replace(tmp, os.fspath(path))
            storage.fsync_dir(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def array_sizes(tokens: list[np.ndarray], masks: list[np.ndarray]):
    """(lengths, trained: nonzero loss_mask[1:], (smallest, largest token) per example (0 when empty), (lowest, highest)
    mask value) of examples' 1-D arrays, as a cache file stores them and planning needs them; a batch of examples
    at a time, in numpy."""
    lengths = np.fromiter((t.size for t in tokens), np.int64, len(tokens))
    trained, low, high = (np.zeros(len(tokens), np.int64) for _ in range(3))
    mask_range = []
    for begin in range(0, len(tokens), 4096):  # batches: a concatenation of every example is slower on a large task
        n = lengths[begin : begin + 4096]
        if not n.sum():
            continue
        filled, firsts = np.flatnonzero(n) + begin, (np.cumsum(n) - n)[n > 0]
        t, m = np.concatenate(tokens[begin : begin + 4096]), np.concatenate(masks[begin : begin + 4096])
        low[filled], high[filled] = np.minimum.reduceat(t, firsts), np.maximum.reduceat(t, firsts)
        nonzero = (m != 0).astype(np.int32)
        trained[filled] = np.add.reduceat(nonzero, firsts) - nonzero[firsts]
        mask_range += [int(m.min()), int(m.max())]
    return lengths, trained, (low, high), (min(mask_range, default=0), max(mask_range, default=0))


def _write(f, examples: Sequence[dict], report: dict) -> None:
    """The cache file of `examples` and `report`, written to open file `f`."""
    tokens = [np.asarray(ex["tokens"]) for ex in examples]
    masks = [np.asarray(ex["loss_mask"]) for ex in examples]
    lengths, trained, (token_min, token_max), (mask_lo, mask_hi) = array_sizes(tokens, masks)
    conversations = [ex["conversation"].encode() for ex in examples]
    ids = [json.dumps(ex["id"]).encode() for ex in examples]
    text_offsets = lambda texts: np.cumsum([0] + [len(t) for t in texts], dtype=np.int64)  # noqa: E731
    concat = lambda parts: (np.concatenate(b) for b in _batched(parts) if b)  # noqa: E731
    w = _Writer(f)
    w.raw(_MAGIC)
    token_type = _narrow(int(token_min.min(initial=0)), int(token_max.max(initial=0)))
    w.array("tokens", token_type, concat(tokens))
    w.array("loss_mask", _narrow(mask_lo, mask_hi), concat(masks))
    w.array("offsets", np.dtype(np.int64), [np.concatenate([[0], np.cumsum(lengths)])])
    w.array("trained", np.dtype(np.int32), [trained])
    w.array("token_min", token_type, [token_min])
    w.array("token_max", token_type, [token_max])
    w.array("conversations", np.dtype(np.uint8), (np.frombuffer(b"".join(b), np.uint8)
                                                  for b in _batched(conversations)))  # fmt: skip
    w.array("conversation_offsets", np.dtype(np.int64), [text_offsets(conversations)])
    w.array("ids", np.dtype(np.uint8), (np.frombuffer(b"".join(b), np.uint8) for b in _batched(ids)))
    w.array("id_offsets", np.dtype(np.int64), [text_offsets(ids)])
    if examples and "rejected_at" in examples[0]:  # preference pairs: where each one's rejected side begins
        w.array("rejected_at", np.dtype(np.int64), [np.asarray([ex["rejected_at"] for ex in examples], np.int64)])
    header = json.dumps({"format": FORMAT, "arrays": w.arrays, "report": report,
                         "payload": w.hash.hexdigest()}).encode()  # fmt: skip
    f.write(header + _TRAILER.pack(w.at, len(header), xxhash.xxh3_128_digest(header), _END))
