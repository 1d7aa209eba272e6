"""The model in this job as an engine (eval/interface.py): text in, text out, and log-likelihoods.

`Generator` tokenizes (the chat template for chats), generates by continuous batching (model/batching.py: slots in a
preallocated KV cache, greedy or temperature / top-p sampling, a row ending at EOS, the template's end of turn,
`max_new_tokens` or a stop string) and scores (eval/score.py), on the mesh the model was loaded onto
(`load_generator`: eval/placement.py). A long-RoPE model (Phi-3) recomputes a row at the switch to its long
factors, as transformers does (model/decoding.py).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Mapping, Sequence

import numpy as np

from instructjax import __version__
from instructjax.convert.saved import model_config, open_model
from instructjax.core.errors import DataError
from instructjax.data.encoding.templates import DEFAULT_TEMPLATE, jinja_template
from instructjax.data.encoding.tokenizer import turn_end_ids
from instructjax.eval import placement
from instructjax.eval.interface import GREEDY, Sampling, TokenScores, encode_chat
from instructjax.eval.score import score_ids
from instructjax.model.batching import ContinuousBatcher
from instructjax.model.batching_shapes import bucket
from instructjax.model.decoder import Decoder

DEFAULT_SLOTS = 32  # sequences decoded at once (fewer where the KV cache would not fit)


def generate_ids(model: Decoder, prompts: Sequence[Sequence[int]], sampling: Sampling,
                 stop_ids: Sequence[int], *, slots: int = DEFAULT_SLOTS) -> list[list[int]]:
    """New ids per prompt (the stop id that ended a row included), by continuous batching (model/batching.py) over
    `slots` slots; prompts must be non-empty."""
    return ContinuousBatcher(model, slots=min(slots, bucket(len(prompts), 1))).generate(prompts, sampling, stop_ids)


class Generator:
    """The model in this job as an engine (eval.interface.Engine): a model plus its tokenizer (an HF tokenizer with
    the chat template). Generation stops at EOS and at the template's end of an assistant turn (`turn_end_ids`);
    `slots` sequences decode at once (`chunk` tokens a device call), `batch_size` sequences are scored at once;
    `mesh`: where the model's parameters lie."""

    def __init__(self, model: Decoder, hf_tokenizer, *, batch_size: int = 8, stop_ids: Sequence[int] | None = None,
                 slots: int = DEFAULT_SLOTS, chunk: int = 8, mesh=None):
        self.model, self.tokenizer, self.batch_size, self.mesh = model, hf_tokenizer, batch_size, mesh
        self.stop_ids = list(stop_ids) if stop_ids is not None else turn_end_ids(hf_tokenizer)
        self.batcher = ContinuousBatcher(model, slots=slots, chunk=chunk, mesh=mesh)

    @property
    def engine(self) -> ContinuousBatcher:
        """The batcher's name before issue 78 (an engine is what eval/interface.py names: this Generator)."""
        return self.batcher

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The chat template's prompt for the next assistant turn, as transformers tokenizes it (`encode_chat`)."""
        return encode_chat(self.tokenizer, messages)

    def generate(self, prompts: Sequence[str | Sequence[int]], sampling: Sampling = GREEDY,
                 until: Sequence[str] = (), *, progress=None) -> list[str]:
        """Completions of raw prompts (text gets BOS) cut at end of turn and at the first `until` string.
        `progress`: a bar (core/progress.py) told of the tokens generated as the rows grow."""
        encoded = [self.tokenizer(p, add_special_tokens=True)["input_ids"] if isinstance(p, str) else list(p)
                   for p in prompts]
        until = [stop for stop in until if stop]
        decode = functools.partial(self.tokenizer.decode, skip_special_tokens=True)
        # a row whose text holds a stop string ends there: what follows would be cut anyway
        ends = (lambda ids: any(stop in decode(ids) for stop in until)) if until else None
        seen: dict[int, int] = {}  # each row's tokens the bar was told of (by the id of its list)
        if progress is not None:
            ends = _counting(progress, ends, seen)
        generated = self.batcher.generate(encoded, sampling, self.stop_ids, ends)
        if progress is not None:  # the last tokens of rows that ended within a decode call
            progress.update(sum(map(len, generated)) - sum(seen.values()))
        texts: list[str] = []
        for ids in generated:
            text = decode(ids)
            for stop in until:
                if stop in text:
                    text = text[: text.index(stop)]
            texts.append(text)
        return texts

    def chat(self, conversations: Sequence[list[dict[str, str]]], sampling: Sampling = GREEDY, *,
             progress=None) -> list[str]:
        """The next assistant turn for each conversation (messages ending on a user turn)."""
        return [t.strip() for t in self.generate([self.encode_chat(m) for m in conversations], sampling,
                                                 progress=progress)]

    def score(self, sequences: Sequence[Sequence[int]]) -> list[TokenScores]:
        return score_ids(self.model, sequences, self.batch_size, mesh=self.mesh)

    def next_token_logprobs(self, sequences: Sequence[Sequence[int]], candidates: Sequence[int]) -> np.ndarray:
        return self.batcher.next_token_logprobs(sequences, candidates)

    def describe(self) -> dict[str, str]:
        return {"name": "instructjax", "version": __version__}


