"""What `mix table` measures of each proxy of a swarm: a target per column, lower is better.

    loss:TASK     the proxy's loss on TASK's examples (its first `examples` in row order, encoded for the run: its
                  tokenizer, chat template and row length), as the trainer counts a loss: the negative log-probability
                  of every trained (assistant) token, averaged over those tokens
    metric:NAME   the last value of NAME the run logged (RUN_DIR/metrics.jsonl, e.g. `loss`)
    result:KEY    a figure of the run's results.json (`eval --config`), KEY its path with dots (e.g. alpaca_eval.win_rate,
                  negated by writing -result:KEY where higher is better)

A task whose loss is the target should be one the proxies do not train on (or a held-out split registered as a task
of its own): `loss:` scores the examples it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KINDS = ("loss", "metric", "result")


@dataclass(frozen=True)
class Target:
    """One column of the table: its kind, what it names, and its sign (-1: higher is better, negated)."""

    kind: str
    name: str
    sign: float = 1.0

    @property
    def column(self) -> str:
        return f"{'-' if self.sign < 0 else ''}{self.kind}:{self.name}"


def parse_target(text: str) -> Target:
    """`[-]KIND:NAME` -> Target; a ValueError names what is wrong."""
    sign = -1.0 if text.startswith("-") else 1.0
    kind, _, name = text.lstrip("-").partition(":")
    if kind not in KINDS or not name:
        raise ValueError(f"target {text!r}: write KIND:NAME with KIND one of {', '.join(KINDS)} (e.g. loss:TASK, "
                         "metric:loss, result:alpaca_eval.win_rate; a leading - negates one where higher is better)")
    return Target(kind, name, sign)


def trained_token_loss(logprobs: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> float:
    """The loss of examples as the trainer counts it: -(sum of log p of each trained token) / (trained tokens).
    `logprobs[i][t]`: log p of token t + 1 of example i given the tokens before it; `masks[i]`: its loss mask."""
    total = count = 0.0
    for logp, mask in zip(logprobs, masks, strict=True):
        trained = np.asarray(mask[1 : len(logp) + 1], np.float64) != 0
        total -= float(np.sum(np.asarray(logp, np.float64)[trained]))
        count += float(trained.sum())
    if not count:
        raise ValueError("its examples have no trained token")
    return total / count


def last_logged(records: Sequence[dict], name: str) -> float | None:
    """The last value of `name` among a run's metrics records (None: never logged)."""
    for record in reversed(records):
        value = record.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def result_at(results: dict | None, key: str) -> float | None:
    """The number at `key` (a dotted path) of a results.json object (None: not there, or not a number)."""
    value: object = results
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def task_loss(config, run_dir: str, task: str, examples: int, batch_size: int = 8) -> float:
    """The `loss:TASK` target of the run in `run_dir` (its newest checkpoint) trained from `config`: TASK bound to
    the run (its tokenizer, chat template, row length), its first `examples` examples scored by the model."""
    from instructjax.convert.saved import load_model
    from instructjax.data.binding import bind
    from instructjax.data.tokenized.examples import encoded_examples
    from instructjax.eval.score import score_ids
    from instructjax.train import setup as run_setup

    run_setup.run_registry(config)
    bound = bind(task, tokenizer=run_setup.tokenizer_path(config), template=config.template,
                 max_length=config.data.seq_len, system_turn=config.data.system_turn)
    if len(bound.tasks) != 1:
        raise ValueError(f"{task!r} is a mixture: a loss target names one task")
    chosen = [ex for ex in encoded_examples(bound.tasks[0])[:examples] if len(ex["tokens"]) >= 2]
    scores = score_ids(load_model(run_dir), [np.asarray(ex["tokens"]) for ex in chosen], batch_size)
    return trained_token_loss([s.logprobs for s in scores], [np.asarray(ex["loss_mask"]) for ex in chosen])
