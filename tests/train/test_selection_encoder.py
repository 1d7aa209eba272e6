"""The selection paper's encoder: mean last hidden layer, against transformers' hidden_states[-1]."""

import numpy as np
import pytest
import torch
import transformers

from instructjax.data.encoding.tokenizer import Tokenizer
from instructjax.data.selection.embeddings import get_encoder


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_hf")
    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(path, safe_serialization=True)
    Tokenizer.load(None).to_hf().save_pretrained(path)
    return str(path)


def test_llama_mean_is_looked_up_lazily():
    """Importing the selection layer loads no model code: "llama-mean" is a name in a table, its module imported
    when the encoder is first asked for."""
    import subprocess
    import sys

    code = ("import sys; from instructjax.data.selection import embeddings as e\n"
            "assert 'instructjax.train.selection_encoder' not in sys.modules and 'llama-mean' in e.encoder_names()\n"
            "from instructjax.train.selection_encoder import LlamaMeanEncoder\n"
            "assert e.encoder_factory('llama-mean') is LlamaMeanEncoder")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_llama_mean_encoder_matches_transformers_last_hidden_mean(hf_dir):
    texts = ["Give three tips for staying healthy.", "Write a haiku about the sea and the moon at night.", "Hi"]
    encoder = get_encoder("llama-mean", model=hf_dir, batch_size=2)
    ours = encoder.encode(texts)

    model = transformers.LlamaForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    tokenizer = Tokenizer.load(hf_dir)
    for text, vector in zip(texts, ours, strict=True):
        ids = torch.tensor([[tokenizer.bos_id, *tokenizer.encode(text)]])
        with torch.no_grad():
            hidden = model(ids, output_hidden_states=True).hidden_states[-1][0]
        np.testing.assert_allclose(vector, hidden.mean(0).numpy(), atol=1e-4)
    assert ours.shape == (3, 32)
