"""The seqio face of instructjax's tasks: each task spec as a `seqio.Task`, registered by name.

`register_builtin_tasks()` registers every built-in source twice in `seqio.TaskRegistry`, as `NAME` (the hub
dataset) and `NAME_builtin` (the synthetic rows that ship with the package): once, on demand (importing this
module registers nothing; `data.seqio.lookup` calls it before it asks seqio for a name); `register_task` adds
your own. A Task's dataset yields `tokens` and `loss_mask` (and `conversation`, the source Conversation as
JSON, and `id`) from `data.tokenized.examples`, so seqio and the instructjax pipeline see the same
examples; its source lists the task's shards (`source.ShardedSource`), so seqio's Beam cache splits it
(`data.seqio.registered` registers every task on import, for `seqio.scripts.cache_tasks_main`). The pipeline itself reads the specs (`data.blends.specs`) and never needs this module: only
code that asks seqio for a task does.

    from instructjax.data.blends.specs import TaskSpec
    from instructjax.data.seqio.tasks import register_task
    register_task("my_chats", TaskSpec(source="sharegpt", data_files=("/data/my_chats.jsonl",)))
"""

from __future__ import annotations

import seqio
import tensorflow as tf

from instructjax.data.blends import specs
from instructjax.data.blends.specs import BUILTIN_SUFFIX, TaskSpec
from instructjax.data.seqio.source import ShardedSource
from instructjax.data.seqio.vocab import get_vocabulary
from instructjax.data.sources import registry
from instructjax.data.tokenized import shards


def output_features(tokenizer_path: str | None = None) -> dict[str, seqio.Feature]:
    """`tokens` (our vocabulary) and `loss_mask` (0/1 per token)."""
    return {
        "tokens": seqio.Feature(get_vocabulary(tokenizer_path), add_eos=False, dtype=tf.int32),
        "loss_mask": seqio.Feature(seqio.PassThroughVocabulary(2), add_eos=False, dtype=tf.int32),
    }


def register_task(name: str, spec: TaskSpec, *, overwrite: bool = True,
                  shard_units: int = shards.SHARD_UNITS) -> seqio.Task:
    """Register task `name` (its spec, and a `seqio.Task` in `seqio.TaskRegistry` whose source lists its shards of
    at most `shard_units` rows: `source.ShardedSource`)."""
    specs.add_task(name, spec)
    if name in seqio.TaskRegistry.names():
        if not overwrite:
            return seqio.TaskRegistry.get(name)
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(name, source=ShardedSource(name, shard_units),
                                  preprocessors=[seqio.CacheDatasetPlaceholder()],  # seqio's Beam cache may hold it
                                  output_features=output_features(spec.tokenizer))


def register_builtin_tasks() -> None:
    """Every SFT and verifiable source as `NAME` (hub) and `NAME_builtin` (synthetic rows shipped with the package),
    and the built-in-only sets as `NAME_builtin`, in seqio's registry; a name seqio already knows is left as it is (so a second call registers nothing)."""
    known = seqio.TaskRegistry.names()
    names = [(s, s + BUILTIN_SUFFIX) for s in [*registry.SOURCES, *registry.VERIFIABLE_SOURCES]]
    for name in [n for pair in names for n in pair] + [s + BUILTIN_SUFFIX for s in registry.BUILTIN_SOURCES]:
        if name not in known:
            register_task(name, specs.task(name), overwrite=False)
