"""A checkpoint step's integrity, and which step of a run is intact.

Orbax keeps no checksums: an emptied JSON item fails to parse, but a flipped byte in an array chunk can
decode to silently wrong values and a flipped byte in a JSON item can still parse. So once Orbax has
committed a step it is sealed by `STEP/instructjax.manifest` (`seal`: every file's size and digest, written
whole or not at all), and every reader checks the step against it before using anything in it (`intact_step`).

The seal reads no host's files but its own, so a preemption save of any size is sealed in seconds:
- in a bucket, the digest of a file is the checksum the store computed when the file was uploaded (md5, or
  crc32c where the store keeps no md5); host 0 reads them all from one listing of the step, reading no object;
- on a local disk or NFS, each host digests (xxh3-128) the files it wrote itself (Orbax's
  `ocdbt.process_<host>/`; host 0 also the rest: metadata and JSON items), the hosts hand the digests to host 0
  through the key-value store of JAX's runtime, and host 0 writes the manifest.
A reader checks every size, and each digest: a store checksum against the store's listing (no object is read;
any change to an object gives it a new one), an xxh3 by reading the file (with several hosts, each a share).

Manifest format: the first line is the xxh3-128 (hex) of the rest of the file, so any damage to the manifest
itself shows; the rest is JSON `{"format": 2, "files": {path relative to the step: [size, digest]}}`, one file a
line, a digest "xxh3:<hex>", "md5:<base64>" or "crc32c:<base64>" (format 1: a bare xxh3 hex). Files that are
not listed (added after the manifest) are ignored: no reader opens them.

A step without a manifest is torn when an older step of the directory has one (its process stopped between
Orbax's commit and the manifest); otherwise it was written before manifests existed and is trusted as then,
once its JSON items read. "The newest step" is the newest intact one: damaged newer steps are named in one
warning line (and renamed to `STEP.unreadable` on resume, kept); a damaged step named explicitly is a
one-line ConfigError. With several JAX processes `intact_step` is a collective: all hosts use the same step.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import xxhash
from jax.experimental import multihost_utils

from instructjax.core import context, hosts, storage
from instructjax.core.errors import ConfigError

MANIFEST = "instructjax.manifest"
JSON_ITEMS = ("meta", "tokenizer")  # a step's small items, read whole by their readers
_WRITER = re.compile(r"(?:^|/)ocdbt\.process_(\d+)(?:/|$)")



def writer_of(name: str, process_count: int) -> int:
    """The host that wrote file `name` of a step: Orbax's `ocdbt.process_<i>/` files are host i's, the rest
    (metadata, JSON items) host 0's."""
    found = _WRITER.search(name)
    return int(found.group(1)) % process_count if found else 0


def own_digests(step_dir, host: int, process_count: int) -> dict[str, list]:
    """[size, digest] of the files of `step_dir` that host `host` wrote (in a bucket: host 0, every file, from
    the store's checksums)."""
    files = {n: e for n, e in storage.listing(step_dir).items() if not n.startswith(MANIFEST)}
    if storage.is_remote(step_dir):
        if host != 0:
            return {}
        return {n: [e.size, e.checksum or storage.digest(f"{step_dir}/{n}")] for n, e in sorted(files.items())}
    return {n: [e.size, storage.digest(storage.path(step_dir) / n)] for n, e in sorted(files.items())
            if writer_of(n, process_count) == host}  # fmt: skip


def seal(step_dir) -> None:
    """Seal a committed step (module doc): every host calls it once Orbax has committed `step_dir`; host 0 writes
    the manifest once every host's digests are in."""
    coordinator = hosts.current()
    me, n = (coordinator.process_index, coordinator.process_count) if coordinator else (0, 1)
    try:
        mine, error = own_digests(step_dir, me, n), None
    except Exception as exc:  # noqa: BLE001 - handed to host 0 too, then raised here
        mine, error = {}, describe(exc)
    if coordinator is not None and not storage.is_remote(step_dir):
        name = f"seal/{hashlib.sha256(str(step_dir).encode()).hexdigest()[:16]}"
        every = hosts.gather_to_first(coordinator, name, {"files": mine, "error": error},
                                      f"sealing checkpoint {step_dir}")  # fmt: skip
        if every is not None:
            error = error or next((e["error"] for e in every if e["error"]), None)
            mine = {k: v for e in every for k, v in e["files"].items()}
    if error is not None:
        raise RuntimeError(f"cannot seal checkpoint {step_dir}: {error}")
    if me == 0:
        write_manifest(step_dir, mine)


