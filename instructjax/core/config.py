"""Run configuration: one YAML file per experiment, read into typed sections that check themselves.

A config reads like a paper's experiment section::

    name: acp_ACP_llama2_7b
    model: {preset: llama2-7b, init_from: checkpoints/base/llama2-7b}
    data: {mixture: acp_ACP, seq_len: 2048, global_batch: 64}
    optim: {lr: 5.0e-5, warmup_ratio: 0.03, epochs: 2}

Every section is a light dataclass (no JAX, seqio or TensorFlow import) that checks its own values when it
is built; `RunConfig` checks what spans sections. Unknown keys, wrong types and impossible values are
one-line `ConfigError`s before any work. What depends on the machine (the mesh against the device count,
the batch against hosts and devices) is checked by `core.sharding.resolve_mesh`, which the trainer and
`plan` both call. `key=value` overrides with dotted keys (`optim.lr=1e-5`, `max_steps=20`) apply on top of
the file. A `define:` block holds the config's own tasks and mixtures (`data.blends.specs.define` registers
them).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.util
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from instructjax.core.errors import ConfigError

SCHEDULES = ("linear", "cosine")
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


@dataclass
class DataSection:
    """The data of a run: a registered seqio Task or Mixture, rows of `seq_len` tokens, `global_batch` rows a
    step, packed (best-fit-decreasing in windows of `pack_window` examples) or one example a row.
    `pack: per_step`: a step takes the `global_batch` examples an unpacked run's step takes and packs them
    into fewer rows (the same optimization, less padding: see `data.batches.pipeline`).
    `shuffle: false` trains in file order (see `data.batches.streams`). `on_bad_row`: what a malformed row of
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
    """AdamW with linear warmup over `warmup_ratio` of the steps, then linear (or cosine) decay to 0
    (`train.optim.make_optimizer` builds it)."""

    lr: float = 2e-5
    warmup_ratio: float = 0.03
    schedule: str = "linear"  # decay after warmup: "linear" (seeds 000/002/004) or "cosine" (seed 003)
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    epochs: int = 2
    micro_batches: int = 1  # gradient accumulation: the global batch is split into this many
    loss_reduction: str = "mean"  # "mean" over the global batch's trained tokens, or "sum" (see train.loss)
    loss_chunk: int = 4096  # tokens whose logits the loss makes at a time (train.loss.chunked_token_nll); 0: all

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


@dataclass
class CheckpointSection:
    every: int = 500
    keep: int | None = 3
    async_save: bool = True

    def __post_init__(self):
        _check(self.every >= 1, f"checkpoint.every must be >= 1, got {self.every}")
        _check(self.keep is None or self.keep >= 1, f"checkpoint.keep must be >= 1, got {self.keep}")


EVAL_BACKENDS = ("auto", "hf", "instructjax")
JUDGE_MODES = ("pairwise", "alpaca_eval", "flask")


@dataclass(frozen=True)
class Comparison:
    """One named pairwise comparison: the other system (a run directory, whose `eval/pairwise_outputs.jsonl` it
    reads, or a `.jsonl` file of outputs) and, where it differs from the part's, the judge prompt."""

    against: str
    prompt: str | None = None


