"""From a seqio Task or Mixture to this host's packed batches, deterministic and resumable.

The stream of examples is cut into windows; each window is packed on its own (best-fit-decreasing),
so everything is a pure function of (seed, epoch, window). The iterator state is three integers,
`epoch`, `window` and `row` (rows of that window already emitted): restoring it rebuilds that one
window and continues with the identical next batch.

- Epoch mode (`EpochMixture`, or a single Task): each task's subset is drawn once from the seed; each
  epoch shuffles the concatenation afresh, and Mosaic-IT (if on) makes a fresh pass over it.
- Rate mode (any other seqio Mixture): each draw picks a task with probability proportional to its
  rate, then that task's next example in its own per-cycle shuffle; endless.

Several hosts: every host computes the same global order and takes every H-th example from
position `process_index` (seqio's ShardInfo), so shards are disjoint and cover the data; each host
packs its own shard into rows and emits `global_batch / H` rows per step.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import seqio

from instructjax.data import mixtures
from instructjax.data import tasks as task_lib
from instructjax.data.encode import Encoded, encode_conversation
from instructjax.data.mosaic import MosaicConfig, mosaic_epoch
from instructjax.data.packing import PackStats, SequencePacker
from instructjax.data.schema import Conversation
from instructjax.data.templates import DEFAULT_TEMPLATE
from instructjax.data.tokenizer import Tokenizer
from instructjax.errors import ConfigError

BATCH_KEYS = ("tokens", "targets", "loss_weights", "segment_ids", "positions", "source_ids")


@dataclass
class DataConfig:
    """The data section of a training config."""

    mixture: str
    seq_len: int = 2048
    global_batch: int = 64
    seed: int = 0
    pack: bool = True
    pack_window: int = 1000
    overlong: str = "truncate"
    mosaic: MosaicConfig | None = None
    prefetch: int = 2


@dataclass
class IteratorState:
    """Where this host's stream stands: the next row is row `row` of window `window` of `epoch`."""

    epoch: int = 0
    window: int = 0
    row: int = 0

    def to_array(self) -> np.ndarray:
        return np.array([self.epoch, self.window, self.row], dtype=np.int64)

    @classmethod
    def from_array(cls, a) -> IteratorState:
        return cls(*(int(x) for x in np.asarray(a).reshape(3)))


@dataclass
class EpochPlan:
    """Sizes of one epoch of this host's stream (what `data stats` and the trainer need)."""

    examples: int
    rows: int
    tokens: int
    trained_tokens: int
    efficiency: float
    steps: int
    packing: dict = field(default_factory=dict)


