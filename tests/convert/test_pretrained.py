"""Fine-tuning a pretrained model whose tokenizer is not the built-in default, from import to export.

For two locally built LLaMA-architecture models (a byte-level BPE `tokenizer.json` with its own EOS and
no BOS; a SentencePiece `.model` with BOS), each pretrained briefly in PyTorch on English text in its own
ids, through the real CLI: import, train one step with only
`model.init_from` and a local-data task, export, generate. Every comparison is against an independent
reference: the tokenizer libraries themselves (`tests/helpers/pretrained_models.py`) and transformers' PyTorch
LLaMA and `apply_chat_template(tokenize=True)`.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from helpers import pretrained_models as pm  # noqa: E402  (tests/helpers/pretrained_models.py)

from instructjax import cli  # noqa: E402
from instructjax.data.encoding.templates import render  # noqa: E402
from instructjax.data.schema import Conversation  # noqa: E402

# variant -> (tokenizer builder, BOS piece or None, EOS piece, the chat template the run trains with)
VARIANTS = {
    "bpe": (pm.bpe_tokenizer, None, "<|endoftext|>", "tulu"),
    "spm": (pm.spm_tokenizer, "<s>", "</s>", "alpaca"),
}


def conversation(row: dict) -> Conversation:
    """What the Alpaca adapter makes of a row: the independent reference below renders it itself."""
    user = row["instruction"] + (f"\n\n{row['input']}" if row["input"] else "")
    return Conversation([{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}],
                        source="alpaca", id="x", meta={"instruction": row["instruction"], "input": row["input"]})


@pytest.fixture(scope="module", params=list(VARIANTS))
def setup(request, tmp_path_factory):
    """(variant, its tokenizer dir, the imported checkpoint, a run config file, the run dir) after
    `instructjax import` and one `instructjax train` step."""
    name = request.param
    build, bos, eos, template = VARIANTS[name]
    root = tmp_path_factory.mktemp(name)
    tok_dir = build(str(root / "tokenizer"))
    from tokenizers import Tokenizer as Raw

    if name == "bpe":
        raw = Raw.from_file(os.path.join(tok_dir, "tokenizer.json"))
        vocab, bos_id, eos_id = raw.get_vocab_size(), None, raw.token_to_id(eos)
    else:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=os.path.join(tok_dir, "tokenizer.model"))
        vocab, bos_id, eos_id = sp.get_piece_size(), 1, 2
    documents = [pm.reference_ids(tok_dir, line + eos, bos=bos, eos=eos) for line in pm.corpus()]
    # 80 AdamW steps: the first loss ~4.3 (bpe) and ~4.4 (spm) against 0.75 ln V ~5.3 and ~5.0 (150 steps: 3.6, 4.3)
    hf = pm.hf_model(str(root / "hf"), tok_dir, vocab_size=vocab + 8, bos=bos_id, eos=eos_id, pretrain_steps=80,
                     tokens=documents)
    ckpt = str(root / "ckpt")
    assert cli.main(["import", "--hf", hf, "--out", ckpt]) == 0
    rows = root / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in pm.ALPACA_ROWS))
    config = {
        "run_dir": str(root / "run"), "max_steps": 1, "log_every": 1, "seed": 0,
        "model": {"init_from": ckpt, "dtype": "float32"},
        "data": {"mixture": "real_rows", "seq_len": 256, "global_batch": 8, "pack": False},
        "optim": {"lr": 1e-4},
        "define": {"tasks": {"real_rows": {"source": "alpaca", "data_files": [str(rows)], "template": template}},
                   "mixtures": {"real_rows": {"mode": "epoch", "counts": {"real_rows": None}}}},
    }
    config_file = root / "run.yaml"
    config_file.write_text(yaml.safe_dump(config))
    assert cli.main(["train", "--config", str(config_file)]) == 0
    return name, tok_dir, hf, ckpt, str(config_file), str(root / "run")


def references(name: str, tok_dir: str):
    """(ids, loss mask) of every row, in row order, by the paper's own code (open-instruct's
    `encode_with_messages_format` for Tulu, Stanford Alpaca's `preprocess` for Alpaca) over the tokenizer
    library's ids."""
    _, bos, eos, template = VARIANTS[name]
    if template == "tulu":
        return [pm.open_instruct_example(tok_dir, conversation(row).messages, bos=bos, eos=eos) for row in pm.ALPACA_ROWS]
    return [pm.stanford_alpaca_example(tok_dir, row, bos=bos, eos=eos) for row in pm.ALPACA_ROWS]


