"""A user's mistakes through the real CLI: one line on stderr, exit 2, never a traceback, said before the work
whose result would be lost (a bucket that does not exist is named before generating, training or exporting).
gs:// paths go to the GCS-API server (tests/helpers/gcs_emulator.py)."""

from __future__ import annotations

import json

import pytest
from helpers.pretrained_models import bpe_tokenizer, hf_model

from instructjax.cli import main

REFUSING = ("{% for m in messages %}{% if m['content'] == 'refuse' %}{{ raise_exception('not this one') }}{% endif %}"
            "{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict[str, str]:
    """A tiny LLaMA (HF directory, and imported) whose tokenizer adds no BOS and whose chat template refuses a
    message "refuse"; an HF copy whose template does not compile."""
    root = tmp_path_factory.mktemp("user_errors")
    tok = bpe_tokenizer(str(root / "tok"), vocab_size=600)
    config = json.loads((root / "tok" / "tokenizer_config.json").read_text())
    (root / "tok" / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": REFUSING}))
    hf = hf_model(str(root / "hf"), tok, vocab_size=608, bos=None, eos=0)
    assert main(["import", "--hf", hf, "--out", str(root / "ckpt")]) == 0
    broken = hf_model(str(root / "broken"), tok, vocab_size=608, bos=None, eos=0)
    (root / "broken" / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": "{% for m in x %}"}))
    prompts = root / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "p1", "instruction": "hello"}) + "\n")
    refused = root / "refused.jsonl"
    refused.write_text(json.dumps({"id": "ok", "instruction": "fine"}) + "\n" +
                       json.dumps({"id": "bad", "instruction": "refuse"}) + "\n")
    return {"hf": hf, "ckpt": str(root / "ckpt"), "broken": broken, "prompts": str(prompts), "refused": str(refused),
            "root": str(root)}


def one_line(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("instructjax: error: "), (code, err[-2000:])
    return err


def test_local_mistakes_are_one_line(model, capsys, tmp_path):
    gen = ["generate", "--model", model["ckpt"], "--max-new-tokens", "2"]
    cases = [
        (["import", "--hf", model["hf"], "--out", model["ckpt"]], "already holds a checkpoint"),
        ([*gen, "--prompts", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "o.jsonl")], "no such file"),
        (["score", "--model", model["ckpt"], "--text", "a"], "a text needs at least two"),
        ([*gen, "--prompts", model["refused"], "--out", str(tmp_path / "o.jsonl")], "prompt 'bad'"),
        (["generate", "--model", model["broken"], "--max-new-tokens", "2", "--prompts", model["prompts"],
          "--out", str(tmp_path / "o.jsonl")], "does not compile"),
    ]
    for argv, words in cases:
        assert words in one_line(capsys, argv), argv
    assert not (tmp_path / "o.jsonl").exists()


