"""`instructjax report`: the published numbers against the papers' text, and the tables, CSV and figures from
runs whose results.json are written here in `eval --config`'s layout (no training, no evaluation)."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from helpers import ASSETS, REPO
from helpers.report_runs import read_csv, write_run

from instructjax.report import data_selection as seed002
from instructjax.report import families
from instructjax.report import instruction_mixture as seed000
from instructjax.report import mosaic_it as seed003
from instructjax.report import tulu as seed004

SEEDS = REPO.parent / "shared" / "seeds"  # the papers' text, beside a developer's checkout
# the lines of the papers' tables these tests read, copied verbatim from the seeds' text, so the published
# numbers are checked wherever the tests run (test_table_excerpts_are_the_papers_own_lines checks the copy)
EXCERPTS = ASSETS / "seed_tables"


def paper_text(seed: str) -> str:
    """A seed's text: the whole paper where it is at hand, else the excerpt of its tables."""
    return (SEEDS / seed if (SEEDS / seed).is_file() else EXCERPTS / seed).read_text()


@pytest.mark.parametrize("excerpt", sorted([*EXCERPTS.glob("*.txt"), *(EXCERPTS.parent / "seed_prompts").glob("*.txt")]),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_table_excerpts_are_the_papers_own_lines(excerpt):
    """Each excerpt line (the tables' here, the judge prompts' for test_eval_protocols) is a line of the paper, in
    the paper's order (skipped where the papers are not here)."""
    seed = excerpt.name
    if not (SEEDS / seed).is_file():
        pytest.skip(f"the papers' text is not beside this checkout ({SEEDS})")
    full = iter((SEEDS / seed).read_text().splitlines())
    for line in excerpt.read_text().splitlines():
        assert any(line == other for other in full), line

# (family, table id, seed file, the line after which the table's rows start, the line that ends them, which
# occurrence of the start line, how values are read: "tail" = the row's last cells, "after_label" = the cells
# after the first, an empty cell missing)
TABLES = [
    (seed000, "table1", "000_ee17504fde723e0b.txt", "Model\tData\tARC", "Table 1:", 0, "tail"),
    (seed000, "table2", "000_ee17504fde723e0b.txt", "Model\tData\tCorr.", "Table 2:", 0, "tail"),
    (seed002, "table1", "002_90d96a546d3b6616.txt", "Dataset\tSize\tStrategy", "Table 1:", 0, "tail"),
    (seed002, "table2", "002_90d96a546d3b6616.txt", "Dataset\tStrategy-Size", "Table 2:", 0, "tail"),
    (seed002, "table3", "002_90d96a546d3b6616.txt", "\tLongForm\tELI5", "Table 3:", 0, "tail"),
    (seed002, "table4", "002_90d96a546d3b6616.txt", "\tAlpaca-1K", "Table 4:", 0, "tail"),
    (seed002, "table6", "002_90d96a546d3b6616.txt", "Dataset\tSubset-Size", "Table 6:", 0, "tail"),
    (seed002, "table7", "002_90d96a546d3b6616.txt", "\tLongForm\tELI5", "Table 7:", 1, "tail"),
    (seed002, "table8", "002_90d96a546d3b6616.txt", "\tLongForm\tELI5", "Table 8:", 2, "tail"),
    (seed003, "table1", "003_5f58a71acda3a4fb.txt", "| Model | Dataset | Method | Pair-wise", "Table 2:", 0, "tail"),
    (seed003, "table2", "003_5f58a71acda3a4fb.txt", "| Model | Dataset | Method | MT-Bench", "Human Evaluation", 0,
     "tail"),
    (seed003, "table3", "003_5f58a71acda3a4fb.txt", "| Model | Dataset | Method | Pair-wise", "for single-round",
     1, "tail"),
    (seed003, "table5", "003_5f58a71acda3a4fb.txt", "| | Winning Score | Win | Tie | Lose | Mix", "Figure 3:", 0,
     "tail"),
    (seed003, "table10", "003_5f58a71acda3a4fb.txt", "| Model | Dataset | Method | Open LLM", "Table 11:", 0, "tail"),
    (seed004, "table3", "004_c95fab1b15b30ce8.txt", "\tEM (0-shot)", "Table 3:", 0, "tail"),
    (seed004, "table4", "004_c95fab1b15b30ce8.txt", "\tEM (0-shot)", "Pairwise preference", 1, "tail"),
    (seed004, "table5", "004_c95fab1b15b30ce8.txt", "\tEM (0-shot)", "Table 5:", 2, "tail"),
    (seed004, "table6", "004_c95fab1b15b30ce8.txt", "Model ↓\t7B\t13B", "ChatGPT", 0, "tail"),
    (seed004, "table7", "004_c95fab1b15b30ce8.txt", "Training Dataset", "Table 7:", 0, "after_label"),
]
NUMBER = re.compile(r"-|-?\d+(\.\d+)?")


def _value(cell: str) -> float | None:
    cell = cell.strip().rstrip("%")
    return None if cell in ("-", "") else float(cell)


def _label(text: str) -> str:
    return re.sub(r"[^a-z0-9.+%-]", "", text.lower().replace("ü", "u"))  # "TÜLU Ҟ 7B" -> "tulu7b"


def seed_rows(text: str, start: str, end: str, occurrence: int, width: int, mode: str) -> list[tuple[list, list]]:
    """(label cells, values) of a table's rows in the paper's text: lines whose value cells are all numbers or
    '-' (captions, group headers and garbled section lines are not); "(+2.6)"-style differences and <u> marks
    dropped, labels reduced to letters and digits."""
    lines = text.splitlines()
    first = [i for i, line in enumerate(lines) if line.startswith(start)][occurrence]
    rows = []
    for line in lines[first + 1:]:
        if line.startswith(end):
            break
        line = re.sub(r"\([^)]*\)|</?u>|\*\*", "", line)
        cells = [c.strip() for c in (line.strip().strip("|").split("|") if line.startswith("|") else line.split("\t"))]
        if mode == "tail":
            while cells and not cells[-1]:
                cells.pop()
            labels, values = cells[:-width], cells[-width:]
        else:
            labels, values = cells[:1], (cells[1:] + [""] * width)[:width]
        if len(values) == width and any(values) and all(not v or NUMBER.fullmatch(v.rstrip("%")) for v in values):
            rows.append(([_label(c) for c in labels], [_value(v) for v in values]))
    return rows


@pytest.mark.parametrize("family, table_id, seed, start, end, occurrence, mode", TABLES,
                         ids=[f"{t[0].KEY}-{t[1]}" for t in TABLES])
def test_published_numbers_match_the_papers_text(family, table_id, seed, start, end, occurrence, mode):
    published = families.published(family)["tables"][table_id]
    width = len(published["columns"])
    found = seed_rows(paper_text(seed), start, end, occurrence, width, mode)
    assert [values for _, values in found] == [row[-width:] for row in published["rows"]]
    for (labels, _), row in zip(found, published["rows"], strict=True):  # the row's own label is on its line
        assert _label(str(row[-width - 1])) in labels, (labels, row)


def test_published_table4_of_seed003_side_by_side():
    lines = paper_text("003_5f58a71acda3a4fb.txt").splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| (a) Ablation on Mosaic-IT strategies"))
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines[first + 3: first + 9]]
    strategies = [[r[0], *map(float, r[1:5])] for r in rows if r[0]]
    counts = [[r[5], *map(float, r[6:10])] for r in rows]
    tables = families.published(seed003)["tables"]
    assert strategies == tables["table4a"]["rows"] and counts == tables["table4b"]["rows"]


# ---- seed 004's Table 8: its text is damaged, so each row says where its numbers are read ----------------------

# a cell's numbers: "12.0 20 5" -> "12.0", "20 5" (a decimal point lost as a space)
_CELL_TOKEN = re.compile(r"-|\d+\.\d+|\d+ \d(?!\d)|\S+")
# readings of damaged numbers the transcription uses (seed004.yaml names each): a lost decimal point in a column
# of one-decimal numbers below 10 or a percentage ("977", Table 10), and "/" for "7" (the text's "/B" is "7B")
_GARBLED = {"75": 7.5, "73": 7.3, "70": 7.0, "/.1": 7.1, "9/.6": 97.6, "977": 97.7}
_ALL = tuple(range(12))  # a clean line: the row's 12 numbers, one per cell
_FIRST, _SECOND = (0,) * 12, (1,) * 12


def _t8(picks, skip=()):
    """Token picks for the 12 columns, None at the columns in `skip` (cells not read)."""
    return tuple(None if i in skip else k for i, k in enumerate(picks))


