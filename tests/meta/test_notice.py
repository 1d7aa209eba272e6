"""NOTICE names every derived part: a module of the package whose docstring names the upstream source it follows
(open-instruct's scripts and utils, IFEval, FastChat's, human-eval, ...) is listed there under its upstream, and
carries a header naming it (the upstream's own copyright and licence header where its files had one: IFEval's);
every file NOTICE lists exists. The wheel ships NOTICE (tests/meta/test_wheel.py)."""

import ast
import re

from helpers import REPO

# the upstream sources a module names when it follows one (a script, a module, a package of code)
UPSTREAM_SOURCE = re.compile(r"\b(run_eval\.py|ground_truth_utils|if_functions|math_utils|grpo_utils|grpo_fast|IFEvalG|"
                             r"instruction_following_eval|split_long_conversation|clean_sharegpt|llm_judge|"
                             r"eval_gpt_review|human-eval|minerva_math|TruthfulQA's)")
DERIVED = re.compile(r"(?i)\b(derived|ported|adapted|copied|vendored) from\b|\ba port of\b")
GOOGLE = ("# Copyright 2024 The Google Research Authors.", "# Licensed under the Apache License, Version 2.0")


def notice() -> dict[str, set[str]]:
    """NOTICE's sections: the upstream (its title line) -> the files listed under it."""
    sections: dict[str, set[str]] = {}
    for block in (REPO / "NOTICE").read_text().split("-" * 115)[1:]:
        lines = block.strip().splitlines()
        files = lines[lines.index("Files:") + 1:]
        sections[lines[0]] = {f.strip() for f in files if f.strip()}
    return sections


def _header(path) -> str:
    """The comment lines a file starts with."""
    lines = path.read_text().splitlines()
    return "\n".join(line for line in lines[:next((i for i, x in enumerate(lines) if not x.startswith("#")), 0)])


def test_every_module_that_follows_an_upstream_is_in_notice_with_a_header():
    sections = notice()
    listed = set().union(*sections.values())
    named = {}
    for path in sorted((REPO / "instructjax").rglob("*.py")):
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        if UPSTREAM_SOURCE.search(doc) or DERIVED.search(_header(path)):
            named[str(path.relative_to(REPO))] = path
    assert len(named) > 20  # the rule still finds them
    assert sorted(set(named) - listed) == []
    assert sorted(f for f in listed if not (REPO / f).is_file()) == []
    unmarked = [f for f in sorted(listed) if "Derived from" not in _header(REPO / f) or "NOTICE" not in _header(REPO / f)]
    assert unmarked == []


def test_the_ifeval_port_keeps_googles_header():
    (ifeval,) = [files for title, files in notice().items() if title.startswith("IFEval")]
    assert len(ifeval) == 6
    assert [f for f in sorted(ifeval) if not all(line in _header(REPO / f) for line in GOOGLE)] == []
