"""What each objective declares about itself, light enough to check a config before JAX loads: its name
(`objective.loss`), its own options (the `objective.<loss>:` subsection, a dataclass that checks itself), the kind
of data it trains on and the reference it compares with, both as types. Its computation is its class in
train/objectives/, which names these options (`Objective.options`).

    objective:
      loss: grpo
      grpo: {beta: 0.01, samples_per_prompt: 8, async_steps: 1}

Adding an objective: its options class here and its line in `OPTIONS`; its class in train/objectives/ and its line
in that package's `OBJECTIVES` (tests/meta/test_objectives.py holds the two lists to one another).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar

from instructjax.core.errors import ConfigError

GRPO_LOSSES = ("dapo", "cispo")  # grpo's loss_fn: open-instruct's GRPOLossType
ADVANTAGE_NORMALIZATIONS = ("standard", "centered")  # open-instruct's advantage_normalization_type
REFERENCES = ("cached", "live")  # `reference:` where the reference model's log-probs come from
REFERENCE_MODELS = ("start", "base")  # `reference_model:` what stands as the reference (train/reference.py)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


class Data:
    """What an objective trains on (the batch source the trainer opens: data/batches/source.py)."""


class Examples(Data):
    """A task's examples: the prompt read, the response's tokens trained."""


class Pairs(Data):
    """Preference pairs: a chosen and a rejected completion of one prompt, packed side by side."""


class Rollouts(Data):
    """Completions the run samples from its verifiable prompts as it trains, scored by their verifiers."""


class Reference:
    """What an objective compares the trained model with: `step_argument`, the step takes its parameters as a
    fourth argument; `in_batch`, the batches carry its log-prob of each target."""

    step_argument: ClassVar[bool] = False
    in_batch: ClassVar[bool] = False


class NoReference(Reference):
    """Nothing: the loss is the trained model's alone."""


class LiveParams(Reference):
    """The starting model's parameters, frozen, run in every step beside the trained model (`reference: live`)."""

    step_argument = True


class StoredLogProbs(Reference):
    """The starting model's log-prob of each target, computed once before the first step and stored with the run
    (`reference: cached`); the batches carry them."""

    in_batch = True


class RolloutLogProbs(Reference):
    """The starting model's log-prob of each rollout's targets, computed as the rollout is made (`reference:
    cached` of an objective that trains on rollouts); the batches carry them."""

    in_batch = True


@dataclass(frozen=True)
class ReadyReference:
    """A run's reference made ready before its first step (train/reference.py `prepare`): its kind and what that kind
    hands over: `LiveParams`, the starting parameters (the step's fourth argument); `StoredLogProbs`, each task's
    log-probs (the example batches carry them); `RolloutLogProbs`, the reference model's parameters (each rollout
    computes its log-probs with them); `NoReference`, nothing."""

    kind: type[Reference]
    value: Any = None

    @property
    def step_args(self) -> tuple:
        """What the step takes beside the parameters, the optimizer state and the batch."""
        return (self.value,) if self.kind.step_argument else ()


@dataclass
class Options:
    """An objective's own options (`objective.<loss>:`); the class says what the objective is."""

    loss: ClassVar[str]
    data: ClassVar[type[Data]] = Examples

    def __post_init__(self):
        pass  # each subclass checks its own keys, then calls this chain's next

    @property
    def reference_kind(self) -> type[Reference]:
        """The reference the objective compares with, as these options set it."""
        return NoReference

    def key(self, name: str) -> str:
        """An option's key as a config names it: `objective.grpo.async_steps`."""
        return f"objective.{self.loss}.{name}"


@dataclass
class SFTOptions(Options):
    """The next-token loss on the trained tokens (`optim.loss_reduction` says how it is normalised)."""

    loss: ClassVar[str] = "sft"


