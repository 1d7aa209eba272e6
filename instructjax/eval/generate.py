"""Batched autoregressive generation with a KV cache: greedy or temperature / top-p sampling.

Prompts are left-padded into one `[B, P]` block; each row's positions count only its real tokens and the
padding is segment 0 in the model's cache (never attended), so a padded row decodes exactly as it would
alone. The model prefills the prompt in one pass, then one token per step runs inside a single
`lax.while_loop` (one compilation per shape), stopping when every row has produced an end-of-turn id.

A long-RoPE model (Phi-3) rotates with its short factors up to its original context and with the long ones
past it; as transformers does, the step that first reaches past it recomputes the whole cache (prompt and
tokens so far) with the long factors, and decoding goes on from there.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from instructjax.core.errors import ConfigError, DataError
from instructjax.eval.interface import GREEDY, Sampling, TokenScores
from instructjax.model.decoder import Decoder, init_cache

Array = jax.Array


def sample_token(logits: Array, rng: Array, temperature: Array | float, top_p: Array | float) -> Array:
    """Next ids `[B]` from logits `[B, V]`: argmax when temperature == 0, else nucleus sampling (traced args)."""

    def sample(logits):
        logits = logits / temperature
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability mass of strictly more likely tokens
        kept = jnp.where((before < top_p) | (top_p >= 1.0), sorted_logits, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits >= threshold, logits, -jnp.inf)
        return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)

    def greedy(logits):
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    return jax.lax.cond(jnp.asarray(temperature) == 0.0, greedy, sample, logits)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new"))
def _generate(graphdef, state, prompt: Array, valid: Array, stop_ids: Array, rng: Array, temperature: Array,
              top_p: Array, *, max_new: int) -> tuple[Array, Array]:
    model = nnx.merge(graphdef, state)
    b, p = prompt.shape
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
    logits, cache = model(prompt, positions, valid, cache=init_cache(model.config, b, p + max_new))  # padding: 0
    out = jnp.zeros((b, max_new), jnp.int32)
    done = jnp.zeros((b,), bool)
    # the parameters ride in the loop's carry: the layers' nnx.scan needs them at the loop body's trace level
    carry = (jnp.int32(0), logits[:, -1].astype(jnp.float32), cache, out, done, positions[:, -1] + 1, rng, state)

    def cond(c):
        i, _, _, _, done, _, _, _ = c
        return (i < max_new) & ~jnp.all(done)

    def step(token, i, out, cache, pos, state):
        return nnx.merge(graphdef, state)(token[:, None], pos[:, None], jnp.ones((b, 1), jnp.int32), cache=cache)

    def refill(token, i, out, cache, pos, state):
        """The whole sequence so far through the model again, into a fresh cache whose next slot is p + i + 1."""
        tokens = jnp.concatenate([prompt, out], axis=1)
        seen = jnp.concatenate([valid, jnp.broadcast_to(jnp.arange(max_new) <= i, (b, max_new))], axis=1)
        positions = jnp.maximum(jnp.cumsum(seen, axis=1) - 1, 0)
        logits, fresh = nnx.merge(graphdef, state)(tokens, positions, seen.astype(jnp.int32),
                                                   cache=init_cache(model.config, b, p + max_new))
        last = jax.lax.dynamic_slice_in_dim(logits, p + i, 1, axis=1)
        return last, fresh._replace(index=p + i + 1)

    switch = longrope_switch(model.config)

    def body(c):
        i, last, cache, out, done, pos, rng, state = c
        rng, step_rng = jax.random.split(rng)
        token = jnp.where(done, stop_ids[0], sample_token(last, step_rng, temperature, top_p))
        out = out.at[:, i].set(token)
        done = done | jnp.isin(token, stop_ids)
        args = (token, i, out, cache, pos, state)
        if switch is None:
            logits, cache = step(*args)
        else:
            logits, cache = jax.lax.cond(jnp.max(pos) == switch, refill, step, *args)
        return i + 1, logits[:, -1].astype(jnp.float32), cache, out, done, pos + 1, rng, state

    i, _, _, out, _, _, _, _ = jax.lax.while_loop(cond, body, carry)
    return out, i


def longrope_switch(config) -> int | None:
    """The position at which a long-RoPE model's cache is recomputed with its long factors (None: no such
    model)."""
    scaling = config.rope_scaling or {}
    return scaling["original_max_position_embeddings"] if scaling.get("rope_type") == "longrope" else None


def _bucket(n: int, minimum: int = 16) -> int:
    return max(minimum, 1 << (n - 1).bit_length())


def generate_ids(model: Decoder, prompts: Sequence[Sequence[int]], sampling: Sampling,
                 stop_ids: Sequence[int]) -> list[list[int]]:
    """New ids per prompt (the stop id that ended a row included); prompts must be non-empty."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("generate_ids: every prompt needs at least one token (e.g. BOS)")
    width = _bucket(max(len(p) for p in prompts))  # few shapes -> few compilations
    batch = np.zeros((len(prompts), width), np.int32)
    valid = np.zeros((len(prompts), width), np.int32)
    for row, ids in enumerate(prompts):
        batch[row, width - len(ids):] = ids
        valid[row, width - len(ids):] = 1
    graphdef, state = nnx.split(model)
    out, steps = _generate(graphdef, state, jnp.asarray(batch), jnp.asarray(valid),
                           jnp.asarray(list(stop_ids), jnp.int32), jax.random.key(sampling.seed),
                           jnp.float32(sampling.temperature), jnp.float32(sampling.top_p),
                           max_new=sampling.max_new_tokens)
    out = np.asarray(out)[:, : int(steps)]
    stops = set(stop_ids)
    results = []
    for row in out:
        ids = []
        for token in row.tolist():
            ids.append(token)
            if token in stops:
                break
        results.append(ids)
    return results


