"""Mosaic-IT augmentation (seed 003): k single-turn conversations -> one, under a meta-instruction.

One call to `mosaic_epoch` is one random mosaic pass over the data, deterministic from (seed, epoch).
For n training epochs the paper runs n passes and trains one epoch on their union (Appendix B.1).

Strategies (`MosaicSection.strategy`):
  primary  numbered instructions in, numbered responses out in the same order, no meta-instruction.
  format   a random serial-digit format, and with probability 1/2 a parsing bracket + text pair
           around each response, stated in a meta-instruction (Table 8).
  permute  format, plus a Permute rule (Table 9) with probability 1/2 (the paper's "Permute" ablation).
  maskout  format, plus a Maskout rule (Table 9) with probability 1/2.
  mix      the paper's default: format, plus Permute w.p. 1/3 or Maskout w.p. 1/3 (format only w.p. 1/3).
A mosaic of one instruction is format-only (nothing to permute, masking it would leave nothing).

Count k (Appendix A): uniform on 1..k_max (default), fixed k_max, or k = k_max - floor(x) with x from
numpy's exponential (scale 1), lognormal (mean 0, sigma 1: the paper's sigma = 0 is degenerate; the
released code uses numpy's default 1), logistic (loc 0, scale 2) or pareto (numpy's Lomax, a = 1, i.e.
the paper's x_sample - 1); x is redrawn until k lies in 1..k_max (x < 0 is redrawn too, as in the
released code, since k may not exceed k_max).

Token budget: the whole mosaic, measured by the caller's `count_tokens` (chat template + tokenizer),
must be <= max_length. If the drawn k does not fit, k is reduced to the largest prefix that fits and
the rest of the group starts the next mosaic (as the released code does). An example that does not fit
even alone is emitted unchanged as a plain example (the baseline would train on it too; truncation is
the packer's job), and counted in `MosaicStats.over_budget`.

Inputs that are not plain single-turn (a system prompt, or more than one round) pass through unchanged
as singletons and are counted in `MosaicStats.passthrough`. Every input appears in exactly one output.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from instructjax.core.config import MosaicSection
from instructjax.core.errors import ConfigError
from instructjax.data.mosaic import rules as R
from instructjax.data.schema import Conversation

_MAX_REDRAWS = 100_000
DEFAULT_MAX_LENGTH = 2048  # the budget of a mosaic pass outside a run (a run uses its data.seq_len)


def sample_count(rng: np.random.Generator, config: MosaicSection) -> int:
    """Draw the number of instructions k in 1..k_max from the configured distribution (Appendix A)."""
    k_max, p = config.k_max, config.params
    if config.distribution == "uniform":
        return int(rng.integers(1, k_max + 1))
    if config.distribution == "fixed":
        return k_max
    draw: Callable[[], float] = {
        "exponential": lambda: rng.exponential(p["scale"]),
        "lognormal": lambda: rng.lognormal(p["mean"], p["sigma"]),
        "logistic": lambda: rng.logistic(p["loc"], p["scale"]),
        "pareto": lambda: rng.pareto(p["a"]),
    }[config.distribution]
    for _ in range(_MAX_REDRAWS):
        x = draw()
        if 0.0 <= x < k_max:
            return k_max - math.floor(x)
    raise ConfigError(
        f"{config.distribution} {p} almost never lands in [0, {k_max}); check distribution_params"
    )


# --- One mosaic ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MosaicPlan:
    """The random choices of one mosaic, drawn once and applied to whichever prefix fits the budget."""

    strategy: str  # primary | format | permute | maskout (format + rule)
    rule: str | None
    serial: str
    punctuation: str
    newline_after_label: bool
    bracket: tuple[str, str] | None  # parsing bracket, None = responses are not wrapped
    texts: tuple[str, str] | None  # parsing text pair (lower-cased or not)
    instruction_separator: str
    meta_first: bool
    phrase: int  # which of our phrasings (format and rule)
    list_separator: str
    shuffled: tuple[int, ...]  # a random permutation of range(k): FIX order, FIX mask candidates
    mask_ratio: float

    def label(self, number: int) -> str:
        return self.serial.format(i=number) + self.punctuation

    def tags(self) -> tuple[str, str] | None:
        if self.bracket is None or self.texts is None:
            return None
        left, right = self.bracket
        return left + self.texts[0] + right, left + self.texts[1] + right


def draw_plan(rng: np.random.Generator, strategy: str, k: int) -> MosaicPlan:
    """Draw the format, rule and phrasing of one mosaic of (at most) k instructions."""
    if strategy == "mix":
        strategy = ("format", "permute", "maskout")[int(rng.integers(3))]
    elif strategy in ("permute", "maskout") and rng.random() < 0.5:
        strategy = "format"
    rule = None
    if strategy == "permute":
        rule = list(R.PERMUTE_RULES)[int(rng.integers(len(R.PERMUTE_RULES)))]
    elif strategy == "maskout":
        rule = list(R.MASKOUT_RULES)[int(rng.integers(len(R.MASKOUT_RULES)))]
    tagged = strategy != "primary" and bool(rng.random() < 0.5)
    texts = R.PARSING_TEXTS[int(rng.integers(len(R.PARSING_TEXTS)))]
    if rng.random() < 0.5:
        texts = (texts[0].lower(), texts[1].lower())
    if strategy == "primary":
        serial, punct, newline, sep, meta_first = "{i}", ".", False, "\n\n", True
    else:
        serial = R.SERIAL_FORMATS[int(rng.integers(len(R.SERIAL_FORMATS)))]
        punct = R.SERIAL_PUNCTUATION[int(rng.integers(len(R.SERIAL_PUNCTUATION)))]
        newline, sep, meta_first = (
            bool(rng.random() < 0.5),
            ("\n", "\n\n")[int(rng.integers(2))],
            bool(rng.random() < 0.5),
        )
    return MosaicPlan(
        strategy=strategy,
        rule=rule,
        serial=serial,
        punctuation=punct,
        newline_after_label=newline,
        bracket=R.PARSING_BRACKETS[int(rng.integers(len(R.PARSING_BRACKETS)))] if tagged else None,
        texts=texts if tagged else None,
        instruction_separator=sep,
        meta_first=meta_first,
        phrase=int(rng.integers(1 << 16)),
        list_separator=R.LIST_SEPARATORS[int(rng.integers(len(R.LIST_SEPARATORS)))],
        shuffled=tuple(int(i) for i in rng.permutation(k)),
        mask_ratio=float(rng.uniform(*R.MASK_RATIO_RANGE)),
    )


def _pick(phrases: Sequence[str], plan: MosaicPlan) -> str:
    return phrases[plan.phrase % len(phrases)]


def build_mosaic(
    items: Sequence[Conversation], plan: MosaicPlan, *, conv_id: str, source: str
) -> Conversation:
    """Compose single-turn `items` into one single-turn Conversation following `plan`.

    meta["mosaic"] records what the prompt asks for: strategy, rule, k, order (1-based numbers in
    response order), masked (1-based), format, source_ids.
    """
    k = len(items)
    instructions = [c.messages[0]["content"] for c in items]
    responses = [c.messages[1]["content"] for c in items]
    strategy, rule = plan.strategy, plan.rule
    if k == 1 and rule is not None:  # nothing to permute, and masking would leave nothing
        strategy, rule = "format", None
    fixed = [i for i in plan.shuffled if i < k]
    masked: list[int] = []
    order = list(range(k))
    rule_text = ""
    numbers = lambda idx: plan.list_separator.join(str(i + 1) for i in idx)  # noqa: E731
    if strategy == "permute":
        order = R.permute_order(rule, instructions, fixed)
        rule_text = _pick(R.PERMUTE_RULES[rule], plan).format(order=numbers(order))
    elif strategy == "maskout":
        n_masked = R.mask_count(k, plan.mask_ratio)
        masked = R.maskout_indices(rule, instructions, n_masked, fixed[:n_masked])
        order = [i for i in order if i not in masked]
        rule_text = _pick(R.MASKOUT_RULES[rule], plan).format(masked=numbers(masked), n=len(masked))

    gap = "\n" if plan.newline_after_label else " "
    tags = plan.tags()
    prompt_body = plan.instruction_separator.join(
        f"{plan.label(i + 1)}{gap}{text}" for i, text in enumerate(instructions)
    )
    meta_text = ""
    if strategy != "primary":
        phrases = R.FORMAT_TAGGED_PHRASES if tags else R.FORMAT_PLAIN_PHRASES
        open_tag, close_tag = tags or ("", "")
        meta_text = _pick(phrases, plan).format(label=plan.label(1), open=open_tag, close=close_tag)
        meta_text = f"{meta_text} {rule_text}".strip()
    user = "\n\n".join(
        p for p in ((meta_text, prompt_body) if plan.meta_first else (prompt_body, meta_text)) if p
    )
    answer = (lambda r: f"{tags[0]} {r} {tags[1]}") if tags else (lambda r: r)
    assistant = "\n\n".join(f"{plan.label(i + 1)}{gap}{answer(responses[i])}" for i in order)
    info = {
        "strategy": strategy,
        "rule": rule,
        "k": k,
        "order": [i + 1 for i in order],
        "masked": [i + 1 for i in masked],
        "format": {
            "serial": plan.serial,
            "punctuation": plan.punctuation,
            "newline_after_label": plan.newline_after_label,
            "tags": list(tags) if tags else None,
        },
        "source_ids": [c.id for c in items],
    }
    messages = [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return Conversation(messages=messages, source=source, id=conv_id, meta={"mosaic": info})


# --- One pass over the data ----------------------------------------------------------------------


@dataclass
class MosaicStats:
    """What one mosaic pass produced."""

    inputs: int = 0
    sequences_out: int = 0
    mosaics: int = 0
    k_histogram: Counter = field(default_factory=Counter)  # k actually used, per mosaic
    requested_k_histogram: Counter = field(default_factory=Counter)  # k drawn from the distribution
    reduced: int = 0  # mosaics whose k was cut to fit max_length
    over_budget: int = 0  # examples too long even alone: emitted unchanged as plain examples
    over_budget_ids: list[str] = field(default_factory=list)
    passthrough: int = 0  # system-prompted or multi-turn inputs: emitted unchanged
    strategy_counts: Counter = field(default_factory=Counter)
    rule_counts: Counter = field(default_factory=Counter)
    count_tokens_calls: int = 0
    mosaic_tokens: int = 0  # templated tokens of all mosaics (as measured by count_tokens)

    def summary(self) -> str:
        """One line for logs."""
        hist = " ".join(f"{k}:{n}" for k, n in sorted(self.k_histogram.items()))
        return (
            f"mosaic: {self.inputs} inputs -> {self.sequences_out} sequences ({self.mosaics} mosaics, "
            f"{self.passthrough} passed through, {self.over_budget} over budget as plain, "
            f"{self.reduced} reduced to fit); k histogram {hist}; {self.count_tokens_calls} token counts"
        )


def is_mosaicable(conv: Conversation) -> bool:
    """Plain single-turn (user, assistant) conversations are mosaicked; the rest pass through."""
    return len(conv.messages) == 2 and conv.messages[0]["role"] == "user"


def _chars(conv: Conversation) -> int:
    return sum(len(m["content"]) for m in conv.messages)


def fit_prefix(
    group: Sequence[Conversation],
    build: Callable[[int], Conversation],
    count: Callable[[Conversation], int],
    max_length: int,
) -> tuple[Conversation | None, int, int]:
    """The mosaic of the longest prefix of `group` within max_length: (mosaic, k, tokens) or (None, 0, 0).

    Tries all of `group` first (one count in the common case). Otherwise estimates each prefix's
    length from its characters at the full mosaic's tokens-per-character, starts there and walks one
    step at a time to the boundary between a prefix that fits and one that does not.
    """
    full = build(len(group))
    tokens = count(full)
    if tokens <= max_length:
        return full, len(group), tokens
    per_char = tokens / max(_chars(full), 1)
    estimates = [per_char * _chars(build(m)) for m in range(1, len(group))]
    m = max([i + 1 for i, e in enumerate(estimates) if e <= max_length] or [1])
    fits, fails, best, best_tokens = 0, len(group), None, 0
    while fails - fits > 1:
        candidate = build(m)
        tokens = count(candidate)
        if tokens <= max_length:
            fits, best, best_tokens, m = m, candidate, tokens, m + 1
        else:
            fails, m = m, m - 1
    return best, fits, best_tokens


def mosaic_epoch(
    conversations: Sequence[Conversation],
    config: MosaicSection,
    *,
    seed: int,
    epoch: int,
    count_tokens: Callable[[Conversation], int],
    shuffle: bool = True,
) -> tuple[list[Conversation], MosaicStats]:
    """One random mosaic pass over `conversations`, deterministic from (seed, epoch).

    `count_tokens(conv)` must return the length of `conv` after the chat template and tokenizer; it
    is called about once per output mosaic (more only when a mosaic has to shrink to fit). Output:
    the mosaics in stream order, then the pass-through conversations. Every input appears in
    exactly one output (mosaics list their inputs in meta["mosaic"]["source_ids"]).
    `shuffle=False`: the stream is the input order (each mosaic joins consecutive inputs; k and the
    formats are drawn as with shuffling) and the output is in input order too, each mosaic or passed-through
    conversation where its first input stood.
    """
    stats = MosaicStats(inputs=len(conversations))

    def count(conv: Conversation) -> int:
        stats.count_tokens_calls += 1
        return int(count_tokens(conv))

    for conv in conversations:
        conv.validate()
    passthrough = [c for c in conversations if not is_mosaicable(c)]
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(conversations))  # drawn either way: k and the plans follow the same draws
    where = [i for i in (order if shuffle else range(len(conversations))) if is_mosaicable(conversations[i])]
    stream = [conversations[i] for i in where]
    out: list[Conversation] = []
    first: list[int] = []  # per output, the input index of its first conversation
    start = 0
    while start < len(stream):
        k = sample_count(rng, config)
        stats.requested_k_histogram[k] += 1
        group = stream[start : start + k]
        plan = draw_plan(rng, config.strategy, len(group))
        sources = {c.source for c in group}
        source = sources.pop() if len(sources) == 1 else "mosaic"
        mosaic_id = f"mosaic/s{seed}/e{epoch}/{stats.mosaics:07d}"

        def build(m: int, group=group, plan=plan, source=source, mosaic_id=mosaic_id) -> Conversation:
            return build_mosaic(group[:m], plan, conv_id=mosaic_id, source=source)

        mosaic, used, tokens = fit_prefix(group, build, count, config.max_length or DEFAULT_MAX_LENGTH)
        first.append(int(where[start]))
        if mosaic is None:
            out.append(group[0])
            stats.over_budget += 1
            stats.over_budget_ids.append(group[0].id)
            start += 1
            continue
        info = mosaic.meta["mosaic"]
        stats.mosaics += 1
        stats.k_histogram[used] += 1
        stats.reduced += used < len(group)
        stats.strategy_counts[info["strategy"]] += 1
        if info["rule"]:
            stats.rule_counts[f"{info['strategy']}/{info['rule']}"] += 1
        stats.mosaic_tokens += tokens
        out.append(mosaic)
        start += used
    out.extend(passthrough)
    first += [i for i, c in enumerate(conversations) if not is_mosaicable(c)]
    if not shuffle:
        out = [out[j] for j in sorted(range(len(out)), key=first.__getitem__)]
    stats.passthrough = len(passthrough)
    stats.sequences_out = len(out)
    return out, stats
