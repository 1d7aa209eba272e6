# Copyright 2024 The Google Research Authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
#
# Derived from Google's IFEval (google-research/google-research, instruction_following_eval/) as open-instruct's
# IFEvalG carries it (allenai/open-instruct, open_instruct/IFEvalG/, Apache-2.0); modified for instructjax (see NOTICE).

"""What IFEvalG's instructions share: the `Instruction` interface, its constants (relations, endings, phrases) and
its kwarg draws (the same calls on Python's global `random`, in the same order, as IFEvalG's `build_description`)."""

from __future__ import annotations

import random

from instructjax.data.verifiers.ifeval.words import WORD_LIST

RELATIONS = ("less than", "at least")
CONSTRAINED_RESPONSES = ("My answer is yes.", "My answer is no.", "My answer is maybe.")
ENDINGS = ("Any other questions?", "Is there anything else I can help with?")
PHRASES = ("Dance like nobody is watching you", "The early bird catches the worm", "Time flies when having fun",
           "Every cloud has a silver lining", "Actions speak louder than words", "Don't judge a book by cover",
           "Live each day to the fullest", "All that glitters is not gold", "Laughter is the best medicine",
           "The pen is mightier than sword")


def _keywords(n: int) -> list[str]:
    return random.sample(WORD_LIST, k=n)


def _count(n: int | None, low: int, high: int) -> int:
    """`n`, drawn in [low, high] when None or negative."""
    return random.randint(low, high) if n is None or n < 0 else n


def _given(n, low: int, high: int):
    """`n`, drawn in [low, high] when falsy (0 included)."""
    return n if n else random.randint(low, high)


def _relation(relation: str | None) -> str:
    if relation is None:
        return random.choice(RELATIONS)
    if relation not in RELATIONS:
        raise ValueError(f"The supported relation for comparison must be in {RELATIONS}, but {relation} is given.")
    return relation


def _compare(actual: int, relation: str, threshold: int) -> bool:
    if relation == RELATIONS[0]:
        return actual < threshold
    return relation == RELATIONS[1] and actual >= threshold


def _stripped(text):
    return text.strip() if isinstance(text, str) else text


def _required(prompt_to_repeat):
    if not prompt_to_repeat:
        raise ValueError("prompt_to_repeat must be set.")
    return prompt_to_repeat


def _paragraphs(parts: list[str]) -> int | None:
    """How many of `parts` are paragraphs (an empty first or last part is none), None when an inner one is empty."""
    count = len(parts)
    for index, part in enumerate(parts):
        if not part.strip():
            if index not in (0, len(parts) - 1):
                return None
            count -= 1
    return count


_DIVIDER = r"\s?\*\*\*\s?"


class Instruction:
    """An instruction: `__init__(**kwargs)` its arguments, `__call__(response) -> bool` whether it is followed."""

    def __call__(self, value: str) -> bool:
        raise NotImplementedError
