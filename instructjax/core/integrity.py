"""A checkpoint step's integrity, and which step of a run is intact.

Orbax keeps no checksums: an emptied JSON item fails to parse, but a flipped byte in an array chunk can
decode to silently wrong values and a flipped byte in a JSON item can still parse. So once Orbax has
committed a step, the primary host hashes every file in it and writes `STEP/instructjax.manifest`
(`write_manifest`: a temporary file, then a rename, so the manifest is whole or absent), and every reader
checks the step against it before using anything in it (`intact_step`).

Manifest format: the first line is the xxh3-128 (hex) of the rest of the file, so any damage to the manifest
itself shows; the rest is JSON `{"format": 1, "files": {path relative to the step: [size, xxh3-128]}}`, one
file a line. Files that are not listed (added after the manifest) are ignored: no reader opens them.

A step without a manifest is torn when an older step of the directory has one (its process stopped between
Orbax's commit and the manifest); otherwise it was written before manifests existed and is trusted as then,
once its JSON items read. "The newest step" is the newest intact one: damaged newer steps are named in one
warning line (and renamed to `STEP.unreadable` on resume, kept); a damaged step named explicitly is a
one-line ConfigError. With several JAX processes `intact_step` is a collective: each host hashes a share of
the files, the hosts exchange what they found, and all use the same step.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import xxhash
from jax.experimental import multihost_utils

from instructjax.core.errors import ConfigError

MANIFEST = "instructjax.manifest"
_CHUNK = 1 << 23

# str(step dir), part, parts -> (what its files looked like when checked, problem found or None): one process
# that opens a step several times (model config, tokenizer, params) reads its data once
_checked: dict[tuple[str, int, int], tuple[tuple, str | None]] = {}


def _digest(path: Path) -> tuple[int, str]:
    """(size, xxh3-128 hex) of a file, read in chunks."""
    h, size = xxhash.xxh3_128(), 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def write_manifest(step_dir: Path) -> None:
    """Record every file now in `step_dir` (a committed step) in its manifest, atomically."""
    files = {}
    for path in sorted(p for p in step_dir.rglob("*") if p.is_file()):
        name = path.relative_to(step_dir).as_posix()
        if not name.startswith(MANIFEST):  # the manifest and a temporary one left by an interrupted write
            files[name] = list(_digest(path))
    lines = ",\n".join(f"{json.dumps(name)}: {json.dumps(entry)}" for name, entry in files.items())
    body = f'{{"format": 1, "files": {{\n{lines}\n}}}}\n'.encode()  # JSON, one file a line
    tmp = step_dir / f"{MANIFEST}.tmp"
    with tmp.open("wb") as f:
        f.write(xxhash.xxh3_128_hexdigest(body).encode() + b"\n" + body)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(step_dir / MANIFEST)
    fd = os.open(step_dir, os.O_RDONLY)  # make the rename itself durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def has_manifest(step_dir: Path) -> bool:
    return (step_dir / MANIFEST).is_file()


def check_manifest(step_dir: Path, part: int = 0, parts: int = 1) -> str | None:
    """What is wrong with `step_dir` against its manifest, or None. Every file's size is checked (a cut,
    emptied or deleted file shows without reading any data); the digests of files `part::parts` (sorted by
    path) are then computed, so `parts` hosts share the reading of one step."""
    try:
        raw = (step_dir / MANIFEST).read_bytes()
    except OSError as exc:
        return f"its manifest cannot be read ({type(exc).__name__})"
    head, _, body = raw.partition(b"\n")
    if head != xxhash.xxh3_128_hexdigest(body).encode():
        return f"its manifest {MANIFEST} is damaged"
    files = sorted(json.loads(body)["files"].items())
    seen = []
    for name, (size, _) in files:
        try:
            stat = (step_dir / name).stat()
        except OSError:
            return f"{name} is missing"
        if stat.st_size != size:
            return f"{name} has {stat.st_size} bytes, its manifest says {size}"
        seen.append((stat.st_ino, stat.st_mtime_ns))
    key, state = (str(step_dir), part, parts), (head, tuple(seen))
    if key in _checked and _checked[key][0] == state:
        return _checked[key][1]
    problem = None
    for name, (_, digest) in files[part::parts]:
        try:
            if _digest(step_dir / name)[1] != digest:
                problem = f"{name} differs from its manifest (xxh3-128)"
        except OSError as exc:
            problem = f"{name} cannot be read ({type(exc).__name__})"
        if problem:
            break
    _checked[key] = (state, problem)
    return problem


def steps_on_disk(directory: Path) -> list[int]:
    """The committed steps of a checkpoints dir, oldest first. Orbax writes a step into a temporary
    `STEP.orbax-checkpoint-tmp-*` directory and renames it; a step set aside is `STEP.unreadable`."""
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def unsealed(directory: Path, steps: list[int]) -> set[int]:
    """Steps without a manifest although an older step has one: their process stopped between Orbax's
    commit and the manifest."""
    found, sealed_before = set(), False
    for step in steps:
        if has_manifest(directory / str(step)):
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


def _problem(directory: Path, step: int) -> str | None:
    """What makes `step` unusable, or None (this host's share of the check: see `check_manifest`)."""
    step_dir = directory / str(step)
    if has_manifest(step_dir):
        return check_manifest(step_dir, jax.process_index(), jax.process_count())
    if step in unsealed(directory, steps_on_disk(directory)):
        return f"it has no {MANIFEST}: its save stopped (or is still finishing) after Orbax committed it"
    try:  # written before manifests: trusted as then, once its JSON items read
        for item in ("meta", "tokenizer"):
            if item == "meta" or (step_dir / item).is_dir():
                ocp.JsonCheckpointHandler().restore(step_dir / item, ocp.args.JsonRestore())
    except Exception as exc:  # noqa: BLE001 - any unreadable item
        return describe(exc)
    return None


_warned: set[tuple] = set()  # one warning per process for one fallback (a reader opens a step several times)


def intact_step(directory: Path, step: int | None = None, *, set_aside: bool = False,
                damaged: dict[int, str] | None = None) -> int:
    """The step to read in a checkpoints dir: `step` itself when it is intact (a one-line ConfigError when it
    is not), else the newest intact step; damaged newer steps are named in one warning line on stderr and,
    with `set_aside`, renamed to `STEP.unreadable` (kept). `damaged`: steps already found unreadable."""
    directory = Path(directory)
    steps = steps_on_disk(directory)
    if step is not None:
        if step not in steps:
            raise ConfigError(f"no complete checkpoint at step {step} in {directory}")
        problem = agree(_problem(directory, step))
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
        problem = agree((damaged or {}).get(candidate) or _problem(directory, candidate))
        if problem is None:
            break
        skipped.append((candidate, problem))
    else:
        raise ConfigError(f"no intact checkpoint in {directory}; step {skipped[0][0]}: {skipped[0][1]}")
    if skipped:
        kept = _set_aside(directory, [s for s, _ in skipped]) if set_aside else []
        _warn(directory, skipped, candidate, kept)
    return candidate


def _set_aside(directory: Path, steps: list[int]) -> list[str]:
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


def _warn(directory: Path, skipped: list[tuple[int, str]], using: int, kept: list[str]) -> None:
    key = (str(directory), tuple(s for s, _ in skipped), using)
    if key in _warned:
        return
    _warned.add(key)
    steps = ("step " if len(skipped) == 1 else "steps ") + ", ".join(str(s) for s, _ in skipped)
    why = skipped[0][1] if len(skipped) == 1 else "; ".join(f"step {s}: {p}" for s, p in skipped)
    kept_as = f" (kept as {', '.join(kept)})" if kept else ""
    print(f"instructjax: warning: checkpoint {steps} in {directory} cannot be used ({why}); "
          f"falling back to step {using}{kept_as}", file=sys.stderr, flush=True)
