"""Every file instructjax reads or writes, on a local disk or in a bucket: one small layer over `etils.epath`
(the file layer Orbax uses), so a local path, `gs://` and the other fsspec URLs behave alike.

- `path(p)`: a user's path as an `epath.Path` (a local one with `~` expanded and made absolute).
- Whole-file writes a reader sees old or new, never torn (`write_bytes`, `write_text`):
    local disk, NFS: a temporary file beside the target, fsync, `os.replace`, fsync of the directory;
    object store (gs://, s3://): one upload straight to the name. An object is visible only once its upload is
    complete, and a new upload replaces the old object in one step: there is nothing to rename (epath's rename
    refuses an existing target, and on GCS a rename is a copy and a delete).
- Libraries that read a local file system (datasets, tokenizers, safetensors, lm-eval, mmap) read
  `local_copy(p)`: the path itself, or for a URL a copy downloaded once per object version into
  `~/.cache/instructjax/staged` (`INSTRUCTJAX_STAGING_DIR`).
- Libraries that write one (TensorBoard, safetensors, matplotlib) write into `Mirror(p).local`, and `sync()`
  uploads what changed; `writing_dir(p)` is the same for a directory written once.
- `fingerprint(p)`: a file's content identity for cache keys: the xxh3-128 of a local file's bytes; for a URL the
  store's own checksum (md5 / crc32c, computed when the object was uploaded: nothing is downloaded).
- `listing(directory)`: every file below a directory with its size and, in a bucket, the store's checksum.

gs:// goes through fsspec's gcsfs: `EPATH_USE_TF` defaults to false, set just before this module first imports epath
(`_epath()`; with TensorFlow installed, epath would send gs:// through TensorFlow's GCS filesystem, whose endpoint
ignores `STORAGE_EMULATOR_HOST`), and gcsfs keeps
no listings cache (other hosts write into the same directories). Orbax writes arrays through TensorStore, which
an emulator reaches through `TENSORSTORE_GCS_HTTP_URL`. Nothing here has an option of its own.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import xxhash

from instructjax.core.context import current
from instructjax.core.errors import ConfigError

if TYPE_CHECKING:
    from etils import epath
_READ = 16 << 20
_UMASK = os.umask(0o022)  # read once: a new file's mode is 0666 less it (tempfile's own files are 0600)
os.umask(_UMASK)


def _epath():
    """`etils.epath` with its gs:// backend fsspec's (gcsfs), not TensorFlow's: `EPATH_USE_TF`, read when that backend
    first loads, is set here before any path is made (Orbax gets only this module's paths), not on import."""
    os.environ.setdefault("EPATH_USE_TF", "false")
    from etils import epath

    return epath


def __getattr__(name: str):
    if name == "Path":  # `storage.Path`: epath's, imported (as `_epath` does) when first asked for
        return _epath().Path
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_remote(p: str | os.PathLike) -> bool:
    """Whether `p` is a URL (gs://, s3://, ...) rather than a local path."""
    return "://" in os.fspath(p)


def path(p: str | os.PathLike) -> epath.Path:
    """`p` as an `epath.Path`: a URL as it is, a local path with `~` expanded and made absolute."""
    text = os.fspath(p)
    if is_remote(text):
        _fsspec_defaults()
        return _epath().Path(text)
    return _epath().Path(os.path.abspath(os.path.expanduser(text)))


def check_bucket(p: str | os.PathLike, what: str) -> None:
    """One ConfigError line where `p` is in a bucket that does not exist (or that these credentials cannot see):
    said before the work whose result goes there, not after it."""
    if not is_remote(p):
        return
    fs, where = filesystem(p)
    bucket = where.split("/", 1)[0]
    try:
        there = fs.exists(bucket)
    except Exception as e:  # noqa: BLE001  credentials refused, no network: the store's own words
        raise ConfigError(f"{what} {os.fspath(p)}: cannot reach its bucket ({' '.join(str(e).split())[:160]})") from None
    if not there:
        raise ConfigError(f"{what} {os.fspath(p)}: bucket {os.fspath(p).split('://')[0]}://{bucket} does not exist "
                          "(or these credentials cannot see it)")


def join(p: str | os.PathLike, *parts: str) -> str:
    """`p` / parts, as a string (`path`'s rules)."""
    return os.fspath(path(p).joinpath(*parts))


def filesystem(p: str | os.PathLike) -> tuple[Any, str]:
    """(fsspec filesystem, path within it) of a URL."""
    import fsspec

    _fsspec_defaults()
    return fsspec.core.url_to_fs(os.fspath(p))


@functools.cache
def _fsspec_defaults() -> None:
    """No listings cache for gcsfs, and against an emulator (which serves the JSON API only, no Storage Control
    API) no bucket-layout lookups: set before the first gs:// file system is made, ours or Orbax's."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # read when gcsfs is imported
    import fsspec.config

    fsspec.config.conf.setdefault("gs", {}).setdefault("use_listings_cache", False)  # once per process: fsspec's


# ---- whole files ---------------------------------------------------------------------------------------------


def temporary_file(directory: str, name: str) -> tuple[int, str]:
    """(fd, path) of a new temporary file in local `directory`, to become file `name`, with the mode any new file
    gets (not tempfile's 0600: the other users of a shared cache or export directory could not read it)."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_UMASK)
    return fd, tmp


def usual_mode(local: str) -> None:
    """Give a local file the mode a new file gets (a library that wrote it 0600: safetensors)."""
    os.chmod(local, 0o666 & ~_UMASK)


def write_bytes(p: str | os.PathLike, data: bytes) -> None:
    """Write a whole file so that a reader sees the old file or the new one, never a torn one (module doc)."""
    target = path(p)
    if is_remote(target):
        target.write_bytes(data)  # one upload: the object appears whole or not at all
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temporary_file(os.fspath(target.parent), target.name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, os.fspath(target))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(target.parent)


def write_text(p: str | os.PathLike, text: str) -> None:
    write_bytes(p, text.encode())


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename in a local directory durable (nothing to do in a bucket)."""
    if is_remote(directory):
        return
    fd = os.open(os.fspath(directory), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def upload(local: str, p: str | os.PathLike, *, keep: bool = False) -> None:
    """Copy local file `local` to `p` whole (a bucket: one upload; a local path: `write_bytes`'s protocol).
    `keep`: in a bucket, `local` is then moved to where `local_copy(p)` finds it (it is not downloaded again)."""
    if is_remote(p):
        fs, where = filesystem(p)
        fs.put_file(local, where)
        if keep:
            home, folder = _copy_location(p, {"": stat(p)})
            os.makedirs(folder, exist_ok=True)
            os.replace(local, os.path.join(folder, os.fspath(p).rstrip("/").rsplit("/", 1)[-1]))
            _drop_older(home, folder)
    else:
        target = path(p)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temporary_file(os.fspath(target.parent), target.name)
        os.close(fd)
        try:
            shutil.copyfile(local, tmp)
            os.replace(tmp, os.fspath(target))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def remove_tree(p: str | os.PathLike) -> None:
    """Remove a directory and everything below it, if it is there."""
    target = path(p)
    with contextlib.suppress(FileNotFoundError):
        if target.is_dir():
            target.rmtree()
        elif target.exists():
            target.unlink()


# ---- what is there -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A file as a listing sees it: its size, and in a bucket the store's checksum ("md5:..." / "crc32c:...",
    None where the store keeps none) and version."""

    size: int
    checksum: str | None = None
    version: str | None = None  # a local file's inode and mtime


def _entry(info: dict) -> Entry:
    checksum = next((f"{k}:{info[n]}" for n, k in (("md5Hash", "md5"), ("crc32c", "crc32c"), ("ETag", "etag"))
                     if info.get(n)), None)  # fmt: skip
    version = next((str(info[n]) for n in ("generation", "VersionId", "mtime", "updated", "LastModified")
                    if info.get(n)), None)  # fmt: skip
    return Entry(int(info.get("size") or 0), checksum, version)


def stat(p: str | os.PathLike) -> Entry:
    """Size (and, in a bucket, checksum and version) of one file; FileNotFoundError when there is none."""
    if is_remote(p):
        fs, where = filesystem(p)
        info = fs.info(where)
        if info.get("type") == "directory":
            raise IsADirectoryError(os.fspath(p))
        return _entry(info)
    st = os.stat(os.fspath(path(p)))
    return Entry(st.st_size, None, f"{st.st_ino}:{st.st_mtime_ns}")


def listing(directory: str | os.PathLike) -> dict[str, Entry]:
    """Every file below `directory` (names relative to it, '/'-separated), each with its `Entry`: one recursive
    listing in a bucket (no object is read), a walk on a local disk. Empty when the directory is missing."""
    if is_remote(directory):
        fs, where = filesystem(directory)
        where = where.rstrip("/")
        try:
            found = fs.find(where, detail=True)
        except FileNotFoundError:
            return {}
        return {name[len(where) + 1 :]: _entry(info) for name, info in found.items()
                if info.get("type") != "directory" and name.startswith(where + "/")}  # fmt: skip
    root = os.fspath(path(directory))
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            full = os.path.join(folder, name)
            try:
                st = os.stat(full)
            except FileNotFoundError:
                continue
            out[os.path.relpath(full, root).replace(os.sep, "/")] = Entry(st.st_size, None,
                                                                          f"{st.st_ino}:{st.st_mtime_ns}")
    return out


def digest(p: str | os.PathLike) -> str:
    """"xxh3:<hex>": the xxh3-128 of a file's bytes (local or in a bucket), read in chunks."""
    h = xxhash.xxh3_128()
    with path(p).open("rb") as f:
        while block := f.read(_READ):
            h.update(block)
    return "xxh3:" + h.hexdigest()


def fingerprint(p: str | os.PathLike) -> str:
    """A file's content identity (module doc): "xxh3:<hex>" of a local file's bytes (remembered per inode, mtime
    and size within a command: `core.context`), or the store's "size:checksum" for a URL (its bytes when the store keeps none)."""
    if is_remote(p):
        entry = stat(p)
        if entry.checksum:
            return f"{entry.size}:{entry.checksum}"
        return digest(p)
    local = os.fspath(path(p))
    st = os.stat(local)
    key = (local, st.st_ino, st.st_mtime_ns, st.st_size)
    known = current().slot("storage.digests", lambda _: {})  # (path, inode, mtime, size) -> xxh3-128, per command
    if key not in known:
        known[key] = digest(local)
    return known[key]


# ---- local copies and mirrors --------------------------------------------------------------------------------


def staging_dir() -> str:
    return os.path.expanduser(os.environ.get("INSTRUCTJAX_STAGING_DIR", "~/.cache/instructjax/staged"))


def local_copy(p: str | os.PathLike) -> str:
    """A local path holding file or directory `p`: `p` itself when local; for a URL a copy downloaded into the
    staging directory, once per version of its objects (a changed object is downloaded again). A URL that names
    nothing is a FileNotFoundError."""
    if not is_remote(p):
        return os.fspath(path(p))
    fs, where = filesystem(p)
    info = fs.info(where)
    single = info.get("type") != "directory"
    files = {"": _entry(info)} if single else listing(p)
    if not single and not files:
        raise FileNotFoundError(f"{os.fspath(p)} holds no files")
    home, local = _copy_location(p, files)
    name = os.fspath(p).rstrip("/").rsplit("/", 1)[-1]
    if not os.path.isdir(local):
        os.makedirs(home, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=home, prefix=".download-")
        try:
            remote = [f"{where.rstrip('/')}/{n}" if n else where for n in files]
            targets = [os.path.join(tmp, name, *n.split("/")) if n else os.path.join(tmp, name) for n in files]
            for t in targets:
                os.makedirs(os.path.dirname(t), exist_ok=True)
            fs.get(remote, targets)
            try:
                os.rename(tmp, local)  # atomic: a concurrent download either wins or finds it done
            except OSError:
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _drop_older(home, local)
    return os.path.join(local, name)


def _copy_location(p: str | os.PathLike, files: dict[str, Entry]) -> tuple[str, str]:
    """(the staging directory of URL `p`, the directory of the local copy of these versions of its files)."""
    url = os.fspath(p).rstrip("/")
    versions = json.dumps(sorted((n, e.size, e.checksum, e.version) for n, e in files.items())).encode()
    home = os.path.join(staging_dir(), hashlib.sha256(url.encode()).hexdigest()[:16])
    return home, os.path.join(home, hashlib.sha256(versions).hexdigest()[:16])


def _drop_older(home: str, keep: str) -> None:
    """Remove the local copies of older versions of a URL (a reader that has one open keeps reading it)."""
    for old in os.listdir(home):
        if old != os.path.basename(keep) and not old.startswith("."):
            shutil.rmtree(os.path.join(home, old), ignore_errors=True)


class Mirror:
    """A local directory standing for directory `p`, for libraries that write local files: `p` itself when
    local; for a URL a temporary directory whose new and changed files `sync()` uploads (each file whole: a
    reader of `p` sees its last synced version). `close()` syncs and removes the temporary directory."""

    def __init__(self, p: str | os.PathLike):
        self.target = path(p)
        self.remote = is_remote(self.target)
        self._sent: dict[str, Entry] = {}
        if self.remote:
            self.local = tempfile.mkdtemp(prefix="instructjax-mirror-")
        else:
            self.local = os.fspath(self.target)
            os.makedirs(self.local, exist_ok=True)

    def sync(self) -> None:
        if not self.remote:
            return
        changed = [(name, entry) for name, entry in listing(self.local).items() if self._sent.get(name) != entry]
        if not changed:
            return
        fs, where = filesystem(self.target)
        fs.put([os.path.join(self.local, *n.split("/")) for n, _ in changed],
               [f"{where.rstrip('/')}/{n}" for n, _ in changed])  # fmt: skip
        self._sent.update(changed)

    def close(self) -> None:
        if self.remote:
            self.sync()
            shutil.rmtree(self.local, ignore_errors=True)


@contextlib.contextmanager
def writing_dir(p: str | os.PathLike) -> Iterator[str]:
    """A local directory to write directory `p`'s files into: `p` itself when local; for a URL a temporary
    directory uploaded to `p` when the block ends without an error (then removed either way)."""
    mirror = Mirror(p)
    try:
        yield mirror.local
        mirror.sync()
    finally:
        if mirror.remote:
            shutil.rmtree(mirror.local, ignore_errors=True)


def temporary_name(p: str | os.PathLike) -> epath.Path:
    """A unique sibling name of `p` for a temporary file or directory (hidden: it starts with '.')."""
    target = path(p)
    return target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}.tmp"
