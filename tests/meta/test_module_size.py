"""The house rule on module size: no Python module of the package is over `LIMIT` lines (a longer one is split
along a line a reader expects, its public names still importable from where they were)."""

from helpers import REPO

LIMIT = 400


def test_no_module_of_the_package_is_over_the_limit():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in (REPO / "instructjax").rglob("*.py")}
    assert len(sizes) > 100  # the package was found
    assert {path: n for path, n in sorted(sizes.items()) if n > LIMIT} == {}
