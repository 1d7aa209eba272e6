"""Continuous batching (model/batching.py) against transformers' greedy `generate` and the no-cache forward, on the
job's mesh against one device; a model that does not fit the devices is one line (eval/placement.py)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers.models import make_hf  # noqa: E402

from instructjax.convert.saved import load_model  # noqa: E402
from instructjax.eval.interface import Sampling  # noqa: E402
from instructjax.eval.score import next_token_logprobs, score_ids  # noqa: E402
from instructjax.model.batching import ContinuousBatcher  # noqa: E402

SHOTS = [1] + list(range(300, 370))  # a 71-token few-shot prefix shared by three prompts
PROMPTS = [[1, 450, 4996, 17354], [1, 306], [1, 18637, 29892, 920, 526, 366, 29973, 13, 29966], SHOTS + [17, 18],
           SHOTS + [25], [1, 7, 8, 9, 10, 11, 12], SHOTS + [99, 98, 97]]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(HF directory, JAX model, HF torch model) on the same random llama3-rope GQA weights."""
    path = make_hf(tmp_path_factory.mktemp("engine"), "llama3_rope", seed=3)
    return path, load_model(path, dtype="float32"), transformers.LlamaForCausalLM.from_pretrained(
        path, dtype=torch.float32).eval()


def hf_greedy(hf_model, prompt: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                                pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


def test_fewer_slots_than_prompts_each_as_alone_and_as_transformers(models):
    """2 slots for 7 prompts: a finished row's slot takes the next prompt while the other decodes; every reply is
    transformers' greedy one, the shared prefix filled once (3 prompts, 2 copies of it not recomputed). 16 slots
    for the same 7 with a stop id that ends the longest prompt's reply (slot 0) first: the decode calls run 8 rows,
    the live rows moved into the front slots, and every reply is still transformers' up to its stop. Fill calls of
    16 tokens: the prefix (71) filled in pieces, one call after another, and the same replies."""
    _, model, hf_model = models
    engine = ContinuousBatcher(model, slots=2, chunk=3)
    got = engine.generate(PROMPTS, Sampling(max_new_tokens=9), stop_ids=[-1])
    expected = [hf_greedy(hf_model, prompt, 9) for prompt in PROMPTS]
    assert got == expected
    assert engine.stats.prefix_tokens == 3 * 71  # each prompt's copy of the prefix, filled once into its own cache
    assert engine.stats.fill_tokens == sum(len(p) for p in PROMPTS) - 3 * 71 + 71
    assert engine.stats.kept_steps == 7 * 8  # the first id of each comes from its fill
    pieces = ContinuousBatcher(model, slots=2, chunk=3, fill_tokens=16)
    assert pieces.generate(PROMPTS, Sampling(max_new_tokens=9), stop_ids=[-1]) == expected
    assert pieces.stats.fill_calls >= engine.stats.fill_calls + 4  # 71 tokens: 5 pieces, not 1 call
    stop = expected[6][1]  # prompt 6, the longest, is admitted first into slot 0
    wide = ContinuousBatcher(model, slots=16, chunk=3)
    got = wide.generate(PROMPTS, Sampling(max_new_tokens=9), stop_ids=[stop])
    assert got == [ids[: ids.index(stop) + 1] if stop in ids else ids for ids in expected]
    assert wide.stats.moved > 0 and wide.stats.slot_steps == 8 * 3 * wide.stats.decode_calls


@pytest.mark.slow
def test_stops_end_rows_and_sampling_is_the_prompts_whatever_the_slots(models):
    """A stop id ends its row where it appears (the others go on); temperature sampling gives each prompt the same
    ids with 1, 2 or 16 slots and another chunk length (its own key); top_p tiny is greedy. (The shapes of the test
    above, 2 and 16 slots in chunks of 3, compiled once for both; 1 slot in chunks of 8 is this test's own.)"""
    _, model, hf_model = models
    free = ContinuousBatcher(model, slots=2, chunk=3).generate(PROMPTS, Sampling(max_new_tokens=9), stop_ids=[-1])
    stop = free[0][3]
    got = ContinuousBatcher(model, slots=2, chunk=3).generate(PROMPTS, Sampling(max_new_tokens=9), stop_ids=[stop])
    assert got == [row[: row.index(stop) + 1] if stop in row else row for row in free]
    sampling = Sampling(max_new_tokens=9, temperature=1.0, seed=5)
    drawn = [ContinuousBatcher(model, slots=s, chunk=c).generate(PROMPTS, sampling, [-1]) for s, c in ((1, 8), (2, 3),
                                                                                                        (16, 3))]
    assert drawn[0] == drawn[1] == drawn[2] and drawn[0] != free
    assert ContinuousBatcher(model, slots=2, chunk=3).generate(PROMPTS, Sampling(9, temperature=1.0, top_p=1e-6),
                                                               [-1]) == free
    # each drawn id's log-prob as the engine drew it (a GRPO rollout's sampler log-probs): transformers' log-softmax
    # of the logits over the temperature, at that id, in a forward of the prompt and the ids before it
    cool = Sampling(max_new_tokens=9, temperature=0.7, seed=5)
    pairs = ContinuousBatcher(model, slots=2, chunk=3).generate(PROMPTS, cool, [-1], with_logps=True)
    with torch.no_grad():
        for prompt, (ids, logps) in zip(PROMPTS, pairs, strict=True):
            logits = hf_model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1: -1].double() / 0.7
            want = torch.log_softmax(logits, -1)[torch.arange(len(ids)), torch.tensor(ids)].numpy()
            np.testing.assert_allclose(logps, want, atol=2e-5)


