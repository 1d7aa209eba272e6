"""Damaging a checkpoint step the ways a full disk, a killed copy or a bad sector do, for the tests:
every file of the step (whatever Orbax wrote, and our manifest) emptied, cut, one byte flipped or deleted."""

from __future__ import annotations

import random
from pathlib import Path

from instructjax.core.integrity import MANIFEST

WAYS = ("empty", "cut", "flip", "delete")
KINDS = {  # the first that matches names a file's kind
    "manifest": lambda name: name == MANIFEST,
    "commit marker": lambda name: name.endswith("commit_success.txt") or name == "_CHECKPOINT_METADATA",
    "JSON item": lambda name: name in ("meta/metadata", "tokenizer/metadata"),
    "array data": lambda name: "/d/" in name,
    "orbax metadata": lambda name: True,  # _METADATA, _sharding, array_metadatas/*, manifest.ocdbt
}


def files(step_dir: Path) -> list[str]:
    """Every file of a step, relative to it."""
    return sorted(p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*") if p.is_file())


def kind(name: str) -> str:
    return next(k for k, matches in KINDS.items() if matches(name))


def applies(way: str, size: int) -> bool:
    """Whether `way` changes a file of `size` bytes."""
    return way == "delete" or size >= (2 if way == "cut" else 1)


def damage(path: Path, way: str, rng: random.Random) -> None:
    """Damage a file; a new file replaces it, so a hard-linked original stays whole."""
    data = path.read_bytes()
    path.unlink()
    if way == "empty":
        path.write_bytes(b"")
    elif way == "cut":
        path.write_bytes(data[: rng.randrange(1, len(data))])
    elif way == "flip":
        i = rng.randrange(len(data))
        path.write_bytes(data[:i] + bytes([data[i] ^ rng.randrange(1, 256)]) + data[i + 1 :])


def draw(step_dir: Path, rng: random.Random) -> list[tuple[str, str]]:
    """One (file, way) for every kind of file in the step, drawn from the files it holds."""
    by_kind: dict[str, list[str]] = {}
    for name in files(step_dir):
        by_kind.setdefault(kind(name), []).append(name)
    assert set(by_kind) == set(KINDS), by_kind  # every kind is there to damage
    cases = []
    for names in by_kind.values():
        name = rng.choice(names)
        cases.append((name, rng.choice([w for w in WAYS if applies(w, (step_dir / name).stat().st_size)])))
    return cases
