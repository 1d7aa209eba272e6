"""The help names what the code can do: every objective `objective.loss` takes (the trainer's registry,
train/objectives OBJECTIVES), in `instructjax --help` and in `instructjax train --help`."""

import re

import pytest

from instructjax import cli
from instructjax.train.objectives import OBJECTIVES


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"]])
def test_the_help_names_every_registered_objective(capsys, argv):
    with pytest.raises(SystemExit):
        cli.main(argv)
    out = " ".join(capsys.readouterr().out.lower().split())
    missing = [name for name in OBJECTIVES if not re.search(rf"\b{re.escape(name)}\b", out)]
    assert missing == [], out