def test_generate_refuses_what_cannot_run_and_reports_its_rate(model, capsys, tmp_path):
    """`generate` with impossible settings, prompts that ask nothing, a directory for a file, or --out on its own
    --prompts: one line each, before the model loads (these once exited 0 with garbage, or replaced the prompts). A
    run that can go prints its progress (stderr) and its tokens/s."""
    prompts = tmp_path / "prompts.jsonl"
    text = json.dumps({"id": "s", "messages": [{"role": "system", "content": "be brief"},
                                               {"role": "user", "content": "hi"}]}) + "\n"
    prompts.write_text(text)
    (tmp_path / "dir").mkdir()
    (tmp_path / "empty.jsonl").write_text("\n")
    (tmp_path / "asks_nothing.jsonl").write_text(text + json.dumps({"id": "x", "input": "?"}) + "\n")
    gen = ["generate", "--model", model["ckpt"], "--prompts", str(prompts), "--out", str(tmp_path / "o.jsonl")]
    cases = [
        (["generate", "--model", model["ckpt"], "--prompts", str(prompts), "--out", f"{tmp_path}/dir/../prompts.jsonl"],
         "is the --prompts file"),
        ([*gen, "--temperature", "-1"], "--temperature -1.0: must be >= 0"),
        ([*gen, "--max-new-tokens", "-3"], "--max-new-tokens -3: must be >= 1"),
        ([*gen, "--top-p", "1.5"], "--top-p 1.5: must be in (0, 1]"),
        ([*gen, "--top-p", "0"], "--top-p 0.0: must be in (0, 1]"),
        ([*gen, "--slots", "0"], "--slots 0: must be >= 1"),
        ([*gen, "--batch-size", "0"], "--batch-size 0: must be >= 1"),
        ([*gen[:4], str(tmp_path / "asks_nothing.jsonl"), *gen[5:]],
         f"file {tmp_path / 'asks_nothing.jsonl'}, row 2: neither 'messages' nor 'instruction'"),
        ([*gen[:4], str(tmp_path / "empty.jsonl"), *gen[5:]], "holds no prompts"),
        ([*gen[:4], str(tmp_path / "dir"), *gen[5:]], f"--prompts {tmp_path / 'dir'} is a directory"),
        ([*gen[:6], str(tmp_path / "dir")], f"--out {tmp_path / 'dir'} is a directory"),
        (["score", "--model", model["ckpt"], "--file", str(tmp_path / "dir")], f"--file {tmp_path / 'dir'} is a directory"),
        (["eval", "--model", model["ckpt"], "--tasks", "ij_mc", "--slots", "0"], "--slots 0: must be >= 1"),
        (["eval", "codex", "--model", model["ckpt"], "-n", "0"], "-n 0: must be >= 1"),
    ]
    for argv, words in cases:
        assert words in one_line(capsys, argv), argv
    assert prompts.read_text() == text and not (tmp_path / "o.jsonl").exists()
    assert main([*gen, "--max-new-tokens", "2"]) == 0
    out, err = capsys.readouterr()
    assert "wrote 1 completions to" in out and "tokens/s" in out and "generate: " in err, (out, err)


def test_a_bucket_that_does_not_exist_is_one_line_before_the_work(model, capsys, tmp_path, bucket, monkeypatch):
    gone = "gs://no-such-bucket-here"
    gen = ["generate", "--model", model["ckpt"], "--max-new-tokens", "2", "--prompts", model["prompts"]]
    cases = [
        ([*gen, "--out", f"{gone}/out.jsonl"], f"--out {gone}/out.jsonl: bucket {gone} does not exist"),
        (["generate", "--model", model["ckpt"], "--prompts", f"{bucket}/missing.jsonl", "--out",
          str(tmp_path / "o.jsonl")], f"{bucket}/missing.jsonl: no such file"),
        (["import", "--hf", model["hf"], "--out", f"{gone}/ckpt"], f"bucket {gone} does not exist"),
        (["export", "--checkpoint", model["ckpt"], "--out", f"{gone}/export"], f"bucket {gone} does not exist"),
        (["train", "--config", "/dev/null", "model.preset=tiny", "data.mixture=acp_ACP_n10000_builtin",
          "data.seq_len=64", "data.global_batch=8", "max_steps=1", f"run_dir={gone}/run"], f"run_dir {gone}/run"),
    ]
    for argv, words in cases:
        assert words in one_line(capsys, argv), argv
    monkeypatch.setenv("INSTRUCTJAX_CACHE_DIR", f"{gone}/cache")
    assert f"INSTRUCTJAX_CACHE_DIR {gone}/cache" in one_line(capsys, ["data", "stats", "alpaca_builtin"])


