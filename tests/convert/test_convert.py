"""HF <-> instructjax conversion against transformers' own PyTorch LlamaForCausalLM."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers.models import CONFIGS, make_hf  # noqa: E402

from instructjax.convert.hf import ConversionError, HFTensors, read_hf_config  # noqa: E402
from instructjax.convert.saved import export_checkpoint, import_hf, load_model  # noqa: E402
from instructjax.data.encoding.templates import render  # noqa: E402


def hf_state(path: str) -> dict[str, np.ndarray]:
    tensors = HFTensors(path)
    return {k: np.asarray(tensors[k]) for k in tensors}


@pytest.fixture(scope="module")
def round_trips(tmp_path_factory):
    """For each config: (HF dir, imported checkpoint dir, exported HF dir)."""
    root = tmp_path_factory.mktemp("convert")
    out = {}
    for name in CONFIGS:
        hf = make_hf(root, name)
        ckpt = os.path.join(root, f"{name}_ckpt")
        import_hf(hf, ckpt)
        exported = os.path.join(root, f"{name}_export")
        export_checkpoint(ckpt, exported, dtype="fp32", max_shard_bytes=2**20 if name == "gqa" else 5 * 2**30)
        out[name] = (hf, ckpt, exported)
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_round_trip_tensors_identical(round_trips, name):
    hf, _, exported = round_trips[name]
    original, back = hf_state(hf), hf_state(exported)
    assert set(back) == set(original)
    for key, value in original.items():
        assert back[key].dtype == value.dtype, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_sharded_export_has_index(round_trips):
    _, _, exported = round_trips["gqa"]
    with open(os.path.join(exported, "model.safetensors.index.json")) as f:
        index = json.load(f)
    files = set(index["weight_map"].values())
    assert len(files) > 1 and all(os.path.isfile(os.path.join(exported, f)) for f in files)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_export_logits_match_jax(round_trips, name):
    """transformers loads the export; its fp32 logits equal the JAX model's on the checkpoint."""
    _, ckpt, exported = round_trips[name]
    model = load_model(ckpt, dtype="float32")
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 32000, size=(2, 80)).astype(np.int32)  # > original_max_position_embeddings
    positions = np.broadcast_to(np.arange(80), tokens.shape)
    ours = np.asarray(model(jnp.asarray(tokens), jnp.asarray(positions), jnp.ones_like(tokens)), np.float32)
    hf_model = transformers.LlamaForCausalLM.from_pretrained(exported, dtype=torch.float32)
    with torch.no_grad():
        theirs = hf_model(torch.from_numpy(tokens).long()).logits.numpy()
    diff = np.abs(ours - theirs).max()
    assert diff <= 1e-4, f"{name}: max |logit diff| {diff}"
    hf_config = hf_model.config
    assert hf_config.tie_word_embeddings == (name == "tied")
    assert (hf_config.bos_token_id, hf_config.eos_token_id) == (1, 2)


def test_exported_tokenizer_reproduces_training_format(round_trips, tmp_path):
    """apply_chat_template(tokenize=True) on the export gives the sentencepiece ids of BOS + the training
    text; an import never trained keeps the model's own (here: no) chat template."""
    from helpers.pretrained_models import reference_ids

    from instructjax.data.schema import Conversation

    hf, ckpt, exported = round_trips["mha"]
    out = str(tmp_path / "alpaca_export")
    export_checkpoint(ckpt, out, template="alpaca")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": "Name a  colour."}, {"role": "assistant", "content": " Blue."},
                {"role": "user", "content": "Another?"}, {"role": "assistant", "content": "Green."}]
    text = render(Conversation(messages=messages, source="t", id="t/0"), "alpaca").text
    ids = hf_tok.apply_chat_template(messages, tokenize=True)
    assert list(ids["input_ids"] if hasattr(ids, "keys") else ids) == reference_ids(hf, text, bos="<s>", eos="</s>")
    assert transformers.AutoTokenizer.from_pretrained(exported).chat_template is None
    with open(os.path.join(out, "generation_config.json")) as f:
        assert json.load(f)["eos_token_id"] == hf_tok.eos_token_id == 2


