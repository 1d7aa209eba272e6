"""The sections of a run config: one light dataclass per block of the YAML (`model:`, `data:`, `optim:`,
`objective:`, `checkpoint:`, `wandb:`), each checking its own values when it is built (no JAX, seqio or TensorFlow
import). `core/config.py` puts them together into a `RunConfig` and reads the file; its module names stay the
import path of every name here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from instructjax.core.errors import ConfigError

SCHEDULES = ("linear", "cosine", "constant")
LOSS_REDUCTIONS = ("mean", "sum")
OBJECTIVES = ("sft", "dpo", "dpo_norm", "simpo", "orpo", "grpo")  # objective.loss (train/objectives/)
PAIR_LOSSES = ("dpo", "dpo_norm", "simpo", "orpo")  # the losses on preference pairs
GRPO_LOSSES = ("dapo", "cispo")  # objective.loss_fn of grpo: open-instruct's GRPOLossType
ADVANTAGE_NORMALIZATIONS = ("standard", "centered")  # open-instruct's advantage_normalization_type
REFERENCES = ("cached", "live")  # objective.reference: where the reference model's log-probs come from
REFERENCE_MODELS = ("start", "base")  # objective.reference_model: what stands as the reference (train/reference.py)
OVERLONG = ("truncate", "split")
PACK_MODES = (True, False, "per_step")
SYSTEM_TURNS = ("keep", "merge", "drop")
MOSAIC_STRATEGIES = ("primary", "format", "permute", "maskout", "mix")
MOSAIC_DISTRIBUTIONS: dict[str, dict[str, float]] = {  # Appendix A -> default numpy parameters
    "uniform": {},
    "fixed": {},
    "exponential": {"scale": 1.0},
    "lognormal": {"mean": 0.0, "sigma": 1.0},
    "logistic": {"loc": 0.0, "scale": 2.0},
    "pareto": {"a": 1.0},
}


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


@dataclass
class ModelSection:
    """`preset` names a DecoderConfig preset; any other key overrides one of its fields."""

    OTHER_KEYS_INTO: ClassVar[str] = "overrides"  # `model.remat: full` is `model.overrides.remat: full`

    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None  # an instructjax checkpoint (e.g. imported from HF) to start from


@dataclass
class MosaicSection:
    """Mosaic-IT (seed 003): what a `data.mosaic:` block maps onto (see `data.mosaic`)."""

    strategy: str = "mix"
    k_max: int = 10
    distribution: str = "uniform"
    distribution_params: dict[str, float] = field(default_factory=dict)
    max_length: int | None = None  # token budget; None: the run's data.seq_len (2048 outside a run)

    def __post_init__(self):
        _check(self.strategy in MOSAIC_STRATEGIES,
               f"mosaic.strategy must be one of {MOSAIC_STRATEGIES}, got {self.strategy!r}")
        _check(self.distribution in MOSAIC_DISTRIBUTIONS,
               f"mosaic.distribution must be one of {tuple(MOSAIC_DISTRIBUTIONS)}, got {self.distribution!r}")
        unknown = set(self.distribution_params) - set(MOSAIC_DISTRIBUTIONS[self.distribution])
        _check(not unknown, f"mosaic.distribution_params {sorted(unknown)} unknown for {self.distribution!r} "
                            f"(allowed: {sorted(MOSAIC_DISTRIBUTIONS[self.distribution])})")
        _check(isinstance(self.k_max, int) and self.k_max >= 1,
               f"mosaic.k_max must be an integer >= 1, got {self.k_max!r}")
        _check(self.max_length is None or (isinstance(self.max_length, int) and self.max_length >= 1),
               f"mosaic.max_length must be an integer >= 1, got {self.max_length!r}")

    @property
    def params(self) -> dict[str, float]:
        """The distribution's numpy parameters: defaults overridden by distribution_params."""
        return {**MOSAIC_DISTRIBUTIONS[self.distribution], **self.distribution_params}


REWEIGHTING_METHODS = ("doremi",)