def test_smaller_mistakes_say_what_is_wrong(capsys, tmp_path, bucket):
    """A data folder that does not exist (in a bucket too) is named, not called an unsupported file type; a null
    message content says it may be null; an --include-path that does not exist is named (not looked for on the hub), a
    --model too (before lm-eval's task index is read);
    key=value after `data preview --config` is an override, not a task name."""
    cases = [
        (["data", "stats", "alpaca", "--data-files", f"{bucket}/nowhere/"], "nowhere/: no such file or directory"),
        (["data", "stats", "alpaca", "--data-files", str(tmp_path / "nowhere")], "no such file or directory"),
        (["eval", "--model", str(tmp_path), "--tasks", "x", "--include-path", str(tmp_path / "tasks")],
         f"--include-path {tmp_path / 'tasks'}: no such directory"),
        (["eval", "--model", str(tmp_path / "nowhere"), "--suite", "mixture"], "nowhere: no such directory"),
        (["data", "preview", "alpaca_builtin", "data.seq_len=64"], "key=value overrides go with --config"),
    ]
    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                              {"role": "assistant", "content": None}]}) + "\n")
    cases.append((["data", "stats", "messages", "--data-files", str(chats)], "messages[1]: missing field 'content' (absent or null)"))
    for argv, words in cases:
        assert words in one_line(capsys, argv), argv
    config = tmp_path / "c.yaml"
    config.write_text("data: {mixture: alpaca_builtin, seq_len: 256}\n")
    capsys.readouterr()
    assert main(["data", "preview", "--config", str(config), "data.seq_len=64", "-n", "1", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out.splitlines()[0])["tokens"]) <= 64  # the override took


def test_a_finished_run_resumed_says_so(tmp_path, capsys):
    common = ["train", "--config", "/dev/null", "model.preset=tiny", "model.dtype=float32", "data.seq_len=128",
              "data.mixture=acp_ACP_n10000_builtin", "data.global_batch=8", "data.pack_window=64", "max_steps=2",
              f"run_dir={tmp_path / 'run'}"]
    assert main([*common, "--auto-resume"]) == 0  # what the launchers run: a run with no checkpoint yet starts
    assert "trained to step 2" in capsys.readouterr().out
    for resume in ("--resume", "--auto-resume"):
        assert main([*common, resume]) == 0
        assert "is already trained to its last step (2): nothing to train" in capsys.readouterr().out


@pytest.fixture(scope="module")
def oversized(tmp_path_factory, model) -> dict[str, str]:
    """A tokenizer of 1,200 ids beside a model of 1,000 embedding rows: as an HF directory, and as a checkpoint
    written without import's checks (import would refuse it); a checkpoint whose chat template does not compile,
    written the same way."""
    root = tmp_path_factory.mktemp("oversized")
    tok = bpe_tokenizer(str(root / "tok"), vocab_size=1200)
    hf = hf_model(str(root / "hf"), tok, vocab_size=1000, bos=None, eos=0)
    return {"hf": hf, "ckpt": unchecked_checkpoint(hf, str(root / "ckpt")), "tok": tok,
            "broken": unchecked_checkpoint(model["broken"], str(root / "broken"))}


def unchecked_checkpoint(hf: str, out: str) -> str:
    """HF directory -> checkpoint, as import writes it but without import's checks of its tokenizer."""
    import dataclasses

    from instructjax.convert.hf import hf_to_params
    from instructjax.core.checkpoint import save_params
    from instructjax.data.encoding.tokenizer import Tokenizer

    params, config = hf_to_params(hf)
    save_params(out, params, dataclasses.asdict(config), run_config={"source": hf}, step=0,
                tokenizer={"files": Tokenizer.load(hf).files(), "template": None})
    return out


def test_a_tokenizer_larger_than_the_embedding_is_one_line(model, oversized, capsys, tmp_path):
    """generate and score (whatever the model: an HF directory, a checkpoint saved with the mismatch, or a model
    given a larger --tokenizer) refuse a tokenizer with more ids than the embedding has rows, instead of exiting 0
    with garbage or NaN log-probs."""
    from instructjax.data.encoding.tokenizer import Tokenizer

    assert Tokenizer.load(oversized["tok"]).vocab_size == 1200  # the premise, read from the files
    out = tmp_path / "o.jsonl"
    for target, override in [(oversized["hf"], None), (oversized["ckpt"], None), (model["ckpt"], oversized["tok"])]:
        extra = ["--tokenizer", override] if override else []
        rows = 1000 if override is None else 608
        whose = f"--tokenizer {override}" if override else "the tokenizer"
        words = f"{target}: {whose} has 1200 token ids but the model's embedding has {rows} rows"
        generate = ["generate", "--model", target, *extra, "--prompts", model["prompts"], "--out", str(out),
                    "--max-new-tokens", "2"]
        assert words in one_line(capsys, generate), generate
        score = ["score", "--model", target, *extra, "--text", "hello there, how are you"]
        assert words in one_line(capsys, score), score
    assert not out.exists()


