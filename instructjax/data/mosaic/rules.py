"""Mosaic-IT tables and rules (seed 003, Table 8, Table 9; the counts and rules are the paper's facts).

Format tables: 10 serial-digit formats, 27 parsing brackets, 17 parsing text pairs. The paper's Table 8
prints only ten rows of each; the full lists follow the authors' released code, with two typos fixed
("BEGAIN" -> "BEGIN", the bracket "#text|#" -> "#text#", which is how Table 8 prints it).
Rules: 10 Permute rules and 5 Maskout rules (Table 9; its "REVERSE_CHAR_WORD" is the released code's
REVERSE_LENGTH_CHAR). Maskout rules that drop "the longest/shortest one or several" drop
max(1, floor(k * ratio)) tasks with ratio ~ U(0.1, 0.5), as the released code does.

The meta-instruction sentences are this project's own wording. Every rule here is a pure function of
the instruction texts, so a test can recompute it independently.
"""

from __future__ import annotations

from collections.abc import Sequence

# --- Format strategy (Table 8) -------------------------------------------------------------------

SERIAL_FORMATS: tuple[str, ...] = (
    "{i}", "({i})", "[{i}]", "<{i}>", "<<{i}>>", "### {i}", "## {i}", "##{i}##", "|{i}|", "||{i}||",
)
"""The 10 serial-digit formats; `{i}` is the 1-based task number."""

SERIAL_PUNCTUATION: tuple[str, ...] = ("", ".", ":")
"""What may follow the serial label (then a space or a newline)."""

PARSING_BRACKETS: tuple[tuple[str, str], ...] = (
    ("(", ")"), ("[", "]"), ("<", ">"), ("<<", ">>"), ("|", "|"), ("[|", "|]"), ("<|", "|>"),
    ("||", "||"), ("|-|", "|-|"), ("#", "#"), ("###", "#"), ("##", "#"), ("\\", "\\"), ("\\", "/"),
    ("/", "\\"), ("*", "*"), ("**", "**"), ("***", "***"), ("***", "*"), ("**", "*"), ('"', '"'),
    ("@", "@"), ("@@", "@@"), ("@@@", "@"), ("$", "$"), ("$$", "$$"), ("$$$", "$"),
)
"""The 27 parsing brackets as (left, right) around a parsing text: ("[", "]") gives "[START]"."""

PARSING_TEXTS: tuple[tuple[str, str], ...] = (
    ("BEGIN", "END"), ("START", "END"), ("RESPONSE", "END"), ("RESPONSE", "END OF RESPONSE"),
    ("OPEN", "CLOSE"), ("OPEN RESPONSE", "CLOSE"), ("INITIATE", "TERMINATE"), ("ENTRY", "EXIT"),
    ("LAUNCH", "CONCLUDE"), ("COMMENCE", "COMPLETE"), ("START POINT", "END POINT"),
    ("ORIGIN", "DESTINATION"), ("INTRODUCTION", "CONCLUSION"), ("KICKOFF", "WRAP UP"),
    ("RES_START", "RES_END"), ("RES_BEGIN", "RES_END"), ("RES", "/RES"),
)
"""The 17 parsing text pairs (opening, closing)."""

# --- Meta-instructions (our own wording) --------------------------------------------------------

FORMAT_TAGGED_PHRASES: tuple[str, ...] = (
    "Answer every task below. Begin each answer with the task's label, written like '{label}', "
    "and put the answer itself between {open} and {close}.",
    "Work through all of the following tasks. Each answer starts with its label in the form '{label}' "
    "and is enclosed by {open} before it and {close} after it.",
    "Reply to each numbered task. Label each reply the way the task is labelled ('{label}') and wrap "
    "the reply in {open} ... {close}.",
)
FORMAT_PLAIN_PHRASES: tuple[str, ...] = (
    "Answer every task below, starting each answer with the task's label, written like '{label}'.",
    "Reply to all of the following tasks; put the task's label (for example '{label}') before each reply.",
    "Handle each numbered task in turn and mark each answer with its label, as in '{label}'.",
)

PERMUTE_RULES: dict[str, tuple[str, ...]] = {
    "FIX": (
        "Give the answers in this order of task numbers: {order}.",
        "Answer the tasks following exactly this sequence of numbers: {order}.",
    ),
    "REVERSE": (
        "Give the answers in reverse: the last task first, the first task last.",
        "Answer from the bottom up, beginning with the final task.",
    ),
    "ALPHA": (
        "Order your answers alphabetically by the first letter of each task (A before Z, case ignored; "
        "tasks that start with the same letter keep their numbering order).",
        "Sort the answers by the first letter of each task, A to Z; equal first letters keep their numbering order.",
    ),
    "REVERSE_ALPHA": (
        "Order your answers reverse-alphabetically by the first letter of each task (Z before A, case ignored; "
        "tasks that start with the same letter keep their numbering order).",
        "Sort the answers by the first letter of each task, Z to A; equal first letters keep their numbering order.",
    ),
    "LENGTH_WORD": (
        "Answer the tasks from the fewest words to the most; equal lengths keep their numbering order.",
        "Start with the task that has the fewest words and finish with the wordiest one.",
    ),
    "REVERSE_LENGTH_WORD": (
        "Answer the tasks from the most words to the fewest; equal lengths keep their numbering order.",
        "Start with the wordiest task and finish with the one that has the fewest words.",
    ),
    "LENGTH_CHAR": (
        "Answer the tasks from the fewest characters to the most; equal lengths keep their numbering order.",
        "Begin with the task whose text is shortest in characters and end with the longest.",
    ),
    "REVERSE_LENGTH_CHAR": (
        "Answer the tasks from the most characters to the fewest; equal lengths keep their numbering order.",
        "Begin with the task whose text is longest in characters and end with the shortest.",
    ),
    "ODD_EVEN": (
        "Answer the odd-numbered tasks first, then the even-numbered ones, each group in numbering order.",
        "Go through tasks 1, 3, 5, ... first and only then 2, 4, 6, ...",
    ),
    "EVEN_ODD": (
        "Answer the even-numbered tasks first, then the odd-numbered ones, each group in numbering order.",
        "Go through tasks 2, 4, 6, ... first and only then 1, 3, 5, ...",
    ),
}
"""The 10 Permute rules (Table 9) -> our phrasings; `{order}` is the list of task numbers."""

