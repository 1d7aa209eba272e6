"""A resume cannot restore parameters of other shapes (train/resume_shapes.py): a LoRA run's checkpoint resumed with
another rank, other targets, another quantization or another model size is one line naming the key as the user typed
it, exit 2, with or without --accept-changes, and nothing is written; a change that keeps the shapes (alpha) is still
the training change --accept-changes may accept."""

from __future__ import annotations

import dataclasses
import os
import re

import jax
import numpy as np
import pytest

from instructjax import cli
from instructjax.convert.hf import abstract_params
from instructjax.core.checkpoint import save_params
from instructjax.core.config import load_config, to_dict
from instructjax.train.setup import bind_run

RUN = ["model.preset=tiny", "model.dtype=float32", "model.lora.rank=8", "model.lora.alpha=8",
       "model.lora.targets=[q_proj,v_proj]", "data.mixture=acp_ACP_builtin", "data.seq_len=256", "data.global_batch=8",
       "max_steps=4"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
    """A LoRA run's checkpoint at step 2 (rank 8 on q_proj and v_proj), as the trainer saves its config."""
    run = str(tmp_path_factory.mktemp("resume") / "run")
    bound = bind_run(load_config(None, [*RUN, f"run_dir={run}"]))
    params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract_params(bound.model))  # values unread
    save_params(run, params, dataclasses.asdict(bound.model), run_config=to_dict(bound.config), step=2)
    return run


def listing(run: str) -> dict[str, int]:
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(run) for f in fs}


@pytest.mark.parametrize("change, words", [
    ("model.lora.rank=4", r"model.lora.rank cannot change on resume \(the checkpoint's adapters are rank 8\); "
                          "start a new run_dir"),
    ("model.lora.targets=[q_proj,k_proj]", r"model.lora.targets cannot change on resume \(the checkpoint's adapters "
                                           r"are on q_proj, v_proj\)"),
    ("model.num_layers=3", r"model.num_layers cannot change on resume \(the checkpoint's is 2\)"),
])
@pytest.mark.parametrize("accept", [False, True])
def test_a_change_of_shapes_is_one_line_and_writes_nothing(run_dir, change, words, accept, capsys):
    before = listing(run_dir)
    argv = ["train", "--resume", "--config", "/dev/null", *RUN, change, f"run_dir={run_dir}"]
    assert cli.main(argv + (["--accept-changes"] if accept else [])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("instructjax: error:") and run_dir in err[0], err
    assert re.search(words, err[0]), err
    assert "overrides" not in err[0]
    assert listing(run_dir) == before  # no changes.jsonl, nothing else


def test_a_change_that_keeps_the_shapes_is_named_as_typed(run_dir, capsys):
    assert cli.main(["train", "--resume", "--config", "/dev/null", *RUN, "model.lora.alpha=32",
                     f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model.lora.alpha: 8 -> 32" in err[0] and "--accept-changes" in err[0], err
