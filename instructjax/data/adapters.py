"""Per-dataset adapters: one native hub row -> Conversations, with the dataset's real quirks handled the
way its reference pipeline handles them (each adapter says which, and how).

Every adapter reads the row schema of the dataset's Hugging Face hub version (see `sources.SOURCES`); the
`messages` adapter reads a user's own chat data in today's standard format.
A row that breaks the schema (a missing or mistyped field) raises a `DataError` with a stable `reason`;
a well-formed row that the reference pipeline drops raises a `SkippedRow` (always skipped and counted);
a row the reference pipeline repairs is repaired and the repair is listed in `meta["repairs"]` (counted
by the loader). Row adapters have the signature `(row, name, index) -> list[Conversation]`; Open
Assistant, whose rows are single messages of a tree, has a whole-table adapter (`oasst1_conversations`).
ShareGPT's adapter and its two cleanings are in `sharegpt`; its split into blocks is `split_blocks` here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from instructjax.core.errors import DataError, SkippedRow
from instructjax.data.schema import Conversation

# Columns copied into meta when a row has them (quality scores, categories, synthetic labels).
META_COLUMNS = ("score", "quality_score", "category", "task", "task_name", "task_source", "template_type",
                "topic", "synthetic")
NO_INPUT = ("<noinput>", "<no input>", "noinput")  # Alpaca-style "no input" placeholders


def field(row: dict, key: str, kind: type = str) -> Any:
    """`row[key]`, checked present (not None) and of `kind`; DataError otherwise."""
    value = row.get(key)
    if value is None:
        raise DataError(f"missing field {key!r}", reason="missing_field")
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


def wizardlm(row: dict, name: str, index: int) -> list[Conversation]:
    """WizardLM: V1 (evol_instruct_70k) instruction / output rows, or V2 (evol_instruct_V2_143k)
    `conversations` of human/gpt turns (read as open-instruct's `convert_wizardlm_data` reads them)."""
    if row.get("conversations") is not None and row.get("instruction") is None:  # datasets fills absent columns
        messages, repairs = chat_messages(field(row, "conversations", list))
        return [Conversation(messages, name, row_id(name, row, index, key="idx"), repaired(row_meta(row), *repairs))]
    return alpaca_style(row, name, index)


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


# --- multi-turn datasets -------------------------------------------------------------------------

BAIZE_HUMAN, BAIZE_AI = "[|Human|]", "[|AI|]"


def baize(row: dict, name: str, index: int) -> list[Conversation]:
    """Baize self-chat: `input` is "<preamble>[|Human|] ...[|AI|] ...[|Human|] " (a trailing empty human).

    As open-instruct (`convert_baize_data`), the preamble goes and a round without an [|AI|] reply (the
    trailing empty human, an unanswered question) is left out. The conversation is kept up to its first
    unanswered or empty reply (later rounds build on it); with no answered round left the row is skipped.
    A round with two [|AI|] replies (open-instruct fails on it) is skipped."""
    transcript = field(row, "input")
    rounds = transcript.split(BAIZE_HUMAN)[1:]
    messages: list[dict[str, str]] = []
    repairs = []
    for k, chunk in enumerate(rounds):
        parts = chunk.split(BAIZE_AI)
        if len(parts) > 2:
            raise SkippedRow(f"round {k} has two {BAIZE_AI} replies", reason="role_order")
        human, reply = parts[0].strip(), (parts[1].strip() if len(parts) == 2 else "")
        if not reply:
            if human or k != len(rounds) - 1:  # the empty closing [|Human|] is how every transcript ends
                repairs.append("cut at an unanswered or empty round")
            break
        messages += [{"role": "user", "content": human}, {"role": "assistant", "content": reply}]
    if not messages:
        raise SkippedRow("no answered [|Human|]/[|AI|] round", reason="no_answered_round")
    return [Conversation(messages, name, row_id(name, row, index), repaired(row_meta(row), *repairs))]


CHAT_USER = ("human", "user")
CHAT_ASSISTANT = ("gpt", "chatgpt")


def chat_messages(turns: list) -> tuple[list[dict[str, str]], list[str]]:
    """ShareGPT-format turns (WizardLM V2) -> (alternating messages, the repairs made), values stripped:

    - speakers human/user are the user, gpt/chatgpt the assistant; another speaker: skipped;
    - a leading non-user turn is dropped, and a trailing unanswered user turn;
    - turns that do not alternate user/assistant after that: skipped;
    - the conversation is cut at its first empty turn, to whole rounds;
    - one turn or nothing left: skipped.
    """
    speakers = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DataError(f"conversations[{k}] is {type(turn).__name__}, expected object", reason="wrong_type")
        speaker = field(turn, "from")
        if speaker not in CHAT_USER + CHAT_ASSISTANT:
            raise SkippedRow(f"conversations[{k}] is from {speaker!r}, not a user or a ChatGPT reply",
                             reason="other_speaker")
        speakers.append(("user" if speaker in CHAT_USER else "assistant", field(turn, "value").strip()))
    if len(speakers) <= 1:
        raise SkippedRow(f"{len(speakers)} turn(s): nothing to train on", reason="too_short")
    repairs = []
    if speakers[0][0] != "user":
        speakers, repairs = speakers[1:], [*repairs, "dropped a leading assistant turn"]
    if speakers and speakers[-1][0] == "user":
        speakers, repairs = speakers[:-1], [*repairs, "dropped a trailing unanswered user turn"]
    for k, (role, _) in enumerate(speakers):
        if role != ("user", "assistant")[k % 2]:
            raise SkippedRow(f"turn {k} is a second {role} turn in a row", reason="role_order")
    empty = next((k for k, (_, text) in enumerate(speakers) if not text), None)
    if empty is not None:
        speakers, repairs = speakers[: empty // 2 * 2], [*repairs, "cut at an empty turn"]
    if not speakers:
        raise SkippedRow("no answered round", reason="no_answered_round")
    return [{"role": role, "content": text} for role, text in speakers], repairs


def split_blocks(messages: list[dict[str, str]], max_length: int,
                 length_fn: Callable[[list[dict[str, str]]], int]) -> list[list[dict[str, str]]]:
    """Vicuna's split at round boundaries (FastChat's `split_long_conversation.py`, which open-instruct's
    `split_sharegpt_conversations.py` copies): greedy blocks of whole user/assistant rounds whose length
    (`length_fn` of the block's messages) is <= max_length; a leading system turn stays with the first block.
    `length_fn` is asked about each candidate block (the block so far and the next round); `encode_pool`
    answers from the rounds' own tokens, so a conversation is split in time linear in its rounds.

    Where we differ, on purpose: the length is the block's tokens under the run's chat template and
    tokenizer (`length_fn`; theirs adds up each turn's LLaMA tokens + 6, so a block may not fit the row);
    the last round is kept when it opens a block of its own (both scripts then lose it: a bug); a round longer than max_length alone is a block of its own, truncated when it is
    encoded, as FastChat's trainer truncates it (open-instruct's script drops such a round, and with it a
    conversation that is a single such round)."""
    system = messages[:1] if messages[0]["role"] == "system" else []
    turns = messages[len(system):]
    blocks: list[list[dict[str, str]]] = []
    current = list(system)
    for i in range(0, len(turns), 2):
        candidate = current + turns[i: i + 2]
        if any(m["role"] == "assistant" for m in current) and length_fn(candidate) > max_length:
            blocks.append(current)
            candidate = turns[i: i + 2]
        current = candidate
    blocks.append(current)
    return blocks


# --- the messages format: a user's own chat data ---------------------------------------------------

MESSAGE_ROLES = ("system", "user", "assistant")
MESSAGES_META = ("dataset", "source")  # the origin columns of open-instruct's Tulu v2 / Tulu 3 mixtures
MERGED, EMPTY_SYSTEM = "merged consecutive same-role turns", "dropped an empty system turn"
LEADING, TRAILING = "dropped a leading assistant turn", "dropped a trailing unanswered user turn"
EMPTY_TURN = "cut at an empty turn"


def _turn_text(turn: Any, key: str, k: int) -> str:
    """`turn[key]` of messages[k], checked to be a string in an object; a DataError naming messages[k] otherwise."""
    if not isinstance(turn, dict):
        raise DataError(f"messages[{k}] is {type(turn).__name__}, expected object", reason="wrong_type")
    try:
        return field(turn, key)
    except DataError as err:
        raise DataError(f"messages[{k}]: {err.problem}", reason=err.reason) from None


def messages(row: dict, name: str, index: int) -> list[Conversation]:
    """Today's chat format (open-instruct's Tulu v2 and later mixtures, TRL, most chat datasets on the hub):
    `messages: [{role, content}, ...]`, roles system / user / assistant, multi-turn; an optional `id` (else
    the row index); META_COLUMNS and `dataset` / `source` (where a mixture's row came from) go to meta.
    It has no hub dataset: the source reads the user's own files.

    Schema breaks (DataError, the bad-row policy): `messages` missing or not a list, a message not an object,
    `role` or `content` missing or not a string. Then, in this order (contents stripped, as open-instruct
    strips them when it encodes; repairs listed in meta["repairs"], skips counted by reason):

    - a role other than system/user/assistant (tool, function, ...): skipped, unknown_role (the turns around
      it depend on it; checked before the contents, so a tool call's null content is no schema break);
    - a system turn after a user or assistant turn: skipped, system_not_first;
    - fewer than two user/assistant turns: skipped, too_short (as `chat_messages`);
    - consecutive turns of one role are merged, their non-empty contents joined by a blank line (MERGED);
    - an empty system turn is dropped (EMPTY_SYSTEM); a non-empty one stays first, rendered by the chat
      template (tulu: "<|system|>\\n...\\n", as open-instruct renders it);
    - a leading assistant turn is dropped (LEADING), and a trailing unanswered user turn (TRAILING);
    - the conversation is cut at its first empty turn, to whole rounds (EMPTY_TURN: open-instruct would train
      an empty reply, the end marker alone); no round left: skipped, no_answered_round.

    A conversation longer than the row is truncated when it is encoded, as open-instruct's encoder does."""
    raw = field(row, "messages", list)
    roles = [_turn_text(turn, "role", k) for k, turn in enumerate(raw)]
    for k, role in enumerate(roles):
        if role not in MESSAGE_ROLES:
            raise SkippedRow(f"messages[{k}] has role {role!r}, not system, user or assistant",
                             reason="unknown_role")
    contents = [_turn_text(turn, "content", k).strip() for k, turn in enumerate(raw)]
    begun = next((k for k, role in enumerate(roles) if role != "system"), len(roles))
    if "system" in roles[begun:]:
        k = roles.index("system", begun)
        raise SkippedRow(f"messages[{k}] is a system turn after the conversation began",
                         reason="system_not_first")
    if len(roles) - begun < 2:
        raise SkippedRow(f"{len(roles) - begun} user/assistant turn(s): nothing to train on",
                         reason="too_short")
    merged: list[tuple[str, list[str]]] = []  # (role, the contents of its consecutive turns)
    for role, text in zip(roles, contents, strict=True):
        if merged and merged[-1][0] == role:
            merged[-1][1].append(text)
        else:
            merged.append((role, [text]))
    repairs = [MERGED] if len(merged) < len(roles) else []
    turns = [(role, "\n\n".join(t for t in texts if t)) for role, texts in merged]
    system = turns[:1] if turns[0][0] == "system" else []
    turns = turns[len(system):]
    if system and not system[0][1]:
        system, repairs = [], [*repairs, EMPTY_SYSTEM]
    if turns and turns[0][0] == "assistant":
        turns, repairs = turns[1:], [*repairs, LEADING]
    if turns and turns[-1][0] == "user":
        turns, repairs = turns[:-1], [*repairs, TRAILING]
    empty = next((k for k, (_, text) in enumerate(turns) if not text), None)
    if empty is not None:
        turns, repairs = turns[: empty // 2 * 2], [*repairs, EMPTY_TURN]
    if not turns:
        raise SkippedRow("no answered user/assistant round", reason="no_answered_round")
    meta = row_meta(row, **{k: row[k] for k in MESSAGES_META if isinstance(row.get(k), str)})
    convo = [{"role": role, "content": text} for role, text in system + turns]
    return [Conversation(convo, name, row_id(name, row, index), repaired(meta, *repairs))]


# --- Open Assistant 1: message trees -------------------------------------------------------------

OASST_ROLES = {"prompter": "user", "assistant": "assistant"}

# A located row: (row number as errors should print it, the row).
Located = tuple[int, dict]


def _rank_key(message: dict) -> tuple:
    rank = message.get("rank")
    return (rank is None, rank if rank is not None else 0, message["message_id"])


def oasst1_conversations(
    rows: Iterable[Located], name: str, report: Callable[[DataError, int], None], *, top_k: int | None = None
) -> Iterator[tuple[int, Conversation]]:
    """Rebuild OASST1 message trees; yield (row of the last message, conversation) per root-to-leaf path.

    Rows: message_id, parent_id (None at the root), role (prompter|assistant), text, rank (0 = best
    among siblings), lang, message_tree_id, deleted, review_result. Deleted messages, messages that
    failed review (`review_result: false`: not in OASST's "ready" trees that open-instruct reads), empty
    replies and the messages below them are left out, each counted as a skip. `top_k` keeps the k
    best-ranked replies at every branching point: None (the default) keeps every reviewed path, as Tulu v1
    did (seed 004; the reference script's `top_k_reply=None`); 1 keeps the single highest-ranked path per
    tree (Tulu v2's setting). A path ends at an assistant message none of whose kept descendants is an
    assistant reply. Bad messages, and the messages below them that can no longer be reached, go to
    `report(error, row)`.
    """
    if top_k is not None and top_k < 1:
        raise DataError(f"top_k must be >= 1, got {top_k}", reason="bad_option")
    messages: dict[str, dict] = {}
    where: dict[str, int] = {}
    deleted: set[str] = set()
    for rownum, row in rows:
        try:
            message_id = field(row, "message_id")
            role = field(row, "role")
            if role not in OASST_ROLES:
                raise DataError(f"unknown role {role!r} (expected prompter|assistant)", reason="role_order")
            parent = row.get("parent_id")
            if parent is not None and not isinstance(parent, str):
                raise DataError(f"field 'parent_id' is {type(parent).__name__}, expected str", reason="wrong_type")
            text = field(row, "text")
            rank = row.get("rank")
            if rank is not None and not isinstance(rank, (int, float)):
                raise DataError(f"field 'rank' is {type(rank).__name__}, expected number", reason="wrong_type")
        except DataError as err:
            report(err, rownum)
            continue
        removed = ("deleted" if row.get("deleted") else "failed_review" if row.get("review_result") is False
                   else "empty_response" if role == "assistant" and not text.strip() else None)
        if removed is not None:
            report(SkippedRow(f"message {removed.replace('_', ' ')}", reason=removed), rownum)
            deleted.add(message_id)
            continue
        messages[message_id] = dict(message_id=message_id, parent_id=parent, role=role, text=text, rank=rank,
                                    lang=row.get("lang"), tree=row.get("message_tree_id"),
                                    synthetic=row.get("synthetic"))
        where[message_id] = rownum
    children: dict[str, list[dict]] = defaultdict(list)
    for m in messages.values():
        if m["parent_id"] is not None:
            children[m["parent_id"]].append(m)

    def kept_replies(message_id: str) -> list[dict]:
        replies = sorted(children.get(message_id, []), key=_rank_key)
        return replies[:top_k] if top_k is not None else replies

    def walk(node: dict, path: list[dict]) -> Iterator[tuple[int, Conversation]]:
        path = path + [node]
        emitted = False
        for child in kept_replies(node["message_id"]):
            for item in walk(child, path):
                emitted = True
                yield item
        if not emitted and node["role"] == "assistant":
            root = path[0]
            meta = dict(message_tree_id=root["tree"], lang=root["lang"], ranks=[m["rank"] for m in path])
            if root.get("synthetic") is not None:
                meta["synthetic"] = root["synthetic"]
            convo = [{"role": OASST_ROLES[m["role"]], "content": m["text"].strip()} for m in path]
            yield where[node["message_id"]], Conversation(convo, name, f"{name}-{node['message_id']}", meta)

    for m in messages.values():
        if m["parent_id"] is None:
            yield from walk(m, [])

    status: dict[str, str] = {}  # message_id -> "ok" | "deleted" | "broken"

    def connection(message_id: str) -> str:
        chain = []
        while message_id not in status:
            m = messages.get(message_id)
            if message_id in chain:  # a cycle never reaches a root
                status[message_id] = "broken"
                break
            if m is None:
                status[message_id] = "deleted" if message_id in deleted else "broken"
                break
            if m["parent_id"] is None:
                status[message_id] = "ok"
                break
            chain.append(message_id)
            message_id = m["parent_id"]
        for link in chain:
            status[link] = status[message_id]
        return status[chain[0]] if chain else status[message_id]

    for message_id, m in messages.items():
        state = connection(message_id)
        if state == "broken":
            problem = (f"parent {m['parent_id']!r} is missing or was rejected" if m["parent_id"] not in messages
                       else "message hangs below a message with a missing or rejected parent")
            report(DataError(problem, reason="broken_tree"), where[message_id])
        elif state == "deleted":
            report(SkippedRow("message below a deleted or failed-review message", reason="below_removed"),
                   where[message_id])
