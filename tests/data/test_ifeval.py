"""The `ifeval` verifier (IFEvalG's instruction registry) against open-instruct's, pinned in
tests/assets/open_instruct (IFEvalG/ and ground_truth_utils.IFEvalVerifier; README.md there):

- every instruction id of THEIR `INSTRUCTION_DICT`: its kwargs drawn as theirs draws them (seeded `random`: the same
  arguments, the same draws consumed), then our check = theirs on responses crafted to pass and to fail it (and on
  random texts), both outcomes seen for each id;
- the verifier end to end on IF_multi_constraints ground truths (a list whose first element is a JSON string),
  thinking sections and empty predictions: our score = their IFEvalVerifier's;
- a bad ground truth (unknown id, not the format, a kwarg it cannot take) one DataError line, at load or at score;
- Offline: both sides' sentence tokenizer is nltk's Punkt with an empty English punkt_tab model built here; without
  one, only the checks that tokenize stop, with one line.
"""

from __future__ import annotations

import json
import random
import types

import nltk
import pytest
from helpers.open_instruct_pinned import PINNED, empty_punkt, pinned_open_instruct

from instructjax.core.errors import DataError
from instructjax.data.verifiers import check_ground_truth, verify
from instructjax.data.verifiers.ifeval import INSTRUCTIONS, text


