"""The verifiers (issue 69, item 2) against open-instruct's, pinned in tests/assets/open_instruct (README.md there):

- the cases of open-instruct's own tests (test_ground_truth_utils.py, test_math_utils.py, test_if_functions.py), read
  at test time from their `parameterized.expand` lists with `ast`, each given the score its test expects;
- THEIR verifiers (ground_truth_utils.py, math_utils.py, if_functions.py, run from the pinned copy with the
  open_instruct modules they import but do not use here stubbed) on those cases and on a few hundred generated
  predictions and ground truths, our score equal to theirs;
- a user's own verifier registered through `--import`, and an unknown name refused in one line.
"""

from __future__ import annotations

import ast
import json
import random
import sys
import types

import pytest
from helpers.open_instruct_pinned import PINNED, pinned_open_instruct

from instructjax.core.errors import ConfigError
from instructjax.data.verifiers import (
    get_verifier,
    if_checks,
    math_answers,
    register_verifier,
    verifier_names,
    verify,
)


def expanded_cases(filename: str) -> dict[str, list[tuple]]:
    """"Class.method" -> the cases of its `@parameterized.expand([...])` in the pinned test file (their literal lists;
    `2 / 3` and the like evaluated with no names in scope)."""
    tree = ast.parse((PINNED / filename).read_text())
    out = {}
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef)):
            for deco in fn.decorator_list:
                if isinstance(deco, ast.Call) and ast.unparse(deco.func).endswith("expand"):
                    code = compile(ast.Expression(deco.args[0]), filename, "eval")
                    out[f"{cls.name}.{fn.name}"] = [tuple(c) for c in eval(code, {"__builtins__": {}})]  # noqa: S307
    return out


@pytest.fixture(scope="module")
def theirs():
    """open-instruct's ground_truth_utils, math_utils and if_functions, imported from the pinned copy
    (tests/helpers/open_instruct_pinned.py; IFEvalG stubbed: tests/data/test_ifeval.py checks it)."""
    with pinned_open_instruct(("ground_truth_utils", "math_utils", "if_functions"), stub_ifevalg=True) as pinned:
        yield types.SimpleNamespace(**pinned)


# verifier name -> (its open-instruct class; the pinned tests' cases: "Class.method" in test_ground_truth_utils.py)
TESTED = {
    "puzzle": ("PuzzleMatcherVerifier", ["TestPuzzleMatcherVerifier.test_basic_scenarios",
                                         "TestPuzzleMatcherVerifier.test_puzzle_matcher_scenarios"]),
    "string_f1": ("F1Verifier", ["TestF1Verifier.test_single_label", "TestF1Verifier.test_list_labels"]),
    "gsm8k": ("GSM8KVerifier", ["TestGSM8KVerifier.test_signed_number_extraction"]),
}
CLASSES = {"gsm8k": "GSM8KVerifier", "math": "MathVerifier", "strict_math": "StrictMathVerifier",
           "ifeval_old": "IFEvalVerifierOld", "string_matcher": "StringMatcherVerifier", "string_f1": "F1Verifier",
           "puzzle": "PuzzleMatcherVerifier", "flan": "FlanVerifier"}


def their_score(theirs, name: str, prediction: str, label) -> float:
    return getattr(theirs.ground_truth_utils, CLASSES[name])()([], prediction, label).score


@pytest.mark.parametrize("name", sorted(TESTED))
def test_open_instructs_own_verifier_cases(name, theirs):
    cases = expanded_cases("test_ground_truth_utils.py")
    cls, methods = TESTED[name]
    checked = 0
    for method in methods:
        for _, prediction, label, expected in cases[method]:
            assert verify(name, prediction, label) == pytest.approx(expected, abs=1e-5), (method, prediction)
            assert verify(name, prediction, label) == their_score(theirs, name, prediction, label)
            checked += 1
    assert checked == {"puzzle": 29, "string_f1": 13, "gsm8k": 5}[name]


def test_open_instructs_math_and_if_function_cases(theirs):
    strip = expanded_cases("test_math_utils.py")["TestStripString.test_latex_normalization"]
    assert len(strip) == 9
    for given, expected in strip:
        assert math_answers.strip_string(given) == expected == theirs.math_utils.strip_string(given)
    cases = expanded_cases("test_if_functions.py")
    choice = cases["TestValidateChoice.test_validate_choice"]
    capitals = cases["TestValidateFrequencyCapitalWords.test_validate_frequency_capital_words"]
    assert len(choice) == 4 and len(capitals) == 6
    for _, text, options, expected in choice:
        assert if_checks.validate_choice(text, options) is expected is theirs.if_functions.validate_choice(text, options)
    for _, text, n, quantifier, expected in capitals:
        assert (if_checks.validate_frequency_capital_words(text, n, quantifier) is expected
                is theirs.if_functions.validate_frequency_capital_words(text, n, quantifier))