class DataPipeline:
    """Host batches (numpy, `[global_batch / process_count, seq_len]`) from a seqio Task or Mixture."""

    def __init__(self, config: DataConfig, *, process_index: int = 0, process_count: int = 1,
                 vocab_size: int | None = None):
        """`vocab_size`: the model's; a token id outside it is a ConfigError here, before training."""
        if config.mosaic is not None and config.mosaic.max_length is None:  # the budget follows the row length
            config = dataclasses.replace(config, mosaic=dataclasses.replace(config.mosaic, max_length=config.seq_len))
        self.config = config
        self.process_index, self.process_count = process_index, process_count
        _check_config(config, process_count)
        provider = seqio.get_mixture_or_task(config.mixture)
        if isinstance(provider, seqio.Mixture):
            self.task_names = [t.name for t in provider.tasks]
            self.rate_mode = not isinstance(provider, mixtures.EpochMixture)
            self.counts = getattr(provider, "counts", {}) if not self.rate_mode else {}
            self.rates = np.array([provider.get_rate(t) for t in provider.tasks], dtype=np.float64)
        else:
            self.task_names, self.rate_mode, self.counts = [provider.name], False, {}
            self.rates = np.ones(1)
        # epoch mode: each task's subset is the first `count` trainable examples of its seeded order
        self._subset_seeds = {t: config.seed if self.counts.get(t) is not None else None for t in self.task_names}
        self.examples = [_task_examples(t, self.counts.get(t), self._subset_seeds[t]) for t in self.task_names]
        for name, ex in zip(self.task_names, self.examples, strict=True):
            if not ex:
                raise ConfigError(f"task {task_lib.base_name(name)!r} has no usable examples")
            if vocab_size is not None:
                _check_token_range(task_lib.base_name(name), ex, vocab_size)
        self.packer = SequencePacker(
            config.seq_len, window=config.pack_window, overlong=config.overlong, pack=config.pack
        )
        self._mosaic_encoder = _mosaic_encoder(self.task_names, config) if config.mosaic else None
        self._epoch_cache: tuple[int, list] | None = None
        self._task_by_id: dict[str, int] | None = None
        self.untrainable: dict[int, int] = {}  # epoch -> mosaic examples with no trained token left
        self._subset = None if self.rate_mode else self._draw_subsets()
        self.state = IteratorState()

    @property
    def host_batch(self) -> int:
        return self.config.global_batch // self.process_count

    # ---- the example stream -------------------------------------------------------------------
    def _draw_subsets(self) -> list[tuple[int, int]]:
        """Epoch mode: (task, example) pairs of the fixed per-task subsets (drawn by the tasks themselves:
        see `tasks.encoded_examples`), checked to hold the mixture's counts."""
        pairs = []
        for t, (name, ex) in enumerate(zip(self.task_names, self.examples, strict=True)):
            count = self.counts.get(name)
            if count is not None and count > len(ex):
                try:
                    out = task_lib.task_report(name, self._subset_seeds[name]).empty_after_truncation
                except ConfigError:  # a user's own seqio Task keeps no report
                    out = 0
                why = f" ({out} more have nothing to train within {self.config.seq_len} tokens)" if out else ""
                raise ConfigError(f"mixture {task_lib.base_name(self.config.mixture)!r} asks for {count} examples of "
                                  f"{task_lib.base_name(name)!r}, which has {len(ex)} trainable{why}")
            pairs += [(t, i) for i in range(len(ex))]
        return pairs

    def _epoch_order(self, epoch: int) -> list[tuple[int, int]]:
        """Epoch mode: the (task, example) pairs of `epoch` in training order, before sharding."""
        order = np.random.default_rng([self.config.seed, 1, epoch]).permutation(len(self._subset))
        return [self._subset[i] for i in order]

    def epoch_examples(self, epoch: int) -> list[dict]:
        """Epoch mode: this host's examples of `epoch`, in training order (cached for one epoch)."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        if self.config.mosaic is None:
            chosen = self._epoch_order(epoch)[self.process_index :: self.process_count]
            out = [self._example(t, i) for t, i in chosen]
        else:
            mosaics = self.mosaic_conversations(epoch)[self.process_index :: self.process_count]
            out = []
            for conv in mosaics:
                enc = self._mosaic_encoder.encode(conv)
                if enc.n_trained == 0:  # nothing left to train after truncation: counted, not hidden
                    self.untrainable[epoch] = self.untrainable.get(epoch, 0) + 1
                    continue
                out.append({"tokens": enc.tokens, "loss_mask": enc.loss_mask, "source": self._task_of(conv)})
        self._epoch_cache = (epoch, out)
        return out

    def mosaic_conversations(self, epoch: int) -> list[Conversation]:
        """A fresh Mosaic-IT pass over the whole of `epoch` (the same on every host)."""
        convs = []
        for t, i in self._epoch_order(epoch):
            conv = Conversation.from_json(self.examples[t][i]["conversation"])
            conv.meta["task_index"] = t
            convs.append(conv)
        count = self._mosaic_encoder.count
        mosaics, _ = mosaic_epoch(convs, self.config.mosaic, seed=self.config.seed, epoch=epoch, count_tokens=count)
        order = np.random.default_rng([self.config.seed, 5, epoch]).permutation(len(mosaics))
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
        """Rate mode: the draws of one window (task by rate, then that task's next shuffled example)."""
        counters = self._rate_counters(window)
        out = []
        for t in self._rate_choices(window)[self.process_index :: self.process_count]:
            shard = np.arange(len(self.examples[t]))[self.process_index :: self.process_count]
            cycle, pos = divmod(int(counters[t]), len(shard))
            perm = np.random.default_rng([self.config.seed, 2, int(t), cycle]).permutation(shard)
            out.append(self._example(int(t), int(perm[pos])))
            counters[t] += 1
        return out

    def _rate_choices(self, window: int) -> np.ndarray:
        rng = np.random.default_rng([self.config.seed, 3, window])
        return rng.choice(len(self.task_names), size=self.config.pack_window, p=self.rates / self.rates.sum())

    def _rate_counters(self, window: int) -> np.ndarray:
        """How many draws of each task this host made before `window` (replayed from the seed)."""
        counters = np.zeros(len(self.task_names), dtype=np.int64)
        for w in range(window):
            mine = self._rate_choices(w)[self.process_index :: self.process_count]
            counters += np.bincount(mine, minlength=len(self.task_names))
        return counters

    def _example(self, task: int, index: int) -> dict:
        ex = self.examples[task][index]
        return {"tokens": ex["tokens"], "loss_mask": ex["loss_mask"], "source": task, "origin": (task, index)}

    def window_examples(self, epoch: int, window: int) -> list[dict] | None:
        """The examples of one packing window, or None past the end of the epoch (epoch mode)."""
        if self.rate_mode:
            return self._rate_window(window)
        examples = self.epoch_examples(epoch)
        w = self.config.pack_window
        chunk = examples[window * w : (window + 1) * w]
        return chunk or None

    def packed_window(self, epoch: int, window: int) -> dict[str, np.ndarray] | None:
        """One window's rows, in a seeded random order (best-fit-decreasing opens long rows first)."""
        examples = self.window_examples(epoch, window)
        if examples is None:
            return None
        rows, _ = self.packer.pack_window(examples, first_index=window * self.config.pack_window)
        order = np.random.default_rng([self.config.seed, 4, epoch, window]).permutation(len(rows["tokens"]))
        return {k: v[order] for k, v in rows.items()}

    # ---- iteration and state ------------------------------------------------------------------
    def _rows(self, state: IteratorState) -> Iterator[tuple[dict[str, np.ndarray], IteratorState]]:
        """Rows from `state` on, each with the state that follows it."""
        epoch, window, row = state.epoch, state.window, state.row
        while True:
            packed = self.packed_window(epoch, window)
            if packed is None:
                epoch, window, row = epoch + 1, 0, 0
                continue
            n = len(packed["tokens"])
            for r in range(row, n):
                following = IteratorState(epoch, window, r + 1) if r + 1 < n else IteratorState(epoch, window + 1, 0)
                yield {k: packed[k][r] for k in BATCH_KEYS}, following
            window, row = window + 1, 0

    def _batches(self, state: IteratorState) -> Iterator[tuple[dict[str, np.ndarray], IteratorState]]:
        rows = self._rows(state)
        while True:
            chunk = [next(rows) for _ in range(self.host_batch)]
            batch = {k: np.stack([r[k] for r, _ in chunk]) for k in BATCH_KEYS}
            yield batch, chunk[-1][1]

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        """Host batches from the current state on; `self.state` follows the batches handed out."""
        start = self.state
        if self.config.prefetch <= 0:
            for batch, following in self._batches(start):
                self.state = following
                yield batch
            return
        q: queue.Queue = queue.Queue(maxsize=self.config.prefetch)
        stop = threading.Event()

        def produce():
            try:
                for item in self._batches(start):
                    while not stop.is_set():
                        try:
                            q.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as e:  # hand the error to the consumer
                q.put(e)

        thread = threading.Thread(target=produce, daemon=True, name="instructjax-prefetch")
        thread.start()
        try:
            while True:
                item = q.get()
                if isinstance(item, BaseException):
                    raise item
                batch, self.state = item
                yield batch
        finally:
            stop.set()

    def restore(self, state: IteratorState | np.ndarray | dict) -> None:
        """Continue from a saved state: the next batch is the one that followed it."""
        if isinstance(state, dict):
            state = IteratorState(**state)
        elif not isinstance(state, IteratorState):
            state = IteratorState.from_array(state)
        self.state = state

    # ---- sizes --------------------------------------------------------------------------------
    def report(self) -> list[str]:
        """What the tasks did not train as given: skipped bad rows, truncations, untrainable examples."""
        lines = []
        for name in self.task_names:
            if task_lib.is_task(name):  # a user's own seqio Task keeps no report
                report = task_lib.task_report(name, self._subset_seeds[name])
                lines += [f"{task_lib.base_name(name)}: {line}" for line in report.lines()]
        lines += [f"epoch {e}: {n} mosaic example(s) had no trained token left" for e, n in self.untrainable.items()]
        return lines

    def plan_epoch(self, epoch: int = 0) -> EpochPlan:
        """Rows, tokens, packing efficiency and optimizer steps of one epoch of this host's stream.

        In rate mode an "epoch" is as many draws as all tasks together hold.
        """
        stats = PackStats()
        if self.rate_mode:
            total = sum(len(e) for e in self.examples)
            windows = range(math.ceil(total / self.config.pack_window))
        else:
            windows = range(math.ceil(len(self.epoch_examples(epoch)) / self.config.pack_window))
        trained = 0
        for w in windows:
            packed, window_stats = self.packer.pack_window(self.window_examples(epoch, w) or [])
            stats += window_stats
            trained += int((packed["loss_weights"] > 0).sum())
        return EpochPlan(
            examples=stats.examples,
            rows=stats.rows,
            tokens=stats.tokens,
            trained_tokens=trained,
            efficiency=stats.efficiency if stats.rows else 0.0,
            steps=math.ceil(stats.rows / self.host_batch),
            packing=asdict(stats),
        )


def _check_config(config: DataConfig, process_count: int) -> None:
    if config.global_batch % process_count:
        raise ConfigError(
            f"data.global_batch={config.global_batch} is not divisible by the {process_count} host(s)"
        )
    if config.seq_len < 8:
        raise ConfigError(f"data.seq_len={config.seq_len} is too small for any example")
    if config.pack_window < 1:
        raise ConfigError(f"data.pack_window must be >= 1, got {config.pack_window}")
    if config.mixture not in seqio.TaskRegistry.names() and config.mixture not in seqio.MixtureRegistry.names():
        raise ConfigError(f"data.mixture={config.mixture!r} is not a registered seqio Task or Mixture")
    if config.mosaic is not None and (config.mosaic.max_length or 0) > config.seq_len:
        raise ConfigError(f"data.mosaic.max_length={config.mosaic.max_length} is above data.seq_len={config.seq_len}: "
                          "a mosaic that long would be truncated in its row (leave it unset: it follows seq_len)")


def _check_token_range(task: str, examples: list[dict], vocab_size: int) -> None:
    """A ConfigError naming the first example with a token id outside [0, vocab_size)."""
    for ex in examples:
        tokens = np.asarray(ex["tokens"])
        if tokens.size and (int(tokens.max()) >= vocab_size or int(tokens.min()) < 0):
            bad = int(tokens.max()) if int(tokens.max()) >= vocab_size else int(tokens.min())
            where = f"example {ex['id']!r}" if ex.get("id") else "an example"
            raise ConfigError(f"task {task!r}, {where}: token id {bad} is outside the model's vocabulary "
                              f"[0, {vocab_size}); was it tokenized with another tokenizer?")


def _task_examples(name: str, count: int | None, seed: int | None) -> list[dict]:
    """A task's encoded examples (its subset of `count` when `seed` is set): straight from instructjax
    tasks, else read through seqio's get_dataset (a user's own seqio Task) and drawn the same way."""
    if task_lib.is_task(name):
        return task_lib.encoded_examples(name, count, seed)
    task = seqio.get_mixture_or_task(name)
    ds = task.get_dataset(sequence_length=None, split="train", shuffle=False, use_cached=False)
    out = []
    for ex in ds.as_numpy_iterator():
        if "tokens" not in ex or "loss_mask" not in ex:
            raise ConfigError(f"seqio task {name!r} must output 'tokens' and 'loss_mask' features")
        conv = ex.get("conversation", b"")
        out.append({"tokens": ex["tokens"], "loss_mask": ex["loss_mask"], "conversation": conv.decode()})
    if seed is not None:
        order = np.random.default_rng(task_lib.subset_seed(seed, name)).permutation(len(out))
        out = [out[i] for i in order[:count]]
    return out


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


def _mosaic_encoder(task_names: list[str], config: DataConfig) -> _MosaicEncoder:
    """The mixture's template and tokenizer with the Mosaic-IT token budget (`mosaic.max_length`, by
    default the row length `seq_len`)."""
    specs = {task_lib.get_spec(t) for t in task_names}
    keys = {(s.template or DEFAULT_TEMPLATE, s.tokenizer) for s in specs}
    if len(keys) != 1:
        raise ConfigError("Mosaic-IT needs every task of the mixture to share one template and tokenizer")
    template, tokenizer = keys.pop()
    return _MosaicEncoder(template, tokenizer, config.mosaic.max_length)


def global_batch(host_batch: dict[str, np.ndarray], sharding) -> dict:
    """Assemble this host's rows into global `jax.Array`s laid out by `sharding` (a NamedSharding
    over the mesh, batch axis first)."""
    import jax

    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in host_batch.items()}