_REPLY = "\ue005"  # an assistant reply whose ending the chat template is asked for


def turn_end_ids(hf_tokenizer) -> list[int]:
    """EOS and the special token the chat template closes an assistant turn with (Qwen's `<|im_end|>`,
    Llama-3's `<|eot_id|>`, Gemma's `<end_of_turn>`): a model trained on the template stops with it."""
    ids = [hf_tokenizer.eos_token_id]
    if not getattr(hf_tokenizer, "chat_template", None):
        return ids
    try:
        text = hf_tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant",
                                                 "content": _REPLY}], tokenize=False)
    except Exception:  # noqa: BLE001  a template that refuses the probe: EOS alone
        return ids
    tail = text.split(_REPLY, 1)[-1].lstrip()
    added = hf_tokenizer.get_added_vocab()
    first = next((token for token in sorted(added, key=len, reverse=True) if tail.startswith(token)), None)
    return ids + ([added[first]] if first is not None and added[first] not in ids else [])


class Generator:
    """Text in, text out: a model plus its tokenizer (an HF tokenizer with the chat template). Generation stops
    at EOS and at the template's end of an assistant turn (`turn_end_ids`)."""

    def __init__(self, model: Decoder, hf_tokenizer, *, batch_size: int = 8, stop_ids: Sequence[int] | None = None):
        self.model, self.tokenizer, self.batch_size = model, hf_tokenizer, batch_size
        self.stop_ids = list(stop_ids) if stop_ids is not None else turn_end_ids(hf_tokenizer)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """The chat template's prompt asking for the next assistant turn, tokenized as transformers does
        (`apply_chat_template(tokenize=True)`: the template itself starts with BOS where the tokenizer adds
        one, as in training)."""
        import jinja2

        try:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        except jinja2.TemplateSyntaxError as e:
            raise ConfigError(f"the model's chat template does not compile (line {e.lineno}: {e.message})") from None
        except jinja2.TemplateError as e:
            raise DataError(f"the model's chat template refuses the prompt ({e})", reason="template") from None
        return list(ids["input_ids"] if isinstance(ids, Mapping) else ids)

    def generate(self, prompts: Sequence[str | Sequence[int]], sampling: Sampling = GREEDY,
                 until: Sequence[str] = ()) -> list[str]:
        """Completions of raw prompts (text gets BOS) cut at end of turn and at the first `until` string."""
        encoded = [self.tokenizer(p, add_special_tokens=True)["input_ids"] if isinstance(p, str) else list(p)
                   for p in prompts]
        texts: list[str] = []
        for start in range(0, len(encoded), self.batch_size):
            chunk = encoded[start: start + self.batch_size]
            chunk = chunk + [chunk[-1]] * (self.batch_size - len(chunk))  # fixed batch: one compilation
            for ids in generate_ids(self.model, chunk, sampling, self.stop_ids)[: len(encoded) - start]:
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                for stop in until:
                    if stop and stop in text:
                        text = text[: text.index(stop)]
                texts.append(text)
        return texts

    def chat(self, conversations: Sequence[list[dict[str, str]]], sampling: Sampling = GREEDY) -> list[str]:
        """The next assistant turn for each conversation (messages ending on a user turn)."""
        return [t.strip() for t in self.generate([self.encode_chat(m) for m in conversations], sampling)]

    def score(self, sequences: Sequence[Sequence[int]]) -> list[TokenScores]:
        from instructjax.eval.score import score_ids

        return score_ids(self.model, sequences, self.batch_size)

    def next_token_logprobs(self, sequences: Sequence[Sequence[int]], candidates: Sequence[int]) -> np.ndarray:
        from instructjax.eval.score import next_token_logprobs

        return next_token_logprobs(self.model, sequences, candidates, self.batch_size)

    def describe(self) -> dict[str, str]:
        from instructjax import __version__

        return {"engine": "instructjax", "version": __version__}


