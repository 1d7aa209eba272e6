"""The house's layers as the user meets them: commands that need no data never import TensorFlow or seqio,
importing the trainer does not either, and a one-line error is the only line a command prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO
from helpers.host_devices import xla_flags

PROBE = """
import sys
from instructjax.cli import main
code = main({argv!r})
heavy = sorted(m for m in ("tensorflow", "seqio") if m in sys.modules)
print("PROBE", code, ",".join(heavy) or "-")
"""


def probe(argv: list[str], cwd: Path) -> tuple[int, str, str]:
    """(exit code, heavy modules imported, stderr) of `instructjax ARGV` in a fresh interpreter."""
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": xla_flags(1)}  # one CPU device, the session's cheap compiler flags
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    line = [x for x in proc.stdout.splitlines() if x.startswith("PROBE ")]
    assert line, proc.stderr[-3000:]
    _, code, heavy = line[-1].split(" ")
    return int(code), heavy, proc.stderr


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from helpers.models import make_hf_dir

    return make_hf_dir(tmp_path_factory.mktemp("layers") / "hf")


@pytest.mark.slow
def test_plan_import_export_generate_eval_never_import_tensorflow_or_seqio(hf_dir, tmp_path):
    from instructjax.data.encoding.tokenizer import Tokenizer

    Tokenizer.load().save(hf_dir)  # the tiny model takes the built-in tokenizer
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "1", "instruction": "Say hi."}) + "\n")
    commands = {
        "plan": ["plan", "--config", str(REPO / "configs/seed000_acp/acp_ACP_llama2_7b.yaml"), "--topology", "v4-64"],
        "import": ["import", "--hf", hf_dir, "--out", str(tmp_path / "ckpt")],
        "export": ["export", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(tmp_path / "export"),
                   "--template", "tulu"],
        "generate": ["generate", "--model", str(tmp_path / "ckpt"), "--prompts", str(prompts), "--out",
                     str(tmp_path / "out.jsonl"), "--max-new-tokens", "2"],
        "eval": ["eval", "--model", str(tmp_path / "export"), "--tasks", "ij_mc", "--include-path",
                 str(REPO / "instructjax/eval/offline_tasks"), "--limit", "2"],
    }
    for name, argv in commands.items():
        code, heavy, err = probe(argv, REPO)
        assert code == 0, (name, err[-3000:])
        assert heavy == "-", f"`instructjax {name}` imported {heavy}"


def test_importing_the_trainer_does_not_import_tensorflow():
    """Nor Apache Beam (the `beam` extra): the core package trains without it."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import instructjax.train.trainer"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "instructjax.train.trainer" in imported
    assert not {m for m in imported if m.split(".")[0] in ("tensorflow", "seqio", "apache_beam")}


def test_a_bad_row_error_is_the_only_line_printed(tmp_path):
    bad = tmp_path / "rows.jsonl"
    bad.write_text(json.dumps({"instruction": "x", "input": "", "output": 3}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "instructjax.cli", "data", "stats", "alpaca", "--data-files", str(bad)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"instructjax: error: source alpaca, file {bad}, row 1: field 'output' is int, expected str\n"


# core < data, model < convert < train, eval < report, mix < cli < launch (docs/architecture.md): a module imports only
# from its own layer or below; data and model do not import each other, nor train and eval. launch/ holds the
# shipped launch scripts (run as scripts, above the CLI); configs/ holds no code.
LAYER = {"core": 0, "data": 1, "model": 1, "convert": 2, "train": 3, "eval": 3, "report": 4, "mix": 4, "cli": 5,
         "launch": 6}
KNOWN: set[tuple[str, str]] = set()  # (module, import) edges allowed against the rule: none


def _imports(path: Path, module: str) -> list[str]:
    import ast

    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            out.append(name)
            out += [f"{name}.{a.name}" for a in node.names]  # `from instructjax import train`
    return out


def test_no_module_imports_from_a_layer_above_or_beside_it():
    root = REPO / "instructjax"
    wrong = []
    for path in sorted(root.rglob("*.py")):
        module = ".".join(("instructjax", *path.relative_to(root).with_suffix("").parts)).removesuffix(".__init__")
        parts = module.split(".")
        if len(parts) < 3:
            continue
        for target in _imports(path, module):
            t = target.split(".")
            if t[0] != "instructjax" or len(t) < 2 or t[1] not in LAYER or t[1] == parts[1]:
                continue
            if LAYER[t[1]] >= LAYER[parts[1]] and (module, ".".join(t[:3])) not in KNOWN:
                wrong.append(f"{module} imports {target}")
    assert set(LAYER) == {p.name for p in root.iterdir() if p.is_dir() and any(p.rglob("*.py"))}
    assert not wrong, wrong


def test_the_data_layer_never_imports_jax():
    """Every data module but the seqio face (seqio itself imports jax) loads without jax: host batches are
    numpy, placing them on the mesh belongs to train."""
    import importlib.util

    root = REPO / "instructjax/data"
    names = sorted(".".join(p.relative_to(root).with_suffix("").parts) for p in root.rglob("*.py")
                   if p.relative_to(root).parts[0] != "seqio" and p.name != "__init__.py")
    if importlib.util.find_spec("apache_beam") is None:  # the `beam` extra is not installed: its one module needs it
        names.remove("tokenized.beam_prepare")
    code = ("import importlib, sys\n"
            f"for n in {names!r}: importlib.import_module('instructjax.data.' + n)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'flax', 'tensorflow', 'seqio'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(names) > 15 and proc.stdout.strip() == "[]"


# Inside data/, its stages in pipeline order (docs/architecture.md): a module imports from its own stage or below.
DATA_STAGES = {"schema": 0, "cache": 0, "verifiers": 0, "sources": 1, "encoding": 2, "selection": 3, "mosaic": 3, "blends": 4,
               "tokenized": 5, "seqio": 6, "binding": 7, "batches": 8}


def _modules() -> dict[str, Path]:
    root = REPO / "instructjax"
    return {".".join(("instructjax", *p.relative_to(root).with_suffix("").parts)).removesuffix(".__init__"): p
            for p in sorted(root.rglob("*.py"))}


def test_data_stages_import_only_from_their_own_stage_or_below():
    root = REPO / "instructjax" / "data"
    assert set(DATA_STAGES) == {p.stem for p in root.iterdir() if p.name not in ("__init__.py", "__pycache__")}
    wrong = []
    for module, path in _modules().items():
        parts = module.split(".")
        if parts[:2] != ["instructjax", "data"] or len(parts) < 3:
            continue
        for target in _imports(path, module):
            t = target.split(".")
            if t[:2] == ["instructjax", "data"] and len(t) > 2 and t[2] != parts[2] and t[2] in DATA_STAGES:
                if DATA_STAGES[t[2]] >= DATA_STAGES[parts[2]]:
                    wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_no_circle_of_imports_anywhere():
    """Imports inside functions count too: a circle broken only by importing late is still a circle."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        targets = set()
        for target in _imports(path, module):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != module and target != "instructjax":
                targets.add(target)
        graph[module] = targets
    circles, state = [], {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                circles.append(" -> ".join([*trail[trail.index(target):], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, circles
