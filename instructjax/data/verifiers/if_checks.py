# Derived from open-instruct (https://github.com/allenai/open-instruct), Copyright 2024 AllenAI, Apache-2.0.
# Modified for instructjax. See NOTICE.

"""The 25 IFEval constraint checks of Tulu 3's RLVR-IFeval rows (open-instruct's `if_functions`, the `ifeval_old`
verifier): each `(text, **arguments) -> bool`, its arguments named as the rows' ground truth names them (`N`,
`quantifier`, `keyword_list`, ...), `CHECKS` by the rows' `func_name`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable


def _quantified(actual: int, N: int, quantifier: str, around: int) -> bool:
    if quantifier == "at least":
        return actual >= N
    if quantifier == "at most":
        return actual <= N
    if quantifier == "around":
        return abs(actual - N) <= around
    return False


def verify_keywords(text, keyword_list):
    return all(k.lower() in text.lower() for k in keyword_list)


def verify_keyword_frequency(text, word, N):
    return sum(1 for w in re.findall(r"\b\w+\b", text.lower()) if w == word.lower()) == N


def validate_forbidden_words(text, forbidden_words):
    return not any(w.lower() in text.lower() for w in forbidden_words)


def verify_letter_frequency(text: str, letter: str, N: int) -> bool:
    if len(letter) != 1:
        raise ValueError("Letter parameter must be a single character")
    return text.count(letter) == N


def validate_response_language(text, language):
    import langdetect

    return langdetect.detect(text) == language


def verify_paragraph_count(text: str, N: int) -> bool:
    paragraphs = "\n".join(line.strip() for line in text.splitlines()).strip().split("* * *")
    return all(p.strip() for p in paragraphs) and len(paragraphs) == N


def validate_word_constraint(text: str, N: int, quantifier: str) -> bool:
    return _quantified(len(text.strip().split()), N, quantifier, max(round(N * 0.1), 1))


def verify_sentence_constraint(text: str, N: int, quantifier: str) -> bool:
    sentences = re.split(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?|!)\s", text)
    return _quantified(len(sentences), N, quantifier, 1)


def validate_paragraphs(text, N, first_word, i):
    paragraphs = text.split("\n\n")
    return len(paragraphs) == N and paragraphs[i - 1].strip().startswith(first_word)


def verify_postscript(text, postscript_marker):
    if postscript_marker not in text:
        return False
    return len(text[text.find(postscript_marker):].strip()) > len(postscript_marker)


def validate_placeholders(text: str, N: int) -> bool:
    return len(re.findall(r"\[(.*?)\]", text)) >= N


def verify_bullet_points(text: str, N: int) -> bool:
    return sum(1 for line in text.split("\n") if line.strip().startswith(("*", "-"))) == N


def validate_title(text: str) -> bool:
    return bool(re.findall(r"<<(.*?)>>", text))


def validate_choice(text: str, options: list) -> bool:
    return any(option in text for option in options)


def validate_highlighted_sections(text: str, N: int) -> bool:
    return len(re.findall(r"\*(.*?)\*", text)) >= N


def validate_sections(text: str, N: int, section_splitter: str) -> bool:
    sections = text.split(section_splitter)
    return len(sections) - (sections[0] == "") == N


def validate_json_format(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def validate_repeat_prompt(text: str, original_prompt: str) -> bool:
    return text.startswith(original_prompt)


def validate_two_responses(text: str) -> bool:
    if text.count("******") != 1:
        return False
    first, second = text.split("******")
    return first.strip() != second.strip()


def validate_uppercase(text: str) -> bool:
    return text == text.upper()


def validate_lowercase(text: str) -> bool:
    return text == text.lower()


def validate_frequency_capital_words(text: str, N: int, quantifier: str) -> bool:
    return _quantified(len(re.findall(r"\b[A-Z]+\b", text)), N, quantifier, max(round(N * 0.1), 1))


def validate_end(text: str, end_phrase: str) -> bool:
    return text.endswith(end_phrase)


def validate_quotation(text: str) -> bool:
    return text.startswith('"') and text.endswith('"')


def validate_no_commas(text: str) -> bool:
    return "," not in text


CHECKS: dict[str, Callable[..., bool]] = {f.__name__: f for f in [
    verify_keywords, verify_keyword_frequency, validate_forbidden_words, verify_letter_frequency,
    validate_response_language, verify_paragraph_count, validate_word_constraint, verify_sentence_constraint,
    validate_paragraphs, verify_postscript, validate_placeholders, verify_bullet_points, validate_title,
    validate_choice, validate_highlighted_sections, validate_sections, validate_json_format, validate_repeat_prompt,
    validate_two_responses, validate_uppercase, validate_lowercase, validate_frequency_capital_words, validate_end,
    validate_quotation, validate_no_commas]}
