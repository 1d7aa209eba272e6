"""`python -m instructjax.cli ...`: the `instructjax` command."""

from instructjax.cli import run

run()
