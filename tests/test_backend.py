import sys

import pytest

import snapshot
from snapshot import _size


def test_compiled_walker_is_used_on_linux():
    if not sys.platform.startswith("linux"):
        pytest.skip("the compiled walker is built on Linux only")
    from snapshot import _du
    assert snapshot.BACKEND == "openat"
    assert _size._impl is _du


def test_public_api_is_small_and_complete():
    for name in snapshot.__all__:
        assert hasattr(snapshot, name), name
    assert issubclass(snapshot.MetaError, ValueError)


def test_typing_files_are_shipped():
    import importlib.resources as r
    files = {p.name for p in r.files("snapshot").iterdir()}
    assert {"py.typed", "_du.pyi"} <= files