def write_manifest(step_dir, files: dict[str, list]) -> None:
    """The manifest of `files` ({name: [size, digest]}), written whole or not at all (`storage.write_bytes`)."""
    lines = ",\n".join(f"{json.dumps(name)}: {json.dumps(entry)}" for name, entry in sorted(files.items()))
    body = f'{{"format": 2, "files": {{\n{lines}\n}}}}\n'.encode()  # JSON, one file a line
    storage.write_bytes(storage.path(step_dir) / MANIFEST, xxhash.xxh3_128_hexdigest(body).encode() + b"\n" + body)


def manifest_digest(step_dir) -> str | None:
    """The step's identity: its manifest's own xxh3 digest (over every file's size and digest); None unsealed."""
    try:
        return (storage.path(step_dir) / MANIFEST).read_bytes().partition(b"\n")[0].decode()
    except OSError:
        return None


def has_manifest(step_dir) -> bool:
    return (storage.path(step_dir) / MANIFEST).is_file()


def check_manifest(step_dir, part: int = 0, parts: int = 1, *, contents: bool = True) -> str | None:
    """What is wrong with `step_dir` against its manifest, or None. Every file's size is checked, and every store
    checksum against the store's listing (nothing is read); then the xxh3 digests of files `part::parts` (sorted by
    path) are computed, so `parts` hosts share the reading of one step: every file's with `contents`, else only the
    JSON items' (`JSON_ITEMS`, a few KB to MB that their reader reads whole anyway)."""
    try:
        raw = (storage.path(step_dir) / MANIFEST).read_bytes()
    except OSError as exc:
        return f"its manifest cannot be read ({type(exc).__name__})"
    head, _, body = raw.partition(b"\n")
    if head != xxhash.xxh3_128_hexdigest(body).encode():
        return f"its manifest {MANIFEST} is damaged"
    files = sorted(json.loads(body)["files"].items())
    found = storage.listing(step_dir)
    seen = []
    for name, (size, digest) in files:
        entry = found.get(name)
        if entry is None:
            return f"{name} is missing"
        if entry.size != size:
            return f"{name} has {entry.size} bytes, its manifest says {size}"
        if not _is_xxh3(digest) and entry.checksum != digest:
            return f"{name} differs from its manifest ({digest.split(':')[0]} checksum)"
        seen.append((name, entry.version, entry.checksum))
    key, state = (str(step_dir), part, parts, contents), (head, tuple(seen))
    # str(step dir), part, parts -> (what its files looked like when checked, problem found or None): a command that
    # opens a step several times (model config, tokenizer, params) reads its data once (`core.context`)
    checked = context.current().slot("checkpoint.checked", lambda _: {})
    if key in checked and checked[key][0] == state:
        return checked[key][1]
    problem = None
    hashed = [f for f in files if _is_xxh3(f[1][1]) and (contents or f[0].split("/")[0] in JSON_ITEMS)]
    for name, (_, digest) in hashed[part::parts]:
        try:
            if storage.digest(storage.path(step_dir) / name) != (digest if ":" in digest else "xxh3:" + digest):
                problem = f"{name} differs from its manifest (xxh3-128)"
        except OSError as exc:
            problem = f"{name} cannot be read ({type(exc).__name__})"
        if problem:
            break
    checked[key] = (state, problem)
    return problem


def _is_xxh3(digest: str) -> bool:
    return digest.startswith("xxh3:") or ":" not in digest  # format 1: a bare hex digest


def steps_on_disk(directory) -> list[int]:
    """The committed steps of a checkpoints dir, oldest first. Orbax writes a step into a temporary
    `STEP.orbax-checkpoint-tmp-*` directory and renames it; a step set aside is `STEP.unreadable`."""
    directory = storage.path(directory)
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def unsealed(directory, steps: list[int]) -> set[int]:
    """Steps without a manifest although an older step has one: their process stopped between Orbax's
    commit and the manifest."""
    found, sealed_before = set(), False
    for step in steps:
        if has_manifest(storage.path(directory) / str(step)):
            sealed_before = True
        elif sealed_before:
            found.add(step)
    return found


