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


PUBLIC = {"BlockUsage", "Sparsified", "data_ranges", "scan_blocks", "sparsify",
          "BACKEND", "CH_CONFIG_FILE", "CH_MEM_RANGES_FILE", "CH_STATE_FILE", "MetaError", "ROOTFS_COW_NAME",
          "ROOTFS_FILE_NAME", "ROOTFS_META_NAME", "RootfsMeta", "Usage", "cow_path", "dir_path", "dir_size",
          "dir_sizes", "ensure_dir", "meta_path", "read_meta", "remove", "rootfs_path", "usage", "write_meta",
          "__version__"}


def test_public_api_is_small_and_complete():
    for name in snapshot.__all__:
        assert hasattr(snapshot, name), name
    assert set(snapshot.__all__) == PUBLIC  # complete, and nothing added by accident
    # Small: nothing public beyond __all__ but the command modules (snapshot-du, snapshot-sparsify)
    # and the prometheus_client collector, imported only on demand.
    assert {n for n in dir(snapshot) if not n.startswith("_")} - PUBLIC <= {"cli", "cli_sparsify", "prometheus"}
    assert issubclass(snapshot.MetaError, ValueError)


def test_typing_files_are_shipped():
    import importlib.resources as r
    files = {p.name for p in r.files("snapshot").iterdir()}
    assert {"py.typed", "_du.pyi"} <= files


def test_every_public_function_and_class_documents_its_contract():
    """help() shows a contract for each (9 of 14 had none)."""
    import inspect
    missing = []
    for name in snapshot.__all__:
        obj = getattr(snapshot, name)
        if not callable(obj):
            continue
        doc = vars(obj).get("__doc__") if inspect.isclass(obj) else obj.__doc__
        if not doc or len(doc.strip()) < 20:
            missing.append(name)
    assert missing == []


def test_readme_signatures_match_the_code():
    """Each function's line in the README's API block shows its real parameters,
    the keyword-only * included."""
    import inspect
    import pathlib
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text("utf-8")
    api = readme.split("## API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    checked = 0
    for name in snapshot.__all__:
        obj = getattr(snapshot, name)
        if not inspect.isfunction(obj):
            continue
        params = inspect.signature(obj).parameters.values()
        shown = [line for line in api.splitlines() if f"snapshot.{name}(" in line]
        assert shown, f"{name} is not in the README's API block"
        text = shown[0].split(f"snapshot.{name}(", 1)[1]
        if any(p.kind is p.KEYWORD_ONLY for p in params):
            assert ", *," in text, (name, text)
        for p in params:
            if p.kind is p.KEYWORD_ONLY:
                assert p.name in text, (name, p.name)
        checked += 1
    assert checked >= 10


# What help() must say about each field: its name, and words that explain it.
FIELD_WORDS = {
    "Usage": {"allocated": "st_blocks", "apparent": "st_size", "files": "directories", "dirs": "root",
              "shared": "FIEMAP_EXTENT_SHARED", "exclusive": "allocated - shared",
              "shared_physical": "once", "unmapped_files": "lease"},
    "BlockUsage": {"files": "regular", "allocated": "st_blocks", "data": "non-zero", "zero": "sparsify"},
    "Sparsified": {"files": "regular", "punched": "punch", "allocated_before": "before",
                   "allocated_after": "dry_run"},
}


@pytest.mark.parametrize("cls", sorted(FIELD_WORDS))
def test_help_documents_every_field(cls):
    """help() on Usage, BlockUsage and Sparsified gave one line: what zero, data,
    shared_physical and unmapped_files mean was only in the README."""
    import dataclasses
    import pydoc
    obj = getattr(snapshot, cls)
    text = pydoc.render_doc(obj, renderer=pydoc.plaintext)
    fields = [f.name for f in dataclasses.fields(obj)]
    assert fields == list(FIELD_WORDS[cls])
    doc = obj.__doc__
    for name, word in FIELD_WORDS[cls].items():
        lines = [line.strip() for line in doc.splitlines() if line.strip().startswith(f"{name}:")]
        assert len(lines) == 1, name  # one entry per field, "name: what it is"
        entry = doc.split(f"{name}:", 1)[1].split("\n\n", 1)[0]
        assert word in entry and len(entry.split()) >= 5, (name, entry)
    for name, word in FIELD_WORDS[cls].items():  # and help() shows it
        assert f"{name}:" in text and word in text, name
