import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fleet import make_fleet  # noqa: E402


@pytest.fixture(scope="session")
def fleet(tmp_path_factory):
    """(base, names): the 2,000-snapshot fleet, made once per run."""
    base = tmp_path_factory.mktemp("fleet")
    return str(base), make_fleet(base)


@pytest.fixture(scope="session")
def big_tree():
    """A large real tree: /usr (about 150,000 entries here)."""
    if not os.path.isdir("/usr"):
        pytest.skip("no /usr on this machine")
    return "/", "usr"
