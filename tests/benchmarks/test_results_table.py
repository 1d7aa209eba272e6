"""benchmarks/results_table.py: RESULTS.md's current table is rewritten one benchmark's row at a time, and
the dated log below it is left byte for byte."""

import sys

from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import results_table  # noqa: E402

LOG = """## Packing — 2026-11-21T16:50:20

Machine: x. Command: `python benchmarks/packing.py`.

| a | b |
|---|---|
| 1 | 2 |

## Training step, CPU: instructjax vs transformers — 2026-11-21T17:56:33

**instructjax / transformers = 0.89x** (goal >= 1.2x: missed).
"""
TITLE = "# Benchmark results\n\nEach benchmark appends a dated section: machine, command, figures.\n"


def test_the_first_row_makes_the_table_above_an_untouched_log():
    text = results_table.set_row(TITLE + "\n" + LOG, ["packing", "99.8%", "seqio 78.1%", "1.28x", "2026-11-21", "2 CPUs"])
    assert text.startswith(TITLE.rstrip("\n")) and text.endswith(LOG)
    assert results_table.rows(text) == [["packing", "99.8%", "seqio 78.1%", "1.28x", "2026-11-21", "2 CPUs"]]


def test_a_row_replaces_only_its_benchmark():
    text = TITLE + "\n" + LOG
    for row in (["packing", "99.8%", "seqio 78.1%", "1.28x", "2026-11-21", "2 CPUs"],
                ["train_step_cpu", "636 tokens/s", "transformers 711 tokens/s", "0.89x", "2026-11-21", "2 CPUs"],
                ["gpu_mfu", "33.9% MFU", "transformers 28.4%", "1.19x", "2026-11-23", "1 H100"]):
        text = results_table.set_row(text, row)
    before_table, after_table = text.split(results_table.BEGIN)[0], text.split(results_table.END)[1]
    new = results_table.set_row(text, ["train_step_cpu", "800 tokens/s", "transformers 700 tokens/s", "1.14x",
                                       "2026-12-01", "2 CPUs"])
    assert new.split(results_table.BEGIN)[0] == before_table and new.split(results_table.END)[1] == after_table
    assert new.endswith(LOG)
    assert results_table.rows(new) == [
        ["packing", "99.8%", "seqio 78.1%", "1.28x", "2026-11-21", "2 CPUs"],
        ["train_step_cpu", "800 tokens/s", "transformers 700 tokens/s", "1.14x", "2026-12-01", "2 CPUs"],
        ["gpu_mfu", "33.9% MFU", "transformers 28.4%", "1.19x", "2026-11-23", "1 H100"]]
    untouched = [line for line in new.splitlines() if "train_step_cpu" not in line]
    assert untouched == [line for line in text.splitlines() if "train_step_cpu" not in line]