def test_first_batch_is_the_tokenizers_own_ids(setup):
    from instructjax.core.config import load_config
    from instructjax.train.trainer import Trainer

    name, tok_dir, _, _, config_file, _ = setup
    trainer = Trainer(load_config(config_file, [f"run_dir={config_file}.unused"]))
    batch = next(iter(trainer.pipeline))
    got = sorted((tuple(t[s > 0].tolist()), tuple(w[s > 0].tolist()))
                 for t, w, s in zip(batch["tokens"], batch["loss_weights"], batch["segment_ids"], strict=True))
    want = []
    for ids, mask in references(name, tok_dir):
        weights = np.append(mask[1:], 0).astype(np.float32)  # the weight at t is for predicting token t + 1
        want.append((tuple(ids), tuple(weights.tolist())))
    assert got == sorted(want)


def test_first_step_loss_equals_transformers(setup):
    name, tok_dir, hf, _, _, run_dir = setup
    model = transformers.LlamaForCausalLM.from_pretrained(hf, dtype=torch.float32)
    total, count = 0.0, 0
    for ids, mask in references(name, tok_dir):
        nll, n = pm.torch_masked_nll(model, ids, mask)
        total, count = total + nll, count + n
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        first = json.loads(f.readline())
    assert first["step"] == 1
    expected = total / count
    print(f"{name}: first-step loss ours {first['loss']:.6f} transformers {expected:.6f}")
    assert first["loss"] == pytest.approx(expected, rel=1e-4)
    assert first["loss"] < 0.75 * np.log(model.config.vocab_size)  # a pretrained model, not random guessing


@pytest.fixture(scope="module")
def exported(setup, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("export") / "hf")
    assert cli.main(["export", "--checkpoint", setup[-1], "--out", out]) == 0
    return out


def test_export_chat_template_gives_the_training_ids(setup, exported):
    name, tok_dir, *_ = setup
    _, bos, eos, template = VARIANTS[name]
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported)
    for row, (ids, mask) in zip(pm.ALPACA_ROWS, references(name, tok_dir), strict=True):
        conv = conversation(row)
        if template == "alpaca" and row["input"]:
            continue  # the Jinja twin renders messages only; an Alpaca input is a meta field of the row
        got = hf_tok.apply_chat_template(conv.messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        assert list(got["input_ids"]) == ids, row["instruction"]
        assert list(got["assistant_masks"]) == mask.tolist(), row["instruction"]  # TRL's assistant-only loss
    with open(os.path.join(exported, "config.json")) as f:
        config = json.load(f)
    assert config["eos_token_id"] == hf_tok.eos_token_id == hf_tok.convert_tokens_to_ids(eos)
    assert config["bos_token_id"] == (hf_tok.convert_tokens_to_ids(bos) if bos else None)
    assert config["vocab_size"] == len(hf_tok) + 8


def test_export_logits_match_ours(setup, exported):
    import jax.numpy as jnp

    from instructjax.convert.saved import load_model

    name, tok_dir, *_, run_dir = setup
    ids = np.array([references(name, tok_dir)[0][0]], np.int32)
    ours = np.asarray(load_model(run_dir, dtype="float32")(jnp.asarray(ids), jnp.arange(ids.shape[1])[None],
                                                           jnp.ones_like(jnp.asarray(ids))))
    theirs = transformers.LlamaForCausalLM.from_pretrained(exported, dtype=torch.float32)(
        torch.from_numpy(ids).long()).logits.detach().numpy()
    assert np.abs(ours - theirs).max() <= 1e-4


def test_exported_template_is_the_trained_one(setup, exported):
    name, *_ = setup
    _, bos, eos, template = VARIANTS[name]
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported)
    conv = conversation(pm.ALPACA_ROWS[0])
    text = hf_tok.apply_chat_template(conv.messages, tokenize=False)
    assert text == (bos or "") + render(conv, template, eos_token=eos).text