@pytest.fixture(scope="module")
def punkt(tmp_path_factory):
    """nltk.data.path led by an NLTK_DATA folder holding an empty English punkt_tab model."""
    root = empty_punkt(tmp_path_factory.mktemp("nltk"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nltk.data, "path", [str(root), *nltk.data.path])
        text._punkt.cache_clear()
        yield root
    text._punkt.cache_clear()


@pytest.fixture(scope="module")
def theirs(punkt):
    """open-instruct's IFEvalG and ground_truth_utils from the pinned copy (tests/helpers/open_instruct_pinned.py);
    IFEvalG's sentence tokenizer (the pickled punkt nltk 3.10 no longer loads) replaced by the punkt_tab model ours
    uses; langdetect seeded as both call it."""
    import langdetect

    langdetect.DetectorFactory.seed = 0
    names = ("IFEvalG.instructions_util", "IFEvalG.instructions_registry", "ground_truth_utils")
    with pinned_open_instruct(names) as pinned:
        util = pinned["IFEvalG.instructions_util"]
        util._get_sentence_tokenizer = text._punkt
        yield types.SimpleNamespace(util=util, registry=pinned["IFEvalG.instructions_registry"].INSTRUCTION_DICT,
                                    verifier=pinned["ground_truth_utils"].IFEvalVerifier())


PROMPT = "Write a short poem about the sea. Keep it simple!"
INSTRUCTION = "Describe the ocean without using common words"
NEEDED = {"combination:repeat_prompt": {"prompt_to_repeat": PROMPT}, "copy:copy": {"prompt_to_repeat": PROMPT},
          "new:copy_span_idx": {"prompt_to_repeat": PROMPT}, "copy:copying_simple": {"prompt_to_repeat": PROMPT},
          "copy:copying_multiple": {"prompt_to_repeat": PROMPT},
          "keywords:exclude_word_harder": {"instruction": INSTRUCTION}}
"""What IFEvalG cannot draw (it fails without them)."""

# id -> kwargs given as rows give them, beside the drawn ones
GIVEN = {
    "language:response_language": [{"language": "en"}, {"language": "fr"}, {"language": "es"}],
    "length_constraints:nth_paragraph_first_word": [{"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "Sea"}],
    "keywords:existence": [{"keywords": ["sea", "wave"]}],
    "keywords:forbidden_words": [{"forbidden_words": ["sea", "sea", "storm"]}],
    "keywords:frequency": [{"keyword": " sea ", "frequency": 2, "relation": "at least"}],
    "keywords:letter_frequency": [{"letter": "E", "let_frequency": 3, "let_relation": "less than"}],
    "letters:letter_counting2": [{"letter": "ab", "let_frequency": 0, "let_relation": "at least"}],
    "copy:repeat_phrase": [{"phrase": "The early bird catches the worm", "small_n": 2}],
    "new:copy_span_idx": [{"prompt_to_repeat": PROMPT, "n_start": 6, "n_end": 20}],
    "count:count_increment_word": [{"keyword1": "sea", "keyword2": "wave"}],
    "keywords:keyword_specific_position": [{"keyword": ["sea"], "n": 2, "m": 3}],
    "first_word:first_word_sent": [{"first_word": ["The"]}],
    "last_word:last_word_sent": [{"last_word": "sea"}],
    "detectable_format:multiple_sections": [{"section_spliter": " Part ", "num_sections": 2}],
    "detectable_content:postscript": [{"postscript_marker": "Note:"}, {"postscript_marker": "P.S."}],
    "count:counting_composition": [{"n_sent": 2, "n_words": 4}],
    "change_case:capital_word_frequency": [{"capital_frequency": 2, "capital_relation": "less than"}],
}

EN = "The sea is calm today and the waves are gentle on the shore."
FR = "La mer est calme aujourd'hui et les vagues sont douces sur la plage."
ES = "El mar está tranquilo hoy y las olas son suaves en la playa."


def _n(a: dict, key: str) -> int:
    return a[key] if isinstance(a.get(key), int) else 2


def crafted(iid: str, a: dict) -> list[str]:
    """Responses meant to pass and to fail instruction `iid` built with arguments `a` (ours: IFEvalG's)."""
    kw = a.get("keyword") if isinstance(a.get("keyword"), str) else "sea"
    prompt = a.get("prompt_to_repeat", PROMPT)
    texts = {
        "keywords:existence": lambda: [" and ".join(a["keywords"]), a["keywords"][0], "nothing"],
        "keywords:frequency": lambda: [f"{kw} " * a["frequency"], f"{kw} " * max(a["frequency"] - 1, 0) + "x"],
        "keywords:word_count_different_numbers": lambda: [f"{kw} " * a["frequency"],
                                                           f"{kw} " * max(a["frequency"] - 1, 0) + "x"],
        "keywords:forbidden_words": lambda: ["clean text", " ".join(a["forbidden_words"]),
                                             f"x{a['forbidden_words'][0]}y"],
        "keywords:letter_frequency": lambda: [a["letter"] * a["let_frequency"], a["letter"].upper() * (
            a["let_frequency"] - 1) + "z"],
        "letters:letter_counting2": lambda: [a["letter"] * a["let_frequency"], a["letter"] * (a["let_frequency"] - 1)],
        "language:response_language": lambda: [EN, FR, ES, "12345 !!!"],
        "length_constraints:number_sentences": lambda: [
            " ".join(["One sentence here."] * k) for k in (a["num_sentences"] - 1, a["num_sentences"])],
        "length_constraints:number_paragraphs": lambda: [
            "\n***\n".join(["Para"] * a["num_paragraphs"]), "***\n" + "\n***\n".join(["P"] * a["num_paragraphs"]),
            "\n***\n".join(["P"] * (a["num_paragraphs"] + 1)), "A\n***\n\n***\nB"],
        "length_constraints:number_words": lambda: [" ".join(["w"] * a["num_words"]),
                                                    " ".join(["w"] * (a["num_words"] - 1)),
                                                    " ".join(["x-y"] * (a["num_words"] // 2 + 1)),
                                                    "- " * a["num_words"] + "w"],
        "length_constraints:nth_paragraph_first_word": lambda: [
            "\n\n".join(f"{a['first_word'].title() if i + 1 == a['nth_paragraph'] else 'Other'} words here."
                        for i in range(a["num_paragraphs"])),
            "\n\n".join(f'"{a["first_word"]}," said he.' for _ in range(a["num_paragraphs"])),
            "\n\n".join(["Other text."] * a["num_paragraphs"]), f"{a['first_word']} only one"],
        "detectable_content:number_placeholders": lambda: ["[a] " * a["num_placeholders"],
                                                           "[a] " * (a["num_placeholders"] - 1)],
        "detectable_content:postscript": lambda: [f"Body.\n{a['postscript_marker']} later", "Body.\np. s. x",
                                                  "Body.\nP.P.S x", "Body only."],
        "detectable_format:number_bullet_lists": lambda: [
            "\n".join(["* item"] * a["num_bullets"]), "\n".join(["- item"] * a["num_bullets"]),
            "\n".join(["* item"] * (a["num_bullets"] + 1)), "**bold**\n* one"],
        "detectable_format:constrained_response": lambda: ["My answer is maybe.", "Yes."],
        "detectable_format:number_highlighted_sections": lambda: [
            "*h* " * a["num_highlights"], "**b** " * a["num_highlights"], "*h* " * (a["num_highlights"] - 1) + "* *"],
        "detectable_format:multiple_sections": lambda: [
            "\n".join(f"{a['section_spliter']} {i}\ntext" for i in range(1, a["num_sections"] + 1)),
            "\n".join(f"{a['section_spliter']} {i}\ntext" for i in range(1, a["num_sections"]))],
        "detectable_format:json_format": lambda: ['```json\n{"a": 1}\n```', '{"a": [1, 2]}', "not json", "```\n[1]"],
        "detectable_format:title": lambda: ["<<Title>> body", "<< >> body", "<b> body"],
        "combination:two_responses": lambda: ["A ****** B", "A ****** A", "A ****** B ****** C",
                                              "****** A ****** B ******", "A ****** ****** B"],
        "combination:repeat_prompt": lambda: [prompt.upper() + " The answer.", "The answer."],
        "startend:end_checker": lambda: [f"Text. {a['end_phrase']}", f'"Text {a["end_phrase"].upper()}"',
                                         f"{a['end_phrase']} more"],
        "change_case:capital_word_frequency": lambda: [
            "WORD " * a["capital_frequency"], "WORD " * (a["capital_frequency"] - 1) + "word"],
        "change_case:english_capital": lambda: [EN.upper(), EN, FR.upper(), "123"],
        "change_case:english_lowercase": lambda: [EN.lower(), EN, FR.lower(), "123 !!"],
        "punctuation:no_comma": lambda: ["no commas", "a, b"],
        "startend:quotation": lambda: ['"quoted"', ' "q" ', "no", '"'],
        "copy:repeat_phrase": lambda: repeat_phrases(a["phrase"], a["small_n"]),
        "copy:copy": lambda: [f" {prompt.lower()} ", prompt + " more"],
        "copy:copying_simple": lambda: [f" {prompt.lower()} ", prompt + " more"],
        "new:copy_span_idx": lambda: [prompt[a["n_start"]:a["n_end"]], prompt],
        "detectable_format:sentence_hyphens": lambda: ["First sentence.-Second one.", "First. Second.", "a - b",
                                                       "One-two three."],
        "keywords:no_adjacent_consecutive": lambda: ["apple cherry east", "apple banana", "Zeta alpha"],
        "detectable_format:square_brackets": lambda: ["[a] [b]", "[a] b", ""],
        "keywords:word_once": lambda: [f"one {kw} here", f"{kw} {kw}", "none"],
        "keywords:exclude_word_harder": lambda: ["a b c", f"text {kw} here", f"{kw}"],
        "paragraphs:paragraphs": lambda: ["A\n***\nB", "A\n***\nB\n***\nC", "A\n***\n\n***\nB", "*** A *** B ***"],
        "paragraphs:paragraphs2": lambda: ["A\n\nB", "A\n\nB\n\nC", "\n\nA\n\nB\n\n", "A\n\n\n\nB"],
        "first_word:first_word_sent": lambda: [f"{a['first_word']} one. {a['first_word']} two!",
                                               f"{a['first_word']} paid 3.5 dollars. {a['first_word']} left.",
                                               f"{a['first_word']} one. Other two."],
        "first_word:first_word_answer": lambda: [f"{a['first_word'].upper()} rest", "other start"],
        "last_word:last_word_sent": lambda: [f"One {a['last_word']}. Two {a['last_word']}!",
                                             f"Mr. Smith saw {a['last_word']}. See e.g. {a['last_word']}?",
                                             f"One {a['last_word']}. Two other."],
        "last_word:last_word_answer": lambda: [f"Text {a['last_word']}.", "text other"],
        "detectable_format:bigram_wrapping": lambda: ["<<I am>> <<at home>>", "<<I am>> at home", "<<one>>"],
        "copy:copying_multiple": lambda: ["******".join([prompt] * a["N"]), "******".join([prompt] * (a["N"] - 1))],
        "punctuation:punctuation_dot": lambda: ["no dots here", "dot."],
        "punctuation:punctuation_exclamation": lambda: ["calm", "wow!"],
        "count:lowercase_counting": lambda: [" ".join(["low"] * a["N"]), " ".join(["low"] * (a["N"] + 1))],
        "letters:letter_counting": lambda: ["a" * a["N"], "a1" * (a["N"] - 1)],
        "count:counting_composition": lambda: composition(a["n_sent"], a["n_words"]),
        "count:count_unique": lambda: ["alpha beta gamma", "alpha alpha"],
        "count:count_increment_word": lambda: [f"{a['keyword1']} {a['keyword2']} {a['keyword2']}",
                                               f"{a['keyword1']} {a['keyword2']}"],
        "keywords:palindrome": lambda: ["level up", "xy zw"],
        "keywords:keyword_specific_position": lambda: [
            " ".join(["Filler words here."] * (a["n"] - 1) + [" ".join(["w"] * (a["m"] - 1) + [a["keyword"]]) + "."]),
            " ".join(["Filler words here."] * a["n"])],
        "keywords:start_end": lambda: ["hello world Hello", "hello world.", "one"],
    }
    return texts[iid]()


def repeat_phrases(phrase: str, n: int) -> list[str]:
    words = phrase.split()
    changed = [" ".join(words[:2] + [f"new{i}"] + words[3:]) for i in range(n)]
    return [" ... ".join(changed), " ... ".join([phrase] * n), " ... ".join(changed[:-1]),
            " ... ".join(changed[:-1] + [" ".join(words[:1] + ["x", "y"] + words[3:])])]


def composition(n_sent: int, n_words: int) -> list[str]:
    sentence = " ".join(["word"] * (n_words - 1)) + "."  # word_tokenize counts the full stop
    paragraph = " ".join([sentence] * n_sent)
    return [" *** ".join([paragraph] * 3), " *** ".join([paragraph] * 2), paragraph + " ***"]


VOCAB = ["the", "Sea", "WAVE", "sea", "level", "P.S.", "***", "******", "*", "-", "<<", ">>", "[x]", '"', ",", ".",
         "!", "?", "\n", "\n\n", "Section", "1", "2", "Mr.", "e.g.", "3.5", "apple", "banana", "{", "}", ":", "a"]


def random_texts(rng: random.Random, n: int) -> list[str]:
    return ["".join(rng.choice(VOCAB) + rng.choice(["", " ", " ", "-"]) for _ in range(rng.randint(1, 30)))
            for _ in range(n)]


TRICKY = ["Mr. Smith went to Washington. He arrived at 3.5 p.m. today!", "Visit example.com now. Then leave...",
          "He has a Ph.D. in physics. She does not.", 'She said "hello." Then left! Did she?"', "The U.S.A. is big.",
          "Acme Inc. However they left. It rained.", "J. R. R. Tolkien wrote books. They sold well.",
          "Wait... what? Really!", "A.B. This is it. Dr. No", "x\ny\n\nz. w", "“Quote.” Next.", "", " . "]


def test_text_helpers_as_ifevalgs(theirs):
    """IFEval's sentence splitter, its word count and the Punkt sentence count = theirs, on tricky and random texts."""
    texts = TRICKY + random_texts(random.Random(0), 300)
    for value in texts:
        assert text.split_into_sentences(value) == theirs.util.split_into_sentences(value), value
        assert text.count_words(value) == theirs.util.count_words(value), value
        assert text.count_sentences(value) == theirs.util.count_sentences(value), value
    assert text.split_into_sentences(TRICKY[0]) == ["Mr. Smith went to Washington.", "He arrived at 3.5 p.m. today!"]


def outcome(fn, *args):
    try:
        return bool(fn(*args))
    except Exception as err:  # IFEvalG's failures (ours must fail alike)
        return type(err).__name__


def test_registry_is_ifevalgs(theirs):
    assert list(INSTRUCTIONS) == list(theirs.registry) and len(INSTRUCTIONS) == 54
    assert all(INSTRUCTIONS[i].__name__ == cls.__name__ for i, cls in theirs.registry.items())


def build_theirs(theirs, iid: str, kwargs: dict):
    instruction = theirs.registry[iid](iid)
    instruction.build_description(**kwargs)
    return instruction


@pytest.mark.parametrize("iid", sorted(INSTRUCTIONS))
def test_every_instruction_draws_and_checks_as_ifevalgs(iid, theirs):
    """Kwargs left out drawn alike (seeded: the same arguments, the same draws consumed); our check = theirs on the
    crafted responses and on random texts; both outcomes among them."""
    kwargs_sets = []
    for seed in range(4):
        random.seed(seed)
        mine = INSTRUCTIONS[iid](**NEEDED.get(iid, {}))
        after = random.random()
        random.seed(seed)
        reference = build_theirs(theirs, iid, NEEDED.get(iid, {}))
        assert random.random() == after, iid  # the same number of draws
        drawn = reference.get_instruction_args() or {}
        assert vars(mine) == drawn, iid
        if iid != "count:count_increment_word":  # IFEvalG draws it a list, which its check cannot search for
            kwargs_sets.append({**NEEDED.get(iid, {}), **drawn})
    kwargs_sets += GIVEN.get(iid, [])
    rng = random.Random(sum(iid.encode()))
    seen = []
    for k, kwargs in enumerate(kwargs_sets):
        random.seed(k)  # what is drawn again (IFEvalG redraws an nth_paragraph past num_paragraphs) drawn alike
        mine = INSTRUCTIONS[iid](**kwargs)
        random.seed(k)
        reference = build_theirs(theirs, iid, kwargs)
        assert vars(mine) == (reference.get_instruction_args() or {}), (iid, kwargs)
        texts = crafted(iid, vars(mine)) + random_texts(rng, 4 if "lang" in iid or "english" in iid else 15)
        for value in texts:
            ours = outcome(mine, value)
            assert ours == outcome(reference.check_following, value), (iid, kwargs, value)
            seen.append(ours)
    assert True in seen and False in seen, (iid, seen)


def ground_truth(ids: list[str], kwargs: list, as_json: bool = True) -> str:
    """An IF_multi_constraints row's ground truth: str() of a list whose first element is the constraint (JSON)."""
    constraint = {"instruction_id": ids, "kwargs": kwargs}
    return str([json.dumps(constraint) if as_json else constraint])


def test_the_verifier_scores_as_ifevalverifier(theirs):
    """Ground truths of several instructions (null kwargs, nulls inside kwargs, a dict not JSON), predictions with a
    thinking section, empty ones: our score = IFEvalVerifier's; the pinned tests' empty instruction list is 0."""
    truths = [
        ground_truth(["punctuation:no_comma", "detectable_format:title", "length_constraints:number_words"],
                     [None, {}, {"num_words": 5, "relation": "at least", "keywords": None}]),
        ground_truth(["startend:end_checker", "change_case:english_lowercase"],
                     [{"end_phrase": "Any other questions?"}, None]),
        ground_truth(["keywords:existence", "count:count_unique", "detectable_format:number_bullet_lists"],
                     [{"keywords": ["sea"]}, None, {"num_bullets": 2}], as_json=False),
        ground_truth(["copy:copying_multiple", "punctuation:punctuation_dot"], [{"prompt_to_repeat": "Hi", "N": 2},
                                                                                None]),
        ground_truth([], []),
    ]
    predictions = ["<<Sea>> one two three four five", "<think>a, b</think>* the sea\n* any other questions?",
                   "<think>long thought</think>\n<answer>Hi******Hi</answer>", "the sea, calm. any other questions?",
                   "", "   ", "<think>only thinking</think>", "<|assistant|>the sea is blue", "Hi ****** hi"]
    scores = {}
    for truth in truths:
        for prediction in predictions:
            ours = verify("ifeval", prediction, truth)
            assert ours == theirs.verifier([], prediction, truth).score, (truth, prediction)
            scores[truth, prediction] = ours
    assert {0.0, 1.0} < set(scores.values()) and any(0 < s < 1 for s in scores.values())
    assert all(scores[t, p] == 0 for t in truths for p in ("", "   ", "<think>only thinking</think>"))
    assert verify("ifeval", "some non-empty response", str([{"instruction_id": [], "kwargs": []}])) == 0.0
    assert "TestIFEvalVerifierEmptyInstructions" in (PINNED / "test_ground_truth_utils.py").read_text()


def test_generated_multi_constraint_rows_score_as_ifevalverifier(theirs):
    """300 rows of 1 to 5 instructions (any id, kwargs as IFEvalG draws them, nulls for what it leaves out), answered
    with one of their crafted responses behind a thinking section: our score = IFEvalVerifier's (seeded alike)."""
    rng = random.Random(7)
    ids = [i for i in INSTRUCTIONS if i != "count:count_increment_word"]
    scores = []
    for row in range(300):
        chosen = rng.sample(ids, rng.randint(1, 5))
        kwargs = []
        for iid in chosen:
            random.seed(row)
            args = build_theirs(theirs, iid, NEEDED.get(iid, {})).get_instruction_args()
            nulls = {"unused_null": None} if rng.random() < 0.3 else {}
            kwargs.append(None if args is None else {**NEEDED.get(iid, {}), **args, **nulls})
        random.seed(row)
        first = INSTRUCTIONS[chosen[0]](**{k: v for k, v in (kwargs[0] or {}).items() if v is not None})
        answer = rng.choice(crafted(chosen[0], vars(first)))
        prediction = f"<think>Let me see, {rng.choice(VOCAB)}.</think>{answer}" if rng.random() < 0.5 else answer
        truth = ground_truth(chosen, kwargs, as_json=rng.random() < 0.8)
        random.seed(row)
        ours = verify("ifeval", prediction, truth)
        random.seed(row)
        assert ours == theirs.verifier([], prediction, truth).score, (truth, prediction)
        scores.append(ours)
    assert 0 < sum(s == 1 for s in scores) and 0 < sum(s == 0 for s in scores) and 0 < sum(0 < s < 1 for s in scores)


@pytest.mark.parametrize("truth, words, at_load", [
    (ground_truth(["keywords:no_such"], [None]), "unknown instruction id 'keywords:no_such'", True),
    ("not a literal [", "SyntaxError", True),
    (str([{"kwargs": []}]), "KeyError", True),
    ('{"func_name": "validate_lowercase", "N": null}', "remap_verifier: ifeval=ifeval_old", True),
    (ground_truth(["punctuation:no_comma"], ["oops"]), "kwargs 'oops' is not a dict", True),
    (ground_truth(["length_constraints:number_words"], [{"num_words": 3, "words": 4}]),
     "takes no kwarg words", True),
    (ground_truth(["copy:copy"], [{}]), "prompt_to_repeat must be set", False),
    (ground_truth(["length_constraints:number_words"], [{"num_words": 3, "relation": "at most"}]),
     "The supported relation", False),
    (ground_truth(["language:response_language"], [{"language": "xx"}]), "language 'xx'", False),
    (ground_truth(["keywords:existence"], [{"keywords": ["(sea"]}]), "keywords:existence with kwargs", False),
])
def test_a_bad_ground_truth_is_one_data_error_line(truth, words, at_load, theirs):
    """Each fails in IFEvalVerifier too; ours is one DataError line naming the problem, raised when the row is read
    where the ground truth alone tells (`check_ground_truth`), else when it is scored."""
    with pytest.raises(Exception):  # noqa: B017 (theirs fails with whatever Python raised)
        theirs.verifier([], "A response.", truth)
    with pytest.raises(DataError) as err:
        verify("ifeval", "A response.", truth)
    assert words in str(err.value) and "\n" not in str(err.value) and err.value.reason == "bad_ground_truth"
    if at_load:
        with pytest.raises(DataError, match="ifeval ground truth"):
            check_ground_truth("ifeval", truth)
    else:
        check_ground_truth("ifeval", truth)


def test_without_punkt_only_the_tokenizing_checks_stop_in_one_line(tmp_path, monkeypatch):
    """No punkt_tab on the NLTK data path: a check that does not tokenize scores; one that does is one line saying
    how to install it (nothing downloaded)."""
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.delenv("NLTK_DATA", raising=False)
    text._punkt.cache_clear()
    try:
        assert verify("ifeval", "no commas here", ground_truth(["punctuation:no_comma"], [None])) == 1.0
        with pytest.raises(text.NltkDataMissing) as err:
            verify("ifeval", "alpha beta", ground_truth(["count:count_unique"], [None]))
        message = str(err.value)
        assert "\n" not in message and "punkt_tab" in message and "python -m nltk.downloader punkt_tab" in message
    finally:
        text._punkt.cache_clear()
