"""The tests mirror the package: every test file in an area folder (instructjax/'s areas, plus faults/, meta/,
launch/ and benchmarks/), its basename unique across folders (pytest's default import mode puts each test's
folder on sys.path), and no test module importing another: what tests share lives in tests/helpers/ or in
tests/conftest.py."""

import ast

from helpers import REPO, TESTS

AREAS = {"core", "data", "model", "convert", "train", "eval", "report", "mix", "cli",  # instructjax/'s areas
         "launch", "benchmarks",  # the repository's launch/ scripts and benchmarks/
         "faults", "meta"}  # the fault suites; the docs, layers, layout and wheel
NOT_TESTS = {"helpers", "assets", "reference"}  # shared code, test data, upstream code verbatim


def _test_files() -> list:
    return sorted(p for p in TESTS.rglob("test_*.py") if not {"reference", "assets"} & set(p.relative_to(TESTS).parts))


def test_every_test_file_lives_in_an_area_folder():
    misplaced = [str(p.relative_to(TESTS)) for p in _test_files()
                 if len(p.relative_to(TESTS).parts) != 2 or p.parent.name not in AREAS]
    assert misplaced == []
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders <= AREAS | NOT_TESTS, folders - AREAS - NOT_TESTS
    assert {a for a in AREAS if a not in ("launch", "benchmarks", "faults", "meta")} <= {
        p.name for p in (REPO / "instructjax").iterdir() if (p / "__init__.py").exists()}


def test_basenames_are_unique():
    seen: dict[str, str] = {}
    for p in _test_files():
        assert p.name not in seen, f"{p.relative_to(TESTS)} and {seen[p.name]}"
        seen[p.name] = str(p.relative_to(TESTS))


def _imported(path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_test_module_imports_another():
    modules = {p.stem for p in _test_files()} | {"conftest"}
    shared = sorted((TESTS / "helpers").glob("*.py")) + [TESTS / "conftest.py"]
    offenders = {str(p.relative_to(TESTS)): sorted(_imported(p) & modules) for p in [*_test_files(), *shared]}
    assert {k: v for k, v in offenders.items() if v} == {}
    # `import test_x` / `from test_x import y` by a name that is not one of ours counts too
    strays = {str(p.relative_to(TESTS)): sorted(n for n in _imported(p) if n.startswith("test_"))
              for p in [*_test_files(), *shared]}
    assert {k: v for k, v in strays.items() if v} == {}
