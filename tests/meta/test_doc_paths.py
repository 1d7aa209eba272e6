"""Docs that cannot drift: every module path and file of ours that the docs and docstrings name exists.

The text read: README.md, docs/*.md, instructjax/configs/README.md, and every docstring (through `ast`) and
comment (through `tokenize`) of instructjax/**/*.py. benchmarks/RESULTS.md is a log of what was true on a date,
and is not read. The references checked:
- a path with a folder and a file's extension (`core/config.py`, `docs/runs.md`, `configs/quickstart.yaml`),
  or a folder (`data/sources/`, `tests/assets/`).
  It is ours only if its first folder is: one of the repository's (configs, launch, benchmarks, tests, docs,
  instructjax; configs/ and launch/ are links into the package), read from the root; one of the package's
  areas (core, data, model, ...), read from instructjax/; an area's subpackage written without its area
  (`sources/rows.py`, `kernels/splash.py`), read from that area; a config folder (`seed004_tulu/x.yaml`),
  read from configs/. Any other path (`runs/mine.yaml`, `RUN_DIR/metrics.jsonl`, `fastchat/train/train.py`, a
  URL, `gs://...`) is someone else's, and so is a glob or placeholder (`configs/seed002_*.yaml`,
  `<run>/x.json`); `N` after a digit stands for a number (`report/seed00N.yaml`: some such file must exist);
- `tests/test_x.py::name`: that file defines `name` (a test function or class, or a class's test);
- a dotted module path `instructjax.a.b`, optionally followed by attributes: the longest prefix that is a
  module or package exists, and its next part is a top-level def, class, assignment or import of that
  module (read with `ast`, nothing imported), and a part after a class is defined in its body. Written
  from an area or subpackage (`data.binding.resolve`, `core.sharding.resolve_mesh`, `sources.SOURCES`), the
  same, read from there; a package's next part may also be a top-level name of one of its modules
  (`mosaic.mosaic_epoch` for mosaic/augment.py's); `data.seq_len` and the like are config keys (a field of
  a `...Section`, `...Config` or `...Spec` class), not modules. `seqio.X` is seqio's own;
- in a docstring or comment, a bare file name (`preemption.py`): a file of that name beside the module, else
  anywhere in instructjax/, benchmarks/ or tests/ (`gpu_mfu.py`), else one of another project's, listed.
The test fails listing each reference that does not exist as `file:line: reference`."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "instructjax"

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), PACKAGE / "configs" / "README.md"]
EXTENSIONS = {"py", "md", "yaml", "yml", "json", "jsonl", "toml", "txt", "cfg", "sh"}
# A path's first folder -> where it is read from. A static list, so that a reference to an area that was
# removed or renamed fails here instead of being taken for someone else's path.
ROOT_FOLDERS = {"configs", "launch", "benchmarks", "tests", "docs", "instructjax"}
AREAS = {"core", "data", "model", "convert", "train", "eval", "report", "cli"}
SUBPACKAGES = {
    **dict.fromkeys(
        ("sources", "encoding", "blends", "tokenized", "mosaic", "selection", "seqio", "batches"), "data"
    ),
    "kernels": "model",
    **dict.fromkeys(("tulu", "tasks", "offline_tasks"), "eval"),
}
CONFIG_FOLDER = re.compile(r"seed\d{3}_\w+")

# Paths of ours in form only: each names a file of another project (or a reader's own), with why.
UPSTREAM = [
    (
        re.compile(r"eval/\w+/run_eval\.py"),
        "open-instruct's per-task eval scripts (eval/mmlu/run_eval.py, ...)",
    ),
    (re.compile(r"eval/templates\.py"), "open-instruct's chat-format templates for its eval scripts"),
    (
        re.compile(r"data/[\w.-]+\.jsonl?"),
        "a reader's own data file (data/my_alpaca.jsonl); instructjax/data holds only Python at its top",
    ),
    (re.compile(r"configs/gpu/.*"), "MaxText's GPU configs (configs/gpu/models/llama2_7b.yml)"),
    (re.compile(r"eval/pairwise_outputs\.jsonl"), "a file in a run directory (eval/judged.py OTHER_OUTPUTS)"),
]
UPSTREAM_FILES = {
    "param_mapping.py": "MaxText's checkpoint conversion",
    "split_long_conversation.py": "FastChat's ShareGPT cleaning",
    "split_sharegpt_conversations.py": "FastChat's ShareGPT cleaning",
    "submit_eval_jobs.py": "open-instruct's eval launcher",
    "train_compile.py": "MaxText's ahead-of-time compile",
    "program.py": "the file the HumanEval check writes for each completion",
}
NOT_MODULES = {
    "instructjax.manifest": "the file that seals a checkpoint step (core/integrity.py MANIFEST)",
    "instructjax.sbatch": "the sbatch script launch/gpu.py writes",
    "model.dtyp": "the unknown key of an example error message",
}

PATH = re.compile(r"(?<![\w./~$:{<*@-])((?:[\w.-]+/)+[\w.-]*\w)(?:::(\w+(?:::\w+)?))?")
DOTTED = re.compile(r"(?<![\w./~$:{<*@-])instructjax(?:\.\w+)+")
RELATIVE = re.compile(
    rf"(?<![\w./~$:{{<*@-])(?:{'|'.join(sorted(AREAS | set(SUBPACKAGES) - {'seqio'}))})(?:\.\w+)+"
)
FOLDER = re.compile(r"(?<![\w./~$:{<*@-])(?:[\w.-]+/)+(?![\w*<{])")
BARE = re.compile(r"(?<![\w./~$:{<*@-])[A-Za-z_]\w*\.py\b(?![/\w])")


def python_text(path: Path) -> Iterator[tuple[int, str]]:
    """(line, text) of each docstring line and comment of a Python file."""
    source = path.read_text()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                for offset, line in enumerate(first.value.value.splitlines()):
                    yield first.lineno + offset, line
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string


def texts() -> Iterator[tuple[Path, int, str]]:
    for page in PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            yield page, number, line
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in python_text(path):
            yield path, number, line


def exists(path: Path) -> bool:
    """The file exists; `N` after a digit in its name stands for a number."""
    if re.search(r"\dN", path.name):
        return any(path.parent.glob(re.sub(r"(?<=\d)N", "[0-9]", path.name)))
    return path.exists()


def where(reference: str) -> Path | None:
    """Where a path reference is read from, or None when it is not one of ours."""
    first = reference.split("/")[0]
    folder = reference.endswith("/")
    if (not folder and reference.rsplit(".", 1)[-1] not in EXTENSIONS) or any(
        rule.fullmatch(reference) for rule, _ in UPSTREAM
    ):
        return None
    if first in ROOT_FOLDERS:
        return REPO / reference
    if first in AREAS:
        return PACKAGE / reference
    if first in SUBPACKAGES:
        return PACKAGE / SUBPACKAGES[first] / reference
    if CONFIG_FOLDER.fullmatch(first):
        return PACKAGE / "configs" / reference
    return None


@cache
def top_level(module: Path) -> dict[str, ast.AST]:
    """The names a module defines at its top: defs, classes, assignments, imports."""
    names: dict[str, ast.AST] = {}
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        names[name.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names[(alias.asname or alias.name).split(".")[0]] = node
    return names


def has_member(node: ast.AST, name: str) -> bool:
    """A class defines `name` in its body (anything else is not looked into)."""
    if not isinstance(node, ast.ClassDef):
        return True
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and item.name == name:
            return True
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.target.id == name:
            return True
        if isinstance(item, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in item.targets
        ):
            return True
    return False


def module_file(parts: list[str]) -> Path | None:
    base = REPO.joinpath(*parts)
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    return None


def dotted_exists(reference: str) -> bool:
    parts = reference.split(".")
    for cut in range(len(parts), 0, -1):
        module = module_file(parts[:cut])
        if module is None:
            continue
        rest = parts[cut:]
        if not rest:
            return True
        node = top_level(module).get(rest[0])
        if node is None and module.name == "__init__.py":  # a package's name for one of its modules' names
            defined = [top_level(m).get(rest[0]) for m in sorted(module.parent.glob("*.py"))]
            node = next((d for d in defined if d and not isinstance(d, (ast.Import, ast.ImportFrom))), None)
        return node is not None and (len(rest) == 1 or has_member(node, rest[1]))
    return False


@cache
def config_keys() -> frozenset[str]:
    """The fields of every config section and spec (`...Section`, `...Config`, `...Spec` classes):
    `data.seq_len` and `selection.encoder` are keys, not modules."""
    keys = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and node.name.endswith(("Section", "Config", "Spec")):
                keys |= {
                    i.target.id
                    for i in node.body
                    if isinstance(i, ast.AnnAssign) and isinstance(i.target, ast.Name)
                }
    return frozenset(keys)


def relative_exists(reference: str) -> bool:
    area, *parts = reference.split(".")
    base = ["instructjax", SUBPACKAGES[area], area] if area in SUBPACKAGES else ["instructjax", area]
    return dotted_exists(".".join(base + parts)) or parts[0] in config_keys() or parts[0] in EXTENSIONS


def defines_test(path: Path, name: str) -> bool:
    names = top_level(path)
    head, _, member = name.partition("::")
    return head in names and (not member or has_member(names[head], member))


@cache
def our_file_names() -> frozenset[str]:
    return frozenset(
        p.name for folder in ("instructjax", "benchmarks", "tests") for p in (REPO / folder).rglob("*.py")
    )


def bare_exists(name: str, beside: Path) -> bool:
    """A bare file name: beside the module, else any file of ours of that name (`gpu_mfu.py`, a benchmark)."""
    return (beside / name).exists() or name in our_file_names()


def missing_in(line: str, beside: Path | None = None) -> Iterator[str]:
    """The references of ours in a line of text that name nothing that exists (`beside`: the folder of the
    module whose docstring or comment it is, where a bare file name is read)."""
    for match in PATH.finditer(line):
        reference, test = match.group(1), match.group(2)
        if line[match.end() : match.end() + 1] in ("*", "<", "{", "["):
            continue  # a glob or a placeholder
        path = where(reference)
        if path is None:
            continue
        if not exists(path):
            yield reference
        elif test and not defines_test(path, test):
            yield f"{reference}::{test}"
    for match in FOLDER.finditer(line):
        path = where(match.group(0))
        if path is not None and not path.is_dir():
            yield match.group(0)
    for match in DOTTED.finditer(line):
        reference = match.group(0)
        if line[match.end() : match.end() + 1] in ("*", "<", "{"):
            continue
        if reference not in NOT_MODULES and not dotted_exists(reference):
            yield reference
    for match in RELATIVE.finditer(line):
        reference = match.group(0)
        if line[match.end() : match.end() + 1] in ("*", "<", "{") or reference in NOT_MODULES:
            continue
        if not relative_exists(reference):
            yield reference
    if beside is not None:
        for match in BARE.finditer(line):
            if match.group(0) not in UPSTREAM_FILES and not bare_exists(match.group(0), beside):
                yield match.group(0)


def stale_references() -> list[str]:
    found = []
    for path, number, line in texts():
        name = str(path.relative_to(REPO))
        for reference in missing_in(line, path.parent if path.suffix == ".py" else None):
            found.append(f"{name}:{number}: {reference}")
    return found


def test_every_path_and_module_the_docs_name_exists():
    stale = stale_references()
    assert not stale, f"{len(stale)} references to nothing that exists:\n" + "\n".join(stale)


def test_the_rules_tell_ours_from_others():
    assert list(missing_in("see `core/config.py` and instructjax/core/config.py")) == []
    assert list(missing_in("`blends/nowhere.py`, train/gone.py, instructjax.core.gone")) == [
        "blends/nowhere.py",
        "train/gone.py",
        "instructjax.core.gone",
    ]
    assert list(missing_in("instructjax.core.config.no_such_name")) == [
        "instructjax.core.config.no_such_name"
    ]
    assert list(missing_in("tests/meta/test_doc_paths.py::test_no_such_test")) == [
        "tests/meta/test_doc_paths.py::test_no_such_test"
    ]
    assert list(missing_in("tests/meta/test_doc_paths.py::test_the_rules_tell_ours_from_others")) == []
    assert list(missing_in("`data/sources/`, `tests/nowhere/`, runs/x/")) == ["tests/nowhere/"]
    assert list(missing_in("`data.pipeline` (`data.batches.pipeline`), data.seq_len, sources.SOURCES")) == [
        "data.pipeline"
    ]
    assert list(missing_in("(preemption.py), gpu_mfu.py, gone.py, train_compile.py", PACKAGE / "train")) == [
        "gone.py"
    ]
    others = (
        "https://github.com/allenai/open-instruct/blob/main/eval/mmlu/run_eval.py runs/mine.yaml "
        "RUN_DIR/eval/results.json gs://b/configs/x.yaml data/my_alpaca.jsonl configs/seed002_*.yaml "
        "fastchat/train/train.py ~/core/x.py STEP/instructjax.manifest"
    )
    assert list(missing_in(others)) == []