def load_generator(model: str, *, tokenizer: str | None = None, template: str | None = None, batch_size: int = 8,
                   dtype: str | None = None, mesh: Mapping[str, int] | None = None,
                   slots: int = DEFAULT_SLOTS) -> tuple[Generator, object]:
    """(Generator, HF tokenizer) of a saved model (checkpoint or HF directory): its own tokenizer and the chat
    template it was trained with (tulu, with a note, for a model that carries none); `tokenizer` and
    `template` override them. Its parameters lie sharded by the training rules over every device (`mesh`: axis
    sizes, default: eval.placement.eval_mesh's), in `dtype` (default bfloat16 on accelerators, float32 on a CPU);
    a model that does not fit even so is one line before any weight is read."""
    dtype = dtype or placement.default_dtype()
    config = placement.eval_config(model_config(model)[0], dtype)
    device_mesh, _ = placement.eval_mesh(config, mesh, slots=slots, where=model)
    decoder, saved, chat_template = open_model(model, tokenizer=tokenizer, template=template, dtype=dtype,
                                               mesh=device_mesh)
    decoder = placement.as_evaluated(decoder, config)
    hf_tok = chat_tokenizer(model, saved, chat_template)
    return Generator(decoder, hf_tok, batch_size=batch_size, slots=slots, mesh=device_mesh), hf_tok


def chat_tokenizer(model: str, saved, chat_template: str | None):
    """The HF tokenizer a model is prompted with: its saved tokenizer with its chat template (tulu, with a note,
    where it carries none)."""
    if chat_template is None:
        print(f"instructjax: note: {model} carries no chat template; using {DEFAULT_TEMPLATE!r}", file=sys.stderr)
        chat_template = jinja_template(DEFAULT_TEMPLATE, bos=saved.adds_bos)
    return saved.to_hf(chat_template)


def _counting(bar, ends, seen: dict[int, int]):
    """A row-end check for the engine (its `generate`'s `stop`, called with every live row's ids after each decode
    call) that tells `bar` how many tokens the rows grew by (`seen`: each row's count so far), and ends a row where
    `ends` does."""
    def stop(ids: list[int]) -> bool:
        grown = len(ids) - seen.get(id(ids), 0)
        if grown > 0:
            seen[id(ids)] = len(ids)
            bar.update(grown)
        return bool(ends is not None and ends(ids))

    return stop


def prompt_messages(row, *, file: str | None = None, row_number: int | None = None) -> list[dict[str, str]]:
    """The conversation a prompt row asks to continue: its `messages` (a last assistant turn dropped), or its
    `instruction` as one user turn; a row with neither is one DataError line naming `file` and the row."""
    def bad(problem: str, reason: str) -> DataError:
        return DataError(problem, reason=reason, file=file, row=row_number)

    if not isinstance(row, Mapping):
        raise bad(f"expected a JSON object, got {type(row).__name__}", "wrong_type")
    messages = row.get("messages")
    if messages:
        if not isinstance(messages, list) or not all(isinstance(m, Mapping) and "role" in m and "content" in m
                                                     for m in messages):
            raise bad("'messages' must be a list of {role, content} turns", "wrong_type")
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not messages:
            raise bad("'messages' holds nothing before its assistant turn", "missing_field")
        return list(messages)
    if not isinstance(row.get("instruction"), str):
        raise bad("neither 'messages' nor 'instruction' (a prompt row needs one of them)", "missing_field")
    return [{"role": "user", "content": row["instruction"]}]


def complete(generator: Generator, rows: list[dict], sampling: Sampling, keep: tuple[str, ...] = (), *,
             file: str | None = None, progress=None) -> list[dict]:
    """{id, instruction, output} (plus the row's `keep` fields) for rows with 'messages' or 'instruction'
    (`prompt_messages`; `file`: where the rows were read, named with a bad row). `progress`: a bar the model in
    this job reports its generated tokens to (core/progress.py)."""
    conversations = []
    for i, row in enumerate(rows):
        messages = prompt_messages(row, file=file, row_number=i + 1)
        conversations.append(messages)
        row.setdefault("id", str(i))
        row.setdefault("instruction", messages[-1]["content"])
        if hasattr(generator, "encode_chat"):  # a prompt the chat template refuses: named before anything runs
            try:
                generator.encode_chat(messages)
            except DataError as e:
                raise DataError(f"prompt {row['id']!r}: {e}", reason=e.reason) from None
    if progress is not None and isinstance(generator, Generator):
        outputs = generator.chat(conversations, sampling, progress=progress)
    else:
        outputs = generator.chat(conversations, sampling)
    return [{"id": r["id"], "instruction": r["instruction"], "output": o, **{k: r[k] for k in keep if k in r}}
            for r, o in zip(rows, outputs, strict=True)]