# (base, model): (the line's first cell, which such line of the table, the token of each cell that holds the number
# (an int: of the row's line; (first cell, occurrence, token): of another line; None: not read or "-"))
TABLE8_LINES = {
    ("Proprietary", "GPT-4"): ("GPT-4", 0, _FIRST), ("Proprietary", "ChatGPT"): ("ChatGPT", 0, _FIRST),
    ("LLaMa 65B", "Vanilla LLaMa"): ("Vanilla LLaMa", 0, _FIRST), ("LLaMa 65B", "ShareGPT"): ("ShareGPT", 0, _FIRST),
    ("LLaMa 65B", "Human mix."): ("Human mix.", 0, _FIRST), ("LLaMa 65B", "H+GPT mix"): ("H+GPT mix (K)", 0, _FIRST),
    ("LLaMa 30B", "Vanilla LLaMa"): ("Vanilla LLaMa ShareGPT", 0, _FIRST),
    ("LLaMa 30B", "ShareGPT"): ("Vanilla LLaMa ShareGPT", 0, _t8(_SECOND, (3, 4, 5, 7, 11))),
    ("LLaMa 30B", "Human mix."): ("Human mix.", 1, _FIRST), ("LLaMa 30B", "H+GPT mix"): ("H+GPT mix (\U0001f6c3)", 0, _FIRST),
    ("LLaMa 13B", "Vanilla LLaMa"): ("Vanilla LLaMa", 1, _FIRST), ("LLaMa 13B", "SuperNI"): ("SuperNI", 0, _FIRST),
    ("LLaMa 13B", "CoT"): ("CoT", 0, _FIRST), ("LLaMa 13B", "Flan V2"): ("Flan V2", 0, _FIRST),
    ("LLaMa 13B", "Dolly"): ("Dolly", 0, _FIRST),
    ("LLaMa 13B", "Open Assistant 1"): ("Self-instruct", 0, _t8(_FIRST, (0, 4, 5, 7, 10, 11))),
    ("LLaMa 13B", "Self-instruct"): ("Self-instruct", 0, _t8((("Unnat Instruct", 0, 0),) + _SECOND[1:10]
                                                             + (("Unnat Instruct", 0, 0), 1), (3, 4, 6, 7))),
    ("LLaMa 13B", "Unnatural Instructions"): ("Unnat Instruct", 0, _t8((1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0), (6,))),
    ("LLaMa 13B", "Alpaca"): ("Alpaca", 0, _FIRST), ("LLaMa 13B", "Code-Alpaca"): ("Code-Alpaca", 0, _FIRST),
    ("LLaMa 13B", "GPT4-Alpaca"): ("GPT4-Alpaca", 0, _FIRST), ("LLaMa 13B", "Baize"): ("Baize", 0, _FIRST),
    ("LLaMa 13B", "ShareGPT"): ("ShareGPT", 1, _FIRST),
    ("LLaMa 13B", "Human mix."): ("Human mix.", 2, _t8(_FIRST, (5, 11))),
    ("LLaMa 13B", "H+GPT mix"): ("Human mix.", 2, _t8((None, None, 1, None, None, ("", 4, 0), None, None, None,
                                                         None, 1, None))),
    ("LLaMa-2 13B", "Vanilla LLaMa-2"): ("Vanilla LLaMa 2", 0, _t8((0, 0, 0, 0, None, ("H+GPT mix (\\pounds)", 0, 0),
                                                                    0, 0, 1, None, None, None))),
    ("LLaMa-2 13B", "H+GPT mix"): ("H+GPT mix (\\pounds)", 0, _t8((1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 0), (7,))),
    ("LLaMa 7B", "Vanilla LLaMa"): ("Vanilla I I aMa", 0, _t8(_FIRST, (10, 11))),
    ("LLaMa 7B", "SuperNI"): ("SuperNI", 1, _FIRST), ("LLaMa 7B", "CoT"): ("CoT", 1, _FIRST),
    ("LLaMa 7B", "Flan V2"): ("Flan V2", 1, _FIRST), ("LLaMa 7B", "Dolly"): ("Dolly", 1, _FIRST),
    ("LLaMa 7B", "Open Assistant 1"): ("Open Assistant 1", 0, _FIRST),
    ("LLaMa 7B", "Self-instruct"): ("Self-instruct", 1, _FIRST),
    ("LLaMa 7B", "Unnatural Instructions"): ("Alpaca", 1, _t8(_FIRST, (2,))),
    ("LLaMa 7B", "Alpaca"): ("Alpaca", 1, _t8((None, None, 1) + (None,) * 5 + (1,) + (None,) * 3)),
    ("LLaMa 7B", "Code-Alpaca"): ("Code-Alpaca", 1, _FIRST), ("LLaMa 7B", "GPT4-Alpaca"): ("GPT4-Alpaca", 1, _FIRST),
    ("LLaMa 7B", "Baize"): ("Baize", 1, _FIRST), ("LLaMa 7B", "ShareGPT"): ("ShareGPT", 2, _FIRST),
    ("LLaMa 7B", "Human mix."): ("Human mix", 0, _FIRST), ("LLaMa 7B", "H+GPT mix"): ("H+GPT mix (K)", 1, _FIRST),
    ("LLaMa-2 7B", "Vanilla LLaMa-2"): ("Vanilla LLaMa-2", 0, _FIRST),
    ("LLaMa-2 7B", "H+GPT mix"): ("H+GPT mix (\U0001f545)", 0, _t8(_FIRST[:7] + (1,) + _FIRST[8:])),
    ("OPT 6.7B", "Vanilla"): ("OPT 6.7B", 0, _t8(_FIRST, (10,))),
    ("OPT 6.7B", "H+GPT mix"): ("Pythia 6 9R", 0, _t8(_FIRST, (0, 1, 3, 4, 9, 10, 11))),
    ("Pythia 6.9B", "Vanilla"): ("Pythia 6 9R", 0, _t8(_SECOND, (1, 3, 4, 5, 10, 11))),
    ("Pythia 6.9B", "H+GPT mix"): ("+H+GPT mix", 0, _FIRST),
}


def _table8_lines() -> dict[tuple[str, int], list[list[str]]]:
    """{(first cell, occurrence): the tokens of each of its 12 cells} of Table 8's lines in the paper's text."""
    lines = paper_text("004_c95fab1b15b30ce8.txt").splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("\t0-shot\t5-shot\tDirect"))
    out, seen = {}, Counter()
    for line in lines[first + 1:]:
        if line.startswith("Table 8:"):
            break
        label, *cells = line.split("\t")
        out[(label, seen[label])] = [_CELL_TOKEN.findall(c) for c in (cells + [""] * 12)[:12]]
        seen[label] += 1
    return out


def _read(token: str) -> float | None:
    return None if token == "-" else _GARBLED[token] if token in _GARBLED else float(token.replace(" ", "."))


def test_published_table8_is_read_from_the_papers_text():
    """Every number of Table 8's transcription is the number its row's line (or the line named) shows in that cell,
    and every cell not read is null; the rows are the paper's, in its order."""
    published = families.published(seed004)["tables"]["table8"]
    assert [tuple(r[:2]) for r in published["rows"]] == list(TABLE8_LINES)
    lines = _table8_lines()
    for row in published["rows"]:
        label, occurrence, picks = TABLE8_LINES[tuple(row[:2])]
        for col, (value, pick) in enumerate(zip(row[2:], picks, strict=True)):
            if pick is None:
                assert value is None, (row[:2], col)
                continue
            where = (label, occurrence, pick) if isinstance(pick, int) else pick
            token = lines[where[:2]][col][where[2]]
            assert _read(token) == value, (row[:2], col, token, value)


def _table8_average(values: list[float]) -> float:
    """The paper's rule: each benchmark's mean over its settings (MMLU, GSM, BBH, TydiQA, Codex-Eval: two each;
    AlpacaEval: one), then their mean."""
    means = [(values[i] + values[i + 1]) / 2 for i in range(0, 10, 2)] + [values[10]]
    return sum(means) / len(means)


def test_published_table8_averages_follow_the_papers_rule():
    """Where a row has all eleven numbers, its printed average is theirs by the paper's rule (within rounding),
    but for 13B SuperNI, whose "9.4" BBH Direct the average says is 39.4."""
    checked = 0
    for row in families.published(seed004)["tables"]["table8"]["rows"]:
        values, average = row[2:13], row[13]
        if average is None or None in values:
            continue
        if tuple(row[:2]) == ("LLaMa 13B", "SuperNI"):
            assert _table8_average(values) == pytest.approx(17.5, abs=0.05)
            assert _table8_average([*values[:4], 39.4, *values[5:]]) == pytest.approx(average, abs=0.05)
            continue
        assert _table8_average(values) == pytest.approx(average, abs=0.1), row[:2]
        checked += 1
    assert checked == 29


