"""IFEvalG's instructions (open-instruct's `IFEvalG/instructions.py`, from Google's IFEval, both Apache-2.0): each a
class built from a ground truth's kwargs (IFEvalG's `build_description`) and called on a response
(`check_following`), `INSTRUCTIONS` by IFEvalG's instruction id (its `INSTRUCTION_DICT`).

A kwarg left out is drawn as IFEvalG draws it, with the same calls on Python's global `random` in the same order
(seeded alike, both draw alike), so a row that leaves one out scores at random as it does in open-instruct. The
instance's attributes are IFEvalG's `get_instruction_args()`. Where IFEvalG fails (a relation it does not know,
`prompt_to_repeat` or `instruction` missing, a language code it does not list, a keyword that is no regex), ours
raises ValueError/TypeError/KeyError/re.error too; the verifier turns that into one DataError line.
"""

from __future__ import annotations

import json
import random
import re
import string
from collections import Counter

from instructjax.data.verifiers.ifeval.text import (
    count_sentences,
    count_words,
    split_into_sentences,
    word_tokenize,
)
from instructjax.data.verifiers.ifeval.words import LANGUAGE_CODES, WORD_LIST

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


class KeywordFrequencyCheckerDifferent(KeywordFrequencyChecker):
    """The same check as `keywords:frequency` (IFEvalG words its description without the relation)."""


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


INSTRUCTIONS: dict[str, type[Instruction]] = {
    "keywords:existence": KeywordChecker,
    "keywords:frequency": KeywordFrequencyChecker,
    "keywords:forbidden_words": ForbiddenWords,
    "keywords:letter_frequency": LetterFrequencyChecker,
    "language:response_language": ResponseLanguageChecker,
    "length_constraints:number_sentences": NumberOfSentences,
    "length_constraints:number_paragraphs": ParagraphChecker,
    "length_constraints:number_words": NumberOfWords,
    "length_constraints:nth_paragraph_first_word": ParagraphFirstWordCheck,
    "detectable_content:number_placeholders": PlaceholderChecker,
    "detectable_content:postscript": PostscriptChecker,
    "detectable_format:number_bullet_lists": BulletListChecker,
    "detectable_format:constrained_response": ConstrainedResponseChecker,
    "detectable_format:number_highlighted_sections": HighlightSectionChecker,
    "detectable_format:multiple_sections": SectionChecker,
    "detectable_format:json_format": JsonFormat,
    "detectable_format:title": TitleChecker,
    "combination:two_responses": TwoResponsesChecker,
    "combination:repeat_prompt": RepeatPromptThenAnswer,
    "startend:end_checker": EndChecker,
    "change_case:capital_word_frequency": CapitalWordFrequencyChecker,
    "change_case:english_capital": CapitalLettersEnglishChecker,
    "change_case:english_lowercase": LowercaseLettersEnglishChecker,
    "punctuation:no_comma": CommaChecker,
    "startend:quotation": QuotationChecker,
    "copy:repeat_phrase": RepeatPhraseChecker,
    "copy:copy": CopyChecker,
    "new:copy_span_idx": CopySpanIdxChecker,
    "detectable_format:sentence_hyphens": SentenceHyphenChecker,
    "keywords:no_adjacent_consecutive": AdjacentLetterChecker,
    "detectable_format:square_brackets": SquareBracketChecker,
    "keywords:word_once": KeywordFrequencyOnceChecker,
    "keywords:word_count_different_numbers": KeywordFrequencyCheckerDifferent,
    "keywords:exclude_word_harder": ExcludeWordHarderChecker,
    "paragraphs:paragraphs": ParagraphBasicChecker,
    "paragraphs:paragraphs2": ParagraphBasicChecker2,
    "first_word:first_word_sent": FirstWordSentChecker,
    "first_word:first_word_answer": FirstWordAnswerChecker,
    "last_word:last_word_sent": LastWordSentChecker,
    "last_word:last_word_answer": LastWordAnswerChecker,
    "detectable_format:bigram_wrapping": BiGramWrappingChecker,
    "copy:copying_simple": CopyingSimpleChecker,
    "copy:copying_multiple": CopyingMultipleChecker,
    "punctuation:punctuation_dot": PunctuationDotChecker,
    "punctuation:punctuation_exclamation": PunctuationExclamationChecker,
    "count:lowercase_counting": LowercaseCountingChecker,
    "letters:letter_counting": LetterCountingChecker,
    "letters:letter_counting2": LetterFrequencyChecker,
    "count:counting_composition": CountingCompositionChecker,
    "count:count_unique": CountUniqueChecker,
    "count:count_increment_word": CountIncrementWordChecker,
    "keywords:palindrome": PalindromeBasicChecker,
    "keywords:keyword_specific_position": KeywordSpecificPositionChecker,
    "keywords:start_end": StartEndChecker,
}
