"""A hub dataset out of reach is one line naming it and the way out, through the real CLI (offline: the test
session sets HF_HUB_OFFLINE and HF_DATASETS_OFFLINE), for the data commands, train and lm-eval suites; and the
libraries' own "not found" and "gated" errors say so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from instructjax.data.sources.hub import hub_failure, hub_problem


def cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "instructjax.cli", *argv], capture_output=True, text=True,
                          timeout=600, cwd=cwd)  # fmt: skip


def one_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("instructjax: error:")]
    assert len(errors) == 1 and done.stderr.strip().endswith(errors[0]), done.stderr[-3000:]
    return errors[0]


@pytest.mark.slow
def test_an_unreachable_hub_dataset_is_one_line_for_data_train_and_eval(tmp_path):
    line = one_line(cli("data", "stats", "alpaca", cwd=tmp_path))
    assert "hub dataset tatsu-lab/alpaca: the Hugging Face hub cannot be reached" in line and "data_files" in line
    line = one_line(cli("train", "--config", "/dev/null", "data.mixture=acp_A", "model.preset=tiny",
                        f"run_dir={tmp_path / 'run'}", cwd=tmp_path))  # fmt: skip
    assert "hub dataset tatsu-lab/alpaca" in line and "data_files" in line

    from helpers.models import make_hf_dir

    from instructjax.data.encoding.tokenizer import Tokenizer

    model = make_hf_dir(tmp_path / "hf")
    Tokenizer.load().save(model)
    line = one_line(cli("eval", "--model", model, "--suite", "mixture", "--limit", "1", cwd=tmp_path))
    assert "lm-eval task(s) arc_challenge" in line and "the Hugging Face hub cannot be reached" in line
    assert "--include-path" in line


def test_not_found_and_gated_say_so():
    from datasets.exceptions import DatasetNotFoundError

    missing = DatasetNotFoundError("Dataset 'someone/no-such-set' doesn't exist on the Hub or cannot be accessed.")
    assert hub_failure(missing) == "someone/no-such-set"
    assert "does not exist (a wrong id, or private: set HF_TOKEN)" in hub_problem("someone/no-such-set", missing)

    class GatedRepoError(Exception):  # huggingface_hub's class needs an HTTP response to be made; its name is enough
        pass

    gated = GatedRepoError("Access to dataset meta-llama/x is restricted. You must have access to it.")
    assert hub_failure(gated) == "meta-llama/x"
    assert "is gated: accept its terms on huggingface.co and set HF_TOKEN" in hub_problem("meta-llama/x", gated)


def test_a_missing_package_is_not_a_hub_dataset(tmp_path):
    """lm-eval's hf backend without `accelerate` (an install without the `eval` extra): one line naming the package
    and the extra, not "hub dataset (unnamed) does not exist" (ModuleNotFoundError's name has "NotFound" in it); the
    quickstart, whose last step it is, says so before it trains."""
    try:
        import accelerate_is_not_installed_anywhere  # noqa: F401
    except ModuleNotFoundError as missing:
        assert hub_failure(missing) is None
    from helpers.models import make_hf_dir

    model = make_hf_dir(tmp_path / "hf")
    code = ("import sys; sys.modules['accelerate'] = None  # import accelerate raises ModuleNotFoundError\n"
            "from instructjax.core.errors import ConfigError\n"
            "from instructjax.eval.harness import run_lm_eval\n"
            "try:\n"
            f"    run_lm_eval({str(model)!r}, ['ij_mc'], backend='hf', include_path='instructjax/eval/offline_tasks')\n"
            "except ConfigError as e:\n"
            "    print(e)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == ("lm-eval's hf backend needs the `accelerate` package: "
                                   "pip install 'instructjax[eval]'"), done.stdout + done.stderr[-2000:]
    quickstart = subprocess.run(  # the quickstart says so before it trains, not after
        [sys.executable, "-c", "import sys; sys.modules['accelerate'] = None; from instructjax.cli import run; run()",
         "quickstart"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert one_line(quickstart) == ("instructjax: error: the quickstart evaluates with lm-eval's hf backend, which "
                                    "needs the `accelerate` package: pip install 'instructjax[eval]' (or `make "
                                    "quickstart`, which installs it)")
    assert not (tmp_path / "runs").exists() and not quickstart.stdout
