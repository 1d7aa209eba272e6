"""Per-dataset adapters: one native hub row -> Conversations, with the dataset's real quirks handled the
way its reference pipeline handles them (each adapter says which, and how).

Every adapter reads the row schema of the dataset's Hugging Face hub version (see `sources.SOURCES`); the
`messages` adapter reads a user's own chat data in today's standard format.
A row that breaks the schema (a missing or mistyped field) raises a `DataError` with a stable `reason`;
a well-formed row that the reference pipeline drops raises a `SkippedRow` (always skipped and counted);
a row the reference pipeline repairs is repaired and the repair is listed in `meta["repairs"]` (counted
by the loader). Row adapters have the signature `(row, name, index) -> list[Conversation]`; Open
Assistant, whose rows are single messages of a tree, has an adapter fed whole trees (`oasst1_conversations`).
ShareGPT's adapter and its two cleanings are in `sharegpt`; its split into blocks is `split_blocks` here.
"""

from __future__ import annotations

from typing import Any

from instructjax.core.errors import DataError, SkippedRow
from instructjax.data.schema import Conversation

# Columns copied into meta when a row has them (quality scores, categories, synthetic labels).
META_COLUMNS = ("score", "quality_score", "category", "task", "task_name", "task_source", "template_type", "subtask",
                "topic", "synthetic")
NO_INPUT = ("<noinput>", "<no input>", "noinput")  # Alpaca-style "no input" placeholders


def field(row: dict, key: str, kind: type = str) -> Any:
    """`row[key]`, checked present (not None) and of `kind`; DataError otherwise."""
    value = row.get(key)
    if value is None:
        raise DataError(f"missing field {key!r} (absent or null)", reason="missing_field")  # a table fills absent with null
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataError(
            f"field {key!r} is {type(value).__name__}, expected {kind.__name__}", reason="wrong_type"
        )
    return value


def optional_text(row: dict, key: str) -> str:
    """`row[key]` as text, "" when absent or None."""
    return "" if row.get(key) is None else field(row, key)


def row_id(name: str, row: dict, index: int, key: str = "id") -> str:
    """Stable id: the dataset's own id when the row has one, else the row index."""
    own = row.get(key)
    return f"{name}-{own}" if isinstance(own, (str, int)) and own != "" else f"{name}-{index}"


def row_meta(row: dict, **extra: Any) -> dict[str, Any]:
    meta = {k: row[k] for k in META_COLUMNS if row.get(k) is not None}
    meta.update(extra)
    return meta


def repaired(meta: dict[str, Any], *repairs: str) -> dict[str, Any]:
    """`meta` with `repairs` (what was changed in the row) listed under "repairs"."""
    if repairs:
        meta = {**meta, "repairs": [*meta.get("repairs", []), *repairs]}
    return meta


def pair(user: str, assistant: str) -> list[dict[str, str]]:
    """One exchange; an empty response is a `SkippedRow` (the reference pipelines would train on the
    end-of-turn marker alone; there is nothing to learn from it)."""
    if not assistant.strip():
        raise SkippedRow("the response is empty", reason="empty_response")
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


def instruction_conversation(
    name: str, cid: str, instruction: str, input_text: str, output: str, meta: dict[str, Any]
) -> Conversation:
    """Instruction/input/output row: user = instruction + "\n\n" + input (input only when non-empty), as
    open-instruct's plain encoding. A "<noinput>" placeholder (Alpaca's generation pipeline) is no input."""
    instruction, input_text = instruction.strip(), input_text.strip()
    if input_text.lower() in NO_INPUT:
        input_text, meta = "", repaired(meta, "dropped a <noinput> placeholder")
    user = f"{instruction}\n\n{input_text}" if input_text else instruction
    meta = {**meta, "instruction": instruction, "input": input_text}
    return Conversation(pair(user, output.strip()), name, cid, meta)


# --- instruction/input/output datasets -----------------------------------------------------------

