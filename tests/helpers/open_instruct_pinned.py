"""open-instruct's verifier modules imported from the pinned copy in tests/assets/open_instruct/ (its README names
the commit) as the `open_instruct` package: the independent reference of data/verifiers/. What they import and never
use here (LLM judges, rubrics, utils) is stubbed; sys.modules is restored on exit."""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import types
from collections.abc import Iterator
from pathlib import Path

PINNED = Path(__file__).resolve().parents[1] / "assets" / "open_instruct"


@contextlib.contextmanager
def pinned_open_instruct(modules: tuple[str, ...], stub_ifevalg: bool = False) -> Iterator[dict]:
    """{name: module} of `open_instruct.<name>` for each of `modules`, imported from the pinned copy; with
    `stub_ifevalg` IFEvalG's registry stubbed empty (ground_truth_utils imports it), else IFEvalG itself loaded."""
    stubs = {
        "open_instruct": types.ModuleType("open_instruct"),
        "open_instruct.logger_utils": types.SimpleNamespace(setup_logger=logging.getLogger),
        "open_instruct.context_window_checker": types.ModuleType("context_window_checker"),
        "open_instruct.judge_utils": types.SimpleNamespace(EXTRACTOR_MAP={}, JUDGE_PROMPT_MAP={},
                                                           PRICE_PER_MILLION_TOKENS={}, build_messages=None),
        "open_instruct.rubrics": types.ModuleType("rubrics"),
        "open_instruct.rubrics.prompts": types.SimpleNamespace(RUBRIC_SCORING_PROMPT=""),
        "open_instruct.rubrics.run_utils": types.SimpleNamespace(extract_json_from_response=None,
                                                                 run_litellm_async=None, run_litellm_async_raw=None),
        "open_instruct.utils": types.SimpleNamespace(extract_final_answer=None),
    }
    if stub_ifevalg:
        stubs["open_instruct.IFEvalG"] = types.ModuleType("IFEvalG")
        stubs["open_instruct.IFEvalG.instructions_registry"] = types.SimpleNamespace(INSTRUCTION_DICT={})
    stubs["open_instruct"].__path__ = [str(PINNED)]  # the pinned files (IFEvalG/ a namespace package) found there
    for name, module in stubs.items():  # `from open_instruct.X import y` finds each stub as its parent's attribute
        parent, _, leaf = name.rpartition(".")
        if parent:
            setattr(stubs[parent], leaf, module)
    loaded = ("ground_truth_utils", "math_utils", "if_functions", "IFEvalG", "IFEvalG.instructions",
              "IFEvalG.instructions_registry", "IFEvalG.instructions_util", *modules)
    saved = {k: sys.modules.get(k) for k in [*stubs, *(f"open_instruct.{m}" for m in loaded)]}
    sys.modules.update(stubs)
    try:
        yield {m: importlib.import_module(f"open_instruct.{m}") for m in modules}
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def empty_punkt(root: Path) -> Path:
    """An (empty: no abbreviations, no collocations) English punkt_tab model under the NLTK_DATA folder `root`."""
    model = root / "tokenizers" / "punkt_tab" / "english"
    model.mkdir(parents=True)
    for name in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
        (model / name).write_text("")
    return root
