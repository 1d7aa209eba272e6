"""A command that only reads data (`data prepare`, `data stats`, `--help`) starts without JAX, Flax or torch.

Issue 78: `data prepare` of 20,000 rows had become 2.34x sentencepiece's own batch encode, the new cost fixed per
process: reading the command line imported `eval.run` (for its parts' names), which imported `core.sharding` and so
JAX and Flax; checking a config's `model.lora` imported `model/lora.py` and `model/quantize.py`, JAX again. Loading
them is most of a second of a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO

HEAVY = ("jax", "flax", "optax", "orbax", "torch", "transformers", "tensorflow")

READ_A_RUN = f"""
import json, sys
from instructjax.cli import build_parser, load_run_config
build_parser().parse_args(["data", "prepare", "--config", "quickstart"])
config = load_run_config({str(REPO / "configs" / "quickstart.yaml")!r}, ["model.lora={{rank: 4}}", "model.quantize_base=nf4"])
# what `data prepare` imports to do its work (cli/prepare.py)
from instructjax.core import hosts, progress
from instructjax.data import cache
from instructjax.data.blends import specs
from instructjax.data.encoding import pool
from instructjax.data.tokenized import examples, stream
from instructjax.train import setup, resolution
print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""


def test_reading_a_run_loads_no_heavy_library():
    """The parser, a run config with LoRA and QLoRA settings checked, and the modules `data prepare` works with:
    none of them loads JAX, Flax or torch (they load where a model is built)."""
    done = subprocess.run([sys.executable, "-c", READ_A_RUN], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == []
