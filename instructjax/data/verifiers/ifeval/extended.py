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

"""The instructions open-instruct's IFEvalG adds to IFEval (Tulu 3 / OLMo 3's IF_multi_constraints: `copy:*`,
`count:*`, `first_word:*`, `keywords:word_once` ...)."""

from __future__ import annotations

import random
import re

from instructjax.data.verifiers.ifeval.base import (
    _DIVIDER,
    PHRASES,
    RELATIONS,
    Instruction,
    _compare,
    _given,
    _keywords,
    _paragraphs,
    _required,
)
from instructjax.data.verifiers.ifeval.original import KeywordFrequencyChecker
from instructjax.data.verifiers.ifeval.text import (
    split_into_sentences,
    word_tokenize,
)


class KeywordFrequencyCheckerDifferent(KeywordFrequencyChecker):
    """The same check as `keywords:frequency` (IFEvalG words its description without the relation)."""


class RepeatPhraseChecker(Instruction):
    def __init__(self, phrase=None, small_n=None):
        self.phrase = phrase.strip() if phrase else random.choice(PHRASES)
        self.small_n = _given(small_n, 2, 3)

    def __call__(self, value):
        reference = self.phrase.split()
        found = re.findall(f"{reference[0]} .*? {reference[-1]}", value)
        if len(found) != self.small_n:
            return False
        changed_once = 0
        for phrase in (f.split() for f in found):
            if len(phrase) != len(reference):
                return False
            differences = sum(a != b for a, b in zip(phrase, reference, strict=True))
            if differences > 1:
                return False
            changed_once += differences == 1
        return changed_once == self.small_n


class CopyChecker(Instruction):
    def __init__(self, prompt_to_repeat=None):
        self.prompt_to_repeat = _required(prompt_to_repeat)

    def __call__(self, value):
        return value.strip().lower() == self.prompt_to_repeat.strip().lower()


class CopySpanIdxChecker(Instruction):
    def __init__(self, prompt_to_repeat=None, n_start=None, n_end=None):
        self.prompt_to_repeat = _required(prompt_to_repeat)
        self.n_start = n_start if n_start else random.randint(0, len(self.prompt_to_repeat) - 2)
        self.n_end = n_end if n_end else random.randint(self.n_start + 1, len(self.prompt_to_repeat) - 1)

    def __call__(self, value):
        return value.strip().lower() == self.prompt_to_repeat[self.n_start : self.n_end].strip().lower()


class SentenceHyphenChecker(Instruction):
    def __call__(self, value):
        gold = split_into_sentences(re.sub("-", " ", value))
        return all(s.strip() == s and s == g for s, g in zip(value.split("-"), gold, strict=False))


class AdjacentLetterChecker(Instruction):
    def __call__(self, value):
        words = value.split()
        for word, following in zip(words, words[1:], strict=False):
            first, second = word[0].lower(), following[0].lower()
            if len(first) != 1 or len(second) != 1 or ord(second) - ord(first) == 1:
                return False
        return True


class SquareBracketChecker(Instruction):
    def __call__(self, value):
        return all(word.startswith("[") and word.endswith("]") for word in value.split())


class KeywordFrequencyOnceChecker(Instruction):
    def __init__(self, *, keyword=None):
        self.keyword = keyword.strip() if keyword else _keywords(1)[0]

    def __call__(self, value):
        return len(re.findall(self.keyword, value, flags=re.IGNORECASE)) == 1


class ExcludeWordHarderChecker(Instruction):
    def __init__(self, keyword=None, instruction=None):
        if not keyword and not isinstance(instruction, str):
            raise TypeError("no keyword and no instruction to draw one from")
        self.keyword = keyword.strip() if keyword else random.choice(instruction.split())

    def __call__(self, value):
        return " " + self.keyword + " " not in value


class ParagraphBasicChecker(Instruction):
    def __call__(self, value):
        return _paragraphs(re.split(_DIVIDER, value)) == 2


class ParagraphBasicChecker2(Instruction):
    def __call__(self, value):
        return _paragraphs(re.split(r"\n\n", value)) == 2


def _word_or_first(word):
    """A word given, or the first of a list of them; drawn when none."""
    if not word:
        return _keywords(1)[0]
    return (word if isinstance(word, str) else word[0]).strip()


class FirstWordSentChecker(Instruction):
    def __init__(self, first_word=None):
        self.first_word = _word_or_first(first_word)

    def __call__(self, value):
        return all(s.strip() and s.split()[0].strip().lower() == self.first_word.lower()
                   for s in split_into_sentences(value))


