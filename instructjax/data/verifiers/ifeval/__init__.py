# Derived from open-instruct (https://github.com/allenai/open-instruct), Copyright 2024 AllenAI, Apache-2.0.
# Modified for instructjax. See NOTICE.

"""The `ifeval` verifier's instruction registry: open-instruct's IFEvalG (its `ground_truth_utils.IFEvalVerifier`
and `IFEvalG/`; Apache-2.0), itself Google's IFEval instructions (google-research/instruction_following_eval,
Apache-2.0) with the new ones of Tulu 3 / OLMo 3's IF_multi_constraints rows. Ported to the same semantics:
`instructions` (its 54 instructions, `INSTRUCTIONS` by id), `text` (IFEval's sentence splitter and nltk's
tokenizers), `words` (its keyword list and language codes).

A ground truth is a Python literal list (`str([...])`) whose first element is the constraint: a dict, or a JSON
string of one, `{"instruction_id": [id, ...], "kwargs": [dict or None, ...]}` (a kwarg that is null is left out).
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import re

from instructjax.core.errors import DataError
from instructjax.data.verifiers.ifeval.instructions import INSTRUCTIONS

Constraint = tuple[str, dict]
_OLD = ("; a func_name constraint is ifeval_old's (Tulu 3's RLVR-IFeval rows): read them with source_options "
        "{remap_verifier: ifeval=ifeval_old}")


def _bad(ground_truth, problem: str) -> DataError:
    text = str(ground_truth)
    shown = text if len(text) <= 120 else text[:117] + "..."
    hint = _OLD if "func_name" in text else ""
    return DataError(f"ifeval ground truth {shown!r}: {problem}{hint}", reason="bad_ground_truth")


def constraints(ground_truth: str) -> list[Constraint]:
    """(instruction id, its non-null kwargs) pairs of a ground truth, as IFEvalVerifier reads it (`ast.literal_eval`,
    its first element, JSON-decoded when a string; ids and kwargs zipped); one DataError line when it is not one."""
    try:
        first = ast.literal_eval(ground_truth)[0]
        spec = json.loads(first) if isinstance(first, str) else first
        ids, kwargs = spec["instruction_id"], spec["kwargs"]
        pairs = list(zip(ids, kwargs, strict=False))
    except (ValueError, SyntaxError, TypeError, KeyError, IndexError, MemoryError, RecursionError) as err:
        raise _bad(ground_truth, "not a list whose first element is {'instruction_id': [...], 'kwargs': [...]} "
                                 f"(or its JSON): {type(err).__name__}: {err}".replace("\n", " ")) from None
    out = []
    for instruction_id, args in pairs:
        if not isinstance(instruction_id, str) or instruction_id not in INSTRUCTIONS:
            raise _bad(ground_truth, f"unknown instruction id {instruction_id!r} (IFEvalG's: "
                                     f"{', '.join(INSTRUCTIONS)})")
        if args is not None and not isinstance(args, dict):
            raise _bad(ground_truth, f"{instruction_id}: kwargs {args!r} is not a dict or null")
        out.append((instruction_id, {k: v for k, v in (args or {}).items() if v is not None}))
    return out


def check_ground_truth(ground_truth: str) -> None:
    """One DataError line when a ground truth is not IFEvalG's (its format, ids and kwargs names), checked without
    building (IFEvalG's draws for missing kwargs happen when it is scored)."""
    for instruction_id, args in constraints(ground_truth):
        _known_kwargs(ground_truth, instruction_id, args)


@functools.cache
def _accepted(instruction_id: str) -> tuple[str, ...]:
    return tuple(inspect.signature(INSTRUCTIONS[instruction_id]).parameters)


def _known_kwargs(ground_truth, instruction_id: str, args: dict) -> None:
    accepted = _accepted(instruction_id)
    if unknown := sorted(set(args) - set(accepted)):
        raise _bad(ground_truth, f"{instruction_id} takes no kwarg {', '.join(unknown)} (it takes: "
                                 f"{', '.join(accepted) or 'none'})")


def followed(answer: str, ground_truth: str, pairs: list[Constraint]) -> list[bool]:
    """Whether `answer` follows each instruction, each built from its kwargs (IFEvalG's `build_description`, its
    random draws for those left out) just before its check, in order; where IFEvalG would fail (a kwarg it does not
    take or cannot use, a keyword that is no regex) one DataError line naming the instruction."""
    out = []
    for instruction_id, args in pairs:
        _known_kwargs(ground_truth, instruction_id, args)
        try:
            out.append(bool(INSTRUCTIONS[instruction_id](**args)(answer)))
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, re.error) as err:
            raise _bad(ground_truth, f"{instruction_id} with kwargs {args}: {type(err).__name__}: "
                                     f"{err}".replace("\n", " ")) from None
    return out


__all__ = ["INSTRUCTIONS", "check_ground_truth", "constraints", "followed"]
