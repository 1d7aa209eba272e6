"""KV-cache generation and scoring against no-cache decoding and transformers' PyTorch model."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers.models import make_hf  # noqa: E402

from instructjax.convert.saved import load_model  # noqa: E402
from instructjax.eval.generate import Generator, Sampling, generate_ids  # noqa: E402
from instructjax.eval.score import score_ids  # noqa: E402
from instructjax.model.decoding import sample  # noqa: E402

PROMPTS = [[1, 450, 4996, 17354], [1, 306], [1, 18637, 29892, 920, 526, 366, 29973, 13, 29966]]
_BUILT = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration")
_RECORDING: list[list[str]] = []  # the events of the call being watched (`traced_or_compiled`)
jax.monitoring.register_event_duration_secs_listener(
    lambda name, *_, **__: [events.append(name) for events in _RECORDING if name in _BUILT])


def traced_or_compiled(call):
    """(call(), the programs traced or compiled while it ran)."""
    _RECORDING.append(events := [])
    try:
        return call(), events
    finally:
        _RECORDING.remove(events)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(JAX model, HF torch model, HF tokenizer) on the same random llama3-rope GQA weights."""
    path = make_hf(tmp_path_factory.mktemp("gen"), "llama3_rope", seed=7)
    model = load_model(path, dtype="float32")
    hf_model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    from instructjax.data.encoding.templates import jinja_template
    from instructjax.data.encoding.tokenizer import Tokenizer

    return model, hf_model, Tokenizer.load(path).to_hf(jinja_template("tulu", bos=True))


@functools.partial(jax.jit, static_argnums=0)
def _full_forward(graphdef, state, tokens, segments):
    from flax import nnx

    model = nnx.merge(graphdef, state)
    return model(tokens, jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape), segments)


def greedy_without_cache(model, prompt: list[int], n: int, width: int = 32) -> list[int]:
    """Greedy decoding by re-running the full causal forward pass (right padding, one compiled shape)."""
    from flax import nnx

    graphdef, state = nnx.split(model)
    ids = list(prompt)
    for _ in range(n):
        tokens = np.zeros((1, width), np.int32)
        tokens[0, : len(ids)] = ids
        segments = (np.arange(width) < len(ids)).astype(np.int32)[None]
        logits = _full_forward(graphdef, state, jnp.asarray(tokens), jnp.asarray(segments))
        ids.append(int(jnp.argmax(logits[0, len(ids) - 1])))
    return ids[len(prompt):]


def test_cache_equals_no_cache_and_hf_greedy(models):
    model, hf_model, _ = models
    got = generate_ids(model, PROMPTS, Sampling(max_new_tokens=10), stop_ids=[2])  # batched, left-padded
    for prompt, ids in zip(PROMPTS, got, strict=True):
        assert ids == greedy_without_cache(model, prompt, 10)
        with torch.no_grad():
            hf = hf_model.generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                                   pad_token_id=0)
        assert ids == hf[0, len(prompt):].tolist()


def test_stops_at_end_of_turn_per_row(models):
    model, _, _ = models
    free = generate_ids(model, PROMPTS, Sampling(max_new_tokens=10), stop_ids=[2])
    stop = free[0][3]  # make row 0's 4th token the end-of-turn id
    got, built = traced_or_compiled(lambda: generate_ids(model, PROMPTS, Sampling(max_new_tokens=10), [stop]))
    assert built == []  # a second call of the same shapes runs the programs the first one built
    for row, ids in zip(free, got, strict=True):
        cut = row.index(stop) + 1 if stop in row else len(row)
        assert ids == row[:cut]


def test_sampling_reproducible_and_tiny_top_p_is_greedy(models):
    model, _, _ = models
    greedy = generate_ids(model, PROMPTS, Sampling(max_new_tokens=10), stop_ids=[2])
    nucleus = generate_ids(model, PROMPTS, Sampling(max_new_tokens=10, temperature=1.0, top_p=1e-6, seed=3), [2])
    assert nucleus == greedy
    a = generate_ids(model, PROMPTS, Sampling(max_new_tokens=10, temperature=1.0, seed=5), [2])
    b = generate_ids(model, PROMPTS, Sampling(max_new_tokens=10, temperature=1.0, seed=5), [2])
    assert a == b and a != greedy


def test_top_p_distribution():
    """Empirical frequencies under top-p equal the renormalised nucleus probabilities."""
    probs = np.array([0.4, 0.25, 0.2, 0.1, 0.05])
    logits = jnp.log(jnp.asarray(np.tile(probs, (20000, 1)), jnp.float32))
    keys = jax.random.split(jax.random.key(0), logits.shape[0])
    draws = np.asarray(sample(logits, keys, jnp.float32(1.0), jnp.float32(0.7)))
    freq = np.bincount(draws, minlength=5) / len(draws)
    expected = np.array([0.4, 0.25, 0.2, 0, 0]) / 0.85  # 0.4 + 0.25 < 0.7: the third token completes the nucleus
    np.testing.assert_allclose(freq, expected, atol=0.015)


def test_score_matches_hf_log_softmax(models):
    model, hf_model, _ = models
    scores = score_ids(model, PROMPTS, batch_size=2)
    for prompt, s in zip(PROMPTS, scores, strict=True):
        with torch.no_grad():
            logp = torch.log_softmax(hf_model(torch.tensor([prompt])).logits[0], -1).numpy()
        want = logp[np.arange(len(prompt) - 1), prompt[1:]]
        np.testing.assert_allclose(s.logprobs, want, atol=1e-4)
        np.testing.assert_array_equal(s.is_greedy, logp[:-1].argmax(-1) == np.asarray(prompt[1:]))


def test_chat_uses_template(models):
    model, _, tok = models
    gen = Generator(model, tok, batch_size=2)
    messages = [{"role": "user", "content": "Hi"}]
    ids = gen.encode_chat(messages)
    assert ids[0] == 1 and ids.count(1) == 1 and tok.decode(ids[1:]) == "<|user|>\nHi\n<|assistant|>\n"
    out = gen.chat([messages, messages + [{"role": "assistant", "content": "Yo"}, {"role": "user", "content": "?"}]],
                   Sampling(max_new_tokens=4))
    assert len(out) == 2 and all(isinstance(t, str) for t in out)


def test_progress_counts_the_generated_tokens(models):
    """`complete(..., progress=bar)`: the bar is told of every token the rows grow by (a plain line each update here,
    INSTRUCTJAX_PROGRESS_SECONDS=0's way) and ends on the count generated, as the engine counts them; the completions are the same as without."""
    import io

    from instructjax.core.progress import Lines
    from instructjax.eval.generate import complete

    model, _, tok = models
    gen = Generator(model, tok, batch_size=2, slots=2)
    rows = [{"id": "a", "instruction": "Hi"}, {"id": "b", "messages": [{"role": "user", "content": "Yo there"}]},
            {"id": "c", "instruction": "Hello, how are you?"}]
    sampling = Sampling(max_new_tokens=6)
    plain = complete(gen, [dict(r) for r in rows], sampling)
    stream = io.StringIO()
    bar = Lines(desc="generate", unit="tokens", stream=stream, seconds=0)
    before = gen.engine.stats.new_tokens
    shown = complete(gen, [dict(r) for r in rows], sampling, progress=bar)
    bar.close()
    assert shown == plain
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 2 and all(line.startswith("generate: ") and " tokens" in line for line in lines), lines
    assert 3 < bar.n == gen.engine.stats.new_tokens - before <= 3 * 6
