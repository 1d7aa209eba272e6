"""The one `instructjax` command. Each area owns its subcommands in a `commands` module.

A command module exposes `register(subparsers)`, which adds its parsers and sets
`func=handler(args) -> int | None` on each. User errors (`InstructJaxError`) print as one line
on stderr and exit 2; nothing else is caught.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from instructjax.core.errors import InstructJaxError

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
    "instructjax.cli.quickstart",
]


IMPORT_HELP = "import a module (name or .py path) first: its tasks, sources, seqio Tasks are then known"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instructjax", description=__doc__.splitlines()[0])
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
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow (via seqio) is chatty on import
    args = build_parser().parse_args(argv)
    try:
        from instructjax.core.config import import_modules

        import_modules([*args.imports_first, *getattr(args, "imports", [])])
        code = args.func(args)
    except InstructJaxError as e:
        print(f"instructjax: error: {e}", file=sys.stderr, flush=True)
        if getattr(e, "host_lost", False):  # JAX's runtime would wait for the lost host at exit, then abort
            sys.stdout.flush()
            os._exit(2)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
