"""`data.binding` over a registry it is handed (`data.blends.specs.Registry`), the old names kept, two configs bound
one after the other in one process each with their own registry and caches (`core.context`), and importing the data
layer's registries and the storage layer registers, mutates and exports nothing."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from instructjax.cli import main
from instructjax.core.errors import ConfigError
from instructjax.data import binding
from instructjax.data.blends import papers, specs
from instructjax.data.blends.specs import Registry, TaskSpec


def test_a_registry_handed_to_binding_holds_its_tasks_and_variants_apart_from_the_default():
    registry = Registry()
    registry.define({"tasks": {"reg_only_chats": {"source": "alpaca", "data_files": ["builtin"]}},
                     "mixtures": {"reg_only_mix": {"counts": {"reg_only_chats": 3, "dolly_builtin": 2}}}})
    assert binding.specs_of("reg_only_mix") is None  # the default registry never saw it
    found = binding.specs_of("reg_only_mix", registry)
    assert found.tasks == ("reg_only_chats", "dolly_builtin") and found.spec("reg_only_chats").source == "alpaca"
    bound = binding.bind("reg_only_mix", tokenizer=None, max_length=64, registry=registry)
    assert bound.sources == ["reg_only_chats", "dolly_builtin"] and bound.template == "tulu"
    assert bound.name in registry.mixtures and bound.name not in specs.default_registry().mixtures
    assert [registry.base_name(t) for t in bound.tasks] == bound.sources
    assert binding.uses_model_encoder(bound.resolved) is False
    with pytest.raises(ConfigError, match="did you mean reg_only_mix"):
        binding.bind("reg_only_mixx", tokenizer=None, registry=registry)


def test_a_mixture_redefined_in_a_child_registry_binds_at_the_childs_rates():
    """A config bound outside any command (`plan --compile`, a notebook) leaves its mixture's bound variant in the
    thread's registry; another config defining the same name at other rates, bound in a command's child registry,
    trains at its own rates, not at the variant the parent made (found as a leak between two tests)."""
    def rates(alpaca: float) -> dict:
        return {"mixtures": {"redef_mix": {"mode": "rate", "rates": {"alpaca_builtin": alpaca,
                                                                       "dolly_builtin": 1 - alpaca}}}}

    parent = Registry()
    parent.define(rates(0.75))
    first = binding.bind("redef_mix", tokenizer=None, max_length=64, registry=parent)
    child = Registry(parent)
    child.define(rates(0.2))
    second = binding.bind("redef_mix", tokenizer=None, max_length=64, registry=child)
    assert first.name != "redef_mix" and first.name != second.name
    assert [r for _, r in child.lookup_mixture(second.name).rates] == [0.2, 0.8]
    assert [r for _, r in parent.lookup_mixture(first.name).rates] == [0.75, 0.25]


def test_the_public_functions_write_into_the_default_registry():
    specs.add_task("default_reg_chats", TaskSpec(source="dolly", data_files=("builtin",)))
    default = specs.default_registry()
    assert default.task("default_reg_chats") is specs.task("default_reg_chats")
    assert papers.paper_counts("acp_A") == (("alpaca", 20_000),) and papers.paper_counts("acp_Q") is None
    assert "tulu_human" in default.suggest("tulu_humn")


def _config(tmp_path, name: str, rows: list[str] | None) -> str:
    """A config over mixture `two_mix` of task `two_task`, which its `define:` block registers over a file of alpaca
    rows whose instructions are `rows` (None: no `define:`, the names left to whatever is registered)."""
    config = {"data": {"mixture": "two_mix", "seq_len": 128}}
    if rows is not None:
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"instruction": r, "input": "", "output": "ok"}) + "\n" for r in rows))
        config["define"] = {"tasks": {"two_task": {"source": "alpaca", "data_files": [str(path)]}},
                            "mixtures": {"two_mix": {"counts": {"two_task": None}}}}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return str(tmp_path / f"{name}.yaml")


def _previewed(capsys, config: str) -> list[str]:
    """The instructions `data preview --config` shows, run in this process as a command."""
    capsys.readouterr()
    assert main(["data", "preview", "--config", config, "--json", "-n", "20"]) == 0, capsys.readouterr().err
    texts = [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()]
    return [next(w for w in t.replace("\n", " ").split() if w.startswith("row-")) for t in texts]


def test_two_configs_bound_one_after_the_other_in_one_process_each_get_their_own(tmp_path, capsys):
    """Two configs registering the same names over different rows, run one after the other in one process, each show
    their own rows; the first again after its file was rewritten shows the new rows (nothing kept from the first
    run); a config naming the task without defining it is refused, as in a process of its own."""
    first, second = [f"row-a{k}" for k in range(3)], [f"row-b{k}" for k in range(5)]
    a, b = _config(tmp_path, "a", first), _config(tmp_path, "b", second)
    assert _previewed(capsys, a) == first
    assert _previewed(capsys, b) == second
    rewritten = [f"row-c{k}" for k in range(4)]
    _config(tmp_path, "a", rewritten)
    assert _previewed(capsys, a) == rewritten
    assert main(["data", "preview", "--config", _config(tmp_path, "bare", None)]) == 2
    assert "'two_mix' is not a registered task or mixture" in capsys.readouterr().err


def test_importing_registers_mutates_and_exports_nothing():
    """The seqio face, the templates, the presets, the encoders and the storage layer, imported: seqio's registries
    are empty of our names, `EPATH_USE_TF` is not set and no model code is loaded until each is asked for."""
    code = """
import os, sys
import seqio
import instructjax.data.seqio.mixtures, instructjax.data.seqio.tasks, instructjax.core.storage as storage
import instructjax.data.encoding.templates, instructjax.model.config, instructjax.data.selection.embeddings
assert "alpaca_builtin" not in seqio.TaskRegistry.names() and "acp_A" not in seqio.MixtureRegistry.names()
assert "EPATH_USE_TF" not in os.environ and "instructjax.train.selection_encoder" not in sys.modules
storage.path("somewhere")
assert os.environ["EPATH_USE_TF"] == "false"
from instructjax.data.seqio import lookup
assert lookup.mixture_spec("acp_A_builtin").counts == (("alpaca_builtin", 200),)
assert "alpaca_builtin" in seqio.TaskRegistry.names() and "acp_A" in seqio.MixtureRegistry.names()
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "EPATH_USE_TF"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
