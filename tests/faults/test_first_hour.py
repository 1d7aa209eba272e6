"""What a newcomer meets in the first hour, through the real CLI: a malformed row's column, every config typo in
one line, a misspelt task or mixture with the names it might be, a help written for a user (naming `data prepare`,
and DPO beside SFT), the shipped configs found by name (and a missing config naming them), and files that other
users of a shared directory can read."""

from __future__ import annotations

import json
import os
import re
import stat

import pytest

from instructjax import cli


def one_line(capsys, argv) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("instructjax: error: "), err
    return err


def test_a_malformed_row_names_its_column(tmp_path, capsys):
    line = '{"instruction": "write something long here", "input": "", "output": '
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"instruction": "a", "input": "", "output": "b"}) + "\n" + line + "\n")
    err = one_line(capsys, ["data", "stats", "alpaca", "--data-files", str(rows)])
    assert f"row 2: malformed JSON: Expecting value at column {len(line) + 1}" in err  # the end of that line


def test_every_config_typo_is_named_at_once(tmp_path, capsys):
    err = one_line(capsys, ["train", "--config", "/dev/null", "max_stepz=3", "data.seq_lenn=4", "optim.lr=fast",
                            f"run_dir={tmp_path / 'run'}"])  # fmt: skip
    for words in ("max_stepz: unknown key; did you mean max_steps?", "data.seq_lenn: unknown key; did you mean "
                  "seq_len?", "optim.lr: expected float, got 'fast'"):
        assert words in err
    err = one_line(capsys, ["train", "--config", "/dev/null", "model.dtyp=float32", "model.num_layerz=2",
                            f"run_dir={tmp_path / 'run'}"])  # fmt: skip
    assert "model.dtyp: unknown key; did you mean dtype?" in err and "model.num_layerz" in err


@pytest.mark.parametrize("argv", [["data", "stats", "alpca_builtin"], ["train", "--config", "/dev/null",
                                                                       "data.mixture=acp_ACP_builtn"]])
def test_a_misspelt_task_or_mixture_gets_the_names_it_might_be(tmp_path, capsys, argv):
    err = one_line(capsys, [*argv, *([f"run_dir={tmp_path / 'run'}"] if argv[0] == "train" else [])])
    assert "is not a registered task or mixture; did you mean" in err
    assert ("alpaca_builtin" if argv[0] == "data" else "acp_ACP_builtin") in err


def test_help_is_written_for_a_user(capsys):
    """`instructjax --help`: what the tool does in whole sentences (not the module's docstring cut mid-sentence),
    where to start, `data prepare`, and a `train` that says it also tunes on preferences."""
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    description = out.split("\n\n")[1]
    assert description.rstrip().endswith(".") and "cli/" not in out and "subcommands" not in out, description
    assert "start here:" in out and "instructjax quickstart" in out and "prepare" in out
    train = " ".join(re.search(r"^ +train +(.*?)\n +plan ", out, re.M | re.S).group(1).split())
    assert "SFT" in train and "DPO" in train and "(SFT)" not in train, train


def test_shipped_configs_are_found_by_name_and_a_missing_one_names_them(tmp_path, capsys, monkeypatch):
    """`--config quickstart` and `--config seed004_tulu/...` (with or without .yaml) read the shipped files; away from
    a checkout `--config configs/quickstart.yaml` (the docs' path) is one line naming `--config quickstart`, and an
    unknown name one line naming where the shipped configs are; nothing is written."""
    from instructjax.core.config import load_config
    from instructjax.core.shipped import configs_dir

    monkeypatch.chdir(tmp_path)  # no checkout here: configs/ is not a folder of this directory
    for name in ("quickstart", "seed004_tulu/tulu_human_gpt_llama2_7b", "seed004_tulu/tulu_human_gpt_llama2_7b.yaml"):
        file = configs_dir() / (name if name.endswith(".yaml") else f"{name}.yaml")
        assert load_config(name) == load_config(file)
    err = one_line(capsys, ["train", "--config", "configs/quickstart.yaml", f"run_dir={tmp_path / 'run'}"])
    assert "config file configs/quickstart.yaml does not exist; the shipped config of that name is `--config " \
           "quickstart`" in err
    err = one_line(capsys, ["plan", "--config", "quikstart"])
    assert "`--config quickstart`" in err and str(configs_dir()) in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_exports_and_caches_are_readable_by_the_other_users_of_a_directory(tmp_path, monkeypatch, capsys):
    """Files instructjax writes have the mode any new file gets here (0666 less the umask), as one made by
    `open` has; tempfile's 0600 would lock a shared cache or export directory to its writer."""
    probe = tmp_path / "probe"
    probe.write_text("")
    usual = stat.S_IMODE(probe.stat().st_mode)
    monkeypatch.setenv("INSTRUCTJAX_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert cli.main(["train", "--config", "/dev/null", "model.preset=tiny", "data.mixture=alpaca_builtin",
                     "data.seq_len=128", "data.global_batch=8", "max_steps=1", f"run_dir={run}"]) == 0  # fmt: skip
    assert cli.main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "hf")]) == 0
    written = [*(tmp_path / "cache").iterdir(), *(tmp_path / "hf").iterdir(), run / "metrics.jsonl", run / "DONE"]
    modes = {p.name: oct(stat.S_IMODE(os.stat(p).st_mode)) for p in written}
    assert set(modes.values()) == {oct(usual)}, modes