def test_published_table8_agrees_with_tables_3_4_5_and_7():
    """The cells Tables 3, 4, 5 and 7 print too are the same numbers, but for two the paper prints differently."""
    tables = families.published(seed004)["tables"]
    table8 = {tuple(r[:2]): dict(zip(tables["table8"]["columns"], r[2:], strict=True)) for r in tables["table8"]["rows"]}
    same = {"MMLU": "MMLU 0-shot", "GSM": "GSM CoT", "BBH": "BBH CoT", "TydiQA": "TydiQA GP",
            "Codex-Eval": "Codex-Eval P@10", "AlpacaEval": "AlpacaEval v Davinci-003"}
    seen, differ = 0, {}

    def compare(key, column, value):
        nonlocal seen
        if value is None:  # "-" (vanilla models' AlpacaEval), or a size Table 7 has no run of
            return
        mine = table8[key][column]
        if mine is not None:
            seen += 1
            if mine != value:
                differ[(*key, column)] = (mine, value)

    table3 = {"Vanilla LLaMa 13B": "Vanilla LLaMa", "+Human data mix.": "Human mix.", "+Human+GPT data mix.": "H+GPT mix"}
    for row in tables["table3"]["rows"]:
        key = ("LLaMa 13B", table3.get(row[0], row[0].lstrip("+")))
        for column, value in zip(tables["table3"]["columns"][:6], row[1:7], strict=True):
            compare(key, same[column], value)
    table4 = {"Pythia 6.9B": "Pythia 6.9B", "OPT 6.7B": "OPT 6.7B", "LLAMA 7B": "LLaMa 7B", "LLAMA-2 7B": "LLaMa-2 7B"}
    for row in tables["table4"]["rows"]:
        for column, value in zip(tables["table4"]["columns"][:6], row[1:7], strict=True):
            compare((table4[row[0]], "H+GPT mix"), same[column], value)
    for row in tables["table5"]["rows"]:
        name = row[0]
        if name in ("ChatGPT", "GPT-4"):
            key = ("Proprietary", name)
        elif name.startswith("LLaMa"):
            key = (name, "Vanilla LLaMa-2" if name.startswith("LLaMa-2") else "Vanilla LLaMa")
        elif name.startswith("Tulu"):
            tulu, size = name.split()
            key = (f"{'LLaMa-2' if tulu == 'Tulu-1.1' else 'LLaMa'} {size}", "H+GPT mix")
        else:
            key = (f"LLaMa {name.split()[-1]}", name.rsplit(" ", 1)[0])
        for column, value in zip(tables["table5"]["columns"][:6], row[1:7], strict=True):
            compare(key, same[column], value)
    for row in tables["table7"]["rows"]:
        for size, value in zip(tables["table7"]["columns"], row[1:], strict=True):
            compare((f"LLaMa {size}", {"Tulu": "H+GPT mix"}.get(row[0], row[0])), "AlpacaEval v Davinci-003", value)
    assert differ == {("LLaMa 30B", "H+GPT mix", "Codex-Eval P@10"): (48.9, 48.0),
                      ("LLaMa 7B", "Dolly", "AlpacaEval v Davinci-003"): (10.9, 11.0)}
    assert seen > 150


# ---- seed 004's Tables 9 and 10 (ToxiGen by group, TruthfulQA): read as Table 8, rows keyed as its ----------

def _seed004_lines(start: str, end: str, width: int) -> dict[tuple[str, int], list[list[str]]]:
    """{(first cell, occurrence): the tokens of each of its `width` cells} of a seed 004 table's lines."""
    lines = paper_text("004_c95fab1b15b30ce8.txt").splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith(start))
    out, seen = {}, Counter()
    for line in lines[first + 1:]:
        if line.startswith(end):
            break
        label, *cells = line.split("\t")
        out[(label, seen[label])] = [_CELL_TOKEN.findall(c) for c in (cells + [""] * width)[:width]]
        seen[label] += 1
    return out


def _assert_read(table_id: str, spec: dict, lines: dict) -> None:
    """Every number of the table's transcription is the token its row's line shows in that cell (as
    test_published_table8_is_read_from_the_papers_text), every cell not read is null; rows in the paper's order."""
    published = families.published(seed004)["tables"][table_id]
    assert [tuple(r[:2]) for r in published["rows"]] == list(spec)
    for row in published["rows"]:
        label, occurrence, picks = spec[tuple(row[:2])]
        for col, (value, pick) in enumerate(zip(row[2:], picks, strict=True)):
            if pick is None:
                assert value is None, (row[:2], col)
                continue
            token = lines[(label, occurrence)][col][pick]
            assert _read(token) == value, (row[:2], col, token, value)


_F9, _S9 = (0,) * 15, (1,) * 15


def _t9(cells: dict[int, int]) -> tuple:
    """Token picks of a merged line's row: only the columns named."""
    return tuple(cells.get(i) for i in range(15))


_MERGED = (3, 4, 5, 13)  # 13B Unnatural Instructions and Alpaca's two-number cells
_SUPERNI_COT = (0, 2, 3, 8, 12, 13, 14)  # 7B SuperNI and CoT's
_GPT4_ALPACA = {**dict.fromkeys((1, 3, 7, 8, 11, 12, 14), 0), 0: 0, 13: 0}  # the two-number cells' first, Asian, Women
_BAIZE = {**dict.fromkeys((1, 3, 7, 8, 11, 12, 14), 1), **dict.fromkeys((2, 4, 5, 6, 9, 10), 0)}
TABLE9_LINES = {
    ("Proprietary", "GPT-4"): ("GPT-4", 0, _F9), ("Proprietary", "ChatGPT"): ("ChatGPT", 0, _F9),
    ("LLaMa 65B", "Vanilla LLaMa"): ("LLaMa", 0, _F9), ("LLaMa 65B", "ShareGPT"): ("ShareGPT", 0, _F9),
    ("LLaMa 65B", "Human mix."): ("Human mix.", 0, _t8(_F9, (3, 13))),
    ("LLaMa 65B", "H+GPT mix"): ("$\\frac{H+GPT mix}{m}$", 0, _t8(_F9, (14,))),
    ("LLaMa 30B", "Vanilla LLaMa"): ("SharaCPT", 0, _t8(_F9, (0, 1, 2, 4, 5, 11, 12, 14))),
    ("LLaMa 30B", "ShareGPT"): ("SharaCPT", 0, (None,) * 15),
    ("LLaMa 30B", "Human mix."): ("Human mix", 0, _F9), ("LLaMa 30B", "H+GPT mix"): ("H+GPT mix (A)", 0, _F9),
    ("LLaMa 13B", "Vanilla LLaMa"): ("LLaMa", 1, _F9), ("LLaMa 13B", "SuperNI"): ("SuperNI", 0, _F9),
    ("LLaMa 13B", "CoT"): ("CoT", 0, _F9), ("LLaMa 13B", "Flan V2"): ("Flan V2", 0, _F9),
    ("LLaMa 13B", "Dolly"): ("Dolly", 0, _F9), ("LLaMa 13B", "Open Assistant 1"): ("Open Assistant 1", 0, _F9),
    ("LLaMa 13B", "Self-instruct"): ("Self-Instruct", 0, _F9),
    ("LLaMa 13B", "Unnatural Instructions"): ("Alpaca", 0, _t9(dict.fromkeys(_MERGED, 0))),
    ("LLaMa 13B", "Alpaca"): ("Alpaca", 0, _t9(dict.fromkeys(_MERGED, 1))),
    ("LLaMa 13B", "Code-Alpaca"): ("Code-Alpaca", 0, _F9), ("LLaMa 13B", "GPT4-Alpaca"): ("GPT4-Alpaca", 0, _F9),
    ("LLaMa 13B", "Baize"): ("Baize", 0, _F9), ("LLaMa 13B", "ShareGPT"): ("ShareGPT", 1, _F9),
    ("LLaMa 13B", "Human mix."): ("Human mix.", 1, _F9),
    ("LLaMa 13B", "H+GPT mix"): ("H+GPT mix (\U0001f545)", 0, _F9),
    ("LLaMa-2 13B", "Vanilla LLaMa-2"): ("LLaMa-2", 0, _F9), ("LLaMa-2 13B", "H+GPT mix"): ("H+GPT mix (m)", 0, _F9),
    ("LLaMa 7B", "Vanilla LLaMa"): ("LLaMa", 2, _F9),
    ("LLaMa 7B", "SuperNI"): ("Superini", 0, _t9(dict.fromkeys(_SUPERNI_COT, 0))),
    ("LLaMa 7B", "CoT"): ("Superini", 0, _t9(dict.fromkeys(_SUPERNI_COT, 1))),
    ("LLaMa 7B", "Flan V2"): ("Elan V2", 0, _F9), ("LLaMa 7B", "Dolly"): ("Dolly", 1, _F9),
    ("LLaMa 7B", "Open Assistant 1"): ("Open Assistant 1", 1, _F9),
    ("LLaMa 7B", "Self-instruct"): ("Self-Instruct", 1, _F9),
    ("LLaMa 7B", "Unnatural Instructions"): ("Unnat. Instruct.", 0, _F9), ("LLaMa 7B", "Alpaca"): ("Alpaca", 1, _F9),
    ("LLaMa 7B", "Code-Alpaca"): ("Code-Alpaca", 1, _t8(_F9, (6, 9, 10, 11))),
    ("LLaMa 7B", "GPT4-Alpaca"): ("Baize", 1, _t9(_GPT4_ALPACA)), ("LLaMa 7B", "Baize"): ("Baize", 1, _t9(_BAIZE)),
    ("LLaMa 7B", "ShareGPT"): ("ShareGPT", 2, _F9), ("LLaMa 7B", "Human mix."): ("Human mix.", 2, _F9),
    ("LLaMa 7B", "H+GPT mix"): ("H+GPT mix (\u20ac)", 0, _F9),
    ("LLaMa-2 7B", "Vanilla LLaMa-2"): ("LLaMa-2", 1, _F9), ("LLaMa-2 7B", "H+GPT mix"): ("H+GPT mix ()", 0, _F9),
    ("OPT 6.7B", "Vanilla"): ("OPT", 0, _F9), ("OPT 6.7B", "H+GPT mix"): ("+ H+GPT mix", 0, _F9),
    ("Pythia 6.9B", "Vanilla"): ("Pythia", 0, _F9),
    ("Pythia 6.9B", "H+GPT mix"): ("$+ \\Pi + GP1 IIIIX$", 0, _t8(_F9, (6, 11, 14))),
}
_F10 = (0, 0, 0)
_TULU = "H+GPT mix (\U0001f545)"
TABLE10_LINES = {
    ("Proprietary", "GPT-4"): ("GPT-4", 0, _F10), ("Proprietary", "ChatGPT"): ("ChatGPT", 0, _F10),
    **{("LLaMa 65B", model): (label, 0, _F10) for model, label in (
        ("Vanilla LLaMa", "Vanilla LLaMa"), ("ShareGPT", "ShareGPT"), ("Human mix.", "Human mix"), ("H+GPT mix", _TULU))},
    ("LLaMa 30B", "Vanilla LLaMa"): ("Vanilla LLaMa", 1, _F10), ("LLaMa 30B", "ShareGPT"): ("ShareGPT", 1, _F10),
    ("LLaMa 30B", "Human mix."): ("Human mix", 1, _F10),
    ("LLaMa 30B", "H+GPT mix"): ("$H \\perp GPT mix ()$", 0, _F10),
    **{("LLaMa 13B", model): (label, occurrence, _F10) for model, label, occurrence in (
        ("Vanilla LLaMa", "Vanilla LLaMa", 2), ("SuperNI", "SuperNI", 0), ("CoT", "Col", 0), ("Flan V2", "Flan V2", 0),
        ("Dolly", "Dolly", 0), ("Open Assistant 1", "Open Assistant 1", 0), ("ShareGPT", "ShareGPT", 2),
        ("Self-instruct", "Self-instruct", 0), ("Unnatural Instructions", "Unnat. Instruct.", 0),
        ("Alpaca", "Alpaca", 0), ("Code-Alpaca", "Code-Alpaca", 0), ("GPT4-Alpaca", "GPT4-Alpaca", 0),
        ("Baize", "Baize", 0), ("Human mix.", "Human mix.", 0), ("H+GPT mix", _TULU, 1))},
    ("LLaMa-2 13B", "Vanilla LLaMa-2"): ("Vanilla LLaMa 2", 0, _F10),
    ("LLaMa-2 13B", "H+GPT mix"): ("H+GPT mix (\U0001f5b9)", 0, _F10),
    **{("LLaMa 7B", model): (label, occurrence, _F10) for model, label, occurrence in (
        ("Vanilla LLaMa", "Vanilla LLaMa", 3), ("SuperNI", "SuperNI", 1), ("CoT", "\u0421\u043e\u0422", 0),
        ("Flan V2", "Flan V2", 1), ("Dolly", "Dolly", 1), ("Open Assistant 1", "Open Assistant 1", 1),
        ("ShareGPT", "ShareGPT", 3), ("Self-instruct", "Self-instruct", 1),
        ("Unnatural Instructions", "Unnat Instruct", 0), ("Alpaca", "Alnaca", 0), ("Code-Alpaca", "Code-Alpaca", 1),
        ("GPT4-Alpaca", "GPT4-Alnaca", 0), ("Baize", "Baize", 1), ("Human mix.", "Human mix", 2),
        ("H+GPT mix", "$H \\perp GPT mix ()$", 1))},
    ("LLaMa-2 7B", "Vanilla LLaMa-2"): ("Vanilla LLaMa 2", 1, _F10), ("LLaMa-2 7B", "H+GPT mix"): (_TULU, 2, _F10),
}


