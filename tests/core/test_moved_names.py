"""Names that moved out of a module it cannot import back (a layer above, or an import circle): an old import
is one line naming the new home, and the name is there."""

from __future__ import annotations

import importlib

import pytest

MOVED = [("instructjax.core.config", "JudgeEndpoint", "instructjax.eval.config"),
         ("instructjax.core.config", "eval_section", "instructjax.eval.config"),
         ("instructjax.eval.humaneval", "codex_eval", "instructjax.eval.tulu.codex"),
         ("instructjax.eval.engine", "widest_fill", "instructjax.model.batching_shapes"),
         ("instructjax.eval.engine", "Sampling", "instructjax.model.batching")]
# an old module that re-exports what moved (old name -> new home, new name)
ALIASED = [("instructjax.model.engine", "SlotEngine", "instructjax.model.batching", "ContinuousBatcher"),
           ("instructjax.model.engine", "Sampling", "instructjax.model.batching", "Sampling"),
           ("instructjax.model.engine", "widest_fill", "instructjax.model.batching_shapes", "widest_fill"),
           ("instructjax.model.engine", "bucket", "instructjax.model.batching_shapes", "bucket"),
           ("instructjax.model.engine_memory", "step_bytes", "instructjax.model.batching_memory", "step_bytes"),
           ("instructjax.eval.endpoint", "EndpointGenerator", "instructjax.eval.endpoint", "EndpointEngine")]


@pytest.mark.parametrize("old,name,new", MOVED)
def test_an_old_import_names_the_new_home(old, name, new):
    with pytest.raises(ImportError, match=f"import it from {new}$"):
        exec(f"from {old} import {name}", {})
    assert hasattr(importlib.import_module(new), name)
    assert not hasattr(importlib.import_module(old), "no_such_name")  # an AttributeError, as before


@pytest.mark.parametrize("old,name,new,new_name", ALIASED)
def test_an_old_module_still_gives_what_moved(old, name, new, new_name):
    assert getattr(importlib.import_module(old), name) is getattr(importlib.import_module(new), new_name)