def describe(exc: BaseException) -> str:
    """An exception as one short line (for a warning or a one-line error)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


_WIDTH = 512  # bytes of a problem's text that hosts exchange


def agree(problem: str | None) -> str | None:
    """The lowest host's problem (the same text on every host), or None when no host has one; a collective
    with several hosts."""
    if jax.process_count() == 1:
        return problem
    mine = np.zeros(_WIDTH, np.uint8)
    if problem is not None:
        text = problem.encode()[: _WIDTH - 1]
        mine[0], mine[1 : 1 + len(text)] = 1, np.frombuffer(text, np.uint8)
    every = np.asarray(multihost_utils.process_allgather(mine)).reshape(jax.process_count(), _WIDTH)
    flagged = [row for row in every if row[0]]
    return bytes(flagged[0][1:]).rstrip(b"\0").decode(errors="replace") if flagged else None


def _problem(directory, step: int, contents: bool = True) -> str | None:
    """What makes `step` unusable, or None (this host's share of the check: see `check_manifest`)."""
    step_dir = storage.path(directory) / str(step)
    if has_manifest(step_dir):
        return check_manifest(step_dir, jax.process_index(), jax.process_count(), contents=contents)
    if step in unsealed(directory, steps_on_disk(directory)):
        return f"it has no {MANIFEST}: its save stopped (or is still finishing) after Orbax committed it"
    try:  # written before manifests: trusted as then, once its JSON items read
        for item in JSON_ITEMS:
            if item == "meta" or (step_dir / item).is_dir():
                ocp.JsonCheckpointHandler().restore(step_dir / item, ocp.args.JsonRestore())
    except Exception as exc:  # noqa: BLE001 - any unreadable item
        return describe(exc)
    return None


def intact_step(directory, step: int | None = None, *, set_aside: bool = False,
                damaged: dict[int, str] | None = None, contents: bool = True) -> int:
    """The step to read in a checkpoints dir: `step` itself when it is intact (a one-line ConfigError when it
    is not), else the newest intact step; damaged newer steps are named in one warning line on stderr and,
    with `set_aside`, renamed to `STEP.unreadable` (kept). `damaged`: steps already found unreadable.
    `contents=False` (a reader of a step's JSON items alone: its model config, tokenizer, base): every file is there
    at its size by the store's listing, and only the JSON items are hashed, so `plan` of a 70B import reads a few MB."""
    directory = storage.path(directory)
    steps = steps_on_disk(directory)
    if step is not None:
        if step not in steps:
            raise ConfigError(f"no complete checkpoint at step {step} in {directory}")
        problem = agree(_problem(directory, step, contents))
        if problem is not None:
            raise ConfigError(f"checkpoint step {step} in {directory} is damaged: {problem}")
        return step
    if not steps:
        raise ConfigError(f"no checkpoint found in {directory}")
    if jax.process_count() > 1:  # every host starts from the same list (a step committed late on one host)
        newest = multihost_utils.process_allgather(np.array([steps[-1]], np.int32))
        steps = [s for s in steps if s <= int(np.min(newest))]
    skipped = []
    for candidate in reversed(steps):
        problem = agree((damaged or {}).get(candidate) or _problem(directory, candidate, contents))
        if problem is None:
            break
        skipped.append((candidate, problem))
    else:
        raise ConfigError(f"no intact checkpoint in {directory}; step {skipped[0][0]}: {skipped[0][1]}")
    if skipped:
        kept = _set_aside(directory, [s for s, _ in skipped]) if set_aside else []
        _warn(directory, skipped, candidate, kept)
    return candidate


def _set_aside(directory, steps: list[int]) -> list[str]:
    """Rename damaged steps out of Orbax's view without deleting anything (the resumed run can save those
    steps again); the primary host renames once every host has agreed. Returns the new names."""
    targets = []
    for step in steps:
        target, n = directory / f"{step}.unreadable", 1
        while target.exists():
            target, n = directory / f"{step}.unreadable{n}", n + 1
        targets.append(target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("instructjax set aside: names chosen")
    if jax.process_index() == 0:
        for step, target in zip(steps, targets, strict=True):
            (directory / str(step)).rename(target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("instructjax set aside: renamed")
    return [t.name for t in targets]


def _warn(directory, skipped: list[tuple[int, str]], using: int, kept: list[str]) -> None:
    key = (str(directory), tuple(s for s, _ in skipped), using)
    warned = context.current().slot("checkpoint.warned", lambda _: set())  # one line per command for one fallback
    if key in warned:  # (a reader opens a step several times)
        return
    warned.add(key)
    steps = ("step " if len(skipped) == 1 else "steps ") + ", ".join(str(s) for s, _ in skipped)
    why = skipped[0][1] if len(skipped) == 1 else "; ".join(f"step {s}: {p}" for s, p in skipped)
    kept_as = f" (kept as {', '.join(kept)})" if kept else ""
    print(f"instructjax: warning: checkpoint {steps} in {directory} cannot be used ({why}); "
          f"falling back to step {using}{kept_as}", file=sys.stderr, flush=True)
