"""Tokenized tasks cached on disk, so a restart goes to its first step without re-reading and re-tokenizing.

One file per (task spec, subset) keyed by the sha256 of everything the examples depend on: the data
files' content, the tokenizer (its fingerprint), the chat template, the max length, the rest of the task
spec, the subset (count, seed) and the data layer's own source code. Hub datasets (no local files) are
not cached. A file is written to a temporary name and renamed, so concurrent writers (several hosts on
one disk) and a crash never leave a partial file under the real name; a file that does not check out
(its payload's sha256) is reported in one line, rebuilt and replaced. Directory: `INSTRUCTJAX_CACHE_DIR`
(default `~/.cache/instructjax/tokenized`); `INSTRUCTJAX_CACHE_DIR=off` turns the cache off.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

FORMAT = 1
_HEADER = b"instructjax-tokenized-cache\n"
_FILE_DIGESTS: dict[tuple[str, float, int], str] = {}


def cache_dir() -> Path | None:
    """The cache directory, or None when the cache is off."""
    where = os.environ.get("INSTRUCTJAX_CACHE_DIR", "~/.cache/instructjax/tokenized")
    return None if where.lower() in ("off", "none", "0", "") else Path(where).expanduser()


def _file_digest(path: str) -> str:
    """sha256 of a file's bytes (remembered per path, mtime and size within a process)."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime, st.st_size)
    if key not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_DIGESTS[key] = h.hexdigest()
    return _FILE_DIGESTS[key]


def _code_digest() -> str:
    """sha256 of the data layer's source: a change to how rows are read or encoded invalidates the cache."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def key(*, files: list[str], spec_repr: str, tokenizer_fingerprint: str, template_repr: str, max_length: int,
        count: int | None, seed: int | None) -> str:
    """The cache key of one task's encoded examples."""
    parts = {"format": FORMAT, "files": [_file_digest(f) for f in files], "spec": spec_repr,
             "tokenizer": tokenizer_fingerprint, "template": template_repr, "max_length": max_length,
             "count": count, "seed": seed, "code": _code_digest()}  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def path_of(name: str, cache_key: str) -> Path | None:
    where = cache_dir()
    return None if where is None else where / f"{name.replace('/', '_')}-{cache_key[:24]}.npz"


def load(path: Path) -> tuple[list[dict], dict] | None:
    """(examples, report) from a cache file; None when absent, and when unreadable (reported, then rebuilt)."""
    if not path.exists():
        return None
    try:
        raw = path.read_bytes()
        if not raw.startswith(_HEADER):
            raise ValueError("not a cache file")
        digest, payload = raw[len(_HEADER) : len(_HEADER) + 64].decode(), raw[len(_HEADER) + 64 :]
        if hashlib.sha256(payload).hexdigest() != digest:
            raise ValueError("its checksum does not match (a torn or corrupted write)")
        with np.load(io.BytesIO(payload), allow_pickle=False) as z:
            tokens, masks, offsets = z["tokens"], z["loss_mask"], z["offsets"]
            meta = json.loads(bytes(z["meta"]).decode())
    except Exception as exc:  # noqa: BLE001 - any unreadable file is rebuilt
        print(f"instructjax: warning: tokenized cache {path} is unreadable ({exc}); rebuilding it",
              file=sys.stderr, flush=True)
        return None
    examples = [{"tokens": tokens[a:b], "loss_mask": masks[a:b], "conversation": conv, "id": ex_id}
                for a, b, conv, ex_id in zip(offsets[:-1], offsets[1:], meta["conversations"], meta["ids"],
                                             strict=True)]  # fmt: skip
    return examples, meta["report"]


def save(path: Path, examples: list[dict], report: dict) -> None:
    """Write atomically (temporary file + rename): readers see the old file, the new one, or none."""
    lengths = [len(ex["tokens"]) for ex in examples]
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]).astype(np.int64)
    concat = lambda k, dtype: (np.concatenate([np.asarray(ex[k], dtype) for ex in examples])  # noqa: E731
                               if examples else np.zeros(0, dtype))
    meta = {"conversations": [ex["conversation"] for ex in examples], "ids": [ex["id"] for ex in examples],
            "report": report}  # fmt: skip
    buffer = io.BytesIO()
    np.savez(buffer, tokens=concat("tokens", np.int32), loss_mask=concat("loss_mask", np.int32), offsets=offsets,
             meta=np.frombuffer(json.dumps(meta).encode(), np.uint8))  # fmt: skip
    payload = buffer.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_HEADER + hashlib.sha256(payload).hexdigest().encode() + payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