@dataclass
class WithReference(Options):
    """An objective that compares with the model the run starts from: `reference` says where its log-probs come
    from; `reference_model: start` goes on training a LoRA init_from's adapters (their starting values frozen as the
    reference), `base` folds them into the frozen base and trains fresh adapters."""

    reference: str = "cached"
    reference_model: str = "start"

    def __post_init__(self):
        super().__post_init__()
        _check(self.reference in REFERENCES, f"{self.key('reference')} must be one of {REFERENCES}, got "
               f"{self.reference!r}" + (f" (the reference model is {self.key('reference_model')}: "
                                        f"{' | '.join(REFERENCE_MODELS)})"
                                        if self.reference in REFERENCE_MODELS else ""))
        _check(self.reference_model in REFERENCE_MODELS,
               f"{self.key('reference_model')} must be one of {REFERENCE_MODELS}, got {self.reference_model!r}")
        _check(self.reference_model == "start" or self.reference_kind is not NoReference,
               f"{self.key('reference_model')}={self.reference_model}: this {self.loss} has no reference model")

    @property
    def reference_kind(self) -> type[Reference]:
        return StoredLogProbs if self.reference == "cached" else LiveParams


@dataclass
class PairOptions(Options):
    """An objective on preference pairs, its margin (or odds ratio) weighed by `beta`."""

    data: ClassVar[type[Data]] = Pairs
    beta: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        _check(self.beta > 0, f"{self.key('beta')} must be > 0, got {self.beta}")


@dataclass
class DPOOptions(WithReference, PairOptions):
    """DPO: the sums of the completions' log-probs against the frozen reference's, weighed by `beta`."""

    loss: ClassVar[str] = "dpo"


@dataclass
class DPONormOptions(DPOOptions):
    """DPO on per-token means of the log-probs (open-instruct's dpo_norm)."""

    loss: ClassVar[str] = "dpo_norm"


@dataclass
class SimPOOptions(PairOptions):
    """SimPO: per-token means, no reference, a target margin `gamma` (TRL's simpo_gamma)."""

    loss: ClassVar[str] = "simpo"
    gamma: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        _check(self.gamma >= 0, f"{self.key('gamma')} must be >= 0, got {self.gamma}")


@dataclass
class ORPOOptions(PairOptions):
    """ORPO: the chosen side's NLL and an odds ratio of per-token means weighed by `beta`, no reference."""

    loss: ClassVar[str] = "orpo"


