"""What one command keeps while it runs: the task registry its config's `define:` and `bind` write into, the
caches of what it read (a task's examples, a hub table, a file's digest), the hosts' collective counters and the
encoding workers. `instructjax.cli` makes one per command (`with Context(parent=current()):`), so two configs
bound one after the other in one process (a notebook, an in-process sweep) each get their own.

A context's parts are slots that the layer owning each part fills on first use (`slot(name, make)`), so this module
knows none of their types. A child context reads its parent's registrations (what a user's modules registered:
`Registry(parent=...)`) and shares its parent's process resources (`shared=True`: the worker pool), and keeps the
rest to itself. Code that runs outside any command (a library call, a notebook) gets a context of its own on first
use, for as long as its thread (or `contextvars` context) lives; a thread we start carries its starter's
(`contextvars.copy_context().run`).
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Context:
    """One command's state (see the module doc); `with context:` makes it the current one."""

    def __init__(self, parent: Context | None = None):
        self.parent = parent
        self.slots: dict[str, Any] = {}
        self.own: set[str] = set()  # the slots this context made (the rest are its parent's)
        self._tokens: list[contextvars.Token] = []

    def slot(self, name: str, make: Callable[[Context], T], *, shared: bool = False) -> T:
        """This context's part `name`, made by `make(self)` on first use; `shared`: the parent's, when it has one."""
        if name not in self.slots:
            owner = self.parent if shared and self.parent is not None else None
            self.slots[name] = owner.slot(name, make, shared=True) if owner is not None else make(self)
            if owner is None:
                self.own.add(name)
        return self.slots[name]

    def tables(self, name: str) -> list[dict]:
        """Table `name` of this context, then of each context above it (what was registered while each was current:
        a user's chat templates, selection encoders); register into the first, look up through all."""
        own = self.slot(name, lambda _: {})
        return [own, *(self.parent.tables(name) if self.parent is not None else [])]

    @property
    def root(self) -> Context:
        """The outermost context: where what a user's modules register on import lives, as long as Python keeps the
        modules (`core.user_modules`)."""
        return self if self.parent is None else self.parent.root

    def __enter__(self) -> Context:
        self._tokens.append(_CURRENT.set(self))
        return self

    def __exit__(self, *exc) -> None:
        _CURRENT.reset(self._tokens.pop())
        for name in self.own:  # what it made and only it holds: the worker pool shut down
            close = getattr(self.slots[name], "close_with_context", None)
            if close is not None:
                close()


_CURRENT: contextvars.ContextVar[Context] = contextvars.ContextVar("instructjax_context")


def current() -> Context:
    """The context of the command running here; outside any command, this thread's own (made on first use)."""
    found = _CURRENT.get(None)
    if found is None:
        found = Context()
        _CURRENT.set(found)
    return found
