"""AlpacaEval 1 and 2 through the `alpaca_eval` package itself: its outputs format, its annotator configs (prompt
template, sampling, completion parser, order shuffling) and its win rates, with the judge reached through ours.

- AlpacaEval 1 (seed 004's "v Davinci-003"): the `alpaca_eval_gpt4` annotator against Davinci-003's outputs; the
  win rate (`alpaca_eval.metrics.get_winrate`).
- AlpacaEval 2 (seed 003's "AlpacaEval 2 Rate (LC)" and "Rate"): the `weighted_alpaca_eval_gpt4_turbo` annotator
  (the judge's probability of each output from the logprobs of its one-token verdict) against GPT-4 Turbo's
  outputs; the raw and the length-controlled win rate (`get_length_controlled_winrate`, which reads the package's
  `df_gamed.csv` from the `tatsu-lab/alpaca_eval` dataset on the hub, or from the Hugging Face cache).

The reference file is the AlpacaEval set in the package's format (`alpaca_eval_gpt4_baseline.json` or
`alpaca_eval.json` of `tatsu-lab/alpaca_eval`: a JSON list, or JSONL, of {instruction, output, generator}; by
default `eval.data_dir/alpaca_eval/` with the hub's name for the annotator's set, `REFERENCE_FILES`); the model
answers its instructions, in its order (the length-controlled GLM knows each instruction by its position).
Each judge request the annotator makes is a request of ours ({id, messages, sampling}): asked of `eval.judge`
(the annotator's sampling, the endpoint's model) or written to `alpaca_eval_requests.jsonl`, its reply read from
`alpaca_eval_replies.jsonl` ({id, reply, logprobs?}: logprobs as OpenAI returns a choice's).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import warnings
from collections.abc import Callable, Mapping, Sequence

from instructjax.core import storage
from instructjax.core.errors import ConfigError, DataError
from instructjax.eval.pairwise import read_jsonl

ALPACA_EVAL_1 = "alpaca_eval_gpt4"
ALPACA_EVAL_2 = "weighted_alpaca_eval_gpt4_turbo"
LENGTH_CONTROLLED = (ALPACA_EVAL_2,)  # annotators whose reference set the length-controlled GLM was fitted on
REFERENCE_FILES = {ALPACA_EVAL_1: "alpaca_eval.json", ALPACA_EVAL_2: "alpaca_eval_gpt4_baseline.json"}  # the hub's
SAMPLING_KEYS = ("max_tokens", "temperature", "logprobs", "top_logprobs")

Ask = Callable[[list[dict]], "list[dict] | None"]  # requests -> a reply ({id, reply, logprobs?}) to each, None: none yet


class NoReplies(Exception):
    """The judge's replies to the annotator's requests are not there yet."""


def read_reference(path: str) -> list[dict]:
    """The AlpacaEval set with the reference's outputs: a JSON list (the package's files) or JSONL; a row without
    an instruction or an output is a one-line error naming the file and row."""
    text = storage.path(path).read_text()
    if path.endswith(".json"):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON ({e.msg})", reason="malformed_json", file=path) from None
    else:
        rows = read_jsonl(path)
    for i, row in enumerate(rows, 1):
        for key in ("instruction", "output"):
            if not isinstance(row, dict) or not isinstance(row.get(key), str):
                raise DataError(f"AlpacaEval row without a text {key!r}", reason="missing_field", file=path, row=i)
    return rows


def package():
    """The `alpaca_eval` package (imported when first needed), or a one-line ConfigError."""
    try:
        with warnings.catch_warnings():  # its utils import pkg_resources: a deprecation warning on every run
            warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
            import alpaca_eval.annotators
            import alpaca_eval.metrics
            import alpaca_eval.utils  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"eval.alpaca_eval needs the `alpaca_eval` package (pip install 'instructjax[eval]'): "
                          f"{e}") from None
    return alpaca_eval


def request_id(messages: Sequence[Mapping], sampling: Mapping) -> str:
    """A request's id: what it asks (its messages and sampling), so a rerun finds the same replies."""
    return hashlib.sha256(json.dumps([list(messages), dict(sampling)], sort_keys=True).encode()).hexdigest()[:20]