class FirstWordAnswerChecker(Instruction):
    def __init__(self, first_word=None):
        self.first_word = first_word.strip() if first_word else _keywords(1)[0]

    def __call__(self, value):
        return bool(value.strip()) and value.split()[0].strip().lower() == self.first_word.lower()


def _last_word(text: str) -> str:
    return re.sub(r"[^\w\s]", "", text.split()[-1].strip()).lower()


class LastWordSentChecker(Instruction):
    def __init__(self, last_word=None):
        self.last_word = _word_or_first(last_word)

    def __call__(self, value):
        return all(s.strip() and _last_word(s) == self.last_word.lower() for s in split_into_sentences(value))


class LastWordAnswerChecker(Instruction):
    def __init__(self, last_word=None):
        self.last_word = last_word.strip() if last_word else _keywords(1)[0]

    def __call__(self, value):
        return _last_word(value) == self.last_word.lower()


class BiGramWrappingChecker(Instruction):
    def __call__(self, value):
        words = value.split()
        return all(words[i].startswith("<<") and words[i + 1].endswith(">>") for i in range(0, len(words) - 1, 2))


class CopyingSimpleChecker(CopyChecker):
    """The same check as `copy:copy` (IFEvalG words its description differently)."""


class CopyingMultipleChecker(Instruction):
    def __init__(self, prompt_to_repeat=None, N=None):  # noqa: N803 (IFEvalG's kwarg)
        self.prompt_to_repeat = _required(prompt_to_repeat)
        self.N = _given(N, 2, 3)

    def __call__(self, value):
        copies = value.split("******")
        want = self.prompt_to_repeat.strip().lower()
        return len(copies) == self.N and all(copy.strip().lower() == want for copy in copies)


class PunctuationDotChecker(Instruction):
    def __call__(self, value):
        return "." not in value


class PunctuationExclamationChecker(Instruction):
    def __call__(self, value):
        return "!" not in value


class LowercaseCountingChecker(Instruction):
    def __init__(self, N=None):  # noqa: N803
        self.N = _given(N, 2, 3)

    def __call__(self, value):
        return len(re.findall(r"\b[a-z]+\b", value)) <= self.N


class LetterCountingChecker(Instruction):
    def __init__(self, N=None, relation=None):  # noqa: N803
        self.N = _given(N, 2, 3)
        self.relation = relation if relation else random.choice(RELATIONS)

    def __call__(self, value):
        return _compare(len(re.findall(r"[a-zA-Z]", value)), self.relation, self.N)


class CountingCompositionChecker(Instruction):
    def __init__(self, n_sent=None, n_words=None):
        self.n_sent = _given(n_sent, 2, 3)
        self.n_words = _given(n_words, 2, 3)

    def __call__(self, value):
        paragraphs = re.split(_DIVIDER, value)
        count = len(paragraphs)
        for index, paragraph in enumerate(paragraphs):
            if not paragraph.strip():
                if index not in (0, len(paragraphs) - 1):
                    return False
                count -= 1
            sentences = split_into_sentences(paragraph)
            if len(sentences) != self.n_sent or any(len(word_tokenize(s)) != self.n_words for s in sentences):
                return False
        return count == 3


class CountUniqueChecker(Instruction):
    def __call__(self, value):
        words = word_tokenize(value)
        return len(words) == len(set(words))


class CountIncrementWordChecker(Instruction):
    """A keyword left out is drawn as IFEvalG draws it: a list of one word, which its check (and ours) cannot
    search for (TypeError)."""

    def __init__(self, keyword1=None, keyword2=None):
        self.keyword1 = keyword1.strip() if keyword1 else _keywords(1)
        self.keyword2 = keyword2.strip() if keyword2 else _keywords(1)

    def __call__(self, value):
        once = len(re.findall(self.keyword1, value, flags=re.IGNORECASE))
        twice = len(re.findall(self.keyword2, value, flags=re.IGNORECASE))
        return once == 1 and twice == 2


class PalindromeBasicChecker(Instruction):
    def __call__(self, value):
        return any(word == word[::-1] for word in value.split())


class KeywordSpecificPositionChecker(Instruction):
    def __init__(self, keyword=None, n=None, m=None):
        self.keyword = _word_or_first(keyword)
        self.n = _given(n, 1, 20)
        self.m = _given(m, 1, 30)

    def __call__(self, value):
        sentences = split_into_sentences(value)
        if len(sentences) < self.n:
            return False
        words = word_tokenize(sentences[self.n - 1])
        return len(words) >= self.m and words[self.m - 1] == self.keyword


class StartEndChecker(Instruction):
    def __call__(self, value):
        words = word_tokenize(value)
        return len(words) >= 2 and words[0].lower() == words[-1].lower()
