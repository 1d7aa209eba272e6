# Derived from FastChat (https://github.com/lm-sys/FastChat), the FastChat authors (LMSYS), Apache-2.0.
# Modified for instructjax. See NOTICE.

"""ShareGPT (`anon8231489123/ShareGPT_Vicuna_unfiltered`): rows {id, conversations: [{from, value}]}, read
one of two ways, chosen by the source option `clean`.

`clean: null` (the default; the Tulu mixtures): the html-cleaned release (`HTML_cleaned_raw_dataset/`,
turn values already markdown; the hub files of the `sharegpt` source), read as open-instruct reads it for
Tulu (`sharegpt_messages`). Nothing is de-duplicated or filtered by content, as Tulu (seed 004, App. C:
"We do not do any further filtering of samples"). Raw ShareGPT HTML given this way is trained as HTML.

`clean: fastchat`: a raw ShareGPT dump (turn values in HTML, as scraped) cleaned by FastChat 0.2.36's
`fastchat/data/clean_sharegpt.py` (Apache-2.0), reproduced here step by step, in its order:

Per conversation (`clean_html_one_sample`):
1. fewer than two turns: too short; a first turn not from "human" is dropped, then a last turn from
   "human", each time fewer than two turns left: too short;
2. turn by turn: a speaker other than human, gpt, human, gpt, ... in that order: wrong format; a raw value
   holding "openai" or "chatgpt" (any case): blocked words; HTML -> markdown (`html_to_markdown`), a value
   the HTML parser rejects: parser error; a value that is empty after cleaning or whose first character
   is not printable (U+200B, ...) ends the conversation there (the checks stop with it);
3. cut to whole rounds; under 16 characters in the turns cleaned (the odd one cut included): too short.

Across the dump, in file order (`clean_html_all`; the files of `data_files` in their order; the hosts of a run
clean a share of the rows each, and every host de-duplicates every row's outcome): a conversation
kept so far is dropped when its id is that of one kept before it (id duplication), when it used plugins
(`plugins` not null), or when its first exchange (both cleaned values) is that of one kept before it (value
duplication). Each is a skip reason of its own, counted in `instructjax data stats`: too_short,
wrong_format, blocked_words, parser_error, duplicate_id, plugins, duplicate_first_exchange. FastChat's steps
after the cleaner (`optional_clean`'s language filter, `filter_wrong_format`'s list-index check, the
hard-coded identity questions) are not applied; its split is `dialogues.split_blocks`. FastChat's main branch
since June 2024 also drops replies starting "Too many requests in 1 hour"; 0.2.36, the reference, does not.

Either way a conversation longer than the run's row length is split into blocks of whole rounds when it
is encoded (`dialogues.split_blocks`).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable
from typing import Any

import numpy as np

from instructjax.core import storage
from instructjax.core.context import current
from instructjax.core.errors import ConfigError, DataError, SkippedRow
from instructjax.data.schema import Conversation
from instructjax.data.sources import rows
from instructjax.data.sources.adapters import field, repaired, row_id, row_meta

SHAREGPT_ROLES = ("human", "gpt")  # the speakers both ways keep, in this order
CLEAN_OPTIONS = (None, "fastchat")  # the `clean` option of the sharegpt source


# --- clean: null: open-instruct's reading of the html-cleaned release ------------------------------

def chat_turns(turns: list) -> list[tuple[str, str]]:
    """ShareGPT-format turns [{from, value}] -> [(speaker, value)]; a DataError for a turn that is not an
    object or lacks a string `from` / `value`."""
    pairs = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DataError(f"conversations[{k}] is {type(turn).__name__}, expected object", reason="wrong_type")
        pairs.append((field(turn, "from"), field(turn, "value")))
    return pairs


UNPAIRED, EMPTY_REPLY = "dropped the unpaired last turn", "cut at an empty reply"


def sharegpt_messages(turns: list) -> tuple[list[dict[str, str]], list[str]]:
    """ShareGPT turns as open-instruct reads the html-cleaned release for Tulu (its
    `split_sharegpt_conversations.py`, then `convert_sharegpt_data`) -> (messages, repairs):

    - an unpaired last turn is dropped (`conversations[: len // 2 * 2]`, whatever its speaker); fewer than
      two turns: skipped (too_short);
    - the turns must then go human, gpt, human, gpt, ... from the first (the split script's
      `filter_invalid_roles`): a turn from another speaker (bing, chatgpt, user, system, ...) is skipped as
      other_speaker, a turn out of that order (a leading gpt turn, two human turns) as role_order;
    - values are stripped (open-instruct strips them when it encodes).

    Ours: the conversation is cut before its first empty reply, to whole rounds (open-instruct would
    train an empty reply, i.e. the end marker alone); no round left: skipped (no_answered_round). Speakers
    and order are judged on the whole conversation, where open-instruct judges each block after splitting
    (so the blocks before a bad turn survive there when the split falls before it)."""
    pairs = chat_turns(turns)
    repairs = [UNPAIRED] if len(pairs) % 2 else []
    pairs = pairs[: len(pairs) // 2 * 2]
    if not pairs:
        raise SkippedRow(f"{len(turns)} turn(s): nothing to train on", reason="too_short")
    for k, (speaker, _) in enumerate(pairs):
        expected = SHAREGPT_ROLES[k % 2]
        if speaker not in SHAREGPT_ROLES:
            raise SkippedRow(f"conversations[{k}] is from {speaker!r}, not human or gpt", reason="other_speaker")
        if speaker != expected:
            raise SkippedRow(f"conversations[{k}] is from {speaker!r} where {expected!r} is due", reason="role_order")
    messages = [{"role": ("user", "assistant")[k % 2], "content": value.strip()} for k, (_, value) in enumerate(pairs)]
    empty = next((k for k in range(1, len(messages), 2) if not messages[k]["content"]), None)
    if empty is not None:
        messages, repairs = messages[: empty - 1], [*repairs, EMPTY_REPLY]
    if not messages:
        raise SkippedRow("the first reply is empty: no answered round", reason="no_answered_round")
    return messages, repairs


def sharegpt_id(row: dict) -> str | int:
    """The conversation's own id (FastChat's cleaner de-duplicates by it): a string or an integer."""
    cid = row.get("id")
    if cid is None:
        raise DataError("missing field 'id'", reason="missing_field")
    if not isinstance(cid, (str, int)) or isinstance(cid, bool):
        raise DataError(f"field 'id' is {type(cid).__name__}, expected str or int", reason="wrong_type")
    return cid


CHUNK = 4096  # rows of the dump fetched at once for cleaning


def prepare(tables: list | None, opts: dict[str, Any], share: rows.Share = rows.alone,
            stats: rows.PipelineStats | None = None) -> dict[str, Any]:
    """The sharegpt source's adapter options (`Source.prepare`). With `clean: fastchat`, FastChat's cleaner
    runs once over every row of the dump (`clean_row`, mapped by `share`: over the hosts of a run, each fetching
    and cleaning its share of the rows), then its de-duplication in file order (`clean_dump`: it keeps the first
    conversation in file order, whatever order the rows are then visited in), and the outcome per row goes
    to the adapter as `cleaned`; the last dump cleaned is kept for the command's next read of the same files (`core.context`). The rows
    cleaned here are counted into `stats.rows_read`. `tables` None: the hub dataset (the html-cleaned release), before it is fetched."""
    clean = opts.get("clean")
    if clean not in CLEAN_OPTIONS:
        raise ConfigError(f"source 'sharegpt': clean must be null (the html-cleaned release, read as open-instruct "
                          f"reads it) or 'fastchat' (FastChat's cleaner on a raw HTML dump), got {clean!r}")
    if clean is None:
        return opts
    if tables is None:
        raise ConfigError("source 'sharegpt': clean: fastchat cleans a raw HTML dump given as data_files; the hub "
                          "files are the html-cleaned release (cleaning them again would escape their markdown)")
    key = tuple((t.path, len(t), storage.fingerprint(t.path) if storage.path(t.path).is_file() else None)
                for t in tables)  # fmt: skip
    prepared = current().slot("data.sharegpt_cleaned", lambda _: {})  # the command's last whole-dump clean
    if key not in prepared:
        starts = np.cumsum([0] + [len(t) for t in tables])

        def clean(ordinals: list[int]) -> list[tuple]:
            out = []
            for begin in range(0, len(ordinals), CHUNK):  # the rows fetched a chunk at a time
                wanted = ordinals[begin : begin + CHUNK]
                fetched = rows.fetch(tables, starts, np.array(wanted, dtype=np.int64))
                out += [clean_row(f"file {tables[t].path}, row {rownum}", row)
                        for t, rownum, row in map(fetched.get, wanted)]
            if stats is not None:
                stats.rows_read += len(ordinals)
            return out

        cleaned = share(clean, list(range(int(starts[-1]))))
        prepared.clear()
        prepared[key] = clean_dump(enumerate(cleaned))
    return {**opts, "cleaned": prepared[key]}


def sharegpt(row: dict, name: str, index: int, clean: str | None = None,
             cleaned: dict[int, Any] | None = None) -> list[Conversation]:
    """ShareGPT: id + conversations[{from: human|gpt|..., value}].

    `clean` None (the default; the Tulu mixtures): the html-cleaned release (turn values already markdown;
    raw HTML would be trained as HTML), read as open-instruct reads it (`sharegpt_messages`); duplicates
    are kept (Tulu: "we do not do any further filtering"). `clean: fastchat`: a raw HTML dump cleaned by
    FastChat's whole cleaner (`clean_turns`, `clean_dump`; `prepare` runs it over the dump), human -> user,
    gpt -> assistant. Either way a conversation longer than the run's row length is split into blocks of
    whole rounds when it is encoded (`dialogues.split_blocks`)."""
    if clean == "fastchat":
        if cleaned is None:
            raise ConfigError("sharegpt clean: fastchat needs the whole dump cleaned first (`prepare`; "
                              "sources.load_conversations does it)")
        outcome = cleaned[index]
        if isinstance(outcome, DataError):
            raise outcome
        values, repairs = outcome
        messages = [{"role": ("user", "assistant")[k % 2], "content": v} for k, v in enumerate(values)]
    else:
        messages, repairs = sharegpt_messages(field(row, "conversations", list))
    return [Conversation(messages, name, row_id(name, row, index), repaired(row_meta(row), *repairs))]


# --- clean: fastchat: FastChat's cleaner ----------------------------------------------------------

DIV = re.compile(r"<div.*?>")
SPAN = re.compile(r"<span.*?>")
CODE_LANG = re.compile(r"```\s*(.*?)(?:Copy code)+(.+?)\s*?```", re.DOTALL)  # ```<lang>Copy code<code>```
CODE_LANG_FORMAT = "```\\g<1>\n\\g<2>\n```"
REGENERATE = re.compile(r"\d+ / \d+")  # "2 / 3": the regenerated-answer counter
COPY_CHARS = re.compile(r"Copy\d+ chars / \d+ words")
COPY_CODE = re.compile(r"```(.*?)Copy code\s*```")  # an empty code block
BLOCKED_WORDS = ("openai", "chatgpt")
MIN_CHARS = 16
CUT = "cut at a turn that is empty or starts with a non-printable character"
LEADING, TRAILING = "dropped a leading non-human turn", "dropped a trailing human turn"

# What the cleaner made of a row: (cleaned values, alternating human/gpt; repairs), or why it is dropped.
Outcome = tuple[list[str], list[str]] | DataError


def html_to_markdown(value: str) -> str:
    """One turn's HTML as FastChat turns it into markdown: <div>/<span> tags removed, `markdownify`, code
    blocks reformatted, the leading "N / M" counter and "CopyN chars / M words" removed, empty code blocks
    removed, "\\n\\n\\n" -> "\\n", stripped."""
    import markdownify  # runtime dependency of this option only

    value = DIV.sub("", value)
    value = SPAN.sub("", value)
    value = markdownify.markdownify(value).strip()
    value = CODE_LANG.sub(CODE_LANG_FORMAT, value)
    noise = REGENERATE.search(value)
    if noise and noise.start() == 0:
        value = value[noise.end():]
    value = COPY_CHARS.sub("", value)
    value = COPY_CODE.sub("", value)
    return value.replace("\n\n\n", "\n").strip()


def clean_turns(turns: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """One conversation's (speaker, raw value) turns -> (cleaned values, repairs), or a `SkippedRow` with
    FastChat's reason (steps 1-3 of the module doc)."""
    import bs4

    def too_short(why: str) -> SkippedRow:
        return SkippedRow(why, reason="too_short")

    if len(turns) <= 1:
        raise too_short(f"{len(turns)} turn(s) (FastChat keeps two or more)")
    first, repairs = 0, []
    if turns[0][0] != "human":
        first, repairs = 1, [LEADING]
    last = len(turns)
    if last - first > 1 and turns[-1][0] == "human":
        last, repairs = last - 1, [*repairs, TRAILING]
    if last - first <= 1:
        raise too_short(f"{last - first} turn(s) left after dropping a leading non-human / trailing human turn")
    chars, values = 0, []
    for k in range(first, last):
        speaker, raw = turns[k]
        if speaker != SHAREGPT_ROLES[(k - first) % 2]:
            raise SkippedRow(f"conversations[{k}] is from {speaker!r}, expected {SHAREGPT_ROLES[(k - first) % 2]!r}",
                             reason="wrong_format")
        blocked = [word for word in BLOCKED_WORDS if word in raw.lower()]
        if blocked:
            raise SkippedRow(f"conversations[{k}] contains the blocked word {blocked[0]!r}", reason="blocked_words")
        try:
            value = html_to_markdown(raw)
        except (bs4.builder.ParserRejectedMarkup, AssertionError):
            raise SkippedRow(f"conversations[{k}]: the HTML parser rejects the value", reason="parser_error") from None
        if not value or not value[0].isprintable():
            repairs.append(CUT)
            break
        chars += len(value)
        values.append(value)
    values = values[: len(values) // 2 * 2]
    if chars < MIN_CHARS or not values:
        raise too_short(f"{chars} character(s) after cleaning (FastChat keeps {MIN_CHARS} or more)")
    return values, repairs


def clean_row(where: str, row: dict | DataError) -> tuple[str, Hashable, bool, Outcome]:
    """One row of a raw dump (`where` it is, as errors print it) -> (where, its id, whether it used plugins, what
    `clean_turns` makes of it): FastChat's `clean_html_one_sample`, before the dump's de-duplication."""
    if isinstance(row, DataError):
        return where, None, False, row
    try:
        cid, plugins = sharegpt_id(row), row.get("plugins") is not None
        turns = chat_turns(field(row, "conversations", list))
    except DataError as err:
        return where, None, False, err
    try:
        return where, cid, plugins, clean_turns(turns)
    except SkippedRow as skip:
        return where, cid, plugins, skip


def clean_dump(cleaned: Iterable[tuple[int, tuple[str, Hashable, bool, Outcome]]]) -> dict[int, Outcome]:
    """FastChat's `clean_html_all`: (ordinal, `clean_row`'s outcome) of every row in file order -> the outcome
    per ordinal. A conversation dropped for any reason does not count as seen: a later one with its id or first
    exchange is kept (as FastChat)."""
    seen: dict[Hashable, str] = {}  # id or (first value, second value) -> where the kept conversation is
    outcomes: dict[int, Outcome] = {}
    for ordinal, (where, cid, plugins, outcome) in cleaned:
        if isinstance(outcome, DataError):
            outcomes[ordinal] = outcome
            continue
        values, repairs = outcome
        key = (values[0], values[1])
        if cid in seen:
            outcomes[ordinal] = SkippedRow(f"id {cid!r} repeats that of the conversation kept at {seen[cid]}",
                                           reason="duplicate_id")
        elif plugins:
            outcomes[ordinal] = SkippedRow("the conversation used plugins", reason="plugins")
        elif key in seen:
            outcomes[ordinal] = SkippedRow(f"its first exchange repeats that of the conversation kept at {seen[key]}",
                                           reason="duplicate_first_exchange")
        else:
            seen[cid] = seen[key] = where
            outcomes[ordinal] = (values, repairs)
    return outcomes
