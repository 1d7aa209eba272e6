"""Continuous batching (`ContinuousBatcher`): a fixed number of slots in a preallocated KV cache (model/decoding.py), kept busy.

Prompts are admitted longest first into free slots (a few at a time, padded to a power-of-two length bucket: the
fill compiles once per bucket and row count). Every decode call advances every live slot `chunk` tokens; then the
host reads the new ids, ends a row at a stop id, at `max_new_tokens` or at a stop string, and frees its slot, into
which the next prompt is filled while the others go on decoding: no batch barrier. Once no prompt waits and a
quarter of the slots stand idle, the live rows move into the front slots and the decode calls run only those
(`decode_width`). The decode step compiles once per (rows, cache length, span, chunk).

Prompts that share a long prefix (a few-shot protocol's examples: MMLU's subject header and shots, BBH's and GSM's
chains of thought) share its keys and values: the prefix is filled once into its own cache, copied into each slot
that takes one of its prompts, and only the rest of each prompt is filled (`Stats.prefix_tokens` counts the tokens
not recomputed).

Greedy output is each prompt's alone: a slot's rows hold one sequence, attention never crosses slots. Sampling
draws prompt i's n-th token with fold_in(fold_in(key(seed), i), n), whatever slot it lands in and whenever. On a
mesh (sharded parameters, `mesh`), the cache's slots split over (data, fsdp) and its kv heads over tensor; every
host runs this same schedule over all the prompts and reads the same (replicated) ids, so each host's devices
decode their share of the slots.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from instructjax.core.errors import ConfigError
from instructjax.model import decoding
from instructjax.model.batching_shapes import (
    FILL_TOKENS,
    MIN_PREFIX,
    bucket,
    decode_width,
    fill_budget,
    fill_rows,
    shared_prefixes,
)
from instructjax.model.decoder import Decoder


@dataclass(frozen=True)
class Sampling:
    """temperature 0 is greedy; top_p < 1 keeps the smallest token set whose probability reaches top_p."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


@dataclass
class Stats:
    """What a batcher did: `occupancy` is the share of slot-steps of the decode calls that produced a token kept."""

    prompts: int = 0
    new_tokens: int = 0
    decode_calls: int = 0
    slot_steps: int = 0  # rows x steps of every decode call
    moved: int = 0  # rows moved into the front slots (`decode_width`)
    kept_steps: int = 0  # of those, the ones whose token a row kept
    fill_calls: int = 0
    fill_tokens: int = 0  # prompt tokens run through the model
    prefix_tokens: int = 0  # prompt tokens not recomputed: copied from a shared prefix
    seconds: float = 0.0

    @property
    def occupancy(self) -> float:
        return self.kept_steps / self.slot_steps if self.slot_steps else 0.0

    def as_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return {**out, "occupancy": round(self.occupancy, 4)}


@dataclass
class _Row:
    """One prompt's progress."""

    index: int
    prompt: list[int]
    generated: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)  # each generated id's log-prob as drawn (`decoding.sampled_logp`)
    prefix: tuple | None = None  # the shared prefix it is filled after
    done: bool = False


def _longrope_switch(config) -> int | None:
    scaling = config.rope_scaling or {}
    return scaling["original_max_position_embeddings"] if scaling.get("rope_type") == "longrope" else None


class SlotsError(ConfigError):
    """A slot count the mesh cannot take (the caller names where it came from: a flag, a config key)."""

    def __init__(self, slots: int, shards: int):
        self.slots, self.shards = slots, shards
        super().__init__(f"{slots} slots do not divide over the mesh's data x fsdp = {shards} devices" if slots >= 1
                         else f"continuous batching needs at least one slot, got {slots}")


