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

"""Google IFEval's 25 original instructions (`keywords:existence` ... `startend:quotation`), as IFEvalG has them.
`_detect` (langdetect) is theirs too."""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter

from instructjax.data.verifiers.ifeval.base import (
    _DIVIDER,
    CONSTRAINED_RESPONSES,
    ENDINGS,
    RELATIONS,
    Instruction,
    _compare,
    _count,
    _keywords,
    _paragraphs,
    _relation,
    _required,
    _stripped,
)
from instructjax.data.verifiers.ifeval.text import (
    count_sentences,
    count_words,
    word_tokenize,
)
from instructjax.data.verifiers.ifeval.words import LANGUAGE_CODES


class ResponseLanguageChecker(Instruction):
    def __init__(self, *, language=None):
        self.language = random.choice(list(LANGUAGE_CODES)) if language is None else language
        if self.language not in LANGUAGE_CODES:
            raise KeyError(f"language {self.language!r} is none of IFEvalG's ({', '.join(LANGUAGE_CODES)})")

    def __call__(self, value):
        return _detect(value, lambda found: found == self.language)


def _detect(value: str, accept) -> bool:
    """`accept(langdetect's language)`; True when langdetect finds none (IFEval counts that as followed)."""
    import langdetect

    try:
        return accept(langdetect.detect(value))
    except langdetect.LangDetectException:
        return True


class NumberOfSentences(Instruction):
    def __init__(self, *, num_sentences=None, relation=None):
        self.num_sentences = _count(num_sentences, 1, 20)
        self.relation = _relation(relation)

    def __call__(self, value):
        return _compare(count_sentences(value), self.relation, self.num_sentences)


class PlaceholderChecker(Instruction):
    def __init__(self, *, num_placeholders=None):
        self.num_placeholders = _count(num_placeholders, 1, 4)

    def __call__(self, value):
        return len(re.findall(r"\[.*?\]", value)) >= self.num_placeholders


class BulletListChecker(Instruction):
    def __init__(self, *, num_bullets=None):
        self.num_bullets = _count(num_bullets, 1, 5)

    def __call__(self, value):
        stars = re.findall(r"^\s*\*[^\*].*$", value, flags=re.MULTILINE)
        dashes = re.findall(r"^\s*-.*$", value, flags=re.MULTILINE)
        return len(stars) + len(dashes) == self.num_bullets


class ConstrainedResponseChecker(Instruction):
    def __call__(self, value):
        return any(option in value.strip() for option in CONSTRAINED_RESPONSES)


class HighlightSectionChecker(Instruction):
    def __init__(self, *, num_highlights=None):
        self.num_highlights = _count(num_highlights, 1, 4)

    def __call__(self, value):
        single = sum(1 for h in re.findall(r"\*[^\n\*]*\*", value) if h.strip("*").strip())
        double = sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", value) if h.removeprefix("**").removesuffix("**").strip())
        return single + double >= self.num_highlights


class SectionChecker(Instruction):
    def __init__(self, *, section_spliter=None, num_sections=None):
        self.section_spliter = _stripped(section_spliter)
        if self.section_spliter is None:
            self.section_spliter = random.choice(("Section", "SECTION"))
        self.num_sections = _count(num_sections, 1, 5)

    def __call__(self, value):
        return len(re.split(r"\s?" + self.section_spliter + r"\s?\d+\s?", value)) - 1 >= self.num_sections


class ParagraphChecker(Instruction):
    def __init__(self, *, num_paragraphs=None):
        self.num_paragraphs = _count(num_paragraphs, 1, 5)

    def __call__(self, value):
        return _paragraphs(re.split(_DIVIDER, value)) == self.num_paragraphs


class PostscriptChecker(Instruction):
    def __init__(self, *, postscript_marker=None):
        self.postscript_marker = _stripped(postscript_marker)
        if self.postscript_marker is None:
            self.postscript_marker = random.choice(("P.S.", "P.P.S"))

    def __call__(self, value):
        pattern = {"P.P.S": r"\s*p\.\s?p\.\s?s.*$", "P.S.": r"\s*p\.\s?s\..*$"}.get(
            self.postscript_marker, r"\s*" + self.postscript_marker.lower() + r".*$")
        return bool(re.findall(pattern, value.lower(), flags=re.MULTILINE))


class KeywordChecker(Instruction):
    def __init__(self, *, keywords=None):
        self.keywords = sorted(keywords if keywords else _keywords(2))

    def __call__(self, value):
        return all(re.search(keyword, value, flags=re.IGNORECASE) for keyword in self.keywords)


class KeywordFrequencyChecker(Instruction):
    def __init__(self, *, keyword=None, frequency=None, relation=None):
        self.keyword = keyword.strip() if keyword else _keywords(1)[0]
        self.frequency = _count(frequency, 1, 3)
        self.relation = _relation(relation)

    def __call__(self, value):
        return _compare(len(re.findall(self.keyword, value, flags=re.IGNORECASE)), self.relation, self.frequency)


