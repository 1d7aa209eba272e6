"""What the test modules share: helpers, fixtures' builders and reference code (no test module imports another).

The folders every test reaches by name, wherever its own file lives."""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
ASSETS = TESTS / "assets"  # hand-written rows, golden draws, the papers' excerpts
WORKER = TESTS / "helpers" / "fault_worker.py"  # the real `instructjax` CLI with faults injected (its docstring)
