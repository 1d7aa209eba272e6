"""Which examples a run trains on, and in which order: the example side of the pipeline.

- Epoch mode (an epoch-mode mixture, or a single task): each task's subset is drawn once (by the task
  itself: `examples.encoded_examples`); every epoch shuffles their concatenation afresh, and Mosaic-IT
  (if on) makes a fresh pass over the whole epoch.
- Rate mode (a rate-mode mixture): each draw picks a task with probability proportional to its rate,
  then that task's next example in its own per-cycle shuffle; endless.

`data.shuffle: false` keeps file order: a task's order is its rows' (files in order, rows in order, a row's
examples in order; a selection task's is the selection's), and a subset of `count` keeps the members the seed
draws, in that order. Epoch mode: every epoch is the tasks in the mixture's order, each task's examples in
that order (the same order every epoch). Rate mode: each task's examples cycle in that order; which task each
draw takes stays a seeded choice by rate (sampling, not shuffling). Mosaic-IT: each mosaic joins consecutive
examples of the epoch's order and the mosaics keep that order (k, formats and rules are still drawn afresh
every epoch: the augmentation). The packer's rows keep their examples' order (see `pipeline`).

The stream is global: every host computes the same examples in the same order (the pipeline then gives
each host its slice of every global batch). Every random draw comes from a named stream (`named_rng`), so
all of it is a function of (seed, epoch, window).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from instructjax.core import stopping
from instructjax.core.config import DataSection
from instructjax.core.errors import ConfigError
from instructjax.data import cache
from instructjax.data.batches.example_reading import example_sizes
from instructjax.data.binding import Resolved, specs_of
from instructjax.data.blends import specs
from instructjax.data.encoding.encode import Encoded, encode_conversation
from instructjax.data.encoding.templates import DEFAULT_TEMPLATE
from instructjax.data.encoding.tokenizer import Tokenizer
from instructjax.data.mosaic.augment import mosaic_epoch
from instructjax.data.schema import Conversation
from instructjax.data.sources.rows import PipelineStats
from instructjax.data.tokenized import examples as examples_lib

# The random streams of the example side (and of the packer's row order), each named for what it draws;
# `data.shuffle: false` draws none of the orders (epoch_order, rate_cycle, window_rows, mosaic_order), only the
# rate-mode task choices (rate_choices) and Mosaic-IT's own draws (`mosaic.mosaic_epoch`).
RANDOM_STREAMS = {"epoch_order": 1, "rate_cycle": 2, "rate_choices": 3, "window_rows": 4, "mosaic_order": 5}


def named_rng(seed: int, stream: str, *keys: int) -> np.random.Generator:
    """The generator of random stream `stream` (see RANDOM_STREAMS) for `keys` (epoch, window, task...)."""
    return np.random.default_rng([seed, RANDOM_STREAMS[stream], *keys])


class ExampleStream:
    """The examples of a bound mixture or task, per epoch (epoch mode) or per window (rate mode), the same
    on every host."""

    def __init__(self, config: DataSection, *, vocab_size: int | None = None, resolved: Resolved | None = None,
                 stats: PipelineStats | None = None):
        """`vocab_size`: the model's; a token id outside it is a ConfigError here, before training. `resolved`:
        `config.mixture` resolved by the binding (else resolved here, once). `stats`: the pipeline's, counting what
        the tasks read, tokenize and cache."""
        found = resolved or specs_of(config.mixture)
        if found is None:
            raise specs.unknown(config.mixture, "a registered task or mixture (data.mixture)")
        self.config, self.resolved = config, found
        self.stats = stats if stats is not None else PipelineStats()
        self.task_names, mixture = list(found.tasks), found.mixture
        self.rate_mode = mixture is not None and not mixture.epoch_mode
        self.counts = dict(mixture.counts) if mixture is not None and mixture.epoch_mode else {}
        rates = dict(mixture.rates) if self.rate_mode else {}
        self.rates = np.array([rates.get(t, 1.0) for t in self.task_names], dtype=np.float64)
        self._subset_seeds = {t: seed for t, _, _, seed in task_subsets(config, found)}
        self.shuffle = config.shuffle
        self.examples = [_task_examples(t, found.spec(t), self.counts.get(t), self._subset_seeds[t],
                                        in_file_order=not self.shuffle, stats=self.stats,
                                        then=self._read_ahead(self.task_names[i + 1 :]))
                         for i, t in enumerate(self.task_names)]
        for name, ex in zip(self.task_names, self.examples, strict=True):
            if not ex:
                spec = found.spec(name)  # None: a user's own seqio Task keeps no report
                if spec is None:
                    raise ConfigError(f"task {specs.base_name(name)!r} has no usable examples")
                raise examples_lib.task_report(name, self._subset_seeds[name], spec=spec,
                                               stats=self.stats).unusable(specs.base_name(name))
            if vocab_size is not None:
                _check_token_range(specs.base_name(name), ex, vocab_size)
        # Mosaic-IT's token budget follows the row length unless the config sets one
        self.mosaic = (dataclasses.replace(config.mosaic, max_length=config.mosaic_budget) if config.mosaic
                       else None)
        self.mosaic_encoder = _mosaic_encoder(found, config) if config.mosaic else None
        self._epoch_cache: tuple[int, list] | None = None
        self._order_cache: tuple[int, np.ndarray] | None = None
        self._sizes: tuple[np.ndarray, np.ndarray] | None = None
        self._task_by_id: dict[str, int] | None = None
        self.untrainable: dict[int, int] = {}  # epoch -> mosaic examples with no trained token left
        self.mosaic_k: dict[int, dict[int, int]] = {}  # epoch -> {k: mosaics of k instructions made}
        self._subset = None if self.rate_mode else self._draw_subsets()
        # a preference run's cached reference: per task, (each token's target log-prob end to end, offsets per example)
        self.reference: list[tuple[np.ndarray, np.ndarray]] | None = None

    def _read_ahead(self, tasks: list[str]) -> Callable[[], None]:
        """What a task does once its rows are read: the first of `tasks` (the next) starts reading and encoding
        while the pool finishes the task's last batches (unless a signal asked the work to stop)."""

        def start() -> None:
            spec = self.resolved.spec(tasks[0]) if tasks else None
            if spec is not None and not stopping.requested():
                examples_lib.read_ahead(tasks[0], spec, self.counts.get(tasks[0]), self._subset_seeds[tasks[0]])

        return start

    def report(self) -> list[str]:
        """What the tasks did not train as given: skipped rows, repairs, truncations, untrainable examples."""
        lines = []
        for name, spec in zip(self.task_names, self.resolved.specs, strict=True):
            if spec is not None:  # a user's own seqio Task keeps no report
                report = examples_lib.task_report(name, self._subset_seeds[name], spec=spec, stats=self.stats)
                lines += [f"{specs.base_name(name)}: {line}" for line in report.lines()]
        lines += [f"epoch {e}: {n} mosaic example(s) had no trained token left" for e, n in self.untrainable.items()]
        return lines

    def _draw_subsets(self) -> np.ndarray:
        """Epoch mode: (task, example) pairs ([n, 2]) of the fixed per-task subsets (drawn by the tasks
        themselves: see `tokenized.examples.encoded_examples`), checked to hold the mixture's counts."""
        pairs = []
        for t, (name, ex) in enumerate(zip(self.task_names, self.examples, strict=True)):
            count = self.counts.get(name)
            if count is not None and count > len(ex):
                spec = self.resolved.spec(name)  # None: a user's own seqio Task keeps no report
                out = (examples_lib.task_report(name, self._subset_seeds[name], spec=spec,
                                                stats=self.stats).empty_after_truncation
                       if spec is not None else 0)
                why = f" ({out} more have nothing to train within {self.config.seq_len} tokens)" if out else ""
                raise ConfigError(f"mixture {specs.base_name(self.config.mixture)!r} asks for {count} examples of "
                                  f"{specs.base_name(name)!r}, which has {len(ex)} trainable{why}")
            pairs.append(np.stack([np.full(len(ex), t), np.arange(len(ex))], axis=1))
        return np.concatenate(pairs)

    def _permutation(self, epoch: int) -> np.ndarray:
        """Epoch mode: the subset's indices in `epoch`'s training order, before sharding (kept for one epoch);
        without shuffling, the subset's own order (tasks in the mixture's order, each in file order)."""
        if self._order_cache is None or self._order_cache[0] != epoch:
            order = (named_rng(self.config.seed, "epoch_order", epoch).permutation(len(self._subset)) if self.shuffle
                     else np.arange(len(self._subset)))
            self._order_cache = (epoch, order)
        return self._order_cache[1]

    def _epoch_order(self, epoch: int) -> list[tuple[int, int]]:
        """Epoch mode: the (task, example) pairs of `epoch` in training order, before sharding."""
        return [tuple(pair) for pair in self._subset[self._permutation(epoch)].tolist()]

    def epoch_examples(self, epoch: int) -> list[dict]:
        """Epoch mode: the examples of `epoch`, in training order (cached for one epoch)."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        if self.config.mosaic is None:
            out = [self._example(t, i) for t, i in self._epoch_order(epoch)]
        else:
            out = []
            for conv in self.mosaic_conversations(epoch):
                enc = self.mosaic_encoder.encode(conv)
                if enc.n_trained == 0:  # nothing left to train after truncation: counted, not hidden
                    self.untrainable[epoch] = self.untrainable.get(epoch, 0) + 1
                    continue
                out.append({"tokens": enc.tokens, "loss_mask": enc.loss_mask, "source": self._task_of(conv)})
        self._epoch_cache = (epoch, out)
        return out

    def mosaic_conversations(self, epoch: int) -> list[Conversation]:
        """A fresh Mosaic-IT pass over the whole of `epoch` (without shuffling: in the epoch's order)."""
        convs = []
        for t, i in self._epoch_order(epoch):
            conv = Conversation.from_json(self.examples[t][i]["conversation"])
            conv.meta["task_index"] = t
            convs.append(conv)
        count = self.mosaic_encoder.count
        mosaics, stats = mosaic_epoch(convs, self.mosaic, seed=self.config.seed, epoch=epoch, count_tokens=count,
                                      shuffle=self.shuffle)
        self.mosaic_k[epoch] = dict(sorted(stats.k_histogram.items()))
        if not self.shuffle:
            return mosaics
        order = named_rng(self.config.seed, "mosaic_order", epoch).permutation(len(mosaics))
        return [mosaics[i] for i in order]  # pass-through examples come last from mosaic_epoch

    def _task_of(self, conv: Conversation) -> int:
        """The task a (mosaic) conversation counts towards: that of its first source example."""
        if "task_index" in conv.meta:
            return int(conv.meta["task_index"])
        if self._task_by_id is None:
            self._task_by_id = {}
            for t, examples in enumerate(self.examples):
                for ex in examples:
                    self._task_by_id.setdefault(Conversation.from_json(ex["conversation"]).id, t)
        ids = (conv.meta.get("mosaic") or {}).get("source_ids") or [conv.id]
        return self._task_by_id.get(ids[0], 0)

    def _rate_window(self, window: int) -> list[dict]:
        """Rate mode: the draws of one window (task by rate, then that task's next example in its per-cycle
        shuffle, or in file order)."""
        counters = self._rate_counters(window)
        out = []
        for t in self._rate_choices(window):
            cycle, pos = divmod(int(counters[t]), len(self.examples[t]))
            if self.shuffle:
                pos = named_rng(self.config.seed, "rate_cycle", int(t), cycle).permutation(len(self.examples[t]))[pos]
            out.append(self._example(int(t), int(pos)))
            counters[t] += 1
        return out

    def _rate_choices(self, window: int) -> np.ndarray:
        rng = named_rng(self.config.seed, "rate_choices", window)
        return rng.choice(len(self.task_names), size=self.config.pack_window, p=self.rates / self.rates.sum())

    def _rate_counters(self, window: int) -> np.ndarray:
        """How many draws of each task were made before `window` (replayed from the seed)."""
        counters = np.zeros(len(self.task_names), dtype=np.int64)
        for w in range(window):
            counters += np.bincount(self._rate_choices(w), minlength=len(self.task_names))
        return counters

    def _example(self, task: int, index: int) -> dict:
        ex = self.examples[task][index]
        out = {"tokens": ex["tokens"], "loss_mask": ex["loss_mask"], "source": task, "origin": (task, index)}
        if "rejected_at" in ex:  # a preference pair
            out["rejected_at"] = ex["rejected_at"]
        if self.reference is not None:  # its cached reference log-probs (train/reference.py)
            values, offsets = self.reference[task]
            out["reference_logps"] = values[offsets[index]:offsets[index + 1]]
        return out

    def window_examples(self, epoch: int, window: int) -> list[dict] | None:
        """The examples of one packing window, or None past the end of the epoch (epoch mode)."""
        if self.rate_mode:
            return self._rate_window(window)
        w = self.config.pack_window
        if self.config.mosaic is None:  # only this window's examples are made
            pairs = self._subset[self._permutation(epoch)[window * w : (window + 1) * w]].tolist()
            return [self._example(t, i) for t, i in pairs] or None
        return self.epoch_examples(epoch)[window * w : (window + 1) * w] or None

    def epoch_size(self, epoch: int) -> int:
        """Epoch mode: how many examples `epoch` holds."""
        return len(self._subset) if self.config.mosaic is None else len(self.epoch_examples(epoch))

    def window_sizes(self, epoch: int, window: int) -> tuple[np.ndarray, np.ndarray] | None:
        """(token lengths, trained weights when packed whole) of one window's examples (`example_sizes`),
        or None past the end of the epoch; without making the examples when the tasks know their sizes."""
        if self.rate_mode or self.config.mosaic is not None:
            examples = self.window_examples(epoch, window)
            return None if examples is None else example_sizes(examples, first_index=window * self.config.pack_window)
        if self._sizes is None:  # the subset's, in subset order
            per_task = [example_sizes(ex) for ex in self.examples]
            self._sizes = tuple(np.concatenate([sizes[k] for sizes in per_task]) for k in (0, 1))
        w = self.config.pack_window
        chosen = self._permutation(epoch)[window * w : (window + 1) * w]
        return (self._sizes[0][chosen], self._sizes[1][chosen]) if chosen.size else None


def task_subsets(config: DataSection, resolved: Resolved) -> list[tuple[str, specs.TaskSpec | None, int | None,
                                                                       int | None]]:
    """Each task of a bound mixture with the subset a run takes of it: (name, spec, count, seed). Epoch mode: each
    task's subset is the first `count` trainable examples of its order seeded by the data seed; (None, None): every
    example, in row order (a rate-mode mixture's tasks, an epoch-mode count of None). `spec` None: a user's own seqio
    Task."""
    mixture = resolved.mixture
    counts = dict(mixture.counts) if mixture is not None and mixture.epoch_mode else {}
    return [(t, resolved.spec(t), counts.get(t), config.seed if counts.get(t) is not None else None)
            for t in resolved.tasks]


def _check_token_range(task: str, examples: list[dict], vocab_size: int) -> None:
    """A ConfigError naming the first example with a token id outside [0, vocab_size)."""
    span = examples.token_range() if hasattr(examples, "token_range") else None  # cache.CachedExamples
    if span is not None and 0 <= span[0] and span[1] < vocab_size:
        return
    for ex in examples:
        tokens = np.asarray(ex["tokens"])
        if tokens.size and (int(tokens.max()) >= vocab_size or int(tokens.min()) < 0):
            bad = int(tokens.max()) if int(tokens.max()) >= vocab_size else int(tokens.min())
            where = f"example {ex['id']!r}" if ex.get("id") else "an example"
            raise ConfigError(f"task {task!r}, {where}: token id {bad} is outside the model's vocabulary "
                              f"[0, {vocab_size}); was it tokenized with another tokenizer?")


def _stop_between_tasks(name: str) -> None:
    """`Stopped` before task `name` when a signal asked (Ctrl-C while `train` or `data prepare` tokenizes): the tasks
    before it are in the tokenized cache, and the next run reads them back."""
    if not stopping.requested():
        return
    kept = (f"the tasks read before it are in the tokenized cache ({cache.cache_dir()})" if cache.cache_dir()
            else "nothing is kept (the tokenized cache is off)")
    stopping.check(f"before task {specs.base_name(name)!r}", kept)


def _task_examples(name: str, spec: specs.TaskSpec | None, count: int | None, seed: int | None, *,
                   in_file_order: bool, stats: PipelineStats, then: Callable[[], None] | None = None) -> list[dict]:
    """A task's encoded examples (its subset of `count` when `seed` is set, in the draw's order or in file
    order): an instructjax task's own (`spec`, counted into `stats`), else a user's seqio Task read through seqio
    and drawn the same way. A signal that asked the work to stop stops it here, between tasks (`stopping.check`).
    `then`: see `examples.encoded_examples`."""
    _stop_between_tasks(name)
    if spec is not None:
        return examples_lib.encoded_examples(name, count, seed, in_file_order=in_file_order, spec=spec, stats=stats,
                                             then=then)
    from instructjax.data.seqio import lookup

    return lookup.examples(name, count, seed, in_file_order=in_file_order)


class _MosaicEncoder:
    """Template + tokenizer of the mixture's tasks, to count and encode Mosaic-IT conversations."""

    def __init__(self, template: str, tokenizer_path: str | None, max_length: int):
        self.template, self.max_length = template, max_length
        self.tokenizer = Tokenizer.load(tokenizer_path)

    def count(self, conv: Conversation) -> int:
        return len(encode_conversation(conv, self.template, self.tokenizer).tokens)

    def encode(self, conv: Conversation) -> Encoded:
        """Tokens and loss mask within the budget (`n_trained == 0`: nothing left to train)."""
        return encode_conversation(conv, self.template, self.tokenizer, max_length=self.max_length)


def _mosaic_encoder(resolved: Resolved, config: DataSection) -> _MosaicEncoder:
    """The mixture's template and tokenizer with the Mosaic-IT token budget (`mosaic.max_length`, by
    default the row length `seq_len`)."""
    for name, spec in zip(resolved.tasks, resolved.specs, strict=True):
        if spec is None:  # a user's own seqio Task brings its tokens, not conversations
            raise specs.unknown(name, "an instructjax task")
    keys = {(s.template or DEFAULT_TEMPLATE, s.tokenizer) for s in resolved.specs}
    if len(keys) != 1:
        raise ConfigError("Mosaic-IT needs every task of the mixture to share one template and tokenizer")
    template, tokenizer = keys.pop()
    return _MosaicEncoder(template, tokenizer, config.mosaic_budget)
