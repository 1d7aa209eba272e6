# Derived from open-instruct (https://github.com/allenai/open-instruct), Copyright 2024 AllenAI, Apache-2.0;
# Derived from lm-evaluation-harness (https://github.com/EleutherAI/lm-evaluation-harness), Copyright (c) 2020 EleutherAI, MIT.
# Modified for instructjax. See NOTICE.

"""MATH answers: extraction (a `\\boxed{}` answer, Minerva's "Final Answer: The final answer is X. I hope it is
correct.") and equivalence (sympy on the parsed LaTeX, or Hendrycks' string normalisation), with the semantics of
open-instruct's `math_utils` (itself lm-evaluation-harness's minerva_math utils and Lewkowycz et al. 2022,
appendix D). Pure Python; sympy's `parse_latex` needs antlr4-python3-runtime 4.11."""

from __future__ import annotations

import logging
import re
import signal
import threading

log = logging.getLogger(__name__)

INVALID = "[invalidanswer]"


def last_boxed(text: str) -> str | None:
    """The last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed x` up to a `$`) of `text`, braces balanced."""
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start : i + 1]
    return None


def unbox(boxed: str) -> str | None:
    """The content of a `\\boxed{...}` / `\\boxed x` string; None when it is not one (a `\\fbox`)."""
    if "\\boxed " in boxed:
        return boxed[len("\\boxed "):] if boxed.startswith("\\boxed ") else None
    if boxed.startswith("\\boxed{") and boxed.endswith("}"):
        return boxed[len("\\boxed{"):-1]
    return None


def minerva_answer(text: str) -> str:
    """X of "Final Answer: The final answer is X. I hope it is correct." (`INVALID` when absent)."""
    found = re.search(r"Final Answer: The final answer is(.*?). I hope it is correct.",
                      text + "I hope it is correct.")
    return found.group(1).strip() if found else INVALID


_SUBSTITUTIONS = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), (r"\ ", ""), (" ", ""), ("mbox", "text"),
                  (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}")]
_REMOVED = ["square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots", "sue",
            "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals",
            "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}",
            "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;",
            r",\!", "{,}", '"', "\\dots"]


def normalize_final(answer: str) -> str:
    """Lewkowycz et al. (2022) appendix D's normalisation of a final answer."""
    answer = answer.split("=")[-1]
    for before, after in _SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expr in _REMOVED:
        answer = answer.replace(expr, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    for command in ("text", "textbf", "overline"):
        answer = re.sub(rf"(\\{command}\{{)(.*?)(\}})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer


class _Deadline:
    """SIGALRM after `seconds` (on the main thread; elsewhere no limit, as signals only reach the main thread)."""

    def __init__(self, seconds: int):
        self.seconds = seconds
        self.armed = threading.current_thread() is threading.main_thread()

    def _fire(self, signum, frame):
        raise TimeoutError("timeout")

    def __enter__(self):
        if self.armed:
            self.previous = signal.signal(signal.SIGALRM, self._fire)
            signal.alarm(self.seconds)

    def __exit__(self, *exc):
        if self.armed:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, self.previous)


def sympy_equal(a: str, b: str) -> bool:
    """Whether the LaTeX `a` - `b` simplifies to 0 (False when either does not parse, or after 5 s)."""
    import sympy
    from sympy.parsing.latex import parse_latex

    try:
        with _Deadline(5):
            try:
                x, y = parse_latex(a), parse_latex(b)
            except (sympy.parsing.latex.errors.LaTeXParsingError, sympy.SympifyError, TypeError):
                return False
            try:
                diff = x - y
            except TypeError:
                return False
            try:
                return sympy.simplify(diff) == 0
            except ValueError:
                return False
    except TimeoutError:
        return False
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001  whatever sympy raises on a strange expression: not equal
        log.debug("comparing %r and %r: %s", a, b, e)
        return False


def _fix_fracs(s: str) -> str:
    head, *rest = s.split("\\frac")
    out = head
    for sub in rest:
        out += "\\frac"
        if sub[0] == "{":  # an empty part raises, as Hendrycks' (the caller then compares the raw strings)
            out += sub
            continue
        if len(sub) < 2:
            return s
        a, b, tail = sub[0], sub[1], sub[2:]
        out += ("{" + a + "}{" + b + "}" if b != "{" else "{" + a + "}" + b) + tail
    return out


def _fix_a_slash_b(s: str) -> str:
    parts = s.split("/")
    if len(parts) != 2:
        return s
    a, b = int(parts[0]), int(parts[1])  # a ValueError propagates (strip_string's caller compares raw strings)
    return "\\frac{" + str(a) + "}{" + str(b) + "}" if s == f"{a}/{b}" else s


def _remove_right_units(s: str) -> str:
    if "\\text{ " in s:
        splits = s.split("\\text{ ")
        if len(splits) != 2:
            raise ValueError("more than one unit")
        return splits[0]
    return s


def _fix_sqrt(s: str) -> str:
    if "\\sqrt" not in s:
        return s
    head, *rest = s.split("\\sqrt")
    return head + "".join("\\sqrt" + part if part[0] == "{" else "\\sqrt{" + part[0] + "}" + part[1:]
                          for part in rest)


def strip_string(s: str) -> str:
    """Hendrycks' MATH normalisation of an answer string."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    s = _remove_right_units(s).replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if len(s.split("=")) == 2 and len(s.split("=")[0]) <= 2:
        s = s.split("=")[1]
    s = _fix_fracs(_fix_sqrt(s).replace(" ", ""))
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


def hendrycks_equal(a: str | None, b: str | None) -> bool:
    """Whether `a` and `b` are the same once `strip_string`-normalised (compared raw when that fails)."""
    if a is None and b is None:
        return True
    if a is None or b is None:
        return False
    try:
        return strip_string(a) == strip_string(b)
    except Exception:  # noqa: BLE001  as Hendrycks: a string the normalisation trips on is compared as it is
        return a == b