@dataclass
class JudgeSection:
    """One judged evaluation of an `eval:` block (`pairwise`, `alpaca_eval`, `flask`): the instructions the
    model answers, the other system's outputs (pairwise: the systems compared against, one path or named
    comparisons {name: run dir or .jsonl, or {against, prompt}}, `{}` for none: the outputs only, for other runs to
    compare with; alpaca_eval: the AlpacaEval set with the reference's outputs, in the `alpaca_eval` package's
    format, and `annotator`, the package's annotator config: `alpaca_eval_gpt4` for AlpacaEval 1 against
    Davinci-003, `weighted_alpaca_eval_gpt4_turbo` (the default) for AlpacaEval 2 against GPT-4 Turbo), the
    judge prompt (pairwise: a name in eval/judge_prompts.py or a file; None: seed 002's Figure 4), the judge's
    replies once there are some. Paths left out default to `eval.data_dir/<mode>/{prompts,against}.jsonl`,
    `eval.data_dir/alpaca_eval/<the hub's file of the annotator's set>`
    and `<eval out dir>/<mode>[_vs_<name>]_replies.jsonl`."""

    prompts: str | None = None
    against: str | dict[str, str | Comparison] | None = None
    prompt: str | None = None
    replies: str | None = None
    max_new_tokens: int | None = None  # None: the paper's (instructjax.eval.pairwise.JUDGE_PROTOCOLS)
    temperature: float = 0.0
    seed: int = 0
    annotator: str | None = None  # alpaca_eval: the package's annotator config (None: AlpacaEval 2's)
    judge: dict[str, Any] | None = None  # this part's judge: `eval.judge` keys that differ (model, base_url, ...)

    def __post_init__(self):
        _check(self.max_new_tokens is None or self.max_new_tokens >= 1,
               f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        _check(self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}")
        _check(not isinstance(self.against, dict) or self.replies is None,
               "named comparisons (against: {name: ...}) have their replies in <out>/pairwise_vs_<name>_replies.jsonl "
               "(no `replies` key)")

    def comparisons(self) -> dict[str, Comparison]:
        """The named comparisons; one `against` path is one comparison named after its file (or run directory)."""
        if isinstance(self.against, dict):
            return {name: c if isinstance(c, Comparison) else Comparison(c) for name, c in self.against.items()}
        if self.against is None:
            return {}
        stem = self.against.rstrip("/").rsplit("/", 1)[-1].removesuffix(".jsonl")
        return {stem: Comparison(self.against)}


@dataclass(frozen=True)
class JudgeEndpoint:
    """The judge as an OpenAI-compatible chat endpoint (`eval.judge`; instructjax.eval.judge calls it): its base
    URL, model, the environment variable holding the key (unset: "EMPTY", as local servers take), how many
    requests may be in flight, the sampling, retries on rate limits and dropped connections."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 4
    temperature: float = 0.0
    max_tokens: int = 1024
    max_retries: int = 6
    timeout: float = 300.0  # seconds a request may take before it is tried again (a judge that hangs)
    timeout_s: float | None = None  # the old name of `timeout`, still read

    def __post_init__(self):
        _check(self.concurrency >= 1 and self.max_tokens >= 1 and self.max_retries >= 0,
               "eval.judge: concurrency and max_tokens must be >= 1, max_retries >= 0")
        _check((self.timeout_s or self.timeout) > 0, "eval.judge.timeout must be > 0 seconds")

    @property
    def seconds(self) -> float:
        """The request timeout: `timeout`, or `timeout_s` where an older config names it."""
        return self.timeout_s if self.timeout_s is not None else self.timeout


@dataclass
class ToxigenSection:
    """ToxiGen as seed 004 runs it (App. C, open-instruct's eval/toxigen): `per_group` hateful prompts of each
    targeted group from `data_dir` (ToxiGen's prompts/hate_<group>_1k.txt files; None: eval.data_dir/toxigen),
    completed greedily up to `max_new_tokens`, classified by `classifier` (ToxiGen's RoBERTa, a local dir or hub
    id). `chat`: in the model's template ("Complete the following: ..."); False: a base model's raw prompt,
    decoded to the first newline."""

    data_dir: str | None = None
    classifier: str = "tomh/toxigen_roberta"
    per_group: int = 500
    chat: bool = True
    max_new_tokens: int = 512
    seed: int = 42
    batch_size: int = 32

    def __post_init__(self):
        _check(self.per_group >= 1 and self.max_new_tokens >= 1 and self.batch_size >= 1,
               "eval.toxigen: per_group, max_new_tokens and batch_size must be >= 1")


@dataclass
class TruthfulqaSection:
    """TruthfulQA's generation setting as seed 004 runs it (App. C, open-instruct's eval/truthfulqa): the 6-shot
    QA prompt, greedy answers of up to `max_new_tokens`, judged by `truth_judge` and `info_judge` (causal LMs
    answering "yes" after "Q: ...\nA: ...\nTrue:" / "Helpful:"; P(yes) >= 0.5). `data`: TruthfulQA.csv (its
    `Question` column) or a JSONL with `question`; None: eval.data_dir/truthfulqa/TruthfulQA.csv."""

    data: str | None = None
    truth_judge: str = "allenai/truthfulqa-truth-judge-llama2-7B"
    info_judge: str = "allenai/truthfulqa-info-judge-llama2-7B"
    chat: bool = True
    max_new_tokens: int = 50
    limit: int | None = None

    def __post_init__(self):
        _check(self.max_new_tokens >= 1 and (self.limit is None or self.limit >= 1),
               "eval.truthfulqa: max_new_tokens and limit must be >= 1")


@dataclass
class LongFormSection:
    """Seed 002's LongForm and ELI5, scored by METEOR (eval/long_form.py): `longform` (LongForm's test rows:
    `input`, `output`; None: eval.data_dir/long_form/longform_test.jsonl) and `eli5` (ELI5's validation rows in
    the `eli5` schema; None: eval.data_dir/long_form/eli5_validation.jsonl), jsonl, json, parquet or CSV;
    greedy answers of up to `max_new_tokens` in the model's chat template; `limit`: the first rows of each;
    `eli5_selftext`: the question is the title and the selftext (False: the title alone)."""

    longform: str | None = None
    eli5: str | None = None
    max_new_tokens: int = 512
    limit: int | None = None
    eli5_selftext: bool = False

    def __post_init__(self):
        _check(self.max_new_tokens >= 1 and (self.limit is None or self.limit >= 1),
               "eval.long_form: max_new_tokens and limit must be >= 1")


MT_BENCH_JUDGE_MAX_TOKENS = 2048  # FastChat llm_judge's chat_completion_openai(..., max_tokens=2048)


@dataclass
class MtBenchSection:
    """MT-Bench as FastChat runs it (eval/mt_bench.py): `questions` (FastChat's question.jsonl; None:
    eval.data_dir/mt_bench/question.jsonl), `reference_answers` (its reference_answer/gpt-4.jsonl; None: that file
    under eval.data_dir/mt_bench where it is there), the judge's `replies` (None: <out>/mt_bench_replies.jsonl, or
    asked of `eval.judge`)."""

    questions: str | None = None
    reference_answers: str | None = None
    replies: str | None = None
    max_new_tokens: int = 1024
    seed: int = 0
    judge: dict[str, Any] | None = None  # MT-Bench's judge: `eval.judge` keys that differ (model, base_url, ...)

    def __post_init__(self):
        _check(self.max_new_tokens >= 1, f"eval.mt_bench.max_new_tokens must be >= 1, got {self.max_new_tokens}")


@dataclass
class EvalSection:
    """What `instructjax eval --config RUN.yaml` runs: a paper's `suite` (lm-eval, GSM8K/BBH by the paper's
    protocol) and/or lm-eval `tasks`, Codex-Eval (`codex`; None: when the suite has it), and the judged
    evaluations (`true` or a JudgeSection mapping), whose judge is called directly where `judge` names an
    endpoint (else its replies are read from files)."""

    suite: str | None = None
    chat_format: str = "auto"  # the tulu suite's prompts: auto (by the model) | tulu | model | none
    tasks: list[str] = field(default_factory=list)
    num_fewshot: int | None = None  # for `tasks`
    include_path: str | None = None  # extra (e.g. offline) lm-eval task YAMLs
    backend: str = "auto"
    batch_size: int = 8
    codex: bool | None = None
    codex_samples: int = 20
    pairwise: JudgeSection | bool = False
    alpaca_eval: JudgeSection | bool = False
    flask: JudgeSection | bool = False
    judge: JudgeEndpoint | None = None
    toxigen: ToxigenSection | bool = False
    truthfulqa: TruthfulqaSection | bool = False
    long_form: LongFormSection | bool = False
    mt_bench: MtBenchSection | bool = False
    data_dir: str = "eval_data"
    out_dir: str | None = None  # None: <run_dir>/eval

    def __post_init__(self):  # the suite's name is checked by `instructjax eval` (eval/suite.py; core is below eval)
        _check(self.backend in EVAL_BACKENDS, f"eval.backend must be one of {EVAL_BACKENDS}, got {self.backend!r}")
        _check(self.chat_format in ("auto", "tulu", "model", "none"),
               f"eval.chat_format must be one of auto, tulu, model, none, got {self.chat_format!r}")
        _check(self.batch_size >= 1, f"eval.batch_size must be >= 1, got {self.batch_size}")
        _check(self.codex_samples >= 10, f"eval.codex_samples must be >= 10 (pass@10), got {self.codex_samples}")

    def judged(self, mode: str) -> JudgeSection | None:
        """The JudgeSection of `mode` (defaults for `true`), None when the block does not name it."""
        value = getattr(self, mode)
        return JudgeSection() if value is True else (value or None)

    def judge_of(self, part: str) -> JudgeEndpoint | None:
        """The endpoint a judged part (pairwise, alpaca_eval, flask, mt_bench) asks: its own `judge` keys over
        `eval.judge`'s (MT-Bench's max_tokens: FastChat's 2048 unless named); None where no endpoint is named
        (the judge's replies are read from files)."""
        section = self.protocol(part) if part == "mt_bench" else self.judged(part)
        own = dict((section.judge if section is not None else None) or {})
        if part == "mt_bench":
            own.setdefault("max_tokens", MT_BENCH_JUDGE_MAX_TOKENS)
        if self.judge is None and "base_url" not in own:
            return None
        base = dataclasses.asdict(self.judge) if self.judge is not None else {}
        return build_section(JudgeEndpoint, {**base, **own}, f"eval.{part}.judge")

    def judge_model(self, part: str) -> str | None:
        """The judge model a part's replies come from: its endpoint's, else the model its `judge` names."""
        endpoint = self.judge_of(part)
        if endpoint is not None:
            return endpoint.model
        section = self.protocol(part) if part == "mt_bench" else self.judged(part)
        return ((section.judge if section is not None else None) or {}).get("model")

    def protocol(self, name: str) -> ToxigenSection | TruthfulqaSection | LongFormSection | MtBenchSection | None:
        """The section of a part with a protocol of its own (`toxigen`, `truthfulqa`, `long_form`, `mt_bench`;
        defaults for `true`), None when off."""
        value = getattr(self, name)
        sections = {"toxigen": ToxigenSection, "truthfulqa": TruthfulqaSection, "long_form": LongFormSection,
                    "mt_bench": MtBenchSection}
        return sections[name]() if value is True else (value or None)


def eval_section(values: dict[str, Any]) -> EvalSection:
    """The checked EvalSection of a config's `eval:` mapping (RunConfig keeps the mapping itself)."""
    return build_section(EvalSection, values, "eval")


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


@dataclass
class RunConfig:
    name: str = "run"
    run_dir: str = "runs/run"
    seed: int = 0
    max_steps: int | None = None  # cut the run short (None: optim.epochs worth of steps; 0: evaluate only)
    log_every: int = 10
    # the mesh's axis sizes (one may be -1: the rest), or "auto": the mesh `plan` proposes for the devices at hand
    # (train.plan.choose_mesh), recorded in the run's config.yaml and kept on resume
    mesh: dict[str, int] | str = field(default_factory=lambda: {"data": -1, "fsdp": 1, "tensor": 1})
    distributed: bool = False  # call jax.distributed.initialize (also when JAX_COORDINATOR_ADDRESS is set)
    tokenizer: str | None = None  # None: the one saved with model.init_from (the built-in default from scratch)
    template: str | None = None  # chat template of every task; None: the tasks' own (tulu unless they say)
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: dict[str, Any] = field(default_factory=dict)
    define: dict[str, Any] = field(default_factory=dict)
    imports: list[str] = field(default_factory=list)  # user modules (names or .py paths) imported on load
    wandb: WandbSection | None = None  # optional Weights & Biases logging of metrics and results
    compiled: str | None = None  # a train step saved by `plan --compile --save-executable`: used, not compiled again

    def __post_init__(self):
        _check(self.max_steps is None or self.max_steps >= 0, f"max_steps must be >= 0, got {self.max_steps}")
        _check(self.log_every >= 1, f"log_every must be >= 1, got {self.log_every}")
        _check(not isinstance(self.mesh, str) or self.mesh == "auto",
               f"mesh must be a mapping of axis sizes or 'auto', got {self.mesh!r}")
        micro, batch = self.optim.micro_batches, self.data.global_batch
        _check(batch % micro == 0, f"data.global_batch={batch} is not divisible by optim.micro_batches={micro}")
        unknown = set(self.define) - {"tasks", "mixtures"}
        _check(not unknown, f"define: unknown key(s) {sorted(unknown)}; 'tasks' and 'mixtures'")
        eval_section(self.eval)  # checked here; read with eval_section(config.eval)


def _coerce(value: Any, kind: Any, where: str) -> Any:
    """Check/convert a YAML value to a dataclass field type, or raise a ConfigError naming it."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(kind):
        if isinstance(value, kind):  # already built (data.mosaic)
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(kind, value, where)
    if origin in (tuple, list) or kind in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = typing.get_args(kind)[0] if origin is list and typing.get_args(kind) else Any
        return (tuple if (origin or kind) is tuple else list)(_coerce(v, item, f"{where}[{i}]")
                                                              for i, v in enumerate(value))  # fmt: skip
    if origin is dict or kind is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        item = typing.get_args(kind)[1] if typing.get_args(kind) else Any  # each value checked: mesh.data=two
        return {k: _coerce(v, item, f"{where}.{k}") for k, v in value.items()}
    if kind is Any:
        return value
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if kind in (int, str, bool) and type(value) is kind:
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    raise ConfigError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


def check_value(value: Any, kind: Any, where: str) -> Any:
    """`value` checked (and converted) against the type `kind` of the config key `where`: one ConfigError line."""
    return _coerce(value, kind, where)


def unknown_key(path: str, known) -> ConfigError:
    """`model.dtyp: unknown key; did you mean dtype?` (or the known keys when none is close)."""
    key = path.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(str(key), sorted(known), n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(sorted(known))}"
    return ConfigError(f"{path}: unknown key; {hint}")


def build_section(cls, values: dict, where: str):
    """A dataclass from a YAML mapping, each value checked against the field's type (one-line ConfigErrors
    naming `where`): how every config section, and a `define:` block's task specs, are built."""
    return _build(cls, values, where)