class ContinuousBatcher:
    """A model (its layers as a list: `decoding.unstacked`) decoding `slots` sequences at once. `mesh`: where its
    parameters lie (the cache goes there too); `chunk`: decode steps per device call."""

    def __init__(self, model: Decoder, *, slots: int = 32, chunk: int = 8, mesh=None, fill_tokens: int = FILL_TOKENS,
                 min_prefix: int = MIN_PREFIX):
        if mesh is not None and dict(mesh.shape).get("expert", 1) > 1:  # its cache and fills split over data x fsdp
            raise ConfigError(f"the evaluation engine decodes with the experts whole on each device: mesh.expert="
                              f"{dict(mesh.shape)['expert']} is for training; decode on a mesh without it")
        self.shards = mesh.shape["data"] * mesh.shape["fsdp"] if mesh is not None else 1
        if slots < 1 or slots % self.shards:
            raise SlotsError(slots, self.shards)
        self.model = decoding.unstacked(model)
        self.graphdef, self.state = nnx.split(self.model)
        self.config, self.mesh = self.model.config, mesh
        self.slots, self.chunk, self.fill_tokens, self.min_prefix = slots, chunk, fill_tokens, min_prefix
        self.switch = _longrope_switch(self.config)
        self.stats = Stats()
        self._cache: decoding.SlotCache | None = None

    def load(self, model: Decoder) -> None:
        """Decode with `model`'s parameters from now on: the same architecture (a policy after an update), its arrays
        taken where they lie (stacked layers sliced, as at construction); the compiled steps and the slots' cache
        kept."""
        if model.config.replace(scan_layers=False) != self.config:
            raise ValueError("ContinuousBatcher.load: another architecture than the engine's")
        self.model = decoding.unstacked(model)
        self.state = nnx.state(self.model)

    # ---- device calls ---------------------------------------------------------------------------------------

    def _scope(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def _cache_for(self, length: int) -> decoding.SlotCache:
        """The slots' cache, `length` rows long (made anew for another length: decoding attends over it)."""
        if self._cache is None or self._cache.length != length:
            self._cache = None  # freed before the new one is made
            self._cache = decoding.init_slot_cache(self.config, self.slots, length, self.mesh)
        return self._cache

    def _fill(self, cache, jobs: list[tuple[int, list[int], int, int, int]], keys: np.ndarray, sampling: Sampling,
              candidates: Sequence[int]) -> tuple:
        """Fill jobs (slot, tokens, start, prompt index, token count) in calls of a power-of-two row count, a job
        longer than a call's tokens (`fill_budget`) in pieces, its leading ones first; returns (cache, first ids
        [n], their log-probs [n], candidate log-probs [n, C])."""
        budget = fill_budget(cache.length, self.fill_tokens)
        while any(len(j[1]) > budget for j in jobs):
            leading = [(slot, ids[:budget], start, index, count) for slot, ids, start, index, count in jobs
                       if len(ids) > budget]
            cache, *_ = self._fill_calls(cache, leading, keys, sampling, (), budget)
            jobs = [(slot, ids[budget:], start + budget, index, count) if len(ids) > budget else
                    (slot, ids, start, index, count) for slot, ids, start, index, count in jobs]
        return self._fill_calls(cache, jobs, keys, sampling, candidates, budget)

    def _fill_calls(self, cache, jobs: list[tuple[int, list[int], int, int, int]], keys: np.ndarray,
                    sampling: Sampling, candidates: Sequence[int], budget: int) -> tuple:
        firsts, first_logps, logps = [], [], []
        cands = jnp.asarray(list(candidates) or [0], jnp.int32)
        k = 0
        while k < len(jobs):
            width = bucket(max(len(j[1]) for j in jobs[k:]))
            full = self._fill_rows(width, budget)
            group = jobs[k: k + full]
            width = bucket(max(len(j[1]) for j in group))
            full = self._fill_rows(width, budget)
            few = max(self.shards, full // 8)  # two row counts a bucket: a few rows, or a full call
            rows = few if len(group) <= few else full
            tokens = np.zeros((rows, width), np.int32)
            starts, lengths = np.zeros(rows, np.int32), np.ones(rows, np.int32)
            slots = np.full(rows, self.slots, np.int32)  # padding rows: past the last slot, written nowhere
            counts = np.zeros(rows, np.int32)
            row_keys = np.zeros((rows, *keys.shape[1:]), keys.dtype)
            for r, (slot, ids, start, index, count) in enumerate(group):
                tokens[r, : len(ids)], starts[r], lengths[r], slots[r], counts[r] = ids, start, len(ids), slot, count
                row_keys[r] = keys[index]
            span = decoding.span_bucket(int((starts + width).max()), cache.length)  # the prompts' rows, not the replies'
            with self._scope():
                cache, first, first_logp, logp = decoding.extend(
                    self.graphdef, self.state, cache, jnp.asarray(tokens), jnp.asarray(starts), jnp.asarray(lengths),
                    jnp.asarray(slots), jax.random.wrap_key_data(jnp.asarray(row_keys)), jnp.asarray(counts),
                    jnp.float32(sampling.temperature), jnp.float32(sampling.top_p), cands, span=span)
            firsts.append(np.asarray(first)[: len(group)])
            first_logps.append(np.asarray(first_logp)[: len(group)])
            logps.append(np.asarray(logp)[: len(group)])
            self.stats.fill_calls += 1
            self.stats.fill_tokens += sum(len(j[1]) for j in group)
            k += len(group)
        return cache, np.concatenate(firsts), np.concatenate(first_logps), np.concatenate(logps)

    def _fill_rows(self, width: int, budget: int) -> int:
        return fill_rows(width, slots=self.slots, shards=self.shards, fill_tokens=budget)

    def _prefix_cache(self, tokens: list[int], keys: np.ndarray, sampling: Sampling) -> decoding.SlotCache:
        """A one-slot cache holding `tokens`' keys and values."""
        cache = decoding.init_slot_cache(self.config, 1, bucket(len(tokens)), self.mesh)
        cache, *_ = self._fill(cache, [(0, tokens, 0, 0, 0)], keys, sampling, ())
        return cache

    # ---- the schedule ---------------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[Sequence[int]], sampling: Sampling, stop_ids: Sequence[int],
                 stop: Callable[[list[int]], bool] | None = None, *, with_logps: bool = False) -> list:
        """New ids per prompt (the stop id that ended it included). `stop(ids)`: whether a row's ids so far hold a
        stop string (checked after every decode call). `with_logps`: (ids, each id's log-prob as drawn) per prompt
        (`decoding.sampled_logp`: what an RL learner weighs its ratio against)."""
        rows = [_Row(i, list(p)) for i, p in enumerate(prompts)]
        if any(not r.prompt for r in rows):
            raise ValueError("generate: every prompt needs at least one token (e.g. BOS)")
        if sampling.max_new_tokens <= 0 or not rows:
            return [([], []) if with_logps else [] for _ in rows]
        start = time.perf_counter()
        stops = set(stop_ids)
        keys = np.asarray(jax.random.key_data(jax.vmap(lambda i: jax.random.fold_in(jax.random.key(sampling.seed), i))(
            jnp.arange(len(rows)))))
        length = bucket(max(len(r.prompt) for r in rows) + sampling.max_new_tokens, 64)
        cache = self._cache_for(length)
        self._cache = None  # donated to the calls below; kept again at the end
        self._assign_prefixes(rows)
        pending = self._admission_order(rows)
        slot_row: list[_Row | None] = [None] * self.slots
        refill: list[_Row] = []
        prefixes: dict[tuple, decoding.SlotCache] = {}
        while pending or refill or any(r is not None for r in slot_row):
            free = [b for b, r in enumerate(slot_row) if r is None]
            admitted = []
            while free and (refill or pending):
                row = refill.pop(0) if refill else pending.pop(0)
                b = free.pop(0)
                slot_row[b] = row
                admitted.append((b, row))
            if admitted:
                cache = self._admit(cache, admitted, keys, sampling, prefixes, pending)
                for b, row in admitted:
                    if self._finished(row, sampling, stops, stop):
                        slot_row[b] = None
            if all(r is None for r in slot_row):
                continue
            cache, width = self._pack(cache, slot_row)
            active = [(b, r) for b, r in enumerate(slot_row) if r is not None]
            cache, drawn, drawn_logps = self._decode(cache, slot_row, width, keys, sampling)
            for b, row in active:
                fed = len(row.prompt) + len(row.generated) - 1  # position of the first token fed in this call
                for i in range(self.chunk):
                    if self.switch is not None and fed + i == self.switch:  # long-RoPE: re-filled from here
                        refill.append(row)
                        slot_row[b] = None
                        break
                    row.generated.append(int(drawn[b, i]))
                    row.logps.append(float(drawn_logps[b, i]))
                    self.stats.kept_steps += 1
                    if self._finished(row, sampling, stops, None):
                        break
                if slot_row[b] is not None and self._finished(row, sampling, stops, stop):
                    slot_row[b] = None
        self._cache = cache
        self.stats.prompts += len(rows)
        self.stats.new_tokens += sum(len(r.generated) for r in rows)
        self.stats.seconds += time.perf_counter() - start
        return [(r.generated, r.logps) if with_logps else r.generated for r in rows]

    def _finished(self, row: _Row, sampling: Sampling, stops: set[int], stop) -> bool:
        row.done = row.done or (bool(row.generated) and row.generated[-1] in stops) or \
            len(row.generated) >= sampling.max_new_tokens or (stop is not None and bool(row.generated) and stop(row.generated))
        return row.done

    def _assign_prefixes(self, rows: list[_Row]) -> None:
        for row, n in zip(rows, shared_prefixes([r.prompt for r in rows], self.min_prefix), strict=True):
            row.prefix = tuple(row.prompt[:n]) if n else None

    @staticmethod
    def _admission_order(rows: list[_Row]) -> list[_Row]:
        """Longest first; the prompts of one shared prefix together (their prefix lives while they are admitted)."""
        groups: dict[tuple | None, list[_Row]] = {}
        for row in sorted(rows, key=lambda r: -len(r.prompt)):
            groups.setdefault(row.prefix, []).append(row)
        return [row for members in groups.values() for row in members]

    def _admit(self, cache, admitted: list[tuple[int, _Row]], keys, sampling, prefixes, pending) -> decoding.SlotCache:
        """Fill the admitted rows' slots (a row re-filled at a long-RoPE switch: its whole sequence so far) and draw
        each row's next id."""
        cache, jobs = self._jobs(cache, admitted, keys, sampling, prefixes, pending)
        cache, first, first_logps, _ = self._fill(cache, jobs, keys, sampling, ())
        for (_, row), token, logp in zip(admitted, first, first_logps, strict=True):
            row.generated.append(int(token))
            row.logps.append(float(logp))
        return cache

    def _jobs(self, cache, admitted: list[tuple[int, _Row]], keys, sampling, prefixes, pending) -> tuple:
        """(the cache with each admitted row's shared prefix copied into its slot, the fill jobs of the rest:
        (slot, ids, start, prompt index, token count)); a prefix is filled when its first prompt comes and dropped
        when its last has."""
        jobs = []
        for b, row in admitted:
            if row.generated:  # a re-fill: the prompt and every id drawn so far
                jobs.append((b, row.prompt + row.generated, 0, row.index, len(row.generated)))
                continue
            start = 0
            if row.prefix is not None:
                if row.prefix not in prefixes:
                    prefixes[row.prefix] = self._prefix_cache(list(row.prefix), keys, sampling)
                prefix, start = prefixes[row.prefix], len(row.prefix)
                with self._scope():
                    cache = decoding.copy_prefix(cache, prefix, jnp.asarray([b], jnp.int32), length=prefix.length)
                self.stats.prefix_tokens += start
            jobs.append((b, row.prompt[start:], start, row.index, 0))
        for key in [k for k in prefixes if all(r.prefix != k for r in pending)]:
            del prefixes[key]  # every prompt of that prefix is in
        return cache, jobs

    def _pack(self, cache, slot_row: list[_Row | None]) -> tuple[decoding.SlotCache, int]:
        """(the cache, the decode width): where fewer live slots than all run (`decode_width`), the live rows are
        moved into the front slots first (`slot_row` is updated in place)."""
        live = [b for b, row in enumerate(slot_row) if row is not None]
        width = decode_width(len(live), slots=self.slots, shards=self.shards)
        sources = [b for b in live if b >= len(live)]
        if width < self.slots and sources:
            targets = [b for b in range(len(live)) if slot_row[b] is None]
            for source, target in zip(sources, targets, strict=True):
                slot_row[target], slot_row[source] = slot_row[source], None
            pad = self.slots - len(sources)  # one shape: the moves padded with moves to nowhere
            self.stats.moved += len(sources)
            with self._scope():
                cache = decoding.move_slots(cache, jnp.asarray(sources + [0] * pad, jnp.int32),
                                            jnp.asarray(targets + [self.slots] * pad, jnp.int32))
        return cache, width

    def _decode(self, cache, slot_row: list[_Row | None], width: int, keys: np.ndarray, sampling: Sampling):
        """One decode call over the first `width` slots (every live one among them); the ids drawn [width, chunk] and
        their log-probs."""
        tokens, positions = np.zeros(width, np.int32), np.zeros(width, np.int32)
        counts, row_keys = np.zeros(width, np.int32), np.zeros((width, *keys.shape[1:]), keys.dtype)
        for b, row in enumerate(slot_row[:width]):
            if row is not None:
                tokens[b], positions[b] = row.generated[-1], len(row.prompt) + len(row.generated) - 1
                counts[b], row_keys[b] = len(row.generated), keys[row.index]
        span = decoding.span_bucket(int(positions.max()) + self.chunk, cache.length)
        with self._scope():
            cache, drawn, logps = decoding.decode(
                self.graphdef, self.state, cache, jnp.asarray(tokens), jnp.asarray(positions),
                jax.random.wrap_key_data(jnp.asarray(row_keys)), jnp.asarray(counts),
                jnp.float32(sampling.temperature), jnp.float32(sampling.top_p), chunk=self.chunk, span=span)
        self.stats.decode_calls += 1
        self.stats.slot_steps += width * self.chunk
        return cache, np.asarray(drawn), np.asarray(logps)

    # ---- log-likelihood -------------------------------------------------------------------------------------

    def next_token_logprobs(self, sequences: Sequence[Sequence[int]], candidates: Sequence[int]) -> np.ndarray:
        """[n, len(candidates)]: each sequence's next-token log-softmax over the candidates' logits (shared prefixes
        filled once)."""
        rows = [_Row(i, list(s)) for i, s in enumerate(sequences)]
        if any(not r.prompt for r in rows):
            raise ValueError("next_token_logprobs: each sequence needs at least one id")
        out = np.zeros((len(rows), len(candidates)), np.float32)
        if not rows:
            return out
        sampling = Sampling(max_new_tokens=1)
        keys = np.zeros((len(rows), *np.asarray(jax.random.key_data(jax.random.key(0))).shape), np.uint32)
        cache = self._cache_for(bucket(max(len(r.prompt) for r in rows), 64))
        self._cache = None
        self._assign_prefixes(rows)
        pending = self._admission_order(rows)
        prefixes: dict = {}
        while pending:
            admitted = [(b, pending.pop(0)) for b in range(min(self.slots, len(pending)))]
            cache, jobs = self._jobs(cache, admitted, keys, sampling, prefixes, pending)
            cache, _, _, logp = self._fill(cache, jobs, keys, sampling, candidates)
            for (_, row), values in zip(admitted, logp, strict=True):
                out[row.index] = values
        self._cache = cache
        return out