def test_published_table9_is_read_from_the_papers_text():
    _assert_read("table9", TABLE9_LINES, _seed004_lines("\tAsian\tBlack\tChinese", "Table 9:", 15))


def test_published_table10_is_read_from_the_papers_text():
    _assert_read("table10", TABLE10_LINES, _seed004_lines("\t% Informative\t% Truthful", "Table 10:", 3))


def test_published_table9_overall_is_the_mean_of_its_groups():
    """Each group has as many prompts, so a row's Overall is its 14 groups' mean within rounding, wherever all are
    read; the two rows whose printed Overall their groups contradict have it null."""
    checked = 0
    for row in families.published(seed004)["tables"]["table9"]["rows"]:
        groups, overall = row[2:16], row[16]
        if None in groups:
            continue
        if overall is None:
            assert tuple(row[:2]) in {("LLaMa 65B", "H+GPT mix")}, row[:2]  # printed "1.1": its groups give 7.2
            continue
        assert sum(groups) / 14 == pytest.approx(overall, abs=0.05 + 1e-9), row[:2]
        checked += 1
    assert checked == 36


def test_published_tables_9_and_10_agree_with_table_6():
    """Table 6 prints Table 9's Overall and Table 10's last column for LLaMA 7B and 13B: the same numbers, but for
    three TruthfulQA cells (seed004.yaml names them)."""
    tables = families.published(seed004)["tables"]
    table6 = {r[0]: dict(zip(tables["table6"]["columns"], r[1:], strict=True)) for r in tables["table6"]["rows"]}
    names = {"Vanilla LLaMa": "LLaMA", "Human mix.": "+Human mix.", "H+GPT mix": "+Tulu",
             "Unnatural Instructions": "+Unnatural Inst."}
    seen, differ = 0, {}
    for table, column in (("table9", "ToxiGen"), ("table10", "TruthfulQA")):
        for row in tables[table]["rows"]:
            if row[0] not in ("LLaMa 7B", "LLaMa 13B") or row[-1] is None:
                continue
            size = row[0].split()[1]
            theirs = table6[names.get(row[1], f"+{row[1]}")][f"{column} {size}"]
            seen += 1
            if theirs != row[-1]:
                differ[(table, *row[:2])] = (row[-1], theirs)
    assert differ == {("table10", "LLaMa 13B", "Vanilla LLaMa"): (26.2, 23.6),
                      ("table10", "LLaMa 7B", "Vanilla LLaMa"): (23.6, 26.2),
                      ("table10", "LLaMa 13B", "SuperNI"): (25.1, 26.2)}
    assert seen == 28 + 30


def test_published_table10_both_is_within_its_bounds():
    """% informative and truthful is at most either and at least their sum less 100 (within rounding), but in the
    one row the paper prints otherwise (seed004.yaml names it)."""
    off = []
    for row in families.published(seed004)["tables"]["table10"]["rows"]:
        informative, truthful, both = row[2:]
        assert both <= min(informative, truthful), row[:2]
        if both < informative + truthful - 100 - 0.1 - 1e-9:
            off.append(tuple(row[:2]))
    assert off == [("LLaMa-2 7B", "H+GPT mix")]


def test_every_layout_matches_its_published_table():
    for family in families.FAMILIES:
        published = families.published(family)["tables"]
        for table in family.TABLES:
            assert published[table.id]["columns"] == [c.label for c in table.columns], (family.KEY, table.id)
            for row in published[table.id]["rows"]:
                assert len(row) == len(table.keys) + len(table.columns), (family.KEY, table.id, row)


# ---- a report from results written in eval --config's layout --------------------------------------------------


def _mixture_results(scale: float) -> dict:
    suite = {f"{task}|0-shot": {"acc,none": scale + i / 100, "acc_stderr,none": 0.01}
             for i, task in enumerate(("arc_challenge", "winogrande", "piqa", "mmlu", "race", "hellaswag"))}
    return {"model": "m", "parts": ["suite", "codex"], "suite": suite, "codex": {"pass@1": scale / 4, "pass@10": "NaN"}}