def test_bin_sharded_import(tmp_path):
    """pytorch_model.bin shards with an index import like safetensors."""
    hf = make_hf(tmp_path, "gqa", seed=3)
    state = transformers.LlamaForCausalLM.from_pretrained(hf).state_dict()
    names = sorted(state)
    half = len(names) // 2
    weight_map = {}
    for k, part in enumerate((names[:half], names[half:])):
        file = f"pytorch_model-0000{k + 1}-of-00002.bin"
        torch.save({n: state[n] for n in part}, os.path.join(hf, file))
        weight_map.update({n: file for n in part})
    os.remove(os.path.join(hf, "model.safetensors"))
    with open(os.path.join(hf, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    import_hf(hf, str(tmp_path / "ckpt"))
    export_checkpoint(str(tmp_path / "ckpt" / "checkpoints" / "0"), str(tmp_path / "out"))
    back = hf_state(str(tmp_path / "out"))
    for n in names:
        np.testing.assert_array_equal(back[n], state[n].numpy(), err_msg=n)


def test_bf16_export(round_trips, tmp_path):
    _, ckpt, _ = round_trips["mha"]
    export_checkpoint(ckpt, str(tmp_path / "bf16"), dtype="bf16")
    model = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "bf16"))
    assert model.dtype == torch.bfloat16
    assert str(hf_state(str(tmp_path / "bf16"))["model.norm.weight"].dtype) == "bfloat16"


# ---- conversion errors: one line naming the field or tensor -------------------------------------------


def _edit_config(path: str, **changes) -> None:
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    config.update(changes)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f)


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_error_unknown_architecture(tmp_path):
    hf = make_hf(tmp_path, "mha")
    _edit_config(hf, architectures=["GPT2LMHeadModel"], model_type="gpt2")
    with pytest.raises(ConversionError) as e:
        read_hf_config(hf)
    assert "architectures" in _one_line(e) and "GPT2LMHeadModel" in _one_line(e)


def test_error_unsupported_rope_type(tmp_path):
    hf = make_hf(tmp_path, "mha")
    _edit_config(hf, rope_scaling={"rope_type": "yarn", "factor": 2.0}, rope_parameters=None)
    with pytest.raises(ConversionError) as e:
        import_hf(hf, str(tmp_path / "ckpt"))
    assert "yarn" in _one_line(e) and "rope" in _one_line(e)


def test_error_missing_and_misshapen_tensor(tmp_path):
    from safetensors.numpy import load_file, save_file

    hf = make_hf(tmp_path, "gqa")
    file = os.path.join(hf, "model.safetensors")
    tensors = load_file(file)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, file)
    with pytest.raises(ConversionError) as e:
        import_hf(hf, str(tmp_path / "a"))
    assert "'model.layers.1.mlp.up_proj.weight'" in _one_line(e)

    _edit_config(hf, num_key_value_heads=4)  # k_proj/v_proj now have half the rows the config implies
    with pytest.raises(ConversionError) as e:
        import_hf(hf, str(tmp_path / "b"))
    assert "'model.layers.0.self_attn.k_proj.weight'" in _one_line(e) and "shape" in _one_line(e)


def test_error_missing_config_field(tmp_path):
    hf = make_hf(tmp_path, "mha")
    with open(os.path.join(hf, "config.json")) as f:
        config = json.load(f)
    del config["hidden_size"]
    with open(os.path.join(hf, "config.json"), "w") as f:
        json.dump(config, f)
    with pytest.raises(ConversionError) as e:
        read_hf_config(hf)
    assert "'hidden_size'" in _one_line(e)


@pytest.mark.parametrize("key,value", [("scoring_func", "sigmoid"), ("n_shared_experts", 2),
                                       ("router_jitter_noise", 0.1)])
def test_import_refuses_a_router_it_does_not_run(tmp_path, capsys, key, value):
    """A Mixtral config.json naming another router (DeepSeek's sigmoid scores, shared experts, training jitter):
    `import --hf` is one line naming the key, exit 2, nothing written."""
    from instructjax import cli

    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "vocab_size": 64, "hidden_size": 16,
        "intermediate_size": 24, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "num_local_experts": 4, "num_experts_per_tok": 2, key: value}))
    assert cli.main(["import", "--hf", str(hf), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{key}={value!r} names a router we do not run" in err[0] and "config.json" in err[0]
    assert not (tmp_path / "out").exists()
