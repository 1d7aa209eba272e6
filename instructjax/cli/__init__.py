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
    "instructjax.cli.quickstart",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="instructjax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow (via seqio) is chatty on import
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except InstructJaxError as e:
        print(f"instructjax: error: {e}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
