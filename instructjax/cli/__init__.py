"""The one `instructjax` command. Each area owns its subcommands in a module of this package (`cli/data.py`,
`cli/train.py`, ...: `COMMAND_MODULES`).

A command module exposes `register(subparsers)`, which adds its parsers and sets
`func=handler(args) -> int | None` on each. User errors (`InstructJaxError`) print as one line
on stderr and exit 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import sys

from instructjax.core.config import load_config
from instructjax.core.context import Context, current
from instructjax.core.errors import InstructJaxError
from instructjax.core.stopping import EXIT_PREEMPTED, Stopped
from instructjax.core.user_modules import import_modules
from instructjax.eval.config import eval_section

# Command modules, in the order their subcommands appear in --help.
COMMAND_MODULES = [
    "instructjax.cli.data",
    "instructjax.cli.convert",
    "instructjax.cli.eval",
    "instructjax.cli.train",
    "instructjax.cli.plan",
    "instructjax.cli.experiments",
    "instructjax.cli.sweep",
    "instructjax.cli.report",
    "instructjax.cli.mix",
    "instructjax.cli.quickstart",
]


IMPORT_HELP = "import a module (name or .py path) first: its tasks, sources, seqio Tasks are then known"


def add_on_bad_row(parser: argparse.ArgumentParser) -> None:
    """`--on-bad-row` for a command that reads a run's data (the config's `data.on_bad_row`)."""
    parser.add_argument("--on-bad-row", choices=["error", "skip"],
                        help="a malformed row of any task: error (stop with one line naming file and row; the "
                             "default) or skip (count it); the config's data.on_bad_row")  # fmt: skip


def on_bad_row_overrides(args) -> list[str]:
    """The config overrides `--on-bad-row` stands for."""
    return [f"data.on_bad_row={args.on_bad_row}"] if getattr(args, "on_bad_row", None) else []


def load_run_config(path, overrides: list[str] | None = None):
    """A run config as every command reads it: `core.config.load_config`, and its `eval:` block checked
    (`eval.config.eval_section`), so a wrong key there is one line before any work too."""
    config = load_config(path, overrides)
    eval_section(config.eval)
    return config


DESCRIPTION = """Instruction tuning in JAX, on TPUs, GPUs or a CPU: read and mix instruction data, train (SFT;
DPO, dpo_norm, SimPO, ORPO on preference pairs; GRPO, RL with verifiable rewards; LoRA/QLoRA), export to Hugging
Face, evaluate, and put the papers' tables beside your runs."""

START_HERE = """start here:
  instructjax quickstart                                the whole job on built-in data and a tiny model (minutes, CPU)
  instructjax data stats --config quickstart            what a config trains on (a shipped config by name, or a file)
  instructjax plan --config CONFIG --topology v4-8      memory, fit and steps before you pay for a slice
  instructjax train --config CONFIG [key=value ...]     Ctrl-C saves the step in flight; --resume continues
  instructjax export --checkpoint RUN_DIR --out HF_DIR  a Hugging Face model directory
  instructjax eval --model HF_DIR --tasks TASKS         lm-evaluation-harness, or a paper's suite (--suite)

`instructjax COMMAND --help` says more about each command. Paths may be local or gs://."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instructjax", description=DESCRIPTION, epilog=START_HERE,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--import", dest="imports_first", action="append", default=[], metavar="MODULE",
                        help=IMPORT_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    for command in _leaf_parsers(sub):  # `--import` on every command too
        command.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                             help=IMPORT_HELP)
    return parser


def _leaf_parsers(sub) -> list[argparse.ArgumentParser]:
    leaves = []
    for parser in dict.fromkeys(sub.choices.values()):
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        leaves += _leaf_parsers(nested[0]) if nested else [parser]
    return leaves


def main(argv: list[str] | None = None) -> int:
    from instructjax.core import progress
    from instructjax.core.libtpu import quiet_without_tpu

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow (via seqio) is chatty on import
    quiet_without_tpu()  # libtpu is installed everywhere; without TPU chips it must not look for a TPU VM
    progress.quiet_libraries()  # off a terminal: the libraries' own bars off (ours print plain lines)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax's INFO lines (through absl); its warnings stay
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]  # key=value after a flag (`--resume max_steps=50`) too
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    try:
        with Context(parent=current()):  # the command's own: it reads what the caller registered, writes its own
            import_modules([*args.imports_first, *getattr(args, "imports", [])])
            code = args.func(args)
    except Stopped as e:  # a signal asked the work to stop, and it did at a safe point: what it did is kept
        print(f"instructjax: {e}", file=sys.stderr, flush=True)
        return EXIT_PREEMPTED
    except InstructJaxError as e:
        print(f"instructjax: error: {e}", file=sys.stderr, flush=True)
        if getattr(e, "host_lost", False):  # JAX's runtime would wait for the lost host at exit, then abort
            sys.stdout.flush()
            getattr(e, "before_exit", lambda: None)()
            os._exit(2)
        return 2
    return int(code or 0)


def run() -> None:
    """The `instructjax` command: `main`, then exit. What is still alive is frozen out of the garbage collector
    first (`gc.freeze`): the interpreter's last collections would walk every object of a large run (0.2-0.3 s
    after `data prepare` of 20K conversations), and freed at exit they are garbage no one sees."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    run()