def alpaca_style(row: dict, name: str, index: int) -> list[Conversation]:
    """Alpaca, Code-Alpaca, GPT4-Alpaca: instruction / input (optional) / output."""
    return [instruction_conversation(
        name, row_id(name, row, index), field(row, "instruction"), optional_text(row, "input"),
        field(row, "output"), row_meta(row),
    )]


def dolly(row: dict, name: str, index: int) -> list[Conversation]:
    """databricks-dolly-15k: instruction / context / response / category."""
    return [instruction_conversation(
        name, row_id(name, row, index), field(row, "instruction"), optional_text(row, "context"),
        field(row, "response"), row_meta(row),
    )]


def superni(row: dict, name: str, index: int) -> list[Conversation]:
    """Super-NaturalInstructions (Muennighoff/natural-instructions): definition / inputs / targets."""
    definition = row.get("definition")
    if isinstance(definition, list) and definition and all(isinstance(d, str) for d in definition):
        definition = definition[0]  # raw SuperNI task files hold a list of definitions
    else:
        definition = field(row, "definition")
    return [instruction_conversation(
        name, row_id(name, row, index), definition, field(row, "inputs"), field(row, "targets"),
        row_meta(row),
    )]


def inputs_targets(row: dict, name: str, index: int) -> list[Conversation]:
    """FLAN v2 / CoT submixes: inputs / targets (+ task columns kept in meta)."""
    user, target = field(row, "inputs").strip(), field(row, "targets").strip()
    return [Conversation(pair(user, target), name, row_id(name, row, index), row_meta(row))]


def p3(row: dict, name: str, index: int) -> list[Conversation]:
    """bigscience/P3 (one config per prompted subtask): inputs_pretokenized / targets_pretokenized.

    In the `*_score_eval` subtasks every answer choice is a row (with `idx`, `is_correct`, `weight`);
    training on the wrong choices would teach the model to answer them, so rows with `is_correct: false`
    are skipped (counted). The `p3` source pools 1K such pairs of every subtask (`sources`, `per_part`)."""
    if row.get("is_correct") is False:
        raise SkippedRow("an answer choice marked is_correct=false (a *_score_eval row)", reason="incorrect_choice")
    user = field(row, "inputs_pretokenized").strip()
    target = field(row, "targets_pretokenized").strip()
    return [Conversation(pair(user, target), name, row_id(name, row, index), row_meta(row))]


def self_instruct(row: dict, name: str, index: int) -> list[Conversation]:
    """yizhongw/self_instruct: GPT-3 fine-tuning prompt ("...\\n\\nOutput:") / completion ("...<|endoftext|>")."""
    prompt = field(row, "prompt").strip()
    if prompt.endswith("Output:"):
        prompt = prompt[: -len("Output:")].rstrip()
    completion = field(row, "completion").replace("<|endoftext|>", "").strip()
    return [Conversation(pair(prompt, completion), name, row_id(name, row, index), row_meta(row))]


def unnatural_instructions(row: dict, name: str, index: int) -> list[Conversation]:
    """mrm8488/unnatural-instructions-core: instruction + instances[{instruction_with_input, input,
    constraints, output}]; one conversation per instance (Tulu's 68,478 instances).

    As open-instruct (`convert_unnatural_instructions_data`): the instance's `constraints` ("The output
    should be one of ...") are appended to the instruction on a new line unless they are "None."; the
    prompt is that instruction and the instance's input."""
    instruction = field(row, "instruction").strip()
    instances = field(row, "instances", list)
    if not instances:
        raise DataError("field 'instances' is empty", reason="missing_field")
    conversations = []
    for k, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise DataError(f"instances[{k}] is {type(instance).__name__}, expected object", reason="wrong_type")
        constraints = optional_text(instance, "constraints").strip()
        full = instruction
        if constraints and constraints.lower() not in ("none", "none."):
            full = f"{instruction}\n{constraints}"
        meta = row_meta(row, constraints=constraints) if constraints else row_meta(row)
        conversations.append(instruction_conversation(name, f"{row_id(name, row, index)}-{k}", full,
                                                      optional_text(instance, "input"), field(instance, "output"),
                                                      meta))
    return conversations
