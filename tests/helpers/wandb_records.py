"""W&B's offline run files (`wandb/offline-run-*-ID/run-ID.wandb`) read back, for the tests of `wandb:` logging.

The file is W&B's record log: a 7-byte header (":W&B", the magic 0xBEE1, a version byte), then 32 KiB blocks of
LevelDB-log records (CRC 4 bytes, length 2, type 1: full, first, middle, last), each record one
`wandb_internal_pb2.Record`, parsed here with W&B's own protobuf classes."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> Iterator[object]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B" and struct.unpack("<H", data[4:6])[0] == 0xBEE1, f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's tail is padding
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        body = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending = body if kind in (FULL, FIRST) else pending + body
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def _items(items) -> dict[str, object]:
    return {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in items}


def run_files(wandb_dir: Path, run_id: str) -> list[Path]:
    """The run's record files, oldest first (each resume writes one more)."""
    return sorted(Path(wandb_dir).glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb"))


def history(wandb_dir: Path, run_id: str) -> dict[int, dict[str, object]]:
    """step -> the values logged at it, across the run's files (W&B keeps the first values of a step)."""
    rows: dict[int, dict[str, object]] = {}
    for path in run_files(wandb_dir, run_id):
        for record in records(path):
            if record.WhichOneof("record_type") == "history":
                row = _items(record.history.item)
                step = int(row.pop("_step"))
                rows.setdefault(step, {k: v for k, v in row.items() if not k.startswith("_")})
    return rows


def summary(wandb_dir: Path, run_id: str) -> dict[str, object]:
    """The run's summary, as its files last set it."""
    found: dict[str, object] = {}
    for path in run_files(wandb_dir, run_id):
        for record in records(path):
            if record.WhichOneof("record_type") == "summary":
                found.update(_items(record.summary.update))
    return found
