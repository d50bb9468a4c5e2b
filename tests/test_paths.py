import pathlib

import pytest

import snapshot

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
