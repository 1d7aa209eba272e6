"""Runs as `report` reads them, written by hand: a config under configs/ and, when finished, the results.json
that `eval --config` writes; and a CSV table read back."""

import csv
import json
from pathlib import Path


def write_run(root: Path, name: str, config: str, results: dict | None) -> None:
    run_dir = root / "runs" / name
    (root / "configs").mkdir(exist_ok=True)
    (root / "configs" / f"{name}.yaml").write_text(f"name: {name}\nrun_dir: {run_dir}\n{config}")
    if results is not None:
        (run_dir / "eval").mkdir(parents=True)
        (run_dir / "eval" / "results.json").write_text(json.dumps(results))


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))