def completions(ask: Ask, annotator: str = "") -> Callable[..., dict]:
    """The annotator's `fn_completions`: each prompt (ChatML text, as the package's openai decoder reads it) a
    request of ours; the replies given back in the form the package's parsers read (`completions` text,
    `completions_all` choices with their logprobs). Raises NoReplies when there are none yet."""
    ae = package()

    def fn(prompts: Sequence[str], model_name: str = "", **kwargs) -> dict:
        sampling = {k: kwargs[k] for k in SAMPLING_KEYS if k in kwargs}
        requests = []
        for prompt in prompts:
            messages = ae.utils.prompt_to_chatml(prompt.strip())
            requests.append({"id": request_id(messages, sampling), "messages": messages, "sampling": sampling,
                             "annotator_model": model_name})  # fmt: skip
        replies = ask(requests)
        if replies is None:
            raise NoReplies
        by_id = {str(r.get("id")): r for r in replies}
        chosen = [by_id[r["id"]] for r in requests]
        if sampling.get("logprobs") and any(not c.get("logprobs") for c in chosen):
            raise ConfigError(f"eval.alpaca_eval.annotator {annotator!r} weighs the judge's logprobs, and its replies "
                              "hold none (the judge's server gives no logprobs): name an annotator that reads the "
                              "reply's text (alpaca_eval_gpt4_turbo_fn, alpaca_eval_gpt4), or a judge that gives "
                              "logprobs")
        every = [{"text": c["reply"] or " ", "total_tokens": 0, **({"logprobs": c["logprobs"]} if "logprobs" in c else {})}
                 for c in chosen]  # fmt: skip
        return {"completions": [c["text"] for c in every], "completions_all": every,
                "price_per_example": [0.0] * len(every), "time_per_example": [0.0] * len(every)}

    return fn


def annotate(model: Sequence[Mapping], reference: Sequence[Mapping], annotator: str, ask: Ask) -> list[dict]:
    """The package's annotations of the model's outputs (output_2) against the reference's (output_1): its
    PairwiseAnnotator built from its `annotator` config, its judge calls made through `ask`."""
    ae = package()
    with _package_quiet():
        try:
            pairwise = ae.annotators.PairwiseAnnotator(annotators_config=annotator, caching_path=None,
                                                       is_avoid_reannotations=False)  # fmt: skip
        except (FileNotFoundError, KeyError, AssertionError) as e:
            raise ConfigError(f"eval.alpaca_eval.annotator: {annotator!r} is not an annotator config of the "
                              f"alpaca_eval package ({e})") from None
        for single in pairwise.annotators.values():
            single.fn_completions = completions(ask, annotator)
        return pairwise.annotate_head2head(outputs_1=list(reference), outputs_2=list(model))


@contextlib.contextmanager
def _package_quiet():
    """The package logs through the root logger (its progress at INFO, each reply its parser cannot read as an
    ERROR of several lines with the reply, then a WARNING counting them): silent while it annotates, since
    `win_rates` counts the unread replies and a judge that answers none is one line."""
    before = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(before)


def win_rates(annotations: list[dict], annotator: str) -> dict:
    """The package's win rate, and for AlpacaEval 2's annotator its length-controlled win rate, over the annotations
    whose judge reply the annotator could read (the others counted in `unparsed`)."""
    ae = package()
    read = [a for a in annotations if a.get("preference") is not None and not math.isnan(float(a["preference"]))]
    if not read:
        raise DataError(f"none of the judge's {len(annotations)} replies could be read by annotator {annotator!r}",
                        reason="wrong_type")
    metrics = ae.metrics.get_winrate(read)
    if annotator in LENGTH_CONTROLLED:
        metrics = ae.metrics.get_length_controlled_winrate(read, save_weights_dir=None)
    return {**{k: float(v) for k, v in metrics.items()}, "unparsed": len(annotations) - len(read)}


def run(outputs: Sequence[Mapping], reference: Sequence[Mapping], annotator: str, generator_name: str,
        ask: Ask) -> dict | None:
    """The annotator's win rates of the model's outputs (None while the judge's replies are not there)."""
    model = [{"instruction": r["instruction"], "output": o["output"], "generator": generator_name}
             for r, o in zip(reference, outputs, strict=True)]  # fmt: skip
    reference = [{"instruction": r["instruction"], "output": r["output"], "generator": r.get("generator", "reference")}
                 for r in reference]  # fmt: skip
    try:
        annotations = annotate(model, reference, annotator, ask)
    except NoReplies:
        return None
    return {"annotator": annotator, **win_rates(annotations, annotator)}
