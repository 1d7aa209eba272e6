"""Bad configurations and bad Hugging Face directories through the real CLI: one line on stderr, exit 2,
and nothing compiled (jax.jit is booby-trapped for the duration of each command). The config errors
already covered by tests/train/test_trainer.py (unknown key, mesh, batch divisibility, loss_reduction) and the
converter errors covered by tests/convert/test_convert.py (architecture, rope type, missing/misshapen tensor,
missing field) are not repeated."""

import json

import jax
import pytest
from helpers.models import make_hf_dir

import instructjax.eval.generate  # noqa: F401  (plan's eval part reads its slot count: eval.score jits at import)
import instructjax.train.trainer  # noqa: F401  (imported before jit is trapped: libraries jit at import)
from instructjax import cli

BASE = ["model.preset=tiny", "model.dtype=float32", "data.mixture=acp_ACP_n10000_builtin", "data.seq_len=128",
        "data.global_batch=8", "data.pack_window=64", "max_steps=2"]  # fmt: skip


@pytest.fixture
def no_compile(monkeypatch):
    monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before the error"))


def one_line(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("instructjax: error: "), err
    return err


CONFIGS = [  # (id, config file text or None for a missing file, overrides, words the error must contain)
    ("missing_file", None, [], "does not exist"),
    ("bad_yaml", "model: {preset: tiny\n", [], "not valid YAML"),
    ("yaml_syntax_error_placed", "name: a\noptim:\n  lr: 1\n   epochs: 2\n", [],
     "config.yaml, line 4, column 10: not valid YAML (mapping values are not allowed here)"),
    ("not_a_mapping", "- a\n- b\n", [], "mapping at the top level"),
    ("wrong_type", "", ["max_steps=many"], "max_steps: expected int"),
    ("section_not_mapping", "optim: 3\n", [], "optim: expected a mapping"),
    ("unknown_mixture", "", ["data.mixture=no_such_blend"], "no_such_blend"),
    ("unknown_preset", "", ["model.preset=llama9-1t"], "llama9-1t"),
    ("seq_len_too_small", "", ["data.seq_len=4"], "data.seq_len=4"),
    ("init_from_missing", "", ["model.init_from=/nonexistent/ckpt"], "/nonexistent/ckpt"),
    ("bad_define", "define: {tasks: {t: {source: no_such_source}}}\n", [], "no_such_source"),
    ("zero_steps", "", ["max_steps=0"], "max_steps must be >= 1"),
    ("mesh_size_not_a_number", "", ["mesh.data=two"], "mesh.data: expected int, got 'two'"),
    ("model_key_given_twice", "model: {remat: full, overrides: {remat: none}}\n", [],
     "model: remat given both as model.KEY and model.overrides.KEY with different values"),
    ("distribution_param_not_a_number", "data: {mosaic: {distribution: logistic, distribution_params: {scale: wide}}}\n",
     [], "data.mosaic.distribution_params.scale: expected float, got 'wide'"),
    ("eval_unknown_key", "", ["eval.backnd=hf"], "eval.backnd: unknown key; did you mean backend?"),
    ("eval_bad_value", "eval: {judge: {base_url: http://x, model: j, concurrency: 0}}\n", [],
     "eval.judge: concurrency and max_tokens must be >= 1"),
]


def test_model_keys_and_model_overrides_merge():
    """`model.remat=full` and `model.overrides.num_layers=2` together: both reach the model, in either order and
    from the file and the command line alike (an `overrides` block once replaced the shortcuts given before it)."""
    from instructjax.core.config import load_config

    for order in (["model.remat=full", "model.overrides.num_layers=2"], ["model.overrides.num_layers=2", "model.remat=full"]):
        assert load_config(None, ["model.preset=tiny", *order]).model.overrides == {"remat": "full", "num_layers": 2}


@pytest.mark.parametrize("text,overrides,words", [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_bad_config_is_one_line_before_compiling(tmp_path, capsys, no_compile, text, overrides, words):
    path = tmp_path / "config.yaml"
    if text is not None:
        path.write_text(text)
    err = one_line(capsys, ["train", "--config", str(path), *BASE, f"run_dir={tmp_path / 'run'}", *overrides])
    assert words in err


def test_a_directory_or_a_missing_checkpoint_is_one_line(tmp_path, capsys, no_compile):
    """`train --config DIR` (once IsADirectoryError's traceback); `--resume` on a run_dir that holds no checkpoint (a
    mistyped one once trained from scratch without a word); a Hugging Face directory as model.init_from, whose
    message once said to import it into itself."""
    (tmp_path / "configs").mkdir()
    err = one_line(capsys, ["train", "--config", str(tmp_path / "configs"), *BASE])
    assert f"config file {tmp_path / 'configs'} is a directory: give a file" in err
    run = tmp_path / "typo"
    err = one_line(capsys, ["train", "--config", "/dev/null", *BASE, f"run_dir={run}", "--resume"])
    assert f"--resume: {run} holds no checkpoint to resume from" in err and "--auto-resume" in err
    assert not run.exists()
    hf = make_hf_dir(tmp_path / "hf")
    err = one_line(capsys, ["train", "--config", "/dev/null", *BASE, f"model.init_from={hf}", f"run_dir={run}"])
    assert "is a Hugging Face model directory" in err and f"import --hf {hf} --out CHECKPOINT_DIR" in err
    assert f"--out {hf}`" not in err


def _truncate(path, fraction=0.5):
    with open(path, "r+b") as f:
        f.truncate(int(path.stat().st_size * fraction))


HF_FAULTS = {  # id -> (how to break a good directory, words the error must contain)
    "not_a_directory": (lambda d: d.rename(d.with_name("gone")), "no config.json"),
    "config_truncated": (lambda d: _truncate(d / "config.json"), "config.json"),
    "config_not_an_object": (lambda d: (d / "config.json").write_text("[1, 2]"), "config.json"),
    "config_field_mistyped": (lambda d: (d / "config.json").write_text(
        json.dumps({**json.loads((d / "config.json").read_text()), "num_hidden_layers": "two"})), "num_hidden_layers"),
    "no_weights": (lambda d: (d / "model.safetensors").unlink(), "no model.safetensors"),
    "weights_truncated": (lambda d: _truncate(d / "model.safetensors"), "model.safetensors"),
    "weights_garbage": (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 64), "model.safetensors"),
    "index_names_missing_shard": (lambda d: ((d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors"),
        (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
            "model.embed_tokens.weight": "model-00002-of-00002.safetensors"}}))), "model-00002-of-00002"),
}  # fmt: skip


