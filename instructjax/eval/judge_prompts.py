"""The judges' prompts: the papers' own words where they print them, one place for all of them.

- Pairwise (seed 002 Figure 4, Chen et al. 2023b's prompt; seed 003 Figure 6 prints the same words for GPT4-Turbo,
  without the "[System]" line):
  a system prompt and a user prompt with the question and the two answers between "[The Start/End of Assistant
  N's Answer]" markers, then the criteria under "[System]". The layout (blank lines between the blocks, the
  criteria's three sentences on three lines) is the Vicuna evaluation's `pair-v1` prompt that text comes from.
- Seed 002's length-neutral variant (Sec. 5, "Potential Evaluation Bias"): "level of details" removed from the
  criteria and "Do not allow the length of the responses to influence your evaluation." added; the paper does not
  say where the sentence goes: ours ends the rating line.
- Seed 002's quality rating (Figure 3, AlpaGasus's 0-5 accuracy rating by ChatGPT), one prompt for rows without
  an input, one for rows with: its "System Prompt" holds the instance, its "User Prompt" the rubric.

A config picks a pairwise prompt by name (`PAIRWISE_PROMPTS`) or gives a JSON/YAML file of its own with
`system` and `user` keys, the user text holding {question}, {answer_1} and {answer_2}.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from instructjax.core import storage
from instructjax.core.errors import ConfigError


@dataclass(frozen=True)
class JudgePrompt:
    """A system message and a user message, both str.format templates, and where their words come from."""

    system: str
    user: str
    source: str

    def messages(self, **fields: str) -> tuple[str, str]:
        """(system, user) with the fields filled in."""
        return self.system.format(**fields), self.user.format(**fields)


_PAIR_LAYOUT = ("[Question]\n{{question}}\n\n"
                "[The Start of Assistant 1's Answer]\n{{answer_1}}\n\n[The End of Assistant 1's Answer]\n\n"
                "[The Start of Assistant 2's Answer]\n{{answer_2}}\n\n[The End of Assistant 2's Answer]\n\n"
                "[System]\n{criteria}\n\n")
_PAIR_SYSTEM = "You are a helpful and precise assistant for checking the quality of the answer."
_PAIR_ASK = ("We would like to request your feedback on the performance of two AI assistants in response to the "
             "user question displayed above.")
_PAIR_RATE = ("Please rate the helpfulness, relevance, accuracy, level of details of their responses. Each assistant "
              "receives an overall score on a scale of 1 to 10, where a higher score indicates better overall "
              "performance.")
_PAIR_RATE_NEUTRAL = ("Please rate the helpfulness, relevance, accuracy of their responses. Each assistant receives "
                      "an overall score on a scale of 1 to 10, where a higher score indicates better overall "
                      "performance. Do not allow the length of the responses to influence your evaluation.")
_PAIR_OUTPUT = ("Please first output a single line containing only two values indicating the scores for Assistant 1 "
                "and 2, respectively. The two scores are separated by a space. In the subsequent line, please provide "
                "a comprehensive explanation of your evaluation, avoiding any potential bias and ensuring that the "
                "order in which the responses were presented does not affect your judgment.")

PAIRWISE_PROMPTS: dict[str, JudgePrompt] = {
    "seed002": JudgePrompt(_PAIR_SYSTEM, _PAIR_LAYOUT.format(criteria="\n".join((_PAIR_ASK, _PAIR_RATE, _PAIR_OUTPUT))),
                           "seed 002 Figure 4 (verbatim)"),
    "seed002_length_neutral": JudgePrompt(
        _PAIR_SYSTEM, _PAIR_LAYOUT.format(criteria="\n".join((_PAIR_ASK, _PAIR_RATE_NEUTRAL, _PAIR_OUTPUT))),
        "seed 002 Sec. 5: Figure 4 without 'level of details', with the length sentence (its place is ours)"),
    "seed003": JudgePrompt(
        _PAIR_SYSTEM, _PAIR_LAYOUT.replace("[System]\n", "").format(criteria="\n".join((_PAIR_ASK, _PAIR_RATE,
                                                                                       _PAIR_OUTPUT))),
        "seed 003 Figure 6 (verbatim: Figure 4's words without the '[System]' line; its first answer block's "
        "'Assistant 2' read as the misprint it is: Assistant 1)"),
}
DEFAULT_PAIRWISE_PROMPT = "seed002"

_QUALITY_RUBRIC = ("Please rate according to the accuracy of the response to the instruction{and_input}. Each "
                   "assistant receives a score on a scale of 0 to 5, where a higher score indicates higher level of "
                   "the accuracy. Please first output a single line containing value indicating the scores. In the "
                   "subsequent line, please provide a comprehensive explanation of your evaluation, avoiding any "
                   "potential bias.")
QUALITY_PROMPTS: dict[bool, JudgePrompt] = {  # has an input -> Figure 3 (b), else (a)
    False: JudgePrompt(
        "We would like to request your feedback on the performance of AI assistant in response to the instruction "
        "displayed following.\n\nInstruction: {instruction}\nResponse: {response}",
        _QUALITY_RUBRIC.format(and_input=""), "seed 002 Figure 3 (a) (verbatim)"),
    True: JudgePrompt(
        "We would like to request your feedback on the performance of AI assistant in response to the instruction "
        "and the given input displayed following.\n\nInstruction: {instruction}\nInput: {input}\nResponse: {response}",
        _QUALITY_RUBRIC.format(and_input=" and the input"), "seed 002 Figure 3 (b) (verbatim)"),
}


def pairwise_prompt(name_or_file: str | None) -> JudgePrompt:
    """A pairwise prompt by name (None: seed 002's Figure 4), or read from a JSON/YAML file {system, user}."""
    name = name_or_file or DEFAULT_PAIRWISE_PROMPT
    if name in PAIRWISE_PROMPTS:
        return PAIRWISE_PROMPTS[name]
    if not name.endswith((".json", ".yaml", ".yml")):
        raise ConfigError(f"judge prompt {name!r}: not one of {', '.join(PAIRWISE_PROMPTS)} nor a .json/.yaml file")

    try:
        spec = yaml.safe_load(storage.path(name).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"judge prompt {name}: cannot read it ({e})".splitlines()[0]) from None
    if not isinstance(spec, dict) or not all(isinstance(spec.get(k), str) for k in ("system", "user")):
        raise ConfigError(f"judge prompt {name}: needs string keys 'system' and 'user'")
    missing = [f for f in ("{question}", "{answer_1}", "{answer_2}") if f not in spec["user"]]
    if missing:
        raise ConfigError(f"judge prompt {name}: the user text lacks {missing[0]}")
    return JudgePrompt(spec["system"], spec["user"], name)
