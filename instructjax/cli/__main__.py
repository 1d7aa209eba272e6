"""`python -m instructjax.cli ...`: the `instructjax` command."""

import sys

from instructjax.cli import main

sys.exit(main())