def test_report_tables_and_figures_from_results(tmp_path):
    from PIL import Image

    from instructjax.report.figures import figure_size

    for ratio, scale in (("0.5", 0.4), ("1", 0.5), ("2", 0.45)):
        write_run(tmp_path, f"acp_ratio_{ratio}_llama2_7b", "model: {preset: llama2-7b}\n"
                  f"experiment: {{family: seed000, ratio: {ratio}}}\n", _mixture_results(scale))
    write_run(tmp_path, "acp_ratio_1.5_llama2_7b", "model: {preset: llama2-7b}\n"
              "experiment: {family: seed000, ratio: 1.5}\n", None)  # not finished
    full = tmp_path / "runs" / "alpaca_full_llama2_7b" / "eval" / "pairwise_outputs.jsonl"
    selection = "experiment: {{family: seed002, dataset: alpaca, method: {}, k: {}}}\n"
    write_run(tmp_path, "alpaca_full_llama2_7b", "eval: {pairwise: {against: {}}}\n" + selection.format("full", "null"),
              None)
    write_run(tmp_path, "alpaca_longest_1k_llama2_7b", f"eval: {{pairwise: {{against: {full}}}}}\n"
              + selection.format("longest", 1000),
         {"model": "m", "parts": ["pairwise"], "pairwise": {"vs": {"pairwise_outputs": {
             "win": 5, "tie": 3, "lose": 2, "n": 10, "winning_score": 1.3}}}})
    write_run(tmp_path, "ablation_dist_pareto_mistral_7b", "model: {preset: mistral-7b}\n"
         "data: {mixture: x, mosaic: {distribution: pareto}}\n"
         "experiment: {family: seed003, dataset: alpaca_gpt4, method: mosaic, ablation: distribution, value: pareto}\n",
         None)
    (tmp_path / "runs" / "ablation_dist_pareto_mistral_7b").mkdir(parents=True)  # the mosaics it made, two epochs
    (tmp_path / "runs" / "ablation_dist_pareto_mistral_7b" / "mosaic_k.json").write_text(
        json.dumps({"0": {"3": 1, "6": 9, "10": 5}, "1": {"5": 3, "10": 12}}))
    tydiqa = {"tydiqa_goldp_1shot": {"f1": 40.0, "languages": {"en": {"f1": 50.0}, "fi": {"f1": 30.0}}}}
    gsm = {"exact_match": 0.215, "n": 200}
    bbh = {"exact_match": None, "n": 0}  # scored nothing: missing, not 0
    write_run(tmp_path, "tulu_human_gpt_llama1_13b", "model: {preset: llama1-13b}\ndata: {mixture: tulu_human_gpt}\n"
              "experiment: {family: seed004, data: human_gpt}\n",
         {"model": "m", "parts": ["suite", "codex", "alpaca_eval"], "codex": {"pass@1": 0.2, "pass@10": 0.4},
          "suite": {"mmlu_0shot": {"acc": 0.5}, "gsm_cot": gsm, "bbh_cot": bbh, **tydiqa}, "alpaca_eval": {"win_rate": 61.0, "n": 805}})

    sft_dir = tmp_path / "runs" / "tulu_human_gpt_llama1_13b"
    dpo_dir = tmp_path / "runs" / "tulu_human_gpt_llama1_13b_dpo"
    for name, loss, start, mmlu in (("tulu_human_gpt_llama1_13b_dpo", "dpo", sft_dir, 0.52),
                                    ("tulu_human_gpt_llama1_13b_rlvr", "grpo", dpo_dir, 0.53)):  # SFT -> DPO -> RLVR
        write_run(tmp_path, name, f"model: {{preset: llama1-13b, init_from: {start}}}\ndata: {{mixture: x}}\n"
                  f"objective: {{loss: {loss}}}\nexperiment: {{family: seed004, data: human_gpt}}\n",
                  {"model": "m", "parts": ["suite"], "suite": {"mmlu_0shot": {"acc": mmlu}}})
    written, strangers = families.write_report(sorted((tmp_path / "configs").glob("*.yaml")), tmp_path / "out")
    out = tmp_path / "out"
    assert strangers == []
    ratio = {r["Ratio"]: r for r in read_csv(out / "seed000_figure2_ratio.csv")}
    assert float(ratio["0.5"]["MMLU (ours)"]) == pytest.approx(100 * 0.43)
    assert float(ratio["2"]["Average (ours)"]) == pytest.approx(100 * (0.45 + 0.025))
    assert float(ratio["1"]["HumanEval @1 (ours)"]) == pytest.approx(12.5)
    assert ratio["1"]["HumanEval @10 (ours)"] == "" and ratio["1.5"]["Average (ours)"] == ""  # NaN, not finished
    selection = {(r["Dataset"], r["Size"], r["Strategy"]): r for r in read_csv(out / "seed002_table1.csv")}
    longest = selection[("Alpaca", "1K", "Longest")]
    assert (float(longest["vs. Full (ours)"]), float(longest["vs. Full (paper)"])) == (1.3, 1.4505)
    assert float(longest["vs. Full (diff)"]) == pytest.approx(1.3 - 1.4505)
    assert longest["vs. Random (ours)"] == ""  # judged against the full dataset only
    stages = {(r["Model"], r["Objective"]): r for r in read_csv(out / "seed004_table_preference.csv")}
    assert sorted(stages) == [("Tulu 13B", "DPO"), ("Tulu 13B (+DPO)", "RLVR")]  # each stage beside the run it continued
    rlvr = stages[("Tulu 13B (+DPO)", "RLVR")]
    assert (rlvr["MMLU before (ours)"], rlvr["MMLU after (ours)"]) == ("52.0", "53.0")
    tulu = {r["Dataset"]: r for r in read_csv(out / "seed004_table3.csv")}["+Human+GPT data mix."]
    assert [tulu[f"{c} (ours)"] for c in ("MMLU", "GSM", "TydiQA", "Codex-Eval", "AlpacaEval")] == \
        ["50.0", "21.5", "40.0", "40.0", "61.0"]
    assert tulu["BBH (ours)"] == "" and tulu["Average (ours)"] == "" and tulu["BBH (paper)"] == "43.3"
    mix = {r["Distribution"]: r for r in read_csv(out / "seed003_table5.csv")}["Pareto"]
    assert 0 < float(mix["Mix <= 5 (ours)"]) < 20 and mix["Winning Score (ours)"] == ""
    assert "| 1.300 / 1.451 (-0.151)" not in (out / "seed002.md").read_text()  # the paper's 4 digits
    assert "| Alpaca | 1K | Longest | 1.3000 / 1.4505 (-0.1505) | — / 1.4631 |" in (out / "seed002.md").read_text()
    sizes = {"seed000_figure2_ratio.png": figure_size(2), "seed002_size_sweep.png": figure_size(6, 3),
             "seed003_k_distributions.png": figure_size(1)}
    for name, size in sizes.items():
        assert out / name in written
        with Image.open(out / name) as image:
            assert image.size == size, name
            assert len(image.convert("RGB").getcolors(1 << 20)) > 20, name  # not blank
    assert not (out / "seed000_figure2_count.png").exists() and not (out / "seed000_loss.png").exists()


def test_seed002_generated_comparisons_fill_the_columns_of_the_runs_they_name(tmp_path):
    """The generated seed 002 configs (Alpaca, full and K=1K) with a judged result per comparison they name, each
    a different score: every cell of Tables 1, 2, 4 and 6 is the score of the comparison with the column's run;
    the length-neutral rejudging of Longest-1K vs. Full fills no cell."""
    import random

    import yaml

    from instructjax.cli import experiment_grid

    rng, scores = random.Random(0), {}
    (tmp_path / "configs").mkdir()
    for e in experiment_grid.seed002():
        if e.tags["dataset"] != "alpaca" or e.tags["k"] not in (None, 1000):
            continue
        name, run_dir = e.config["name"], tmp_path / "runs" / e.config["name"]
        (tmp_path / "configs" / f"{name}.yaml").write_text(yaml.safe_dump({**e.config, "run_dir": str(run_dir)}))
        vs = {}
        for other in e.config["eval"]["pairwise"]["against"]:
            win, tie = rng.randint(0, 6), rng.randint(0, 4)
            vs[other] = {"win": win, "tie": tie, "lose": 10 - win - tie, "n": 10, "winning_score": (2 * win + tie) / 10}
            scores[name, other] = vs[other]["winning_score"]
        (run_dir / "eval").mkdir(parents=True)
        (run_dir / "eval" / "results.json").write_text(json.dumps({"model": "m", "parts": ["pairwise"],
                                                                    "pairwise": {"vs": vs}}))
    assert len(set(scores.values())) > 8  # different enough that a cell from the wrong comparison shows
    families.write_report(sorted((tmp_path / "configs").glob("*.yaml")), tmp_path / "out")

    def cell(table: str, key: tuple[str, ...], column: str) -> float | None:
        rows = read_csv(tmp_path / "out" / f"seed002_{table}.csv")
        keys = list(rows[0])[:len(key)]
        row = next(r for r in rows if tuple(r[k] for k in keys) == key)
        return float(row[f"{column} (ours)"]) if row[f"{column} (ours)"] else None

    expected = {  # (table, row, column) -> (run, comparison), as the paper's tables pair them
        **{("table1", ("Alpaca", "1K", label), col): (f"alpaca_{m}_1k_llama2_7b", other)
           for m, label in (("kmeans", "Diversity"), ("quality", "Quality"), ("longest", "Longest"))
           for col, other in (("vs. Full", "full"), ("vs. Random", "random"))},
        ("table2", ("Alpaca", "Longest-1K"), "vs. Diversity"): ("alpaca_longest_1k_llama2_7b", "kmeans"),
        ("table2", ("Alpaca", "Longest-1K"), "vs. Quality"): ("alpaca_longest_1k_llama2_7b", "quality"),
        ("table4", ("vs. Full",), "Alpaca-1K"): ("alpaca_shortest_1k_llama2_7b", "full"),
        **{("table6", ("Alpaca", "Diversity-1K"), col): ("alpaca_kcenter_1k_llama2_7b", other)
           for col, other in (("vs. Full", "full"), ("vs. Random", "random"), ("vs. Longest", "longest"))},
    }
    for (table, key, column), comparison in expected.items():
        assert cell(table, key, column) == pytest.approx(scores[comparison]), (table, key, column)
    assert ("alpaca_longest_1k_llama2_7b", "full_length_neutral") in scores
    assert cell("table4", ("vs. Full",), "Dolly-1K") is None  # no Dolly runs here


