# Derived from open-instruct (https://github.com/allenai/open-instruct), Copyright 2024 AllenAI, Apache-2.0.
# Modified for instructjax. See NOTICE.

"""GRPO's batches (`objective.loss: grpo`): each step's rollout, generated in the job by the policy as it stands.

A step takes the next `prompts_per_rollout` prompts of the run's verifiable tasks (every task's prompts, in an order
drawn from the run's seed anew each epoch), and the continuous batcher (model/batching.py: made once a run, its
compiled steps and KV cache kept, handed each update's parameters), on the trainer's mesh with the policy's current
parameters, samples `samples_per_prompt` completions of each at `temperature`, at most
`response_length` new tokens, from keys that depend on the run's seed and the prompt's place in the run alone (a
resumed run draws the same completions). Each completion is scored by its prompt's verifier (data/verifiers: the
row's `dataset`) times `verification_reward`, a verifier that draws at random (IFEvalG's null kwargs) drawing from
(the run's seed, the prompt's position in the run, the sample) alone: every host scores the whole rollout alike, and
a resumed run scores as the uninterrupted one; the advantages are normalised within each prompt's group
(`objectives.grpo.group_advantages`); a group whose completions all scored alike is left out with
`filter_zero_std` (open-instruct's), and where every group of a rollout is, the next prompts are drawn (at most
`MAX_REDRAWS` times). The kept completions, each its prompt then its response, are packed whole into the step's
`data.global_batch` rows of `data.seq_len` as SFT's examples are (segments; the response tokens trained, each
carrying its completion's advantage; with `objective.grpo.reference: cached`, the reference's log-prob of each, computed
here by one forward pass of the reference model).

It stands in for the run's data pipeline (`Trainer(pipeline=...)`): `task_names`, `plan_epoch` (an epoch: every
prompt once), `state`/`restore` (the prompts drawn so far), `report`, `batch_source` (the loop's batches:
data/batches/source.py); `rollout(params)` makes the next rollout.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AbstractMesh, NamedSharding

from instructjax.core.config import RunConfig
from instructjax.core.errors import ConfigError, DataError
from instructjax.core.objectives import ReadyReference, RolloutLogProbs
from instructjax.data.batches.packing import REFERENCE, empty_rows, pack_segments
from instructjax.data.batches.pipeline import EpochPlan, IteratorState
from instructjax.data.batches.source import Batch
from instructjax.model.batching import ContinuousBatcher, Sampling
from instructjax.train.objectives.grpo import ADVANTAGES, GRPO, SAMPLER, group_advantages

MAX_REDRAWS = 8  # rollouts drawn for one step at most, where every group of the earlier ones scored alike
ROLLOUT_STREAM = 0x524F4C4C  # "ROLL": the rollouts' own stream under the run's seed


@dataclass(frozen=True)
class Prompt:
    """A verifiable prompt: its ids (the chat template's generation prompt), its row's `ground_truth` and
    verifier name, its task's index in the mixture and its id (for messages)."""

    ids: tuple[int, ...]
    ground_truth: str
    verifier: str
    task: int
    id: str = ""


@dataclass
class Rollout(Batch):
    """One step's rollout: this host's rows of the global batch (numpy), what it logs, the whole batch (every host's
    rows) and the prompts' position after it (what `train/rollout_ahead.py` keeps)."""

    whole: dict[str, np.ndarray] = field(default_factory=dict)
    position: int = 0


class Rollouts:
    """The stand-in pipeline of a grpo run (see the module doc). `score(verifier, text, ground_truth, key)`: a
    verifier's score in [0, 1], its random draws (if any) seeded from `key`; `decode(ids)`: a completion's text as
    its verifier reads it; `stop_ids`: EOS and the chat template's end of turn."""

    def __init__(self, config: RunConfig, prompts: Sequence[Prompt], task_names: Sequence[str], *,
                 decode: Callable[[list[int]], str], score: Callable[[str, str, str, tuple], float],
                 stop_ids: Sequence[int], process_index: int = 0, process_count: int = 1):
        s, data = config.objective.options, config.data
        if not prompts:
            raise ConfigError(f"data.mixture={data.mixture} holds no verifiable prompt to roll out")
        self.config, self.options = config, s
        self.prompts, self.task_names = list(prompts), list(task_names)
        self.decode, self.score, self.stop_ids = decode, score, list(stop_ids)
        self.process_index, self.process_count = process_index, process_count
        self.drawn = 0  # prompts drawn so far (the position a checkpoint saves)
        self.state = IteratorState(0, 0, 0)
        self.reference = None  # a cached reference's parameters (RolloutLogProbs: `use_reference`)
        self.stream = None  # no example stream (a data pipeline's: what Mosaic-IT records)
        self.skipped: list[str] = []  # the rows the tasks' reads skipped, a line each (`report`)
        self.samples = s.prompts_per_rollout * s.samples_per_prompt
        longest = max(len(p.ids) for p in self.prompts)
        if longest + s.response_length > data.seq_len:
            worst = max(self.prompts, key=lambda p: len(p.ids))
            raise ConfigError(f"prompt {worst.id!r} of {self.task_names[worst.task]} has {longest} tokens: with "
                              f"objective.grpo.response_length={s.response_length} it needs rows of "
                              f"{longest + s.response_length} tokens; data.seq_len is {data.seq_len}")
        if data.global_batch < self.samples:  # a completion of a row at most: the step's rows hold every one
            raise ConfigError(f"data.global_batch={data.global_batch} rows cannot hold a rollout's {self.samples} "
                              "completions (objective.grpo.prompts_per_rollout x samples_per_prompt): set it to at "
                              f"least {self.samples}")
        ahead = s.async_steps * s.prompts_per_rollout
        if ahead > len(self.prompts):  # the rollouts made ahead would hold a prompt twice
            raise ConfigError(f"objective.grpo.async_steps={s.async_steps}: {s.async_steps} rollouts ahead take "
                              f"{ahead} prompts (objective.grpo.prompts_per_rollout={s.prompts_per_rollout}); "
                              f"data.mixture={data.mixture} has {len(self.prompts)}: set it to at most "
                              f"{len(self.prompts) // s.prompts_per_rollout}")
        self.graphdef = self.mesh = self.token_logps = self.engine_mesh = self._engine_shardings = None  # `attach`
        self._engine: ContinuousBatcher | None = None  # `_engine_with`: one a run
        self._orders: dict[int, np.ndarray] = {}

    # ---- the pipeline's interface (train/trainer.py) -----------------------------------------------------------

    def plan_epoch(self, epoch: int = 0) -> EpochPlan:
        steps = math.ceil(len(self.prompts) / self.options.prompts_per_rollout)
        tokens = sum(len(p.ids) for p in self.prompts) * self.options.samples_per_prompt
        return EpochPlan(examples=len(self.prompts), rows=steps * self.config.data.global_batch, tokens=tokens,
                         trained_tokens=0, efficiency=1.0, steps=steps)

    def restore(self, state) -> None:
        self.drawn = int(np.asarray(state.to_array() if isinstance(state, IteratorState) else state).reshape(-1)[0])
        self.state = IteratorState(self.drawn, 0, 0)

    def report(self) -> list[str]:
        s = self.options
        return [f"grpo: {len(self.prompts)} verifiable prompts from {', '.join(self.task_names)}; a rollout: "
                f"{s.prompts_per_rollout} prompts x {s.samples_per_prompt} samples, temperature {s.temperature:g}, up "
                f"to {s.response_length} new tokens, packed into {self.config.data.global_batch} rows of "
                f"{self.config.data.seq_len}", *self.skipped]

    def batch_source(self, run_dir, total_steps: int, place):
        """The run's batches (`data.batches.source`): each step's rollout made while the step before runs, from its
        parameters; with `async_steps` k, k steps ahead (train/rollout_ahead.py); placed on the mesh by `place`."""
        from instructjax.train.rollout_ahead import RolloutsAhead, RolloutsBetweenSteps

        k = self.options.async_steps
        return RolloutsAhead(self, k, run_dir, total_steps, place) if k else RolloutsBetweenSteps(self, run_dir, place)

    def use_reference(self, reference: ReadyReference) -> None:
        """The run's reference as `train.reference.prepare` made it ready: with a cached one (`RolloutLogProbs`), the
        reference model's parameters, whose log-probs each rollout computes; else nothing (a live one is the step's)."""
        self.reference = reference.value if reference.kind is RolloutLogProbs else None

    def attach(self, build, mesh, engine_mesh=None) -> None:
        """The run's step (`build`: the trained model's graph, its parameters' layout) and the mesh they lie on;
        `engine_mesh`: the engine's own mesh (`objective.grpo.rollout_devices`), the parameters laid out on it as they
        lie on `mesh`."""
        self.graphdef, self.mesh, self.token_logps = build.graphdef, mesh, reference_logps(build, self.config)
        self.engine_mesh, self._engine_shardings = engine_mesh, None
        if engine_mesh is not None:
            self._engine_shardings = jax.tree.map(lambda s: NamedSharding(engine_mesh, s.spec), build.param_shardings)

    def engine_params(self, params):
        """A copy of `params` where the engine decodes: sent to its own mesh, or copied on the trainer's."""
        if self.engine_mesh is None:
            return jax.tree.map(jnp.copy, params)
        return jax.device_put(params, self._engine_shardings)

    # ---- a step's rollout ---------------------------------------------------------------------------------------

    def order(self, epoch: int) -> np.ndarray:
        """Epoch `epoch`'s order of the prompts (the run's seed's own permutation of each epoch)."""
        if epoch not in self._orders:
            self._orders = {epoch: np.random.default_rng([self.config.seed, ROLLOUT_STREAM, epoch]).permutation(
                len(self.prompts))}  # the epoch drawn from now on (a rollout spans two at most)
        return self._orders[epoch]

    def take(self, start: int, count: int) -> list[int]:
        """The indices of prompts start .. start + count - 1 of the run (epochs end to end)."""
        n = len(self.prompts)
        return [int(self.order(k // n)[k % n]) for k in range(start, start + count)]

    def rollout(self, params) -> Rollout:
        """The next step's batch from the policy `params` (the trainer's, on its mesh), this host's rows."""
        metrics: dict[str, float] = {}
        generation = 0.0  # every draw's (the step waits for all of them)
        for _ in range(MAX_REDRAWS):
            chosen = self.take(self.drawn, self.options.prompts_per_rollout)
            first, self.drawn = self.drawn, self.drawn + len(chosen)
            kept, metrics = self._generate(params, chosen, first)
            generation += metrics["time/generation"]
            if kept:
                break
        else:  # said, not silent: the step's update is AdamW's momentum and decay alone
            if self.process_index == 0:
                print(f"instructjax: warning: {MAX_REDRAWS} rollouts in a row scored alike in every group (prompts "
                      f"{first + len(chosen) - MAX_REDRAWS * len(chosen)}..{first + len(chosen) - 1} of the run): this "
                      "step trains on no token", file=sys.stderr, flush=True)
        metrics["time/generation"] = generation  # the other values are the last draw's (the one kept)
        self.state = IteratorState(self.drawn, 0, 0)
        batch = pack_rollout(kept, self.config.data.global_batch, self.config.data.seq_len)
        if not self.options.use_rho_correction:  # the step takes the sampler's log-probs only to weigh by them
            del batch[SAMPLER]
        if self.reference is not None:
            batch[REFERENCE] = np.asarray(jax.device_get(self.token_logps(self.reference, _on_mesh(batch, self.mesh))),
                                          np.float32) * (batch["segment_ids"] > 0)
        return Rollout(self.mine(batch), metrics, batch, self.drawn)

    def restored(self, whole: dict[str, np.ndarray], metrics: dict[str, float], position: int) -> Rollout:
        """A rollout read back (train/rollout_ahead.py), this host's rows of its whole batch."""
        return Rollout(self.mine(whole), metrics, whole, position)

    def mine(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """This host's rows of a global batch."""
        rows = len(batch["tokens"]) // self.process_count
        mine = slice(self.process_index * rows, (self.process_index + 1) * rows)
        return {k: v[mine] for k, v in batch.items()}

    def _scored(self, prompt: Prompt, text: str, position: int, sample: int) -> float:
        """`prompt`'s verifier's score of `text`, sample `sample` of the run's prompt number `position`: a function
        of them alone (its random draws seeded from the run's seed, the position and the sample). A verifier that
        raises scores 0 with a warning line naming the completion, or stops the run
        (`objective.grpo.verifier_errors`)."""
        try:
            return self.score(prompt.verifier, text, prompt.ground_truth,
                              (self.config.seed, ROLLOUT_STREAM, position, sample))
        except Exception as err:  # noqa: BLE001  a user's verifier may raise anything
            where = (f"verifier {prompt.verifier} raised on sample {sample} of prompt {position} of the run "
                     f"({self.task_names[prompt.task]} {prompt.id or ''})".replace(" )", ")")
                     + f": {type(err).__name__}: {err}".replace("\n", " "))
            if self.options.verifier_errors == "stop":
                raise DataError(f"{where} (objective.grpo.verifier_errors: stop)", reason="verifier_raised") from None
            if self.process_index == 0:
                print(f"instructjax: warning: {where}; scored 0 (objective.grpo.verifier_errors: stop stops the run "
                      "instead)", file=sys.stderr, flush=True)
            return 0.0

    def _generate(self, params, chosen: list[int], first: int) -> tuple[list[tuple], dict[str, float]]:
        """Sample, score and normalise one rollout of the prompts `chosen` (the run's prompts `first`..): the kept
        completions (prompt ids, response ids, advantage, task) and the rollout's metrics."""
        s = self.options
        start = time.perf_counter()
        prompts = [self.prompts[i] for i in chosen for _ in range(s.samples_per_prompt)]
        sampling = Sampling(max_new_tokens=s.response_length, temperature=s.temperature, top_p=1.0,
                            seed=int(np.random.default_rng([self.config.seed, ROLLOUT_STREAM, first]).integers(2**31)))
        with jax.set_mesh(self.engine_mesh) if self.engine_mesh is not None else contextlib.nullcontext():
            drawn = self._engine_with(params).generate([list(p.ids) for p in prompts], sampling, self.stop_ids,
                                                       with_logps=True)
        responses, sampled = [ids for ids, _ in drawn], [logps for _, logps in drawn]
        seconds = time.perf_counter() - start
        samples = s.samples_per_prompt
        verified = np.array([self._scored(p, self.decode(r), first + j // samples, j % samples)
                             for j, (p, r) in enumerate(zip(prompts, responses, strict=True))])
        scores = verified * s.verification_reward
        advantages = group_advantages(scores, s.samples_per_prompt, s.advantage_normalization)
        groups = scores.reshape(-1, s.samples_per_prompt)
        keep = np.repeat(groups.std(-1) > 0 if s.filter_zero_std else np.ones(len(groups), bool), s.samples_per_prompt)
        lengths = np.array([len(r) for r in responses])
        generated = int(lengths.sum())
        metrics = {"scores": float(scores.mean()), "scores_std": float(scores.std()),
                   "objective/verifiable_reward": float(scores.mean()),
                   "objective/verifiable_correct_rate": float((verified > 0).mean()),
                   "real_batch_size_ratio": float(keep.mean()), "val/sequence_lengths": float(lengths.mean()),
                   "val/stop_rate": float(np.mean([bool(r) and r[-1] in self.stop_ids for r in responses])),
                   "val/advantages_mean": float(advantages[keep].mean()) if keep.any() else 0.0,
                   "val/actor_tokens_per_second": generated / max(seconds, 1e-9), "time/generation": seconds}
        for name in sorted({p.verifier for p in prompts}):
            mine = np.array([p.verifier == name for p in prompts])
            metrics[f"objective/{name}_reward"] = float(scores[mine].mean())
            metrics[f"objective/{name}_correct_rate"] = float((verified[mine] > 0).mean())
        kept = [(p.ids, tuple(r), float(a), p.task, tuple(lp)) for p, r, a, k, lp in zip(
            prompts, responses, advantages, keep, sampled, strict=True) if k]
        return kept, metrics

    def _engine_with(self, params) -> ContinuousBatcher:
        """The run's engine (made on the first rollout: its compiled fill and decode steps and its slots' cache live
        as long as the run) decoding with `params`, the policy as it stands: the trainer's arrays themselves (with
        `model.scan_layers`, each layer sliced from them: a copy `plan` counts)."""
        if self.engine_mesh is not None:  # each update's parameters sent over (a no-op for ones made there)
            params = jax.device_put(params, self._engine_shardings)
        with jax.sharding.use_abstract_mesh(AbstractMesh((), ())):  # its layers as a list: placeholders, then these
            policy = nnx.merge(self.graphdef, params)
            if self._engine is None:
                self._engine = ContinuousBatcher(policy, slots=self._slots(), mesh=self.engine_mesh or self.mesh)
            else:
                self._engine.load(policy)
        return self._engine

    def _slots(self) -> int:
        mesh = self.engine_mesh or self.mesh
        shards = 1 if mesh is None else mesh.shape["data"] * mesh.shape["fsdp"]
        return GRPO(self.config).slots(shards)


def open_rollouts(bound, process_index: int = 0, process_count: int = 1) -> Rollouts:
    """A grpo run's rollouts over its bound mixture (`train.setup.BoundRun`): every verifiable task's prompts (an
    epoch-mode mixture's count: the subset an SFT run of it would take, `task_subsets`), encoded by the run's chat
    template with its generation prompt (one longer than its task's max_length left out and counted, as its examples
    are); verified by their rows' verifiers; stopped at EOS and the template's end of an assistant turn."""
    from instructjax.core.errors import BadRowPolicy
    from instructjax.data.batches.example_order import task_subsets
    from instructjax.data.blends.specs import subset_seed
    from instructjax.data.encoding.prompt import encode_prompts
    from instructjax.data.encoding.tokenizer import turn_end_ids
    from instructjax.data.tokenized.stream import read_conversations
    from instructjax.data.verifiers import get_verifier, seeded_score

    config, resolved, tokenizer = bound.config, bound.data.resolved, bound.tokenizer
    mixture = resolved.mixture
    if mixture is not None and not mixture.epoch_mode:
        raise ConfigError(f"data.mixture={config.data.mixture} mixes by rates: a grpo run reads its tasks' prompts "
                          "whole (a mixture of counts: `null` for all of a task)")
    prompts, reports = [], []
    for index, (task, spec, count, seed) in enumerate(task_subsets(bound.data.config, resolved)):
        policy = BadRowPolicy(spec.on_bad_row)  # a count: the subset an SFT run of the mixture takes, in its order
        convs = list(read_conversations(spec, policy, subset_seed(seed, task) if seed is not None else None))
        template = spec.template or config.template
        longer, kept = 0, []
        for conv, encoded in zip(convs, encode_prompts(convs, template, tokenizer, spec.max_length), strict=True):
            if encoded.truncated:  # as its examples leave it out (data/tokenized: prompt_over_max_length)
                longer += 1
                continue
            kept.append(Prompt(tuple(int(i) for i in encoded.tokens), conv.meta["ground_truth"],
                               conv.meta["verifier"], index, conv.id))
        prompts += kept[:count] if count is not None else kept
        reports += [f"{bound.data.sources[index]}: {line}" for line in policy.summary()]
        if longer:
            reports.append(f"{bound.data.sources[index]}: {longer} prompt(s) longer than its max_length "
                           f"({spec.max_length} tokens) left out")
    verifiers = {name: get_verifier(name) for name in {p.verifier for p in prompts}}
    stop_ids = sorted(set(turn_end_ids(tokenizer.to_hf(_chat_template(tokenizer, config.template)))) - {None})
    rollouts = Rollouts(config, prompts, bound.data.sources,
                        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=False),
                        score=lambda name, text, truth, key: seeded_score(verifiers[name], text, truth, key),
                        stop_ids=stop_ids,
                        process_index=process_index, process_count=process_count)
    rollouts.skipped = reports
    return rollouts


def _chat_template(tokenizer, template: str | None) -> str | None:
    """The Jinja chat template the run's `template` renders with (the tokenizer's own for `model`)."""
    from instructjax.data.encoding.templates import jinja_template

    return jinja_template(template, bos=tokenizer.adds_bos, own=tokenizer.chat_template) if template else None


def pack_rollout(kept: Sequence[tuple], rows: int, seq_len: int) -> dict[str, np.ndarray]:
    """Completions (prompt ids, response ids, advantage, task index, each response id's log-prob as the engine drew
    it), each a segment (its prompt, then its response trained, each response token carrying the advantage and its
    sampled log-prob: `SAMPLER`), packed whole into `rows` rows of `seq_len` (all padding where none is kept)."""
    one = empty_rows(max(len(kept), 1), seq_len)
    one[ADVANTAGES] = np.zeros(one["tokens"].shape, np.float32)
    one[SAMPLER] = np.zeros(one["tokens"].shape, np.float32)
    for r, (prompt, response, advantage, task, sampled) in enumerate(kept):
        ids = np.asarray([*prompt, *response], np.int32)
        n = len(ids)
        one["tokens"][r, :n] = ids
        one["targets"][r, : n - 1] = ids[1:]
        one["loss_weights"][r, len(prompt) - 1: n - 1] = 1.0  # a target that is a response token
        one[ADVANTAGES][r, len(prompt) - 1: n - 1] = advantage
        one[SAMPLER][r, len(prompt) - 1: n - 1] = sampled
        one["segment_ids"][r, :n] = 1
        one["positions"][r, :n] = np.arange(n)
        one["source_ids"][r, :n] = task
    if not kept:
        out = empty_rows(rows, seq_len)
        return {**out, ADVANTAGES: np.zeros((rows, seq_len), np.float32), SAMPLER: np.zeros((rows, seq_len), np.float32)}
    return pack_segments(one, rows)


def reference_logps(build, config: RunConfig) -> Callable | None:
    """`token_logps(params, batch)` jitted at the sampling temperature: a cached reference's log-probs of a rollout
    (None unless the objective's reference is `cached`)."""
    if not build.cached_reference:
        return None
    from instructjax.train.step import token_logps

    chunk, temperature = config.optim.loss_chunk, config.objective.options.temperature
    return jax.jit(lambda params, batch: token_logps(build.graphdef, params, batch, chunk, temperature=temperature))


def _on_mesh(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """The global batch placed on `mesh` as the step takes it (every host holds the whole rollout)."""
    from instructjax.core import sharding

    if mesh is None:
        return {k: jax.numpy.asarray(v) for k, v in batch.items()}
    return sharding.place(batch, sharding.batch_sharding(mesh), whole=True)
