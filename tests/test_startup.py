"""Start-up: `import snapshot` and snapshot-du load only what they use.

Time itself is measured by benchmarks/startup.py (timings are no unit test); what
is tested here is the cause, exactly: which modules an import drags in.  Each check
runs in a fresh interpreter, since this one has imported everything already.
"""
import ast
import subprocess
import sys

import pytest

import snapshot

# Standard modules that cost more start-up time than all of `import snapshot` may
# (dataclasses pulls in inspect, ast, dis, tokenize; secrets pulls in hmac and hashlib).
HEAVY = {"typing", "dataclasses", "inspect", "re", "secrets", "hashlib", "argparse", "json", "ctypes",
         "logging", "base64", "enum"}


def _loaded_after(code: str) -> set:
    """The modules loaded by *code* that a bare interpreter has not loaded."""
    probe = ("import sys; before = set(sys.modules)\n{}\nnew = sorted(set(sys.modules) - before)\n"
             "print(repr(new), file=sys.__stdout__)")
    out = subprocess.run([sys.executable, "-c", probe.format(code)], check=True, capture_output=True,
                         text=True).stdout
    return set(ast.literal_eval(out))


def test_import_snapshot_loads_no_heavy_module():
    """It loaded typing, dataclasses, inspect, re, secrets and hashlib: 22-33 ms here."""
    loaded = _loaded_after("import snapshot")
    assert loaded & HEAVY == set()
    # The extensions too wait for a call: a script that only builds paths does not load them.
    assert {"snapshot._du", "snapshot._blocks", "snapshot._meta"} & loaded == set()


def test_sizing_loads_the_walker_only():
    loaded = _loaded_after("import snapshot; snapshot.dir_sizes('.', [])")
    assert "snapshot._du" in loaded or not sys.platform.startswith("linux")
    assert loaded & HEAVY == set()


def test_the_first_call_of_usage_imports_nothing():
    """Resolving snapshot.usage loads what its call needs (a Usage is a dataclass), so that its
    first call costs what the later ones do: timed calls are the walk's, not imports'."""
    loaded = _loaded_after("import snapshot, sys; usage = snapshot.usage; ready = set(sys.modules); "
                           "usage('.'); assert set(sys.modules) == ready, set(sys.modules) - ready")
    assert "snapshot._usage" in loaded


def test_snapshot_du_loads_no_module_it_does_not_need():
    """snapshot-du needs argparse (and its console script imports re); not the rest.
    (snapshot-sparsify is left out: it makes a Sparsified, a dataclass, every run.)"""
    loaded = _loaded_after("import snapshot.cli")
    assert loaded & HEAVY <= {"argparse", "re", "enum"}


def test_snapshot_du_on_paths_makes_no_dataclass_and_no_json(tmp_path):
    """A PATH run, the kind scripts make on small directories, imports no more."""
    (tmp_path / "f").write_bytes(b"x" * 5000)
    code = (f"from snapshot import cli; import sys; sys.stdout = open({str(tmp_path / 'out')!r}, 'w'); "
            f"assert cli.main([{str(tmp_path)!r}]) == 0")
    loaded = _loaded_after(code)
    assert loaded & HEAVY <= {"argparse", "re", "enum"}
    assert (tmp_path / "out").read_text().endswith(f"\t{tmp_path}\n")


def test_lazy_names_are_the_modules_own():
    """Every public name, however loaded, is the object its module defines."""
    from snapshot import _dirs, _meta, _size, _sparse, _usage
    for name in snapshot.__all__:
        obj = getattr(snapshot, name)
        homes = [m for m in (snapshot, _dirs, _meta, _size, _sparse, _usage) if m is not snapshot and name in vars(m)]
        for m in homes:
            assert vars(m)[name] is obj, name
    assert set(snapshot.__all__) <= set(dir(snapshot))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        snapshot.nope


def test_from_snapshot_import_star_gives_every_public_name():
    ns: dict = {}
    exec("from snapshot import *", ns)
    assert set(snapshot.__all__) <= set(ns)
    import dataclasses
    assert dataclasses.is_dataclass(ns["Usage"]) and dataclasses.is_dataclass(ns["BlockUsage"])


def test_the_cli_json_fields_are_usage_fields():
    """snapshot-du's JSON is built from _size.USAGE_FIELDS without making a Usage."""
    import dataclasses

    from snapshot import _size
    assert _size.USAGE_FIELDS == tuple(f.name for f in dataclasses.fields(snapshot.Usage))