class NumberOfWords(Instruction):
    def __init__(self, *, num_words=None, relation=None):
        self.num_words = _count(num_words, 100, 500)
        self.relation = _relation(relation)

    def __call__(self, value):
        return _compare(count_words(value), self.relation, self.num_words)


class JsonFormat(Instruction):
    def __call__(self, value):
        value = value.strip()
        for prefix in ("```json", "```Json", "```JSON", "```"):
            value = value.removeprefix(prefix)
        try:
            json.loads(value.removesuffix("```").strip())
        except ValueError:
            return False
        return True


class ParagraphFirstWordCheck(Instruction):
    def __init__(self, num_paragraphs=None, nth_paragraph=None, first_word=None):
        self.num_paragraphs = _count(num_paragraphs, 1, 5)
        self.nth_paragraph = nth_paragraph
        if nth_paragraph is None or nth_paragraph <= 0 or nth_paragraph > self.num_paragraphs:
            self.nth_paragraph = random.randint(1, self.num_paragraphs + 1)
        self.first_word = (_keywords(1)[0] if first_word is None else first_word).lower()

    def __call__(self, value):
        paragraphs = re.split(r"\n\n", value)
        count = len(paragraphs) - sum(1 for p in paragraphs if not p.strip())
        if self.nth_paragraph > count:
            return False
        paragraph = paragraphs[self.nth_paragraph - 1].strip()
        if not paragraph:
            return False
        word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
        first_word = ""
        for letter in word:
            if letter in {".", ",", "?", "!", "'", '"'}:
                break
            first_word += letter.lower()
        return count == self.num_paragraphs and first_word == self.first_word


class ForbiddenWords(Instruction):
    def __init__(self, forbidden_words=None):
        self.forbidden_words = sorted(list(set(forbidden_words)) if forbidden_words else _keywords(2))

    def __call__(self, value):
        return not any(re.search(r"\b" + word + r"\b", value, flags=re.IGNORECASE) for word in self.forbidden_words)


class TwoResponsesChecker(Instruction):
    def __call__(self, value):
        responses = value.split("******")
        kept = []
        for index, response in enumerate(responses):
            if response.strip():
                kept.append(response)
            elif index not in (0, len(responses) - 1):
                return False
        return len(kept) == 2 and kept[0].strip() != kept[1].strip()


class RepeatPromptThenAnswer(Instruction):
    def __init__(self, *, prompt_to_repeat=None):
        self.prompt_to_repeat = _required(prompt_to_repeat)

    def __call__(self, value):
        return value.strip().lower().startswith(self.prompt_to_repeat.strip().lower())


class EndChecker(Instruction):
    def __init__(self, *, end_phrase=None):
        self.end_phrase = _stripped(end_phrase)
        if self.end_phrase is None:
            self.end_phrase = random.choice(ENDINGS)

    def __call__(self, value):
        return value.strip().strip('"').lower().endswith(self.end_phrase.strip().lower())


class TitleChecker(Instruction):
    def __call__(self, value):
        return any(title.lstrip("<").rstrip(">").strip() for title in re.findall(r"<<[^\n]+>>", value))


class LetterFrequencyChecker(Instruction):
    def __init__(self, *, letter=None, let_frequency=None, let_relation=None):
        if not letter or len(letter) > 1 or not 97 <= ord(letter.lower()) <= 122:
            letter = random.choice(list(string.ascii_letters))
        self.letter = letter.strip().lower()
        self.let_frequency = _count(let_frequency, 1, 10)
        self.let_relation = _relation(let_relation)

    def __call__(self, value):
        count = Counter(value.lower())[self.letter]
        return count < self.let_frequency if self.let_relation == RELATIONS[0] else count >= self.let_frequency


class CapitalLettersEnglishChecker(Instruction):
    def __call__(self, value):
        return value.isupper() and _detect(value, lambda found: found == "en")


class LowercaseLettersEnglishChecker(Instruction):
    def __call__(self, value):
        return value.islower() and _detect(value, lambda found: found == "en")


class CommaChecker(Instruction):
    def __call__(self, value):
        return "," not in value


class CapitalWordFrequencyChecker(Instruction):
    def __init__(self, capital_frequency=None, capital_relation=None):
        self.capital_frequency = random.randint(1, 20) if capital_frequency is None else capital_frequency
        self.capital_relation = _relation(capital_relation)

    def __call__(self, value):
        count = sum(1 for word in word_tokenize(value) if word.isupper())
        return count < self.capital_frequency if self.capital_relation == RELATIONS[0] else count >= self.capital_frequency


class QuotationChecker(Instruction):
    def __call__(self, value):
        value = value.strip()
        return len(value) > 1 and value[0] == '"' and value[-1] == '"'