def test_good_hf_dir_imports(tmp_path, capsys):
    """The baseline the faults below break: the same directory, untouched, imports."""
    hf = make_hf_dir(tmp_path / "hf")
    assert cli.main(["import", "--hf", hf, "--out", str(tmp_path / "ckpt")]) == 0
    assert "imported" in capsys.readouterr().out


@pytest.mark.parametrize("fault", list(HF_FAULTS))
def test_bad_hf_dir_is_one_line(tmp_path, capsys, fault):
    hf = make_hf_dir(tmp_path / "hf")
    breaker, words = HF_FAULTS[fault]
    breaker(tmp_path / "hf")
    err = one_line(capsys, ["import", "--hf", hf, "--out", str(tmp_path / "ckpt")])
    assert words in err
    assert not (tmp_path / "ckpt" / "checkpoints" / "0").exists()  # nothing half-imported left as complete


def test_a_run_too_large_for_this_machine_is_one_line_before_compiling(tmp_path, capsys, no_compile):
    """A step whose logits alone (seq_len x rows x vocab x 6 bytes, all made at once: optim.loss_chunk=0) take
    twice the memory this machine has: one line naming the estimate and the keys that change it, nothing
    compiled, no run directory left behind; `plan` says the same of this machine."""
    from instructjax.train.topology import available_memory

    rows = -(-2 * available_memory() // (2048 * 32000 * 6 * 8)) * 8  # 8 devices: a multiple of 8
    too_big = ["data.seq_len=2048", f"data.global_batch={rows}", "optim.loss_chunk=0"]
    err = one_line(capsys, ["train", "--config", "/dev/null", *BASE, *too_big, f"run_dir={tmp_path / 'run'}"])
    assert "out of memory: a step needs about" in err and "(this machine (cpu))" in err
    for key in ("data.global_batch", "data.seq_len", "optim.micro_batches", "model.remat"):
        assert key in err
    assert not (tmp_path / "run").exists()
    assert cli.main(["plan", "--config", "/dev/null", *BASE, *too_big]) == 1
    out = capsys.readouterr().out
    assert "topology    this machine (cpu): 8 device(s)" in out and "DOES NOT FIT" in out


def test_import_refuses_what_later_commands_cannot_use(tmp_path, capsys):
    """A tokenizer with more ids than the model's embedding rows (generate and score would read past the table),
    a chat template that does not compile (the tokenizer's own, or one given with --chat-template): one line each at
    import, exit 2, no checkpoint; the same directory with a fitting tokenizer and template imports."""
    from helpers.pretrained_models import bpe_tokenizer

    from instructjax.convert import hf_config
    from instructjax.model.presets import preset

    def hf_dir(name: str, rows: int, template: str | None) -> str:
        path = tmp_path / name
        bpe_tokenizer(str(path), vocab_size=1200)
        good = make_hf_dir(tmp_path / f"{name}-weights")
        for f in ("model.safetensors",):
            (path / f).write_bytes((tmp_path / f"{name}-weights" / f).read_bytes())
        hf = hf_config.to_hf(preset("tiny", dtype="float32"))
        (path / "config.json").write_text(json.dumps({**hf, "vocab_size": rows}))
        if rows != 32000:  # the weights of a smaller table
            from safetensors.numpy import load_file, save_file

            tensors = load_file(f"{good}/model.safetensors")
            tensors = {k: v[:rows] if v.shape[0] == 32000 else v[:, :rows] if v.shape[-1] == 32000 else v
                       for k, v in tensors.items()}
            save_file(tensors, str(path / "model.safetensors"))
        config = json.loads((path / "tokenizer_config.json").read_text())
        (path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
        return str(path)

    broken = "{% for m in messages %}{{ m['content'] }}"  # no endfor
    jinja = str(tmp_path / "broken.jinja")
    cases = [(hf_dir("small", 1000, None), [], "the tokenizer has 12", "small"),
             (hf_dir("own", 32000, broken), [], "does not compile", "own"),
             (hf_dir("given", 32000, None), ["--chat-template", jinja], "does not compile", jinja)]
    (tmp_path / "broken.jinja").write_text(broken)
    for k, (path, extra, words, named) in enumerate(cases):
        err = one_line(capsys, ["import", "--hf", path, "--out", str(tmp_path / f"ckpt{k}"), *extra])
        assert words in err and named in err, err
        assert not (tmp_path / f"ckpt{k}").exists()
    assert cli.main(["import", "--hf", hf_dir("fine", 32000, "{{ messages[0]['content'] }}"),
                     "--out", str(tmp_path / "fine-ckpt")]) == 0