def _build(cls, values: dict, where: str):
    """The section, or one ConfigError naming every unknown key and bad value in it (not one per run)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs, problems, shortcuts = {}, [], {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if cls is ModelSection and key not in names:  # `model.remat: full` is `model.overrides.remat: full`
            shortcuts[key] = value
            continue
        try:
            if key not in names:
                raise unknown_key(path, names)
            kwargs[key] = _coerce(value, hints[key], path)
        except ConfigError as e:
            problems.append(str(e))
    if shortcuts:
        twice = {k for k in shortcuts if k in kwargs.get("overrides", {}) and kwargs["overrides"][k] != shortcuts[k]}
        if twice:
            problems.append(f"{where}: {', '.join(sorted(twice))} given both as {where}.KEY and {where}.overrides.KEY "
                            "with different values")
        kwargs["overrides"] = {**kwargs.get("overrides", {}), **shortcuts}
    if problems:
        raise ConfigError("; ".join(problems))
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or 'config'}: {e}") from None


def parse_overrides(pairs: list[str]) -> dict:
    """`["optim.lr=1e-5", "max_steps=20"]` -> nested dict, values parsed as YAML scalars."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not key=value")
        key, raw = pair.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw else None
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config (local or in a bucket; or only overrides when `path` is None) into a checked RunConfig."""
    from instructjax.core import storage

    raw: dict = {}
    if path is not None:
        try:
            raw = yaml.safe_load(storage.path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
    extra = parse_overrides(overrides or [])
    if raw.get("mesh") == "auto" and isinstance(extra.get("mesh"), dict):  # axes named over `auto`: FSDP the rest
        raw["mesh"] = {"data": 1, "fsdp": -1, "tensor": 1}
    raw = _merge(raw, extra)
    config = _build(RunConfig, raw, "")
    local = path is not None and not storage.is_remote(path)  # a bucket's config: imports by name or path alone
    import_modules(config.imports, Path(path).parent if local else None)
    return config


def import_modules(names: list[str], base: Path | None = None) -> None:
    """Import a config's `imports:` (or `--import`) before anything is resolved, so the tasks, sources and
    seqio Tasks they register are known: a module name (found on sys.path, the config's directory or the
    working directory) or a path to a .py file (relative to the config's directory, else the working
    directory). A module that fails to import is one ConfigError line."""
    for name in names:
        try:
            if name.endswith(".py") or "/" in name:
                candidates = [Path(name)] if base is None else [base / name, Path(name)]
                found = next((p for p in candidates if p.is_file()), None)
                if found is None:
                    raise FileNotFoundError(f"no file {name}")
                module_name = found.stem
                if module_name in sys.modules and getattr(sys.modules[module_name], "__file__", None) == str(found):
                    continue
                spec = importlib.util.spec_from_file_location(module_name, found)
                module = importlib.util.module_from_spec(spec)
                sys.modules[module_name] = module
                spec.loader.exec_module(module)
            else:
                extra = [str(p) for p in (base, Path.cwd()) if p is not None and str(p) not in sys.path]
                sys.path[len(sys.path):] = extra
                importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001  whatever the user's module raises: one line
            detail = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise ConfigError(f"imports: cannot import {name!r}: {detail[:300]}") from None


def to_dict(config: RunConfig) -> dict:
    """The resolved config as plain data (saved with every checkpoint)."""
    return dataclasses.asdict(config)


# where and how a run runs, is logged, saved and evaluated: none of it changes what it trains (dotted keys and
# everything below them)
NOT_TRAINING = ("name", "run_dir", "log_every", "mesh", "distributed", "checkpoint", "eval", "wandb", "data.prefetch",
                "compiled",
                "model.overrides.attention", "model.overrides.attention_block", "model.overrides.attention_backward_block",
                "model.overrides.scan_layers",
                "model.overrides.remat", "optim.loss_chunk")  # fmt: skip


def digest(values: Any) -> str:
    """sha256 (hex, 16 characters) of plain config data, independent of key order."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def training_values(config: RunConfig | dict) -> dict[str, Any]:
    """What a run's training depends on: the config (or its `to_dict`) as dotted keys, but `NOT_TRAINING`."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if any(prefix == k or prefix.startswith(k + ".") for k in NOT_TRAINING):
            return
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value

    walk("", to_dict(config) if isinstance(config, RunConfig) else config)
    return flat


def training_digest(config: RunConfig) -> str:
    """What a run's training depends on (`training_values`): a finished run's DONE marker records it, and a sweep
    trains again when it changed (more epochs, other data, another learning rate)."""
    return digest(training_values(config))


def training_changes(before: dict, after: RunConfig, ignore: tuple[str, ...] = ()) -> list[str]:
    """What `after` changes against the config `before` (a saved `to_dict`) in what the run trains, as
    "key: old -> new" (keys only one side has, written before they existed, are left out; `ignore`: more keys)."""
    import json

    old, new = training_values(before), training_values(json.loads(json.dumps(to_dict(after), default=str)))
    return [f"{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(set(old) & set(new))
            if old[k] != new[k] and k not in ignore]  # fmt: skip