def test_seed004_base_models_and_safety_columns(tmp_path):
    """The eval-only vanilla LLaMA config fills Tables 3, 5 and 6's base rows; Table 6 gathers a dataset's 7B and
    13B runs in one row, ToxiGen's overall % toxic and TruthfulQA's % truthful and informative."""
    suite = {"mmlu_0shot": {"acc": 0.423}}
    write_run(tmp_path, "tulu_vanilla_llama1_13b", "max_steps: 0\nmodel: {preset: llama1-13b}\n"
              "experiment: {family: seed004, data: vanilla}\n",
         {"model": "m", "parts": ["suite", "toxigen", "truthfulqa"], "suite": suite,
          "toxigen": {"overall": 81.0, "asian": 80.0, "n": 7000},
          "truthfulqa": {"truthful": 30.0, "informative": 90.0, "truthful_and_informative": 25.5, "n": 817}})
    for preset, toxic in (("llama1_7b", 12.5), ("llama1_13b", 0.5)):
        write_run(tmp_path, f"tulu_human_gpt_{preset}", f"model: {{preset: {preset.replace('_', '-')}}}\n"
             "data: {mixture: tulu_human_gpt}\nexperiment: {family: seed004, data: human_gpt}\n",
             {"model": "m", "parts": ["toxigen"], "toxigen": {"overall": toxic}})
    write_run(tmp_path, "base_llama2_7b", "max_steps: 0\nmodel: {preset: llama2-7b}\n"  # seed 002's "Base"
              "experiment: {family: seed002, method: base}\n",
         {"model": "m", "parts": ["suite"], "suite": {"mmlu|5-shot": {"acc,none": 0.4}}})
    families.write_report(sorted((tmp_path / "configs").glob("*.yaml")), tmp_path / "out")
    for table in ("table3", "table7", "table8"):  # one base model, the "Base" row of each dataset's table
        assert {r["Strategy"]: r for r in read_csv(tmp_path / "out" / f"seed002_{table}.csv")}["Base"]["MMLU (ours)"] == "40.0"
    table6 = {r["Model"]: r for r in read_csv(tmp_path / "out" / "seed004_table6.csv")}
    assert (table6["LLaMA"]["ToxiGen 13B (ours)"], table6["LLaMA"]["TruthfulQA 13B (ours)"]) == ("81.0", "25.5")
    assert table6["LLaMA"]["ToxiGen 7B (ours)"] == "" and table6["LLaMA"]["ToxiGen 13B (paper)"] == "82.6"
    assert (table6["+Tulu"]["ToxiGen 7B (ours)"], table6["+Tulu"]["ToxiGen 13B (ours)"]) == ("12.5", "0.5")
    assert {r["Model"]: r for r in read_csv(tmp_path / "out" / "seed004_table5.csv")}["LLaMa 13B"]["MMLU (ours)"] == "42.3"
    assert {r["Dataset"]: r for r in read_csv(tmp_path / "out" / "seed004_table3.csv")}["Vanilla LLaMa 13B"][
        "MMLU (ours)"] == "42.3"


def test_seed004_table8_every_setting_and_its_average(tmp_path):
    """Table 8's columns from one run's results: each setting where the suite "tulu" writes it (open-instruct's
    metrics.json, per setting), and the Average by the paper's rule; OPT's vanilla config is its row."""
    suite = {"mmlu_0shot": {"acc": 0.50}, "mmlu_5shot": {"acc": 0.52}, "gsm_direct": {"exact_match": 0.06},
             "gsm_cot": {"exact_match": 0.40}, "bbh_direct": {"exact_match": 0.38}, "bbh_cot": {"exact_match": 0.42},
             "tydiqa_goldp_1shot": {"f1": 45.0}, "tydiqa_no_context_1shot": {"f1": 10.0}, "chat_format": "tulu"}
    write_run(tmp_path, "tulu_human_gpt_llama1_13b", "model: {preset: llama1-13b}\ndata: {mixture: tulu_human_gpt}\n"
              "experiment: {family: seed004, data: human_gpt}\n",
         {"model": "m", "parts": ["suite", "codex", "alpaca_eval"], "suite": suite,
          "codex": {"pass@1": 0.2, "pass@10": 0.3}, "alpaca_eval": {"win_rate": 55.0}})
    write_run(tmp_path, "tulu_vanilla_opt_6_7b", "max_steps: 0\nmodel: {preset: opt-6.7b}\n"
              "experiment: {family: seed004, data: vanilla}\n",
         {"model": "m", "parts": ["suite"], "suite": {"mmlu_0shot": {"acc": 0.25}}})
    families.write_report(sorted((tmp_path / "configs").glob("*.yaml")), tmp_path / "out")
    table8 = {(r["Base model"], r["Model"]): r for r in read_csv(tmp_path / "out" / "seed004_table8.csv")}
    tulu = table8[("LLaMa 13B", "H+GPT mix")]
    ours = {c: float(tulu[f"{c} (ours)"]) for c in families.published(seed004)["tables"]["table8"]["columns"]}
    assert ours == pytest.approx({
        "MMLU 0-shot": 50.0, "MMLU 5-shot": 52.0, "GSM Direct": 6.0, "GSM CoT": 40.0, "BBH Direct": 38.0,
        "BBH CoT": 42.0, "TydiQA GP": 45.0, "TydiQA CB": 10.0, "Codex-Eval P@1": 20.0, "Codex-Eval P@10": 30.0,
        "AlpacaEval v Davinci-003": 55.0, "Average": (51 + 23 + 40 + 27.5 + 25 + 55) / 6})
    assert tulu["BBH CoT (paper)"] == "43.3" and tulu["MMLU 0-shot (paper)"] == ""  # not read in the text
    opt = table8[("OPT 6.7B", "Vanilla")]
    assert (opt["MMLU 0-shot (ours)"], opt["MMLU 0-shot (paper)"], opt["Average (ours)"]) == ("25.0", "25.0", "")


def test_seed004_tables9_and_10_from_results(tmp_path):
    """Table 9's columns are the toxigen part's groups (ToxiGen's file names) and overall, Table 10's the
    truthfulqa part's three scores; rows are keyed as Table 8's (Pythia's vanilla config is its row in Table 9 and
    a row of ours alone in Table 10, which prints no Pythia)."""
    groups = {key: 10.0 + i for i, (_, key) in enumerate(seed004.TOXIGEN_GROUPS[:-1])}
    write_run(tmp_path, "tulu_human_gpt_llama1_13b", "model: {preset: llama1-13b}\ndata: {mixture: tulu_human_gpt}\n"
              "experiment: {family: seed004, data: human_gpt}\n",
         {"model": "m", "parts": ["toxigen", "truthfulqa"],
          "toxigen": {**groups, "overall": 16.5, "n": 7000, "classifier": "tomh/toxigen_roberta"},
          "truthfulqa": {"truthful": 47.5, "informative": 94.0, "truthful_and_informative": 41.5, "n": 817}})
    write_run(tmp_path, "tulu_vanilla_pythia_6_9b", "max_steps: 0\nmodel: {preset: pythia-6.9b}\n"
              "experiment: {family: seed004, data: vanilla}\n",
         {"model": "m", "parts": ["toxigen", "truthfulqa"], "toxigen": {"mental_disability": 96.0, "overall": 80.0},
          "truthfulqa": {"truthful": 20.0, "informative": 60.0, "truthful_and_informative": 10.0, "n": 817}})
    families.write_report(sorted((tmp_path / "configs").glob("*.yaml")), tmp_path / "out")
    columns = families.published(seed004)["tables"]["table9"]["columns"]
    table9 = {(r["Base model"], r["Model"]): r for r in read_csv(tmp_path / "out" / "seed004_table9.csv")}
    tulu = table9[("LLaMa 13B", "H+GPT mix")]
    assert [float(tulu[f"{c} (ours)"]) for c in columns] == [10.0 + i for i in range(14)] + [16.5]
    assert (tulu["Ment. (ours)"], tulu["Ment. (paper)"], tulu["Overall (paper)"]) == ("16.0", "0.0", "0.1")
    pythia = table9[("Pythia 6.9B", "Vanilla")]
    assert (pythia["Ment. (ours)"], pythia["Ment. (paper)"], pythia["Asian (ours)"]) == ("96.0", "97.6", "")
    table10 = {(r["Base model"], r["Model"]): r for r in read_csv(tmp_path / "out" / "seed004_table10.csv")}
    tulu = table10[("LLaMa 13B", "H+GPT mix")]
    assert [tulu[f"{c} (ours)"] for c in ("% Informative", "% Truthful", "% Informative and Truthful")] == \
        ["94.0", "47.5", "41.5"]
    assert tulu["% Informative and Truthful (paper)"] == "41.6"
    pythia = table10[("Pythia 6.9B", "Vanilla")]
    assert (pythia["% Truthful (ours)"], pythia["% Truthful (paper)"]) == ("20.0", "")