def test_next_token_logprobs_with_shared_prefix_equal_the_full_forward(models):
    _, model, _ = models
    engine = ContinuousBatcher(model, slots=4)
    candidates = [319, 350, 315, 360]
    got = engine.next_token_logprobs(PROMPTS, candidates)
    assert engine.stats.prefix_tokens == 3 * 71
    np.testing.assert_allclose(got, next_token_logprobs(model, PROMPTS, candidates), atol=2e-5)


# (fsdp 4 x tensor 2 is left out: data x fsdp x tensor shards over both of its axes, and over data too)
@pytest.mark.parametrize("mesh", [pytest.param({"fsdp": 8}, marks=pytest.mark.slow),
                                  {"data": 2, "fsdp": 2, "tensor": 2}], ids=["fsdp", "data_fsdp_tensor"])
def test_sharded_over_8_devices_equals_one_device(models, mesh):
    """`load_generator` on an 8-device mesh (parameters by the training rules, the cache's slots over data x fsdp and
    kv heads over tensor): greedy replies, score's log-probs and next-token log-probs as on one device."""
    from instructjax.eval.generate import load_generator

    path, model, _ = models
    assert jax.device_count() == 8
    generator, _ = load_generator(path, mesh=mesh, slots=8)
    params = jax.tree.leaves(generator.model)
    assert any(len(p.sharding.device_set) == 8 and not p.sharding.is_fully_replicated for p in params)
    one = ContinuousBatcher(model, slots=4)
    assert generator.batcher.generate(PROMPTS, Sampling(max_new_tokens=8), [-1]) == \
        one.generate(PROMPTS, Sampling(max_new_tokens=8), [-1])
    for sharded, alone in zip(generator.score(PROMPTS), score_ids(model, PROMPTS), strict=True):
        np.testing.assert_allclose(sharded.logprobs, alone.logprobs, atol=2e-5)
    np.testing.assert_allclose(generator.next_token_logprobs(PROMPTS, [5, 6, 7]),
                               one.next_token_logprobs(PROMPTS, [5, 6, 7]), atol=2e-5)


def test_a_model_too_big_for_the_devices_is_one_line(tmp_path, capsys):
    """Llama-65B's config.json (no weights): `generate` names the memory it needs per device and exits 2 before
    reading anything."""
    from instructjax import cli
    from instructjax.data.encoding.tokenizer import default_tokenizer_path

    model = tmp_path / "llama65b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8192, "intermediate_size": 22016,
        "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 64, "vocab_size": 32000,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": 2}))
    (model / "tokenizer.model").write_bytes(open(default_tokenizer_path(), "rb").read())
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "1", "instruction": "Hi"}) + "\n")
    code = cli.main(["generate", "--model", str(model), "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"),
                     "--mesh", "fsdp=8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and not (tmp_path / "o.jsonl").exists()
    assert "GiB per device" in err[0] and "fsdp=8" in err[0] and str(model) in err[0], err


def test_a_slot_count_the_mesh_cannot_take_is_the_batchers_own_words():
    """Continuous batching (model/batching.py) refuses slots the mesh's data x fsdp devices do not divide, or none,
    in its own words (no CLI flag: the caller names where the count came from), as a typed error a caller maps."""
    from instructjax.core import sharding
    from instructjax.model.batching import ContinuousBatcher, SlotsError

    mesh = sharding.make_mesh({"fsdp": 8})
    with pytest.raises(SlotsError, match=r"^6 slots do not divide over the mesh.s data x fsdp = 8 devices$") as e:
        ContinuousBatcher(None, slots=6, mesh=mesh)
    assert (e.value.slots, e.value.shards) == (6, 8)
    with pytest.raises(SlotsError, match="at least one slot, got 0"):
        ContinuousBatcher(None, slots=0)
