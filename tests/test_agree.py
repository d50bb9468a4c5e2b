"""Differential tests: the compiled and pure-Python walkers agree on generated trees,
and both agree with an independent os.walk + lstat count."""
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import WALKERS, lstat_oracle
from snapshot._codes import ONE_FILE_SYSTEM, SHARED_EXTENTS, UNIQUE_INODES

if WALKERS["openat"] is None:
    pytest.skip("only one walker exists on this platform (the compiled one is built on Linux only)",
                allow_module_level=True)

names = st.binary(min_size=1, max_size=24).filter(
    lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b".."))

op = st.one_of(
    st.tuples(st.just("dir"), st.integers(0, 50), names),
    st.tuples(st.just("file"), st.integers(0, 50), names, st.integers(0, 1 << 31),
              st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(1, 9000)), max_size=3)),
    st.tuples(st.just("hardlink"), st.integers(0, 50), names, st.integers(0, 50)),
    st.tuples(st.just("symlink"), st.integers(0, 50), names, st.sampled_from(["file", "dir", "nowhere", "long"])),
    st.tuples(st.just("fifo"), st.integers(0, 50), names),
)


def build(root: bytes, ops) -> None:
    dirs, files = [root], []
    for o in ops:
        parent = dirs[o[1] % len(dirs)]
        path = os.path.join(parent, o[2])
        if os.path.lexists(path):
            continue
        kind = o[0]
        if kind == "dir":
            os.mkdir(path)
            dirs.append(path)
        elif kind == "file":
            with open(path, "wb") as f:
                f.truncate(o[3])
                for off, n in o[4]:
                    f.seek(off)
                    f.write(b"d" * n)
            files.append(path)
        elif kind == "hardlink" and files:
            os.link(files[o[3] % len(files)], path)
        elif kind == "symlink":
            target = {"file": files[0] if files else b"x", "dir": dirs[-1], "nowhere": b"/nonexistent/x",
                      "long": b"y" * 400}[o[3]]
            os.symlink(target, path)
        elif kind == "fifo":
            os.mkfifo(path)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, max_size=40))
def test_walkers_agree_on_generated_trees(tmp_path, ops):
    with tempfile.TemporaryDirectory(dir=tmp_path) as tmp:
        root = os.path.join(os.fsencode(tmp), b"snap")
        os.mkdir(root)
        build(root, ops)
        for flags in (0, UNIQUE_INODES, ONE_FILE_SYSTEM, UNIQUE_INODES | SHARED_EXTENTS):
            py = WALKERS["python"].walk([root], flags)
            for workers in (1, 2, 3, 4):  # threads sharing one tree give one thread's result
                assert WALKERS["openat"].walk([root], flags, workers) == py, (flags, workers)
        allocated, apparent, files, dirs = lstat_oracle(root)
        assert WALKERS["openat"].walk([root], 0)[0][0][:4] == (allocated, apparent, files, dirs)
        assert WALKERS["openat"].dir_size(tmp, "snap") == WALKERS["python"].dir_size(tmp, "snap") == allocated
        paths = [root, os.path.join(root, b"missing")] + [os.path.join(root, n) for n in os.listdir(root)]
        many = [WALKERS[w].walk(paths, 0, 2) for w in ("openat", "python")]
        assert many[0] == many[1]
