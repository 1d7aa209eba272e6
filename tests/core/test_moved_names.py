"""Names that moved out of a module it cannot import back (a layer above, or an import circle): an old import
is one line naming the new home, and the name is there."""

from __future__ import annotations

import importlib

import pytest

MOVED = [("instructjax.core.config", "JudgeEndpoint", "instructjax.eval.config"),
         ("instructjax.core.config", "eval_section", "instructjax.eval.config"),
         ("instructjax.eval.humaneval", "codex_eval", "instructjax.eval.tulu.codex"),
         ("instructjax.eval.engine", "SlotEngine", "instructjax.model.engine"),
         ("instructjax.eval.engine", "widest_fill", "instructjax.model.engine")]


@pytest.mark.parametrize("old,name,new", MOVED)
def test_an_old_import_names_the_new_home(old, name, new):
    with pytest.raises(ImportError, match=f"import it from {new}$"):
        exec(f"from {old} import {name}", {})
    assert hasattr(importlib.import_module(new), name)
    assert not hasattr(importlib.import_module(old), "no_such_name")  # an AttributeError, as before
