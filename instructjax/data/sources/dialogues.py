# Derived from FastChat (https://github.com/lm-sys/FastChat), the FastChat authors (LMSYS), Apache-2.0.
# Modified for instructjax. See NOTICE.

"""Multi-turn datasets: Baize's transcripts, ShareGPT-style turn lists (`chat_messages`) and their split into
blocks of whole rounds (`split_blocks`), Open Assistant's message trees (`oasst1_conversations`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

from instructjax.core.errors import DataError, SkippedRow
from instructjax.data.schema import Conversation
from instructjax.data.sources.adapters import alpaca_style, field, repaired, row_id, row_meta

# --- multi-turn datasets -------------------------------------------------------------------------

def wizardlm(row: dict, name: str, index: int) -> list[Conversation]:
    """WizardLM: V1 (evol_instruct_70k) instruction / output rows, or V2 (evol_instruct_V2_143k)
    `conversations` of human/gpt turns (read as open-instruct's `convert_wizardlm_data` reads them)."""
    if row.get("conversations") is not None and row.get("instruction") is None:  # datasets fills absent columns
        messages, repairs = chat_messages(field(row, "conversations", list))
        return [Conversation(messages, name, row_id(name, row, index, key="idx"), repaired(row_meta(row), *repairs))]
    return alpaca_style(row, name, index)


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
    `length_fn` is asked about each candidate block (the block so far and the next round); `encoding.pool`
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


# --- Open Assistant 1: message trees -------------------------------------------------------------

OASST_ROLES = {"prompter": "user", "assistant": "assistant"}

# A numbered row: (its ordinal over the files, growing down the files; the row).
Located = tuple[int, dict]
TREE_LINKS = ("message_id", "parent_id")  # the columns that join a message to its tree


def _rank_key(message: dict) -> tuple:
    rank = message.get("rank")
    return (rank is None, rank if rank is not None else 0, message["message_id"])


def oasst1_conversations(
    rows: Iterable[Located], name: str, *, top_k: int | None = None
) -> Iterator[tuple[tuple, int, Conversation | DataError]]:
    """Rebuild OASST1 message trees: yield (order, row, event), an event being a conversation per root-to-leaf
    path (row: its last message's) or a bad or left-out message (a `DataError` or `SkippedRow`; row: its own).

    Rows: message_id, parent_id (None at the root), role (prompter|assistant), text, rank (0 = best
    among siblings), lang, message_tree_id, deleted, review_result. Deleted messages, messages that
    failed review (`review_result: false`: not in OASST's "ready" trees that open-instruct reads), empty
    replies and the messages below them are left out, each counted as a skip. `top_k` keeps the k
    best-ranked replies at every branching point: None (the default) keeps every reviewed path, as Tulu v1
    did (seed 004; the reference script's `top_k_reply=None`); 1 keeps the single highest-ranked path per
    tree (Tulu v2's setting). A path ends at an assistant message none of whose kept descendants is an
    assistant reply. Bad messages, and the messages below them that can no longer be reached, are events.

    `rows` come in file order, numbered by their ordinals. The events come out in `order`, and the events of
    rows that share no message id (as id or parent; `TREE_LINKS`) sort together by `order` as they come out of
    all the rows at once: the rows of separate trees can be adapted apart (by the hosts of a run) and merged.
    """
    if top_k is not None and top_k < 1:
        raise DataError(f"top_k must be >= 1, got {top_k}", reason="bad_option")
    messages: dict[str, dict] = {}
    where: dict[str, int] = {}  # message id -> its (last) row
    first: dict[str, int] = {}  # message id -> the row that put it in `messages`: its place in their order
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
            yield (0, rownum), rownum, err
            continue
        removed = ("deleted" if row.get("deleted") else "failed_review" if row.get("review_result") is False
                   else "empty_response" if role == "assistant" and not text.strip() else None)
        if removed is not None:
            yield (0, rownum), rownum, SkippedRow(f"message {removed.replace('_', ' ')}", reason=removed)
            deleted.add(message_id)
            continue
        messages[message_id] = dict(message_id=message_id, parent_id=parent, role=role, text=text, rank=rank,
                                    lang=row.get("lang"), tree=row.get("message_tree_id"),
                                    synthetic=row.get("synthetic"))
        where[message_id] = rownum
        first.setdefault(message_id, rownum)
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
            for k, (rownum, convo) in enumerate(walk(m, [])):
                yield (1, first[m["message_id"]], k), rownum, convo

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
            yield (2, first[message_id]), where[message_id], DataError(problem, reason="broken_tree")
        elif state == "deleted":
            yield ((2, first[message_id]), where[message_id],
                   SkippedRow("message below a deleted or failed-review message", reason="below_removed"))
