"""A task's data as a seqio `DataSource` that lists real shards, so seqio's own Beam cache (`cache_tasks_main`) and
`get_dataset(shard_info=...)` split it: its files, and ranges of rows within a file (a hub split's too); a tree
source's or a selection's conversations, in spans (`data.tokenized.shards`). A shard's dataset runs the task's
adapter, chat template and encoder on that shard alone; the shards in order give exactly the task's examples
(`tokenized.examples.encoded_examples`), which is what the dataset without `shard_info` serves (from the tokenized
cache when it holds them)."""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator, Sequence

import seqio
import tensorflow as tf

from instructjax.data.blends import specs
from instructjax.data.tokenized import examples, shards, shared

SIGNATURE = {
    "tokens": tf.TensorSpec([None], tf.int32),
    "loss_mask": tf.TensorSpec([None], tf.int32),
    "conversation": tf.TensorSpec([], tf.string),
    "id": tf.TensorSpec([], tf.string),
}


class ShardedSource(seqio.DataSource):
    """Task `name`'s examples in shards of at most `shard_units` rows (or conversations), one split ("train").
    The task's spec is looked up when the data is asked for; its read is opened once per process and spec."""

    def __init__(self, name: str, shard_units: int = shards.SHARD_UNITS):
        super().__init__(splits=["train"])
        self.name, self.shard_units = name, shard_units
        self._opened = None  # (spec, units, shards) of the spec last read

    @property
    def supports_arbitrary_sharding(self) -> bool:
        return False

    def _read(self):
        spec = specs.task(self.name)
        if self._opened is None or self._opened[0] != spec:
            units = shared.units_of(self.name, spec, None, pool=False)
            self._opened = (spec, units, shards.cut(self.name, units, units.upto(float("inf")), self.shard_units))
        return self._opened

    def list_shards(self, split: str) -> Sequence[str]:
        return [s.label for s in self._read()[2]]

    def get_dataset(self, split: str = "train", shuffle: bool = True, seed: int | None = None,
                    shard_info: seqio.ShardInfo | None = None, *, sequence_length=None, use_cached: bool = False,
                    num_epochs: int | None = 1) -> tf.data.Dataset:
        """Every example in row order (`shard_info` None), or those of shards index, index + num_shards, ... in
        order; `shuffle` and `seed` are the pipeline's to apply (a subset's order is the run's data seed's)."""
        del split, shuffle, seed, sequence_length, use_cached, num_epochs
        found = self._examples if shard_info is None else lambda: self._shard_examples(shard_info)
        return tf.data.Dataset.from_generator(_in_context(contextvars.copy_context(), found), output_signature=SIGNATURE)

    def _examples(self) -> Iterator[dict]:
        return iter(examples.encoded_examples(self.name))

    def _shard_examples(self, shard_info: seqio.ShardInfo) -> Iterator[dict]:
        spec, units, cut = self._read()
        for shard in cut[shard_info.index :: shard_info.num_shards]:
            yield from shards.shard_examples(self.name, spec, units, shard.lo, shard.hi)

    def __repr__(self) -> str:
        return f"ShardedSource({self.name!r}, shard_units={self.shard_units})"


def _in_context(context: contextvars.Context, found) -> Callable[[], Iterator[dict]]:
    """A generator function for `tf.data` (whose threads carry no context of ours) that makes each example in
    `context`: the command's registry and caches (`core.context`) that built the dataset."""

    def generate() -> Iterator[dict]:
        mine = context.copy()  # one per iteration: two iterations may run at once
        examples_left = mine.run(found)
        while True:
            try:
                example = mine.run(next, examples_left)
            except StopIteration:
                return
            yield {k: example[k] for k in SIGNATURE}

    return generate
