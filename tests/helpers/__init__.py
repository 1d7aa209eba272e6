"""What the test modules share: helpers, fixtures' builders and reference code (no test module imports another).

The folders every test reaches by name, wherever its own file lives."""

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
ASSETS = TESTS / "assets"  # hand-written rows, golden draws, the papers' excerpts
WORKER = TESTS / "helpers" / "fault_worker.py"  # the real `instructjax` CLI with faults injected (its docstring)


@contextmanager
def pinned(project: str) -> Iterator[None]:
    """Within: upstream code pinned in tests/assets/PROJECT imports as its project imports it (`from olmix.fit ...`)."""
    sys.path.insert(0, str(ASSETS / project))
    try:
        yield
    finally:
        sys.path.remove(str(ASSETS / project))