def test_generate_feeds_the_same_prompt_on_the_run_and_the_export(setup, exported, tmp_path, monkeypatch):
    from instructjax.model.engine import SlotEngine

    name, tok_dir, *_, run_dir = setup
    _, bos, eos, template = VARIANTS[name]
    seen = []

    def record(engine, prompts, sampling, stop_ids, stop=None):  # the ids the engine is given, no generation
        seen.append([list(p) for p in prompts])
        return [[stop_ids[0]] for _ in prompts]

    monkeypatch.setattr(SlotEngine, "generate", record)
    row = pm.ALPACA_ROWS[1]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "1", "instruction": row["instruction"]}) + "\n")
    for model in (run_dir, exported):
        assert cli.main(["generate", "--model", model, "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl"),
                         "--batch-size", "1"]) == 0
    on_run, on_export = seen[0][0], seen[1][0]
    assert on_run == on_export
    conv = conversation(row)
    rendered = render(conv, template, eos_token=eos)
    prompt_text = rendered.text[: rendered.trained_spans[0][0]]
    assert on_run == pm.reference_ids(tok_dir, prompt_text, bos=bos, eos=eos)
    hf_tok = transformers.AutoTokenizer.from_pretrained(exported)
    via_hf = hf_tok.apply_chat_template(conv.messages[:1], add_generation_prompt=True, tokenize=True)
    assert on_run == list(via_hf["input_ids"] if hasattr(via_hf, "keys") else via_hf)
    assert on_run.count(1 if bos else -1) == (1 if bos else 0)