@dataclass
class GRPOOptions(WithReference):
    """RL with verifiable rewards on rollouts the run generates (open-instruct's grpo_fast, its names and defaults;
    `beta` the KL's weight, 0: no reference model)."""

    loss: ClassVar[str] = "grpo"
    data: ClassVar[type[Data]] = Rollouts
    beta: float = 0.05
    # a rollout is `prompts_per_rollout` prompts x `samples_per_prompt` completions, sampled at `temperature`, at most
    # `response_length` new tokens each, packed into rows of data.seq_len
    prompts_per_rollout: int = 16
    samples_per_prompt: int = 4
    temperature: float = 0.7
    response_length: int = 256
    loss_fn: str = "dapo"  # dapo: PPO's clipped ratio; cispo: the clipped ratio, frozen, times the log-prob
    clip_lower: float = 0.2
    clip_higher: float = 0.2
    kl_estimator: int = 2  # open-instruct's estimate_kl: 0 log ratio, 1 its square / 2, 2 expm1(-d) + d, 3 ratio * d
    advantage_normalization: str = "standard"  # (reward - group mean) / (group std + 1e-8); centered: no division
    verification_reward: float = 10.0  # a verifier's score (0 to 1) times this is the reward
    filter_zero_std: bool = True  # a prompt whose samples all score the same trains nothing (open-instruct's)
    # a verifier that raises on a completion: `zero` scores it 0 and names it in a warning line (a pod's run goes on);
    # `stop`: one error line naming it, and the run stops
    verifier_errors: str = "zero"
    # asynchronous rollouts (open-instruct's async_steps): step t trains on a rollout of the parameters after update
    # t - 1 - async_steps (the run's first for the first steps), made while the steps before it train; 0: of the
    # parameters after the step before it, made between the two (synchronous)
    async_steps: int = 0
    # the rollout engine on a mesh of its own (Tunix's disaggregated rollout, open-instruct's vLLM workers): the last
    # rollout_devices / hosts of each host's devices, the learner on the rest, each update's parameters sent over;
    # 0: the engine decodes on the trainer's mesh
    rollout_devices: int = 0
    # the sampler's drift from the learner (open-instruct's names): each response token's policy loss weighed by
    # rho = pi_learner / pi_sampler clamped to [rho_clamp_lower_bound, rho_clamp_upper_bound], 0 where rho (or its
    # completion's: rho_mask_sequence_level; or the completion's mean |rho - 1|: rho_mask_tv_divergence) is outside
    # [rho_mask_lower_bound, rho_mask_upper_bound]; a bound of 0 is none. Off here (open-instruct's default is on):
    # with a synchronous rollout the sampler is the learner up to the engine's numerics
    use_rho_correction: bool = False
    rho_clamp_lower_bound: float = 0.0
    rho_clamp_upper_bound: float = 2.0
    rho_mask_lower_bound: float = 0.0
    rho_mask_upper_bound: float = 0.0
    rho_mask_sequence_level: bool = False
    rho_mask_tv_divergence: bool = False

    def __post_init__(self):
        super().__post_init__()
        key = self.key
        _check(self.beta >= 0, f"{key('beta')} must be >= 0 (0: no KL term), got {self.beta}")
        _check(self.loss_fn in GRPO_LOSSES, f"{key('loss_fn')} must be one of {GRPO_LOSSES}, got {self.loss_fn!r}")
        _check(self.kl_estimator in (0, 1, 2, 3),
               f"{key('kl_estimator')} must be 0, 1, 2 or 3, got {self.kl_estimator}")
        _check(self.advantage_normalization in ADVANTAGE_NORMALIZATIONS, f"{key('advantage_normalization')} must be "
               f"one of {ADVANTAGE_NORMALIZATIONS}, got {self.advantage_normalization!r}")
        for name in ("prompts_per_rollout", "samples_per_prompt", "response_length"):
            _check(getattr(self, name) >= 1, f"{key(name)} must be >= 1, got {getattr(self, name)}")
        _check(self.async_steps >= 0, f"{key('async_steps')} must be >= 0 (0: synchronous), got {self.async_steps}")
        _check(self.rollout_devices >= 0, f"{key('rollout_devices')} must be >= 0, got {self.rollout_devices}")
        _check(self.verifier_errors in ("zero", "stop"),
               f"{key('verifier_errors')} must be zero or stop, got {self.verifier_errors!r}")
        for name, lower in (("rho_mask_lower_bound", True), ("rho_clamp_lower_bound", True),
                            ("rho_mask_upper_bound", False), ("rho_clamp_upper_bound", False)):
            value = getattr(self, name)  # open-instruct's checks: 0 (none), or a lower bound in (0, 1), an upper > 1
            _check(value == 0 or (0 < value < 1 if lower else value > 1),
                   f"{key(name)} must be 0 (none) or {'in (0, 1)' if lower else '> 1'}, got {value}")
        _check(self.temperature > 0, f"{key('temperature')} must be > 0 (rollouts sample), got {self.temperature}")
        _check(self.clip_lower >= 0 and self.clip_higher >= 0,
               f"{key('clip_lower')} and clip_higher must be >= 0, got {self.clip_lower}, {self.clip_higher}")

    @property
    def reference_kind(self) -> type[Reference]:
        if self.beta == 0:  # no KL term: nothing to compare with
            return NoReference
        return RolloutLogProbs if self.reference == "cached" else LiveParams


OPTIONS: dict[str, type[Options]] = {o.loss: o for o in (SFTOptions, DPOOptions, DPONormOptions, SimPOOptions,
                                                          ORPOOptions, GRPOOptions)}
OBJECTIVES = tuple(OPTIONS)  # objective.loss
PAIR_LOSSES = tuple(name for name, o in OPTIONS.items() if o.data is Pairs)  # the losses on preference pairs


def owners(key: str) -> list[str]:
    """The objectives whose options have `key`."""
    return [name for name, o in OPTIONS.items() if key in {f.name for f in fields(o)}]
