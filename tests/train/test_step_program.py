"""A step is known by its program (train/compile.py `program_digest`): a step saved for DPO is refused by a run whose
step differs in anything (another objective, beta, NEFTune on; another loss reduction of an SFT step), and served to
the same step built again. Lowered on a tiny model on this CPU, never compiled."""

from __future__ import annotations

import pickle

import jax
import numpy as np
import pytest

from instructjax.core.config import load_config
from instructjax.core.errors import ConfigError
from instructjax.model.presets import preset
from instructjax.train.compile import FORMAT, load_compiled, program_digest, slice_identity
from instructjax.train.optim import make_optimizer
from instructjax.train.step import build_step

MODEL = preset("tiny", dtype="float32", vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=1,
               num_heads=2, num_kv_heads=1, head_dim=16, attention="xla")
ROWS, LENGTH = 4, 32
MESH = {"data": 1, "fsdp": 1, "tensor": 1}


def build(*overrides: str):
    run = load_config(None, [f"data.seq_len={LENGTH}", f"data.global_batch={ROWS}", *overrides])
    tx, _ = make_optimizer(run.optim, 10)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1, 1), ("data", "fsdp", "tensor"))
    return build_step(MODEL, tx, run, 1, mesh)


def digest(*overrides: str) -> str:
    return program_digest(build(*overrides).lower(ROWS, LENGTH))


@pytest.mark.slow
def test_a_step_saved_for_dpo_serves_dpo_alone(tmp_path):
    dpo = ("objective.loss=dpo", "objective.dpo.reference=cached")
    saved_for = digest(*dpo)
    saved = tmp_path / "step.bin"  # what `plan --compile --save-executable` writes, but the executable (refused first)
    target = slice_identity(jax.devices()[:1], 1, MESH)
    saved.write_bytes(pickle.dumps({"format": FORMAT, "target": target, "rows": ROWS, "length": LENGTH,
                                    "digest": saved_for, "payload": b"", "in_tree": None, "out_tree": None}))
    others = {"simpo": ["objective.loss=simpo"], "dpo_norm": ["objective.loss=dpo_norm"],
              "another beta": [*dpo, "objective.dpo.beta=0.2"], "NEFTune on": [*dpo, "optim.neftune_alpha=5"],
              "the reference live": ["objective.loss=dpo", "objective.dpo.reference=live"]}
    for name, overrides in others.items():
        with pytest.raises(ConfigError, match=r"was built for another step \(its program differs") as refused:
            load_compiled(str(saved), target=target, build=build(*overrides), shapes=[(ROWS, LENGTH)])
        assert "\n" not in str(refused.value), name
    with pytest.raises(Exception) as served:  # the same step, built again: past every check, to the (empty) payload
        load_compiled(str(saved), target=target, build=build(*dpo), shapes=[(ROWS, LENGTH)])
    assert not isinstance(served.value, ConfigError)
    # the pair mean does not read optim.loss_reduction: the same program, so the same step; an SFT step's does
    assert digest(*dpo, "optim.loss_reduction=sum") == saved_for
    assert digest("optim.loss_reduction=sum") != digest("optim.loss_reduction=mean")