@dataclass
class ReweightingSection:
    """Online domain reweighting (`data.reweighting:`): DoReMi (`instructjax.train.doremi`, `train.reweighting`). Every
    step the mixture's domain weights take an exponentiated-gradient step of size `eta` on each domain's excess loss
    over the `reference` run's model (a RUN_DIR with a checkpoint: same model, tokenizer and tasks), smoothed by `eps` toward
    uniform; the proxy trains on the domain-weighted loss, and the weights' running mean is the proposed mixture."""

    method: str = "doremi"
    reference: str = ""
    eta: float = 1.0  # DoReMi's reweight_eta
    eps: float = 1e-4  # DoReMi's reweight_eps

    def __post_init__(self):
        _check(self.method in REWEIGHTING_METHODS,
               f"data.reweighting.method must be one of {REWEIGHTING_METHODS}, got {self.method!r}")
        _check(bool(self.reference), "data.reweighting.reference must name the reference run's directory (a RUN_DIR "
                                     "with a checkpoint, trained on the same model and tokenizer)")
        _check(self.eta > 0, f"data.reweighting.eta must be > 0, got {self.eta}")
        _check(0 <= self.eps < 1, f"data.reweighting.eps must be in [0, 1), got {self.eps}")


@dataclass
class DataSection:
    """The data of a run: a registered seqio Task or Mixture, rows of `seq_len` tokens, `global_batch` rows a
    step, packed (best-fit-decreasing in windows of `pack_window` examples) or one example a row.
    `pack: per_step`: a step takes the `global_batch` examples an unpacked run's step takes and packs them
    into fewer rows (the same optimization, less padding: see `data.batches.pipeline`).
    `shuffle: false` trains in file order (see `data.batches.example_order`). `on_bad_row`: what a malformed row of
    any task does: "error" stops the run with one line, "skip" counts it (None: each task's own `on_bad_row`,
    "error" by default); quirks a dataset's reference pipeline handles are skipped or repaired and counted
    either way.
    `system_turn`: a conversation's system turn is kept ("keep"), folded into its first user turn ("merge": the
    system text, a blank line, then the user's, as LLaMA-Factory does for templates without a system role: Gemma,
    Mistral) or dropped ("drop"). A conversation the chat template still refuses is a bad row (`on_bad_row`)."""

    mixture: str = "acp_ACP_builtin"
    seq_len: int = 2048
    global_batch: int = 64
    seed: int = 0
    # false: file order: each task's examples as its files hold them (a subset of `count`: the seed's members,
    # in file order), tasks in the mixture's order, the same every epoch; a window's rows in the order of their
    # first examples (pack: false: the examples themselves). Rate mode still picks tasks by rate; Mosaic-IT
    # still draws k and formats each epoch
    shuffle: bool = True
    pack: bool | str = True  # true, false or "per_step"
    pack_window: int = 1000
    overlong: str = "truncate"
    mosaic: MosaicSection | None = None
    prefetch: int = 2
    on_bad_row: str | None = None
    system_turn: str = "keep"
    reweighting: ReweightingSection | None = None  # DoReMi's online domain weights (None: the mixture's rates)

    def __post_init__(self):
        _check(self.seq_len >= 8, f"data.seq_len={self.seq_len} is too small for any example")
        _check(self.global_batch >= 1, f"data.global_batch must be >= 1, got {self.global_batch}")
        _check(self.pack_window >= 1, f"data.pack_window must be >= 1, got {self.pack_window}")
        _check(self.overlong in OVERLONG, f"data.overlong must be one of {OVERLONG}, got {self.overlong!r}")
        _check(isinstance(self.pack, (bool, str)) and self.pack in PACK_MODES,
               f"data.pack must be true, false or per_step, got {self.pack!r}")
        _check(self.prefetch >= 0, f"data.prefetch must be >= 0, got {self.prefetch}")
        _check(self.on_bad_row in (None, "error", "skip"),
               f"data.on_bad_row must be error or skip, got {self.on_bad_row!r}")
        _check(self.system_turn in SYSTEM_TURNS,
               f"data.system_turn must be one of {', '.join(SYSTEM_TURNS)}, got {self.system_turn!r}")
        if self.mosaic is not None and self.mosaic.max_length is not None:
            _check(self.mosaic.max_length <= self.seq_len,
                   f"data.mosaic.max_length={self.mosaic.max_length} is above data.seq_len={self.seq_len}: a mosaic "
                   "that long would be truncated in its row (leave it unset: it follows seq_len)")

    @property
    def mosaic_budget(self) -> int | None:
        """Mosaic-IT's token budget: `mosaic.max_length`, by default the row length."""
        return None if self.mosaic is None else (self.mosaic.max_length or self.seq_len)