def test_the_other_loaders_refuse_a_tokenizer_larger_than_the_embedding(oversized):
    """lm-eval's instructjax backend and the selection encoder open models as generate does: the same line."""
    from instructjax.core.errors import ConfigError
    from instructjax.eval.lm_eval_adapter import InstructJaxLM
    from instructjax.train.selection_encoder import LlamaMeanEncoder

    for load in (InstructJaxLM, LlamaMeanEncoder):
        for target in (oversized["hf"], oversized["ckpt"]):
            with pytest.raises(ConfigError, match="has 1200 token ids but the model's embedding has 1000 rows"):
                load(target)


def test_messages_name_the_tokenizer_as_the_user_gave_it(tmp_path, capsys):
    """A checkpoint's tokenizer is read from a temporary copy (instructjax-tokenizers/<hash>); messages name
    model.init_from (or the model) instead: template 'model' on a tokenizer without a chat template, a task whose
    own tokenizer is not the run's, a special token the tokenizer lacks."""
    import yaml

    from instructjax.core.errors import ConfigError
    from instructjax.data.encoding.tokenizer import default_tokenizer_path

    tok = bpe_tokenizer(str(tmp_path / "tok"), vocab_size=600)  # no chat template
    hf = hf_model(str(tmp_path / "hf"), tok, vocab_size=608, bos=None, eos=0)
    ckpt = str(tmp_path / "ckpt")
    assert main(["import", "--hf", hf, "--out", ckpt]) == 0
    config = {"model": {"init_from": ckpt}, "template": "model", "data": {"mixture": "alpaca_builtin", "seq_len": 64}}
    (tmp_path / "model.yaml").write_text(yaml.safe_dump(config))
    own = {"model": {"init_from": ckpt}, "data": {"mixture": "mine", "seq_len": 64},
           "define": {"tasks": {"mine": {"source": "alpaca", "data_files": ["builtin"],
                                         "tokenizer": default_tokenizer_path()}}}}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(own))
    cases = [
        (["data", "preview", "--config", str(tmp_path / "model.yaml"), "-n", "1"],
         f"template 'model': the tokenizer of model.init_from={ckpt} has no chat_template of its own"),
        (["data", "preview", "--config", str(tmp_path / "own.yaml"), "-n", "1"],
         f"tokenizes with {default_tokenizer_path()}, but the run's is the tokenizer of model.init_from={ckpt}"),
    ]
    for argv, words in cases:
        err = one_line(capsys, argv)
        assert words in err and "instructjax-tokenizers" not in err, (argv, err)

    from instructjax.convert.saved import saved_tokenizer

    with pytest.raises(ConfigError) as e:
        saved_tokenizer(ckpt)[0].special_id("<|not-here|>")
    assert f"the tokenizer of {ckpt}: '<|not-here|>' is not one of its tokens" in str(e.value)
    assert "instructjax-tokenizers" not in str(e.value)


def test_export_refuses_what_import_would_have(model, oversized, capsys, tmp_path):
    """A checkpoint written past import's checks (a tokenizer larger than the embedding, a chat template that does
    not compile), or a larger --tokenizer, is refused by export with one line, before anything is written."""
    cases = [([oversized["ckpt"]], "has 1200 token ids but the model's embedding has 1000 rows"),
             ([oversized["broken"]], "chat_template does not compile"),
             ([model["ckpt"], "--tokenizer", oversized["tok"]],
              f"--tokenizer {oversized['tok']} has 1200 token ids but the model's embedding has 608 rows")]
    for (ckpt, *extra), words in cases:
        out = tmp_path / "export"
        assert words in one_line(capsys, ["export", "--checkpoint", ckpt, *extra, "--out", str(out)]), ckpt
        assert not out.exists()