def _tokenizer_copy(tok_dir: str, directory, **config_changes) -> str:
    import shutil

    shutil.copytree(tok_dir, directory)
    path = os.path.join(directory, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    with open(path, "w") as f:
        json.dump({**config, **config_changes}, f)
    return str(directory)


def _out_of_range_task(name: str, token: int) -> str:
    """A user's own seqio Task (not an instructjax one) whose tokens include `token`."""
    import seqio
    import tensorflow as tf

    if name not in seqio.TaskRegistry.names():
        def dataset_fn(split, shuffle_files, seed=None):
            return tf.data.Dataset.from_tensors({"tokens": tf.constant([5, 6, token], tf.int32),
                                                 "loss_mask": tf.constant([0, 1, 1], tf.int32)})

        feature = seqio.Feature(seqio.PassThroughVocabulary(1 << 20), add_eos=False, dtype=tf.int32)
        seqio.TaskRegistry.add(name, source=seqio.FunctionDataSource(dataset_fn, splits=["train"]), preprocessors=[],
                               output_features={"tokens": feature, "loss_mask": feature})
    return name


def test_mismatches_are_one_line_errors_before_compiling(setup, tmp_path, capsys, monkeypatch):
    import jax

    import instructjax.train.trainer  # noqa: F401  (libraries jit at import: import before the trap)
    from instructjax.data.encoding.tokenizer import default_tokenizer_path

    name, tok_dir, hf, ckpt, config_file, _ = setup
    _, bos, eos, _ = VARIANTS[name]
    vocab = transformers.AutoConfig.from_pretrained(hf).vocab_size
    other = "<unk>" if name == "spm" else "Ġthe"
    cases = {  # overrides -> words of the error
        "task tokenizer": ([f"define.tasks.real_rows.tokenizer={default_tokenizer_path()}"], "tokenizes with"),
        "vocab": ([f"tokenizer={default_tokenizer_path()}"], f"embedding has {vocab} rows"),
        "eos": ([f"tokenizer={_tokenizer_copy(tok_dir, tmp_path / 'eos', eos_token=other)}"], "ends turns with id"),
        "token range": ([f"data.mixture={_out_of_range_task('out_of_range_' + name, vocab + 3)}"],
                        f"token id {vocab + 3} is outside the model's vocabulary"),
    }
    if bos:
        cases["bos"] = ([f"tokenizer={_tokenizer_copy(tok_dir, tmp_path / 'bos', bos_token=eos)}"], "starts with BOS id")
    monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before the error"))
    for case, (overrides, words) in cases.items():
        argv = ["train", "--config", config_file, f"run_dir={tmp_path / case}", *overrides]
        assert cli.main(argv) == 2, case
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("instructjax: error: ") and words in err, (case, err)


def _response_length(tok_dir: str, text: str) -> int:
    """The tokenizer library's own count of a response's ids (no BOS/EOS), as selection ranks them."""
    if os.path.isfile(os.path.join(tok_dir, "tokenizer.json")):
        from tokenizers import Tokenizer as Raw

        return len(Raw.from_file(os.path.join(tok_dir, "tokenizer.json")).encode(text, add_special_tokens=False).ids)
    import sentencepiece as spm

    return len(spm.SentencePieceProcessor(model_file=os.path.join(tok_dir, "tokenizer.model")).encode(text))


def test_data_commands_with_the_config_use_the_models_tokenizer(setup, tmp_path, capsys):
    """`data preview/stats/select --config` read the run's tokenizer from model.init_from (not the default):
    the previewed ids are the tokenizer library's, stats count its trained tokens, select ranks its lengths."""
    name, tok_dir, _, _, config_file, _ = setup
    want = references(name, tok_dir)
    assert cli.main(["data", "preview", "--config", config_file, "--json", "-n", str(len(want))]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    assert [(row["tokens"], row["loss_mask"]) for row in shown] == [(ids, mask.tolist()) for ids, mask in want]

    assert cli.main(["data", "stats", "--config", config_file, "--json"]) == 0
    (task,) = json.loads(capsys.readouterr().out)["tasks"]
    assert task["instances"] == len(want) and task["trained_tokens"] == sum(int(mask.sum()) for _, mask in want)

    out = tmp_path / "longest.jsonl"
    assert cli.main(["data", "select", "--config", config_file, "--method", "longest", "-k", "3", "--out", str(out)]) == 0
    capsys.readouterr()
    chosen = [json.loads(line) for line in out.read_text().splitlines()]
    lengths = sorted((_response_length(tok_dir, row["output"].strip()) for row in pm.ALPACA_ROWS), reverse=True)
    for row in chosen:
        assert row["selection"]["score"] == _response_length(tok_dir, row["messages"][-1]["content"])
    assert [row["selection"]["score"] for row in chosen] == lengths[:3]


def test_model_encoder_selection_uses_the_runs_model(setup, tmp_path, capsys):
    """`selection: {encoder: llama-mean}` in a config embeds with model.init_from; without one it is a
    one-line error."""
    name, tok_dir, _, ckpt, config_file, _ = setup
    select = ["define.tasks.real_rows.selection.method=kmeans", "define.tasks.real_rows.selection.k=4",
              "define.tasks.real_rows.selection.num_clusters=2", "define.tasks.real_rows.selection.encoder=llama-mean"]
    config = tmp_path / "kmeans.yaml"
    from instructjax.core.config import load_config, to_dict

    config.write_text(yaml.safe_dump(to_dict(load_config(config_file, select))))
    assert cli.main(["data", "stats", "--config", str(config), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert [t["instances"] for t in stats["tasks"]] == [4]
    without = tmp_path / "kmeans_no_model.yaml"
    without.write_text(yaml.safe_dump(to_dict(load_config(config_file, [*select, "model.init_from=null",
                                                                          f"tokenizer={tok_dir}"]))))
    assert cli.main(["data", "stats", "--config", str(without)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "set model.init_from" in err, err
