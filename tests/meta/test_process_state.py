"""No module of the package keeps state in a `global` statement: a command's state lives in its context
(core/context.py), the process's handles (signal listener, JAX's process count, the stderr relay) in one object the
trainer holds and passes (core/stopping.py `ProcessHandles`)."""

import ast

from helpers import REPO


def test_no_global_statement_in_the_package():
    found = []
    for path in sorted((REPO / "instructjax").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Global):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: global {', '.join(node.names)}")
    assert found == []


def test_the_handles_passed_are_the_ones_used():
    """`listening(handles)` fills the handles given, not the process's default object."""
    from instructjax.core import stopping

    mine = stopping.ProcessHandles()
    with stopping.listening(mine):
        assert mine.listener is not None and stopping.PROCESS.listener is None
        mine.listener.requested = True
        assert stopping.requested(mine) and not stopping.requested()
    assert mine.listener is None