@dataclass
class OptimSection:
    """AdamW with linear warmup over `warmup_ratio` of the steps, then linear (or cosine) decay to 0: `build`
    makes it (core/optimizer.py)."""

    lr: float = 2e-5
    warmup_ratio: float = 0.03
    schedule: str = "linear"  # after warmup: "linear" decay (seeds 000/002/004), "cosine" (seed 003), "constant" (grpo)
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    epochs: int = 2
    micro_batches: int = 1  # gradient accumulation: the global batch is split into this many
    loss_reduction: str = "mean"  # "mean" over the global batch's trained tokens, or "sum" (see train.loss)
    loss_chunk: int = 4096  # tokens whose logits the loss makes at a time (train.loss.chunked_token_nll); 0: all
    neftune_alpha: float = 0.0  # NEFTune: uniform noise on the token embeddings while training (train.step); 0: off

    def __post_init__(self):
        _check(self.lr > 0, f"optim.lr must be > 0, got {self.lr}")
        _check(0 <= self.warmup_ratio < 1, f"optim.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        _check(self.schedule in SCHEDULES, f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        _check(self.epochs >= 1, f"optim.epochs must be >= 1, got {self.epochs}")
        _check(self.micro_batches >= 1, f"optim.micro_batches must be >= 1, got {self.micro_batches}")
        _check(self.loss_reduction in LOSS_REDUCTIONS,
               f"optim.loss_reduction must be one of {LOSS_REDUCTIONS}, got {self.loss_reduction!r}")
        _check(self.grad_clip is None or self.grad_clip > 0, f"optim.grad_clip must be > 0, got {self.grad_clip}")
        _check(self.loss_chunk >= 0, f"optim.loss_chunk must be >= 0 (0: the whole micro-batch), got {self.loss_chunk}")
        _check(self.neftune_alpha >= 0, f"optim.neftune_alpha must be >= 0 (0: off), got {self.neftune_alpha}")

    def build(self, total_steps: int) -> tuple[Any, Any]:
        """The optax optimizer over `total_steps` steps and its learning-rate schedule (imports jax: not on load)."""
        from instructjax.core import optimizer

        return optimizer.build(self, total_steps)


@dataclass
class ObjectiveSection:
    """What the step minimises (train/objectives/): `sft`, the next-token loss on the trained tokens, or a
    preference loss on chosen and rejected completions: `dpo` (sums of log-probs against a frozen reference),
    `dpo_norm` (per-token means: open-instruct's), `simpo` (per-token means, no reference, margin `gamma`), `orpo`
    (the chosen side's NLL and an odds ratio of per-token means, weighed by `beta`, no reference); or `grpo`, RL with
    verifiable rewards on rollouts the run generates (open-instruct's grpo_fast: the keys below `beta`'s, with its
    defaults; `beta` the KL's weight, 0.05 unless set)."""

    loss: str = "sft"
    beta: float | None = None  # 0.1 (a preference loss's), 0.05 for grpo (open-instruct's), where left unset
    gamma: float = 0.5  # SimPO's target margin (TRL's simpo_gamma default)
    reference: str = "cached"  # the reference's log-probs computed once before training, or `live` in every step
    # the reference is the model the run starts from: `start` goes on training a LoRA init_from's adapters (their
    # starting values frozen as the reference); `base` folds them into the frozen base and trains fresh adapters
    reference_model: str = "start"
    # grpo (open-instruct's names): a rollout is `prompts_per_rollout` prompts x `samples_per_prompt` completions,
    # sampled at `temperature`, at most `response_length` new tokens each, packed into rows of data.seq_len
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
        _check(self.loss in OBJECTIVES, f"objective.loss must be one of {OBJECTIVES}, got {self.loss!r}")
        if self.beta is None:
            self.beta = 0.05 if self.loss == "grpo" else 0.1
        if self.loss == "grpo":
            _check(self.beta >= 0, f"objective.beta must be >= 0 (0: no KL term), got {self.beta}")
        else:
            _check(self.beta > 0, f"objective.beta must be > 0, got {self.beta}")
        _check(self.gamma >= 0, f"objective.gamma must be >= 0, got {self.gamma}")
        _check(self.reference in REFERENCES,
               f"objective.reference must be one of {REFERENCES}, got {self.reference!r}"
               + (f" (the reference model is objective.reference_model: {' | '.join(REFERENCE_MODELS)})"
                  if self.reference in REFERENCE_MODELS else ""))
        _check(self.reference_model in REFERENCE_MODELS,
               f"objective.reference_model must be one of {REFERENCE_MODELS}, got {self.reference_model!r}")
        _check(self.reference_model == "start" or self.needs_reference,
               f"objective.reference_model={self.reference_model}: objective.loss={self.loss} has no reference model")
        _check(self.loss_fn in GRPO_LOSSES, f"objective.loss_fn must be one of {GRPO_LOSSES}, got {self.loss_fn!r}")
        _check(self.kl_estimator in (0, 1, 2, 3), f"objective.kl_estimator must be 0, 1, 2 or 3, got {self.kl_estimator}")
        _check(self.advantage_normalization in ADVANTAGE_NORMALIZATIONS, "objective.advantage_normalization must be "
               f"one of {ADVANTAGE_NORMALIZATIONS}, got {self.advantage_normalization!r}")
        for key in ("prompts_per_rollout", "samples_per_prompt", "response_length"):
            _check(getattr(self, key) >= 1, f"objective.{key} must be >= 1, got {getattr(self, key)}")
        _check(self.async_steps >= 0, f"objective.async_steps must be >= 0 (0: synchronous), got {self.async_steps}")
        _check(not self.async_steps or self.loss == "grpo", f"objective.async_steps={self.async_steps} makes rollouts "
               f"ahead of the steps: objective.loss={self.loss} has no rollouts (grpo)")
        _check(self.rollout_devices >= 0, f"objective.rollout_devices must be >= 0, got {self.rollout_devices}")
        _check(not self.rollout_devices or self.loss == "grpo", f"objective.rollout_devices={self.rollout_devices} "
               f"gives the rollout engine devices of its own: objective.loss={self.loss} has no rollouts (grpo)")
        _check(self.verifier_errors in ("zero", "stop"),
               f"objective.verifier_errors must be zero or stop, got {self.verifier_errors!r}")
        _check(not self.use_rho_correction or self.loss == "grpo", "objective.use_rho_correction weighs a rollout's "
               f"tokens by the log-probs its sampler drew them with: objective.loss={self.loss} has no rollouts (grpo)")
        for key, lower in (("rho_mask_lower_bound", True), ("rho_clamp_lower_bound", True),
                           ("rho_mask_upper_bound", False), ("rho_clamp_upper_bound", False)):
            value = getattr(self, key)  # open-instruct's checks: 0 (none), or a lower bound in (0, 1), an upper > 1
            _check(value == 0 or (0 < value < 1 if lower else value > 1),
                   f"objective.{key} must be 0 (none) or {'in (0, 1)' if lower else '> 1'}, got {value}")
        _check(self.temperature > 0, f"objective.temperature must be > 0 (rollouts sample), got {self.temperature}")
        _check(self.clip_lower >= 0 and self.clip_higher >= 0,
               f"objective.clip_lower and clip_higher must be >= 0, got {self.clip_lower}, {self.clip_higher}")

    @property
    def preference(self) -> bool:
        """Whether the loss is on preference pairs."""
        return self.loss in PAIR_LOSSES

    @property
    def rollouts(self) -> bool:
        """Whether the run trains on rollouts it generates (grpo) rather than on its data's examples."""
        return self.loss == "grpo"

    @property
    def needs_reference(self) -> bool:
        """DPO and dpo_norm compare with the starting model, and grpo where its KL term counts (beta > 0); SimPO,
        ORPO and SFT do not."""
        return self.loss in ("dpo", "dpo_norm") or (self.loss == "grpo" and self.beta > 0)


@dataclass
class CheckpointSection:
    """Orbax saves every `every` steps, the last `keep` kept; `build` makes the Checkpointer (core/checkpoint.py)."""

    every: int = 500
    keep: int | None = 3
    async_save: bool = True

    def __post_init__(self):
        _check(self.every >= 1, f"checkpoint.every must be >= 1, got {self.every}")
        _check(self.keep is None or self.keep >= 1, f"checkpoint.keep must be >= 1, got {self.keep}")

    def build(self, run_dir: str, tokenizer: dict | None = None) -> Any:
        """The run's `core.checkpoint.Checkpointer` under `run_dir` (saving `tokenizer` with every step)."""
        from instructjax.core.checkpoint import Checkpointer

        return Checkpointer(run_dir, keep=self.keep, async_save=self.async_save, tokenizer=tokenizer)


WANDB_MODES = ("online", "offline", "disabled")


@dataclass(frozen=True)
class WandbSection:
    """Weights & Biases logging (`wandb:`), beside metrics.jsonl and TensorBoard: the training metrics as they
    are logged and the evaluation results, in one W&B run per run directory (core/tracking.py). `group` None: the
    run directory's parent folder (the family); `mode` None: W&B's own (WANDB_MODE, else online); `dir` None:
    W&B's default local folder (./wandb)."""

    project: str
    entity: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()
    mode: str | None = None
    dir: str | None = None

    def __post_init__(self):
        _check(self.mode is None or self.mode in WANDB_MODES,
               f"wandb.mode must be one of {', '.join(WANDB_MODES)}, got {self.mode!r}")
