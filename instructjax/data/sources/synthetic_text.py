"""The length statistics and text of the synthetic rows (`data.sources.synthetic`): Tulu's Table 1 (rounds, prompt
and completion tokens per turn, LLaMA tokenizer) and our estimates for the datasets it lacks, lognormal lengths
rescaled to those means, and word salad from a fixed vocabulary of English and code words."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class LengthStats(NamedTuple):
    """Tulu Table 1 columns: instances, mean rounds, mean prompt / completion tokens per turn."""

    instances: int
    rounds: float
    prompt: float
    completion: float


TULU_TABLE1: dict[str, LengthStats] = {
    "superni": LengthStats(96_913, 1.0, 291.1, 38.7),
    "cot": LengthStats(100_000, 1.0, 266.0, 53.2),
    "flan_v2": LengthStats(100_000, 1.0, 355.7, 31.2),
    "dolly": LengthStats(15_011, 1.0, 118.1, 91.3),
    "oasst1": LengthStats(34_795, 1.6, 34.8, 212.5),
    "self_instruct": LengthStats(82_439, 1.0, 41.5, 29.3),
    "unnatural_instructions": LengthStats(68_478, 1.0, 107.8, 23.6),
    "alpaca": LengthStats(52_002, 1.0, 27.8, 64.6),
    "code_alpaca": LengthStats(20_022, 1.0, 35.6, 67.8),
    "gpt4_alpaca": LengthStats(52_002, 1.0, 28.0, 161.8),
    "baize": LengthStats(210_311, 3.1, 17.6, 52.8),
    "sharegpt": LengthStats(168_864, 3.2, 71.0, 357.8),
}

# Not in Table 1, so our own estimates: P3 prompts hold a passage or question with short label-like
# targets (seed 000); WizardLM-70k's evolved instructions get long answers (seed 002 selects by them);
# `messages` (a user's own chats) gets a generic multi-turn chat dataset, one in three with a system turn.
OTHER_STATS: dict[str, LengthStats] = {
    "p3": LengthStats(660_000, 1.0, 160.0, 6.0),
    "wizardlm": LengthStats(70_000, 1.0, 120.0, 380.0),
    "messages": LengthStats(100_000, 2.0, 80.0, 250.0),
    # LMSYS-Chat-1M's paper (Zheng et al., 2024, Table 1): 2.0 turns, 69.5 prompt and 214.5 response tokens
    "lmsys_chat": LengthStats(1_000_000, 2.0, 69.5, 214.5),
    # Magpie-Pro-300K-Filtered: single-turn, short instructions and long answers (our estimate)
    "magpie": LengthStats(300_000, 1.0, 45.0, 550.0),
    # UltraFeedback binarized's train_prefs: 61,135 pairs (our estimate of its lengths)
    "preference": LengthStats(61_135, 1.0, 160.0, 300.0),
}
# The built-in arithmetic sets (`arithmetic_questions`): exact row counts, not a published dataset's
ARITHMETIC_ROWS = {"verifiable": 500, "arithmetic": 800}
LENGTH_STATS = {**TULU_TABLE1, **OTHER_STATS}

_PROSE = """the a an of to and in is it that for on with as by at from this be are was or not can will
about into over after before between through during without under within along across behind beyond
time people way year day work world life part place case point group number problem fact hand week
company system program question government country home water room mother area money story month
study book word business issue side kind head house service friend power hour game line end member
law car city community name team minute idea kid body information back parent face others level office
door health person art war history party result change morning reason research girl guy moment air
teacher force education data model answer example list step method table value text task input output
make take give find tell ask work seem feel try leave call keep provide write create describe explain
use show help turn start run move live believe hold bring happen include continue set learn change lead
understand watch follow stop speak read allow add spend grow open walk offer remember consider appear
buy wait serve die send expect build stay fall cut reach remain suggest raise pass sell require report
good new first last long great little own other old right big high different small large next early
young important few public bad same able best better sure free true whole clear simple main several
also just very often however then there here now well even still only really again never always
approximately infrastructure photosynthesis responsibility characteristics neighbourhood Kubernetes
configuration recommendations biodiversity troubleshooting cryptocurrency entrepreneurship Shakespeare
mitochondria unprecedented Mediterranean sustainability hypothetical nutritionist algorithmically
pharmaceutical interoperability thermodynamics questionnaire Renaissance symmetrical decentralized
paraphrase summarize categorize itinerary vegetarian humidity volcano grammatical hashtag spreadsheet
1984 2023 3.14 42 100 12% $250 e.g. i.e. etc. (see above) "quoted" well-known step-by-step""".split()

_CODE = """def return for while if else elif import from class self print range len list dict str int
float None True False append value index result data items key args kwargs function const let var
console.log() => {} [] () == != <= >= += -= * / % i j n x y arr nums count total sum max min sort
string array object map filter reduce async await try except catch throw new null undefined SELECT
FROM WHERE JOIN ORDER BY GROUP INSERT INTO VALUES public static void main int[] String System.out
#include <stdio.h> printf std::vector cout << endl""".split()

# Cumulative word frequencies: Zipf-like for prose (the list starts with function words), uniform
# for code.
_ZIPF = 1.0 / np.arange(1, len(_PROSE) + 1) ** 0.8
_VOCABS = {"prose": (np.array(_PROSE, dtype=object), np.cumsum(_ZIPF / _ZIPF.sum())),
           "code": (np.array(_CODE, dtype=object), np.linspace(1 / len(_CODE), 1.0, len(_CODE)))}

# LLaMA tokens per word of the text `_text` makes (measured with the 32k SentencePiece model,
# punctuation included): turns a token budget into a word count.
_TOKENS_PER_WORD = {"prose": 1.22, "code": 1.24}


def _text(rng: np.random.Generator, tokens: float, vocab: str = "prose") -> str:
    """About `tokens` LLaMA tokens of word-like text (prose: capitalized sentences of ~8 words)."""
    words, cdf = _VOCABS[vocab]
    n = max(1, round(tokens / _TOKENS_PER_WORD[vocab]))
    picked = list(words[np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), len(words) - 1)])
    if vocab == "prose" and n >= 4:
        ends = np.flatnonzero(rng.random(n - 1) < 0.12).tolist() + [n - 1]
        for start in [0] + [e + 1 for e in ends[:-1]]:
            picked[start] = picked[start].capitalize()
        for end in ends:
            picked[end] += "."
    return " ".join(picked)


def _lengths(rng: np.random.Generator, mean: float, n: int, sigma: float = 0.6) -> np.ndarray:
    """`n` lognormal lengths rescaled so their mean is exactly `mean`."""
    return _rescale(rng.lognormal(0.0, sigma, size=n), mean)


def _rescale(lengths: np.ndarray, mean: float) -> np.ndarray:
    return lengths * (mean / lengths.mean())


def default_rows(name: str) -> int:
    """Table 1's instance count scaled down 250x, clipped to 200..800 (oasst1: 200 trees; the arithmetic sets
    their own)."""
    if name in ARITHMETIC_ROWS:
        return ARITHMETIC_ROWS[name]
    return min(800, max(200, LENGTH_STATS[name].instances // 250)) if name != "oasst1" else 200