# ---- generated predictions, ours = theirs ----------------------------------------------------------------------

NUMBERS = ["42", "-3", "+7", "3.5", "-0.25", "1,000", "12,345.5", "0", "7", ".5", "0.5", "100"]
LATEX = [r"\frac{1}{2}", r"\frac12", r"\dfrac{3}{4}", "1/2", r"\sqrt{2}", r"\sqrt2", "2x+1", "x^2", r"\pi", "50\\%",
         r"\left(1,2\right)", r"10\text{ cm}", r"3\sqrt{3}", "0.75", r"\frac{6}{8}", "x = 3", r"5^\circ", "-1"]
WORDS = ["hello world", "The answer is 42!", "Paris", "a simple test.", "New York City", "42", "  hello  world "]


def predictions(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """(prediction, ground truth) pairs in the forms the verifiers extract from, right and wrong."""
    out = []
    forms = [
        lambda x: f"Let me think. The answer is {x}",
        lambda x: f"So we get \\boxed{{{x}}}.",
        lambda x: f"Final Answer: The final answer is ${x}$. I hope it is correct.",
        lambda x: f"We find ${x}$ and then ${x}$ again.",
        lambda x: f"{x}",
        lambda x: f"<think>hmm {rng.choice(NUMBERS)}</think><answer>{x}</answer>",
        lambda x: f"The answer is: {x}",
        lambda x: f"\\boxed {x}$ done",
        lambda x: f"\\fbox{{{x}}}",
        lambda x: f"<|assistant|> {x} </think> {x}",
    ]
    for _ in range(n):
        pool = rng.choice([NUMBERS, LATEX, WORDS])
        truth = rng.choice(pool)
        answer = truth if rng.random() < 0.5 else rng.choice(pool)
        out.append((rng.choice(forms)(answer), truth))
    return out


@pytest.mark.parametrize("name, n", [("gsm8k", 400), ("math", 80), ("strict_math", 60), ("string_matcher", 300),
                                     ("string_f1", 300), ("puzzle", 300), ("flan", 300)])
def test_generated_cases_score_as_open_instructs(name, n, theirs):
    rng = random.Random(sum(name.encode()))
    cases = predictions(rng, n)
    scores = [verify(name, p, t) for p, t in cases]
    assert scores == [their_score(theirs, name, p, t) for p, t in cases], name
    assert 0 < sum(s > 0 for s in scores) < len(scores)  # both outcomes among them


def ifeval_old_cases(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """(text, RLVR-IFeval ground truth: JSON func_name and every argument, the unused ones null) pairs."""
    texts = ["hello world. This is fine! OK?", "ALL CAPS HERE AND THERE", "all lower case, with a comma",
             '"quoted text"', "* one\n* two\n- three", "First para\n\nSecond para\n\nThird", "<<Title>> body [x] [y]",
             "Part 1\n* * *\nPart 2", "Answer one ****** Answer two", '{"a": 1}', "P.S. see you",
             "SECTION 1 a SECTION 2 b", "*bold* and *more* text", "Bonjour tout le monde, comment allez-vous?",
             "The quick brown fox jumps over the lazy dog. It runs. Is it fast? Yes!", "ends with Any questions?"]
    nulls = dict.fromkeys(["N", "quantifier", "keyword_list", "word", "letter", "language", "first_word", "i",
                           "postscript_marker", "options", "section_splitter", "original_prompt", "end_phrase",
                           "forbidden_words"])
    argument_sets = {
        "verify_keywords": lambda: {"keyword_list": rng.sample(["hello", "world", "fox", "caps"], 2)},
        "verify_keyword_frequency": lambda: {"word": rng.choice(["hello", "it", "the"]), "N": rng.randint(0, 2)},
        "validate_forbidden_words": lambda: {"forbidden_words": rng.sample(["hello", "lazy", "nothing"], 2)},
        "verify_letter_frequency": lambda: {"letter": rng.choice("eoa"), "N": rng.randint(0, 4)},
        "validate_response_language": lambda: {"language": rng.choice(["en", "fr"])},
        "verify_paragraph_count": lambda: {"N": rng.randint(1, 3)},
        "validate_word_constraint": lambda: {"N": rng.randint(2, 12), "quantifier": rng.choice(
            ["at least", "at most", "around", "exactly"])},
        "verify_sentence_constraint": lambda: {"N": rng.randint(1, 4), "quantifier": rng.choice(
            ["at least", "at most", "around"])},
        "validate_paragraphs": lambda: {"N": 3, "first_word": rng.choice(["First", "Second"]), "i": rng.randint(1, 3)},
        "verify_postscript": lambda: {"postscript_marker": rng.choice(["P.S.", "P.P.S"])},
        "validate_placeholders": lambda: {"N": rng.randint(0, 3)},
        "verify_bullet_points": lambda: {"N": rng.randint(0, 3)},
        "validate_title": dict,
        "validate_choice": lambda: {"options": rng.sample(["world", "fox", "yes", "no"], 2)},
        "validate_highlighted_sections": lambda: {"N": rng.randint(0, 3)},
        "validate_sections": lambda: {"N": rng.randint(1, 3), "section_splitter": rng.choice(["SECTION", "Part"])},
        "validate_json_format": dict,
        "validate_repeat_prompt": lambda: {"original_prompt": rng.choice(["hello", "First", "ALL"])},
        "validate_two_responses": dict,
        "validate_uppercase": dict,
        "validate_lowercase": dict,
        "validate_frequency_capital_words": lambda: {"N": rng.randint(0, 5), "quantifier": rng.choice(
            ["at least", "at most", "around"])},
        "validate_end": lambda: {"end_phrase": rng.choice(["questions?", "dog."])},
        "validate_quotation": dict,
        "validate_no_commas": dict,
    }
    assert set(argument_sets) == set(if_checks.CHECKS)
    out = []
    for k in range(n):
        func = list(argument_sets)[k % len(argument_sets)]
        truth = {"func_name": func, **(nulls if rng.random() < 0.7 else {}), **argument_sets[func]()}
        out.append((rng.choice(texts), json.dumps(truth)))
    return out


def test_ifeval_old_scores_as_open_instructs_on_generated_constraints(theirs):
    """All 25 of RLVR-IFeval's constraint functions, 12 cases each: `ifeval_old` = open-instruct's
    IFEvalVerifierOld (langdetect seeded, as both call it)."""
    import langdetect

    langdetect.DetectorFactory.seed = 0
    cases = ifeval_old_cases(random.Random(69), 300)
    scores = [verify("ifeval_old", p, t) for p, t in cases]
    assert scores == [their_score(theirs, "ifeval_old", p, t) for p, t in cases]
    assert 50 < sum(scores) < 250
    assert verify("ifeval_old", "hi", json.dumps({"N": 3})) == their_score(theirs, "ifeval_old", "hi", '{"N": 3}') == 0


def test_remove_thinking_section_as_open_instructs(theirs):
    from instructjax.data.verifiers.builtin import remove_thinking_section

    for prediction, _ in predictions(random.Random(3), 200):
        assert remove_thinking_section(prediction) == theirs.ground_truth_utils.remove_thinking_section(prediction)


# ---- the registry --------------------------------------------------------------------------------------------------

def test_a_users_verifier_registers_through_import_and_reads_its_rows(tmp_path, capsys):
    """`--import` a module that registers `ends_with`: rows naming it are read, its score is the function's; an
    unknown name is one ConfigError line listing the known ones."""
    from instructjax.cli import main
    from instructjax.core.context import current

    module = tmp_path / "my_verifiers_69.py"
    module.write_text("from instructjax.data.verifiers import register_verifier\n\n"
                      "@register_verifier('Ends_With')\n"
                      "def ends_with(prediction: str, ground_truth: str) -> float:\n"
                      "    return float(prediction.rstrip().endswith(ground_truth))\n")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"messages": [{"role": "user", "content": "Say bye."}], "ground_truth": "bye",
                                "dataset": "ends_with"}) + "\n")
    try:
        code = main(["--import", str(module), "data", "stats", "verifiable", "--data-files", str(rows), "--json"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert json.loads(out)["tasks"][0]["verifiers"] == {"ends_with": 1}
        # registered for the process, as a user's chat template is (`core.user_modules`)
        assert "ends_with" in verifier_names() and verify("ENDS_WITH", "ok, bye", "bye") == 1.0
        with pytest.raises(ConfigError, match="already registered"):
            register_verifier("gsm8k")(lambda p, t: 0.0)
    finally:  # what the module registered lives in the process's root context: leave it as it was
        current().root.tables("data.verifiers")[0].pop("ends_with", None)
        sys.modules.pop(module.stem, None)
    with pytest.raises(ConfigError) as err:
        get_verifier("no_such")
    assert str(err.value).count("\n") == 0 and "; known: " in str(err.value) and "gsm8k, " in str(err.value)


def test_squad_f1_is_written_once():
    """SQuAD's normalisation and F1: one copy (data/verifiers/squad.py), the verifiers' and the Tulu suite's TydiQA
    score (whose reference tests are test_generated_cases_score_as_open_instructs and test_tulu_suite's metrics)."""
    from instructjax.data.verifiers import builtin, squad
    from instructjax.eval.tulu import metrics

    assert builtin.f1_score is squad.f1_score and builtin.normalize_answer is squad.normalize_answer
    assert metrics.squad is squad.squad
    assert squad.squad(["The cat sat"], [["a cat sat down", "dog"]]) == {"exact_match": 0.0, "f1": pytest.approx(
        100 * 2 * (2 / 2) * (2 / 3) / (2 / 2 + 2 / 3))}
