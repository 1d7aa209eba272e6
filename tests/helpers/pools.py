"""P3's prompted subtasks as hand-written rows in the hub schema, written to a folder, and the golden draws
(tests/assets/golden/) that the pool and subset tests compare with."""

import json
import os

import pandas as pd
import pytest

from helpers import ASSETS

# ---- P3: one file per prompted subtask, in bigscience/P3's schema (the dataset card's fields) -------------


def p3_row(inputs: str, target: str, **score_eval) -> dict:
    # `inputs` / `targets` are T5 token ids on the hub; the adapter reads the *_pretokenized text only
    return {"inputs": [0], "inputs_pretokenized": inputs, "targets": [1], "targets_pretokenized": " " + target,
            **score_eval}


BOOLQ = [p3_row(f"Passage {i}: the river {i} flows north.\nQuestion: does river {i} flow north?\nAnswer:",
                 "True" if i % 2 else "False") for i in range(7)]
# *_score_eval: one row per answer choice; only the is_correct one is a training pair
COPA = [p3_row(f"Premise {q}: the glass fell.\nWhat was the effect?\nOption A: it broke {q}.\nOption B: it sang {q}.",
                choice, idx=[q, c], is_correct=(c == q % 2), weight=1.0)
        for q in range(5) for c, choice in enumerate([f"it broke {q}.", f"it sang {q}."])]
AG_NEWS = [p3_row(f"Headline {i}: stocks rally on earnings.\nWhich section is this article in?",
                   "" if i == 2 else "Business") for i in range(6)]  # row 2: an empty target (skipped, counted)
COS_E = [p3_row(f"Why would someone carry an umbrella {i}?", f"Because rain is expected {i}.") for i in range(2)]
XSUM = [p3_row(f"Summarize the document {i}: the council met on Tuesday and voted.",
                f"The council voted {i}.") for i in range(4)]
P3_SUBTASKS = {"super_glue_boolq_GPT_3_style": BOOLQ, "super_glue_copa_best_option_score_eval": COPA,
               "ag_news_classify": AG_NEWS, "cos_e_v1.11_explain_why_human": COS_E, "xsum_summarize_DOC": XSUM}


def write_dir(directory, parts: dict[str, list[dict]], parquet: tuple[str, ...] = ()) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in parts.items():
        if name in parquet:
            pd.DataFrame(rows).to_parquet(directory / f"{name}.parquet")
        else:
            (directory / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(directory)


def pair_of(row: dict) -> tuple[str, str]:
    if "inputs_pretokenized" in row:
        return row["inputs_pretokenized"].strip(), row["targets_pretokenized"].strip()
    return row["inputs"].strip(), row["targets"].strip()


GOLDEN = ASSETS / "golden"


def check_golden(name: str, got) -> None:
    """`got` equals tests/assets/golden/<name>.json (or, with INSTRUCTJAX_WRITE_GOLDEN=1, is written there)."""
    path = GOLDEN / f"{name}.json"
    if os.environ.get("INSTRUCTJAX_WRITE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(got, indent=1) + "\n")
        pytest.skip(f"wrote {path}")
    assert got == json.loads(path.read_text()), f"the draw no longer gives {path.name} (see the section comment)"
