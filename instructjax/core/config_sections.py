"""The sections of a run config: one light dataclass per block of the YAML (`model:`, `data:`, `optim:`,
`objective:`, `checkpoint:`, `wandb:`), each checking its own values when it is built (no JAX, seqio or TensorFlow
import). `core/config.py` puts them together into a `RunConfig` and reads the file; its module names stay the
import path of every name here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from instructjax.core.coerce import build_section, unknown_key
from instructjax.core.errors import ConfigError
from instructjax.core.objectives import (  # noqa: F401  (their import path was this module)
    ADVANTAGE_NORMALIZATIONS,
    GRPO_LOSSES,
    OBJECTIVES,
    OPTIONS,
    PAIR_LOSSES,
    REFERENCE_MODELS,
    REFERENCES,
    NoReference,
    Options,
    Pairs,
    Rollouts,
    owners,
)

SCHEDULES = ("linear", "cosine", "constant")
LOSS_REDUCTIONS = ("mean", "sum")
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
    """What the step minimises (train/objectives/): `loss` names the objective, and its own options are its
    subsection, `objective.<loss>:` (core/objectives.py: `sft`, the next-token loss; the preference losses `dpo`,
    `dpo_norm`, `simpo`, `orpo`; `grpo`, RL with verifiable rewards on rollouts the run generates)."""

    loss: str = "sft"
    options: Options | None = None  # the objective's options (OPTIONS[loss]); None: its defaults

    def __post_init__(self):
        _check(self.loss in OPTIONS, f"objective.loss must be one of {OBJECTIVES}, got {self.loss!r}")
        kind = OPTIONS[self.loss]
        if self.options is None:
            self.options = kind()
        _check(isinstance(self.options, kind), f"objective.{self.loss}: options of {type(self.options).__name__}, "
                                                f"not {kind.__name__}")

    @classmethod
    def from_config(cls, values: dict, where: str) -> ObjectiveSection:
        """The section from a config's `objective:` mapping: `loss` and the loss's own subsection; a key an
        objective's subsection holds written flat (before the subsections), or another objective's subsection, is
        one line naming where it goes."""
        values = dict(values)
        loss = values.pop("loss", "sft")
        _check(isinstance(loss, str) and loss in OPTIONS, f"{where}.loss must be one of {OBJECTIVES}, got {loss!r}")
        own, problems = values.pop(loss, None) or {}, []
        for key in values:
            holders = owners(key)
            if key in OPTIONS:
                problems.append(f"{where}.{key}: {where}.loss is {loss}, which reads only {where}.{loss}: leave "
                                f"{where}.{key} out, or set {where}.loss={key}")
            elif loss in holders:
                problems.append(f"{where}.{key} moved into the objective's own subsection: write {where}.{loss}.{key}")
            elif holders:
                problems.append(f"{where}.{key} is an option of {', '.join(holders)} ({where}.{holders[0]}.{key}), "
                                f"not of {where}.loss={loss}")
            else:
                problems.append(str(unknown_key(f"{where}.{key}", ["loss", loss])))
        _check(not problems, "; ".join(problems))
        _check(isinstance(own, dict), f"{where}.{loss}: expected a mapping, got {own!r}")
        return cls(loss, build_section(OPTIONS[loss], own, f"{where}.{loss}"))

    @property
    def preference(self) -> bool:
        """Whether the loss is on preference pairs."""
        return self.options.data is Pairs

    @property
    def rollouts(self) -> bool:
        """Whether the run trains on rollouts it generates (grpo) rather than on its data's examples."""
        return self.options.data is Rollouts

    @property
    def reference_model(self) -> str:
        """What stands as the reference model (its options' `reference_model`; `start` for an objective without)."""
        return getattr(self.options, "reference_model", "start")

    @property
    def needs_reference(self) -> bool:
        """Whether the objective compares with a reference model (DPO; grpo where its KL term counts, beta > 0)."""
        return self.options.reference_kind is not NoReference


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