def test_a_study_of_ones_own_gets_a_table_a_sweep_curve_and_the_losses(tmp_path):
    """Three runs of one's own that differ in the learning rate alone: a row per run with `optim.lr` first, then
    every number of its results.json (the CSV equal to them); each metric against the learning rate; the
    overlaid losses. A fourth run differing in its data too turns the sweep curve off."""
    from PIL import Image

    lrs = {"low": 1e-5, "mid": 3e-5, "high": 1e-4}
    for i, (name, lr) in enumerate(lrs.items()):
        write_run(tmp_path, f"my_{name}", f"model: {{preset: tiny}}\ndata: {{mixture: alpaca_builtin}}\noptim: {{lr: {lr}}}\n",
             {"model": "m", "parts": ["tasks"], "tasks": {"ij_mc": {"acc,none": 0.2 + i / 10, "acc_stderr,none": 0.1,
                                                                   "alias": "ij_mc"}}})
        (tmp_path / "runs" / f"my_{name}" / "metrics.jsonl").write_text("".join(
            json.dumps({"step": s, "loss": 5.0 - s / (i + 1), "loss/alpaca": 5.5 - s / (i + 1)}) + "\n"
            for s in range(1, 6)))
    sft_dir = tmp_path / "runs" / "tulu_human_gpt_llama1_13b"
    dpo_dir = tmp_path / "runs" / "tulu_human_gpt_llama1_13b_dpo"
    for name, loss, start, mmlu in (("tulu_human_gpt_llama1_13b_dpo", "dpo", sft_dir, 0.52),
                                    ("tulu_human_gpt_llama1_13b_rlvr", "grpo", dpo_dir, 0.53)):  # SFT -> DPO -> RLVR
        write_run(tmp_path, name, f"model: {{preset: llama1-13b, init_from: {start}}}\ndata: {{mixture: x}}\n"
                  f"objective: {{loss: {loss}}}\nexperiment: {{family: seed004, data: human_gpt}}\n",
                  {"model": "m", "parts": ["suite"], "suite": {"mmlu_0shot": {"acc": mmlu}}})
    written, strangers = families.write_report(sorted((tmp_path / "configs").glob("*.yaml")), tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(strangers) == ["my_high", "my_low", "my_mid"]
    rows = read_csv(out / "configs_runs.csv")  # the study is named after its configs' folder
    assert list(rows[0]) == ["run", "optim.lr", "tasks / ij_mc / acc,none"]  # numbers only, no stderr
    for row in rows:
        results = json.loads((tmp_path / "runs" / row["run"] / "eval" / "results.json").read_text())
        assert float(row["tasks / ij_mc / acc,none"]) == results["tasks"]["ij_mc"]["acc,none"]
        assert float(row["optim.lr"]) == lrs[row["run"].removeprefix("my_")]
    for png in ("configs_sweep.png", "configs_loss.png"):
        assert out / png in written
        with Image.open(out / png) as image:
            assert len(image.convert("RGB").getcolors(1 << 20)) > 20, png  # not blank
    assert "| my_low | 1e-05 |" in (out / "configs.md").read_text()
    write_run(tmp_path, "my_other_data", "model: {preset: tiny}\ndata: {mixture: dolly_builtin}\noptim: {lr: 2.0e-5}\n", None)
    written, _ = families.write_report(sorted((tmp_path / "configs").glob("*.yaml")), tmp_path / "out2")
    assert not (tmp_path / "out2" / "configs_sweep.png").exists()
    assert list(read_csv(tmp_path / "out2" / "configs_runs.csv")[0])[:3] == ["run", "data.mixture", "optim.lr"]
    config = tmp_path / "configs" / "my_other_data.yaml"  # no `name:`: the run is its run directory's name
    config.write_text(config.read_text().replace("name: my_other_data\n", ""))
    families.write_report(sorted((tmp_path / "configs").glob("*.yaml")), tmp_path / "out3")
    assert sorted(r["run"] for r in read_csv(tmp_path / "out3" / "configs_runs.csv")) == [
        "my_high", "my_low", "my_mid", "my_other_data"]


def test_coverage_every_transcribed_row_has_a_config(tmp_path, capsys):
    """`report configs --coverage`: each config's results laid out as its eval block writes them; every published
    number of a transcribed table is then filled by the report, but proprietary models'; the judged ones are
    counted apart; without the vanilla configs, their rows are named as made by no config, and a config that does
    not run a column's part leaves its cells out."""
    import yaml

    from instructjax.cli import main
    from instructjax.report.coverage import coverage

    root = REPO / "configs"
    paths = sorted(p for p in root.rglob("*.yaml") if p.name != "quickstart.yaml")
    tables = coverage(paths)
    reasons = {reason for t in tables for reason in t.missing}
    assert reasons == {"proprietary model as subject"}, reasons  # every other number has a config and a protocol
    by = {(t.family, t.table): t for t in tables}
    assert by["seed000", "table2"].judged == by["seed000", "table2"].producible == 126  # FLASK: all judged
    assert by["seed004", "table6"].judged == 0 and by["seed004", "table7"].judged == 34  # classifiers; AlpacaEval
    assert by["seed003", "table1"].producible == 108 and by["seed003", "table5"].producible == 30  # baselines' 1.000,
    # Table 5's "Mix <= 5" from the mosaics a run records
    assert sum(t.producible for t in tables) == 2476 and sum(t.judged for t in tables) == 499
    tulu = yaml.safe_load((root / "seed004_tulu" / "tulu_human_gpt_llama1_13b.yaml").read_text())
    tulu["eval"]["codex"] = False
    (tmp_path / "no_codex.yaml").write_text(yaml.safe_dump({**tulu, "name": "tulu_human_gpt_llama1_13b"}))
    swapped = [tmp_path / "no_codex.yaml" if p.name == "tulu_human_gpt_llama1_13b.yaml" else p for p in paths]
    table3 = next(t for t in coverage(swapped) if (t.family, t.table) == ("seed004", "table3"))
    assert table3.missing == {"the row's configs do not run Codex-Eval": 1, "the row's configs do not run Average": 1}
    table5 = next(t for t in tables if (t.family, t.table) == ("seed004", "table5"))
    assert table5.missing == {"proprietary model as subject": 14}  # ChatGPT's and GPT-4's 7 numbers each
    table8 = next(t for t in tables if (t.family, t.table) == ("seed004", "table8"))
    assert (table8.producible, table8.published) == (484, 508)  # every setting has a protocol (suite "tulu")
    assert table8.missing == {"proprietary model as subject": 24}  # ChatGPT's and GPT-4's 12 numbers each
    table9 = next(t for t in tables if (t.family, t.table) == ("seed004", "table9"))
    assert (table9.producible, table9.published) == (611, 641)  # 48 rows x 15, less the 79 cells not read
    assert table9.missing == {"proprietary model as subject": 30}  # ChatGPT's and GPT-4's 15 numbers each
    table10 = next(t for t in tables if (t.family, t.table) == ("seed004", "table10"))
    assert (table10.producible, table10.published) == (126, 132)  # 44 rows x 3 (no OPT or Pythia rows)
    assert table10.missing == {"proprietary model as subject": 6}
    for name in ("table3", "table7", "table8"):  # LongForm, ELI5 (eval.long_form) and AVG1 too: 6 rows x 11
        table = next(t for t in tables if (t.family, t.table) == ("seed002", name))
        assert (table.producible, table.published) == (66, 66), table.line()
    without = coverage([p for p in paths if "tulu_vanilla_" not in p.name])
    table5 = next(t for t in without if (t.family, t.table) == ("seed004", "table5"))
    assert table5.missing["no config makes the row"] == 6 * 5  # six vanilla rows, five numbers each
    table8 = next(t for t in without if (t.family, t.table) == ("seed004", "table8"))
    assert table8.missing["no config makes the row"] == 74  # eight vanilla rows (OPT and Pythia too), as read
    table9 = next(t for t in without if (t.family, t.table) == ("seed004", "table9"))
    assert table9.missing["no config makes the row"] == 7 * 15 + 7  # eight vanilla rows, 30B's 7 cells read
    table10 = next(t for t in without if (t.family, t.table) == ("seed004", "table10"))
    assert table10.missing["no config makes the row"] == 6 * 3  # six vanilla LLaMA rows
    assert main(["report", str(root / "seed004_tulu"), "--coverage"]) == 0
    assert "seed004 table6 (Table 6 (ToxiGen, TruthfulQA)): 60/60" in capsys.readouterr().out


def test_seed003_judged_columns_are_filled_from_the_generated_configs_results(tmp_path):
    """Seed 003 Table 2's MT-Bench and AlpacaEval 2 cells, read from what the generated configs' eval parts
    write (mt_bench turn means, the alpaca_eval package's length-controlled and raw win rates)."""
    import yaml

    root = REPO / "configs" / "seed003_mosaic"
    scores = {"alpaca_gpt4_baseline_mistral_7b": (6.1, 5.2, 4.25, 7.5), "wizardlm_mosaic_mistral_7b": (7.0, 4.4, 4.5, 7.75)}
    for name, (turn_1, turn_2, lc, raw) in scores.items():
        config = yaml.safe_load((root / f"{name}.yaml").read_text())
        assert config["eval"]["mt_bench"]["judge"] == {"model": "gpt-4"}  # FastChat's judge
        assert config["eval"]["alpaca_eval"]["annotator"] == "weighted_alpaca_eval_gpt4_turbo"  # AlpacaEval 2
        config["run_dir"] = str(tmp_path / "runs" / name)
        (tmp_path / "configs").mkdir(exist_ok=True)
        (tmp_path / "configs" / f"{name}.yaml").write_text(yaml.safe_dump(config))
        (tmp_path / "runs" / name / "eval").mkdir(parents=True)
        (tmp_path / "runs" / name / "eval" / "results.json").write_text(json.dumps({
            "model": "m", "parts": ["mt_bench", "alpaca_eval"], "mt_bench": {"turn_1": turn_1, "turn_2": turn_2, "n": 80},
            "alpaca_eval": {"annotator": "weighted_alpaca_eval_gpt4_turbo", "length_controlled_winrate": lc,
                            "win_rate": raw, "n": 805}}))
    families.write_report(sorted((tmp_path / "configs").glob("*.yaml")), tmp_path / "out")
    rows = {(r["Dataset"], r["Method"]): r for r in read_csv(tmp_path / "out" / "seed003_table2.csv")}
    for (dataset, method), name in ((("Alpaca-GPT4", "Baseline"), "alpaca_gpt4_baseline_mistral_7b"),
                                    (("Wizard-70k", "Mosaic-IT"), "wizardlm_mosaic_mistral_7b")):
        row = rows[(dataset, method)]
        got = [float(row[f"{c} (ours)"]) for c in ("MT-Bench 1-round", "MT-Bench 2-round", "AlpacaEval 2 Rate (LC)",
                                                   "AlpacaEval 2 Rate")]
        assert got == list(scores[name])
    assert rows[("Wizard-70k", "Baseline")]["AlpacaEval 2 Rate (LC) (ours)"] == ""


def test_seed003_a_baselines_winning_score_is_one_once_its_outputs_are_made(tmp_path):
    """(Win - Lose) / N + 1 of a system against itself is 1: the baseline's Table 1 cell once its pairwise part
    has run; before, missing; a Mosaic-IT run's is its comparison's."""
    baseline = "experiment: {{family: seed003, dataset: {}, method: baseline}}\n"
    write_run(tmp_path, "alpaca_gpt4_baseline_mistral_7b", "model: {preset: mistral-7b}\neval: {pairwise: {against: {}}}\n"
              + baseline.format("alpaca_gpt4"),
         {"model": "m", "parts": ["pairwise"], "pairwise": {"outputs": "o.jsonl", "vs": {}}})
    write_run(tmp_path, "alpaca_baseline_mistral_7b", "model: {preset: mistral-7b}\neval: {pairwise: {against: {}}}\n"
              + baseline.format("alpaca"), None)
    families.write_report(sorted((tmp_path / "configs").glob("*.yaml")), tmp_path / "out")
    rows = {(r["Model"], r["Dataset"], r["Method"]): r for r in read_csv(tmp_path / "out" / "seed003_table1.csv")}
    assert float(rows[("Mistral-7B", "Alpaca-GPT4", "Baseline")]["Winning Score (ours)"]) == 1.0
    assert rows[("Mistral-7B", "Alpaca", "Baseline")]["Winning Score (ours)"] == ""


def test_seed003_and_seed004_runs_are_placed_by_their_record_not_their_name(tmp_path):
    """A run named as a paper's run names it nowhere but in its name: a run of one's own (a study); a run of any name
    that records its row (`experiment:`) is that row: Table 4b's Max Count = 12, Tulu's Table 3 Alpaca and a
    vanilla base model (eval only)."""
    write_run(tmp_path, "tulu_alpaca_llama1_13b", "model: {preset: llama1-13b}\ndata: {mixture: tulu_single_alpaca}\n",
              None)
    write_run(tmp_path, "ablation_kmax_12_mistral_7b", "model: {preset: mistral-7b}\n", None)
    write_run(tmp_path, "mine_alpaca", "model: {preset: llama1-13b}\ndata: {mixture: tulu_single_alpaca_builtin}\n"
              "experiment: {family: seed004, data: alpaca}\n",
              {"model": "m", "parts": ["suite"], "suite": {"mmlu_0shot": {"acc": 0.4}}})
    write_run(tmp_path, "mine_base", "max_steps: 0\nmodel: {preset: llama1-13b}\n"
              "experiment: {family: seed004, data: vanilla}\n",
              {"model": "m", "parts": ["suite"], "suite": {"mmlu_0shot": {"acc": 0.3}}})
    write_run(tmp_path, "mine_baseline", "model: {preset: mistral-7b}\neval: {pairwise: {against: {}}}\n"
              "experiment: {family: seed003, dataset: alpaca_gpt4, method: baseline}\n", None)
    write_run(tmp_path, "mine_kmax", "model: {preset: mistral-7b}\ndata: {mixture: x, mosaic: {k_max: 12}}\n"
              f"eval: {{pairwise: {{against: {{baseline: {tmp_path / 'runs' / 'mine_baseline'}}}}}}}\n"
              "experiment: {family: seed003, dataset: alpaca_gpt4, method: mosaic, ablation: k_max, value: 12}\n",
              {"model": "m", "parts": ["pairwise"], "pairwise": {"vs": {"baseline": {
                  "win": 6, "tie": 2, "lose": 2, "n": 10, "winning_score": 1.4}}}})
    write_run(tmp_path, "mine_trained_vanilla", "model: {preset: llama1-7b}\n"  # vanilla is the base model untrained
              "experiment: {family: seed004, data: vanilla}\n", None)
    _, strangers = families.write_report(sorted((tmp_path / "configs").glob("*.yaml")), tmp_path / "out")
    assert sorted(strangers) == ["ablation_kmax_12_mistral_7b", "mine_trained_vanilla", "tulu_alpaca_llama1_13b"]
    table3 = {r["Dataset"]: r for r in read_csv(tmp_path / "out" / "seed004_table3.csv")}
    assert (table3["+Alpaca"]["MMLU (ours)"], table3["Vanilla LLaMa 13B"]["MMLU (ours)"]) == ("40.0", "30.0")
    kmax = {r["Max Count"]: r for r in read_csv(tmp_path / "out" / "seed003_table4b.csv")}["Max Count = 12"]
    assert (float(kmax["Winning Score (ours)"]), float(kmax["Win (ours)"])) == (1.4, 6)


def test_adapter_runs_get_rows_of_their_own_beside_the_full_fine_tune(tmp_path):
    """The generated LoRA and QLoRA variants of Tulu 65B and of a seed 003 Table 3 run record the same paper row as
    the full fine-tune; the report labels their model by what the config trained (model.lora, quantize_base), so
    the three Tulu 65B runs are three rows of Table 5, each with its own numbers, and Table 7's size columns
    gather only the full fine-tune."""
    import yaml

    root = REPO / "configs"
    mmlu = {"tulu_human_gpt_llama1_65b": 0.5, "tulu_human_gpt_llama1_65b_lora": 0.4, "tulu_human_gpt_llama1_65b_qlora": 0.3}
    for name, acc in mmlu.items():
        config = yaml.safe_load((root / "seed004_tulu" / f"{name}.yaml").read_text())
        write_run(tmp_path, name, yaml.safe_dump({k: config[k] for k in ("model", "data", "experiment")}),
                  {"model": "m", "parts": ["suite", "alpaca_eval"], "suite": {"mmlu_0shot": {"acc": acc}},
                   "alpaca_eval": {"win_rate": 100 * acc}})
    for name in ("magpie_mosaic_llama3_8b", "magpie_mosaic_llama3_8b_lora"):
        config = yaml.safe_load((root / "seed003_mosaic" / f"{name}.yaml").read_text())
        write_run(tmp_path, name, yaml.safe_dump({k: config[k] for k in ("model", "experiment")}),
                  {"model": "m", "parts": ["suite"], "suite": {"ifeval": {"prompt_level_strict_acc,none": 0.25}}})
    _, strangers = families.write_report(sorted((tmp_path / "configs").glob("*.yaml")), tmp_path / "out")
    assert strangers == []
    table5 = {r["Model"]: r["MMLU (ours)"] for r in read_csv(tmp_path / "out" / "seed004_table5.csv")}
    assert (table5["Tulu 65B"], table5["Tulu 65B (LoRA)"], table5["Tulu 65B (QLoRA)"]) == ("50.0", "40.0", "30.0")
    table7 = {r["Training Dataset"]: r for r in read_csv(tmp_path / "out" / "seed004_table7.csv")}
    assert table7["Tulu"]["65B (ours)"] == "50.0"
    table3 = {(r["Model"], r["Method"]) for r in read_csv(tmp_path / "out" / "seed003_table3.csv")}
    assert {("Llama-3-8B", "Mosaic-IT"), ("Llama-3-8B (LoRA)", "Mosaic-IT")} <= table3
