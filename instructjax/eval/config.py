"""The `eval:` block of a run config: what `instructjax eval --config RUN.yaml` runs (a paper's suite, lm-eval
tasks, Codex-Eval) and each judged or protocol part's own section, each checking its values when built.
`RunConfig` keeps the block as a mapping; `eval_section` builds it (the CLI checks it on loading a config)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from instructjax.core.coerce import build_section
from instructjax.core.errors import ConfigError


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


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
    slots: int | None = None  # sequences the engine decodes at once (None: as many as fit, `plan` prints them)
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
        _check(self.slots is None or self.slots >= 1, f"eval.slots must be >= 1, got {self.slots}")
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
