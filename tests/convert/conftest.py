"""The family fixture of tests/convert/test_families*.py."""

import pytest
from helpers.families import FAMILIES, build_family


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(name, HF model, our model (scanned), our config, HF directory) of one family, built once per test file."""
    return build_family(request.param, tmp_path_factory.mktemp(request.param))