MASKOUT_RULES: dict[str, tuple[str, ...]] = {
    "FIX": (
        "Skip these tasks entirely and do not answer them: {masked}.",
        "Leave out the tasks numbered {masked}; answer all the others.",
    ),
    "WORD_LONG": (
        "Do not answer the {n} task(s) with the most words (on equal counts, the lower number is skipped).",
        "Leave out the {n} longest task(s) by word count; answer the rest.",
    ),
    "WORD_SHORT": (
        "Do not answer the {n} task(s) with the fewest words (on equal counts, the lower number is skipped).",
        "Leave out the {n} shortest task(s) by word count; answer the rest.",
    ),
    "ODD": (
        "Answer only the even-numbered tasks; ignore the odd-numbered ones.",
        "Skip tasks 1, 3, 5, ... and answer the rest.",
    ),
    "EVEN": (
        "Answer only the odd-numbered tasks; ignore the even-numbered ones.",
        "Skip tasks 2, 4, 6, ... and answer the rest.",
    ),
}
"""The 5 Maskout rules (Table 9) -> our phrasings; `{masked}` lists numbers, `{n}` is how many."""

MASK_RATIO_RANGE: tuple[float, float] = (0.1, 0.5)
"""FIX/WORD_LONG/WORD_SHORT drop max(1, floor(k * ratio)) tasks, ratio ~ U(MASK_RATIO_RANGE)."""

LIST_SEPARATORS: tuple[str, ...] = (", ", " ", "; ", " -> ", " => ")
"""How a list of task numbers (FIX rules) is written in the meta-instruction."""


# --- Rule semantics: pure functions of the instruction texts -------------------------------------


def _stable_order(keys: Sequence, reverse: bool = False) -> list[int]:
    """Indices sorted by key; ties keep numbering order, also when reversed (Python's sort is stable)."""
    return sorted(range(len(keys)), key=lambda i: keys[i], reverse=reverse)


def first_letter(text: str) -> str:
    """The key of ALPHA / REVERSE_ALPHA: the task's first letter (its first alphabetic character), case
    ignored; "" for a task without letters, which sorts first under ALPHA and last under REVERSE_ALPHA."""
    return next((c for c in text if c.isalpha()), "").casefold()


def permute_order(rule: str, instructions: Sequence[str], fixed: Sequence[int] | None = None) -> list[int]:
    """0-based task indices in the order the response must follow under a Permute `rule`.

    `fixed` is the requested order for rule FIX. Word length is `len(text.split())`, character
    length `len(text)`; alphabetical order compares the first letter of each task, case ignored
    (`first_letter`: Table 9 says "the first letter of tasks", not the whole text); ties keep numbering order.
    """
    k = len(instructions)
    if rule == "FIX":
        if fixed is None or sorted(fixed) != list(range(k)):
            raise ValueError(f"FIX needs a permutation of range({k}), got {fixed!r}")
        return list(fixed)
    if rule == "REVERSE":
        return list(range(k))[::-1]
    if rule in ("ALPHA", "REVERSE_ALPHA"):
        return _stable_order([first_letter(t) for t in instructions], reverse=rule == "REVERSE_ALPHA")
    if rule in ("LENGTH_WORD", "REVERSE_LENGTH_WORD"):
        return _stable_order([len(t.split()) for t in instructions], reverse=rule.startswith("REVERSE"))
    if rule in ("LENGTH_CHAR", "REVERSE_LENGTH_CHAR"):
        return _stable_order([len(t) for t in instructions], reverse=rule.startswith("REVERSE"))
    odd, even = list(range(0, k, 2)), list(range(1, k, 2))  # 1-based odd numbers are 0-based even
    if rule == "ODD_EVEN":
        return odd + even
    if rule == "EVEN_ODD":
        return even + odd
    raise ValueError(f"unknown Permute rule {rule!r}")


def mask_count(k: int, ratio: float) -> int:
    """How many tasks FIX/WORD_LONG/WORD_SHORT drop out of `k`: max(1, floor(k * ratio))."""
    return max(1, int(k * ratio))


def maskout_indices(
    rule: str, instructions: Sequence[str], n_masked: int = 1, fixed: Sequence[int] | None = None
) -> list[int]:
    """Sorted 0-based indices of the tasks a Maskout `rule` says to ignore (needs k >= 2).

    FIX masks the 0-based indices `fixed`; WORD_LONG/WORD_SHORT mask `n_masked` tasks by word count,
    ties going to the lower number; ODD/EVEN mask the odd/even 1-based numbers.
    """
    k = len(instructions)
    if rule == "FIX":
        masked = list(fixed or [])
    elif rule in ("WORD_LONG", "WORD_SHORT"):
        words = [len(t.split()) for t in instructions]
        masked = _stable_order(words, reverse=rule == "WORD_LONG")[:n_masked]
    elif rule == "ODD":
        masked = list(range(0, k, 2))
    elif rule == "EVEN":
        masked = list(range(1, k, 2))
    else:
        raise ValueError(f"unknown Maskout rule {rule!r}")
    return sorted(masked)
