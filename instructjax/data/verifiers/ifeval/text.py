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


"""IFEvalG's text helpers: its regex sentence splitter, its `\\w+` word count, and nltk's word and Punkt sentence
tokenizers. From Google's IFEval (`instructions_util.py`, Apache-2.0) as open-instruct's IFEvalG carries it.

The nltk ones need the `punkt_tab` English model (nltk 3.10's; IFEvalG names the older pickled `punkt`, which nltk
3.10 no longer loads). Nothing is downloaded: a missing model stops with one line (`NltkDataMissing`) saying how to
install it, raised only by the checks that tokenize with nltk.
"""

from __future__ import annotations

import functools
import re

from instructjax.core.errors import NltkDataMissing

PUNKT = "tokenizers/punkt_tab/english/"


@functools.cache
def _punkt():
    try:
        import nltk
    except ImportError:
        raise NltkDataMissing("the ifeval verifier's word and sentence checks need nltk, which is not installed: "
                              "`pip install 'nltk>=3.9'`, then `python -m nltk.downloader punkt_tab`") from None
    try:
        nltk.data.find(PUNKT)
    except LookupError:
        raise NltkDataMissing(f"the ifeval verifier needs nltk data that is not installed: punkt_tab "
                              f"({PUNKT.rstrip('/')}); get it with `python -m nltk.downloader punkt_tab` or point "
                              "NLTK_DATA at a folder that holds it") from None
    return nltk.tokenize.PunktTokenizer("english")


def count_sentences(text: str) -> int:
    """Sentences by nltk's English Punkt model."""
    return len(_punkt().tokenize(text))


def word_tokenize(text: str) -> list[str]:
    """`nltk.word_tokenize` (Punkt sentences, then Treebank words)."""
    import nltk

    _punkt()
    return nltk.word_tokenize(text)


def count_words(text: str) -> int:
    """Runs of `\\w` characters (nltk's `RegexpTokenizer(r"\\w+")`)."""
    return len(re.findall(r"\w+", text))


_ALPHABETS = "([A-Za-z])"
_PREFIXES = "(Mr|St|Mrs|Ms|Dr)[.]"
_SUFFIXES = "(Inc|Ltd|Jr|Sr|Co)"
_STARTERS = (r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s|However\s|That\s|"
             r"This\s|Wherever)")
_ACRONYMS = "([A-Z][.][A-Z][.](?:[A-Z][.])?)"
_WEBSITES = "[.](com|net|org|io|gov|edu|me)"
_DIGITS = "([0-9])"


def split_into_sentences(text: str) -> list[str]:
    """IFEval's regex splitter: sentences end at `.`, `?` or `!` except in titles (Mr.), web suffixes, decimals,
    initials and acronyms; a final empty piece dropped."""
    text = (" " + text + "  ").replace("\n", " ")
    text = re.sub(_PREFIXES, "\\1<prd>", text)
    text = re.sub(_WEBSITES, "<prd>\\1", text)
    text = re.sub(_DIGITS + "[.]" + _DIGITS, "\\1<prd>\\2", text)
    text = re.sub(r"\.{2,}", lambda match: "<prd>" * len(match.group(0)) + "<stop>", text)
    text = text.replace("Ph.D.", "Ph<prd>D<prd>")
    text = re.sub(r"\s" + _ALPHABETS + "[.] ", " \\1<prd> ", text)
    text = re.sub(_ACRONYMS + " " + _STARTERS, "\\1<stop> \\2", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>\\3<prd>", text)
    text = re.sub(_ALPHABETS + "[.]" + _ALPHABETS + "[.]", "\\1<prd>\\2<prd>", text)
    text = re.sub(" " + _SUFFIXES + "[.] " + _STARTERS, " \\1<stop> \\2", text)
    text = re.sub(" " + _SUFFIXES + "[.]", " \\1<prd>", text)
    text = re.sub(" " + _ALPHABETS + "[.]", " \\1<prd>", text)
    text = text.replace(".\u201d", "\u201d.").replace('."', '".').replace('!"', '"!').replace('?"', '"?')
    text = text.replace(".", ".<stop>").replace("?", "?<stop>").replace("!", "!<stop>").replace("<prd>", ".")
    sentences = [s.strip() for s in text.split("<stop>")]
    return sentences[:-1] if sentences and not sentences[-1] else sentences
