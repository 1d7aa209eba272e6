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

"""IFEvalG's instructions (open-instruct's `IFEvalG/instructions.py`, from Google's IFEval, both Apache-2.0): each a
class built from a ground truth's kwargs (IFEvalG's `build_description`) and called on a response
(`check_following`), `INSTRUCTIONS` by IFEvalG's instruction id (its `INSTRUCTION_DICT`). The shared
`Instruction` and kwarg draws are in `base`, IFEval's own instructions in `original`, IFEvalG's new ones in
`extended`.

A kwarg left out is drawn as IFEvalG draws it, with the same calls on Python's global `random` in the same order
(seeded alike, both draw alike), so a row that leaves one out scores at random as it does in open-instruct. The
instance's attributes are IFEvalG's `get_instruction_args()`. Where IFEvalG fails (a relation it does not know,
`prompt_to_repeat` or `instruction` missing, a language code it does not list, a keyword that is no regex), ours
raises ValueError/TypeError/KeyError/re.error too; the verifier turns that into one DataError line.
"""

from __future__ import annotations

from instructjax.data.verifiers.ifeval.base import (
    CONSTRAINED_RESPONSES,
    ENDINGS,
    PHRASES,
    RELATIONS,
    Instruction,
)
from instructjax.data.verifiers.ifeval.extended import (
    AdjacentLetterChecker,
    BiGramWrappingChecker,
    CopyChecker,
    CopyingMultipleChecker,
    CopyingSimpleChecker,
    CopySpanIdxChecker,
    CountIncrementWordChecker,
    CountingCompositionChecker,
    CountUniqueChecker,
    ExcludeWordHarderChecker,
    FirstWordAnswerChecker,
    FirstWordSentChecker,
    KeywordFrequencyCheckerDifferent,
    KeywordFrequencyOnceChecker,
    KeywordSpecificPositionChecker,
    LastWordAnswerChecker,
    LastWordSentChecker,
    LetterCountingChecker,
    LowercaseCountingChecker,
    PalindromeBasicChecker,
    ParagraphBasicChecker,
    ParagraphBasicChecker2,
    PunctuationDotChecker,
    PunctuationExclamationChecker,
    RepeatPhraseChecker,
    SentenceHyphenChecker,
    SquareBracketChecker,
    StartEndChecker,
)
from instructjax.data.verifiers.ifeval.original import (
    BulletListChecker,
    CapitalLettersEnglishChecker,
    CapitalWordFrequencyChecker,
    CommaChecker,
    ConstrainedResponseChecker,
    EndChecker,
    ForbiddenWords,
    HighlightSectionChecker,
    JsonFormat,
    KeywordChecker,
    KeywordFrequencyChecker,
    LetterFrequencyChecker,
    LowercaseLettersEnglishChecker,
    NumberOfSentences,
    NumberOfWords,
    ParagraphChecker,
    ParagraphFirstWordCheck,
    PlaceholderChecker,
    PostscriptChecker,
    QuotationChecker,
    RepeatPromptThenAnswer,
    ResponseLanguageChecker,
    SectionChecker,
    TitleChecker,
    TwoResponsesChecker,
)

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

__all__ = ["CONSTRAINED_RESPONSES", "ENDINGS", "INSTRUCTIONS", "PHRASES", "RELATIONS", "Instruction", "AdjacentLetterChecker", "BiGramWrappingChecker", "BulletListChecker", "CapitalLettersEnglishChecker", "CapitalWordFrequencyChecker", "CommaChecker", "ConstrainedResponseChecker", "CopyChecker", "CopySpanIdxChecker", "CopyingMultipleChecker", "CopyingSimpleChecker", "CountIncrementWordChecker", "CountUniqueChecker", "CountingCompositionChecker", "EndChecker", "ExcludeWordHarderChecker", "FirstWordAnswerChecker", "FirstWordSentChecker", "ForbiddenWords", "HighlightSectionChecker", "JsonFormat", "KeywordChecker", "KeywordFrequencyChecker", "KeywordFrequencyCheckerDifferent", "KeywordFrequencyOnceChecker", "KeywordSpecificPositionChecker", "LastWordAnswerChecker", "LastWordSentChecker", "LetterCountingChecker", "LetterFrequencyChecker", "LowercaseCountingChecker", "LowercaseLettersEnglishChecker", "NumberOfSentences", "NumberOfWords", "PalindromeBasicChecker", "ParagraphBasicChecker", "ParagraphBasicChecker2", "ParagraphChecker", "ParagraphFirstWordCheck", "PlaceholderChecker", "PostscriptChecker", "PunctuationDotChecker", "PunctuationExclamationChecker", "QuotationChecker", "RepeatPhraseChecker", "RepeatPromptThenAnswer", "ResponseLanguageChecker", "SectionChecker", "SentenceHyphenChecker", "SquareBracketChecker", "StartEndChecker", "TitleChecker", "TwoResponsesChecker"]