def load_generator(model: str, *, tokenizer: str | None = None, template: str | None = None,
                   batch_size: int = 8) -> tuple[Generator, object]:
    """(Generator, HF tokenizer) of a saved model (checkpoint or HF directory): its own tokenizer and the chat
    template it was trained with (tulu, with a note, for a model that carries none); `tokenizer` and
    `template` override them."""
    import sys

    from instructjax.convert.saved import open_model
    from instructjax.data.encoding.templates import DEFAULT_TEMPLATE, jinja_template

    decoder, saved, chat_template = open_model(model, tokenizer=tokenizer, template=template)
    if chat_template is None:
        print(f"instructjax: note: {model} carries no chat template; using {DEFAULT_TEMPLATE!r}", file=sys.stderr)
        chat_template = jinja_template(DEFAULT_TEMPLATE, bos=saved.adds_bos)
    hf_tok = saved.to_hf(chat_template)
    return Generator(decoder, hf_tok, batch_size=batch_size), hf_tok


def complete(generator: Generator, rows: list[dict], sampling: Sampling, keep: tuple[str, ...] = ()) -> list[dict]:
    """{id, instruction, output} (plus the row's `keep` fields) for rows with 'messages' or 'instruction'."""
    conversations = []
    for i, row in enumerate(rows):
        messages = row.get("messages") or [{"role": "user", "content": row.get("instruction", "")}]
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        conversations.append(messages)
        row.setdefault("id", str(i))
        row.setdefault("instruction", messages[-1]["content"])
        if hasattr(generator, "encode_chat"):  # a prompt the chat template refuses: named before anything runs
            try:
                generator.encode_chat(messages)
            except DataError as e:
                raise DataError(f"prompt {row['id']!r}: {e}", reason=e.reason) from None
    outputs = generator.chat(conversations, sampling)
    return [{"id": r["id"], "instruction": r["instruction"], "output": o, **{k: r[k] for k in keep if k in r}}
            for r, o in zip(rows, outputs, strict=True)]
