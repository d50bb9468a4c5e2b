import pathlib

import pytest

import snapshot
from conftest import Lying

BAD_NAMES = ["", ".", "..", "../x", "a/b", "/abs", "/", "x\0y", "\0", "a/", "../../etc"]


def test_constants_match_the_seed():
    assert snapshot.CH_CONFIG_FILE == "config.json"
    assert snapshot.CH_MEM_RANGES_FILE == "memory-ranges"
    assert snapshot.CH_STATE_FILE == "state.json"
    assert snapshot.ROOTFS_FILE_NAME == "rootfs.ext4"
    assert snapshot.ROOTFS_COW_NAME == "rootfs.cow"
    assert snapshot.ROOTFS_META_NAME == "rootfs.meta"


@pytest.mark.parametrize("base", ["/srv/snaps", pathlib.Path("/srv/snaps"), "/srv/snaps/"])
def test_paths(base):
    assert snapshot.dir_path(base, "vm1") == "/srv/snaps/vm1"
    assert snapshot.rootfs_path(base, "vm1") == "/srv/snaps/vm1/rootfs.ext4"
    assert snapshot.cow_path(base, "vm1") == "/srv/snaps/vm1/rootfs.cow"
    assert snapshot.meta_path(base, "vm1") == "/srv/snaps/vm1/rootfs.meta"
    for f in (snapshot.dir_path, snapshot.rootfs_path, snapshot.cow_path, snapshot.meta_path):
        assert type(f(base, "vm1")) is str


def test_names_that_are_one_component_are_accepted():
    for name in ["a", "...", ".hidden", "a b", "x\ny", "é", "a\\b", "-rf", "\udcff"]:
        assert snapshot.dir_path("/b", name) == "/b/" + name


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("fn", [snapshot.dir_path, snapshot.rootfs_path, snapshot.cow_path, snapshot.meta_path])
def test_bad_names_raise_value_error(fn, name):
    with pytest.raises(ValueError):
        fn("/b", name)


def test_non_str_name_is_a_type_error():
    with pytest.raises(TypeError):
        snapshot.dir_path("/b", b"vm1")
    with pytest.raises(TypeError):
        snapshot.dir_path("/b", None)


@pytest.mark.parametrize("value", ["..", ".", "", "a/b", "x\0y"])
@pytest.mark.parametrize("fn", [snapshot.dir_path, snapshot.rootfs_path, snapshot.cow_path, snapshot.meta_path])
def test_a_lying_str_subclass_cannot_pass_a_bad_name(fn, value):
    with pytest.raises(ValueError):
        fn("/b", Lying(value))


def test_a_good_name_in_a_str_subclass_is_used_as_its_real_text():
    assert snapshot.dir_path("/b", Lying("vm1")) == "/b/vm1"
    assert type(snapshot.dir_path("/b", Lying("vm1"))) is str


@pytest.mark.parametrize("base", [b"/srv/snaps", b"/srv/snaps/", pathlib.PurePosixPath("/srv/snaps")])
def test_bytes_base_gives_bytes_paths(base):
    expected = b"/srv/snaps/vm1" if isinstance(base, bytes) else "/srv/snaps/vm1"
    assert snapshot.dir_path(base, "vm1") == expected
    suffix = b"/rootfs.meta" if isinstance(base, bytes) else "/rootfs.meta"
    assert snapshot.meta_path(base, "vm1") == expected + suffix
    assert snapshot.dir_path(b"", "vm\udcff") == b"vm\xff"


def test_a_name_that_cannot_be_a_file_name_is_a_value_error():
    with pytest.raises(ValueError):
        snapshot.dir_path("/b", "\ud800")  # a surrogate that is no undecodable byte
