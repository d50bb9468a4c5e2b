"""dir_size, dir_sizes and usage, against both walkers (the `walker` fixture)."""
import os
import socket
import subprocess

import pytest

import snapshot
from conftest import as_nobody, lstat_oracle, mount_tmpfs

pytestmark = pytest.mark.usefixtures("walker")

BLOCK = 4096


def write_at(path, offset, data, size=None):
    with open(path, "wb") as f:
        if size is not None:
            f.truncate(size)
        f.seek(offset)
        f.write(data)


def fs_block(path):
    return os.statvfs(path).f_bsize


def test_exact_sizes_of_a_controlled_snapshot(tmp_path):
    """Allocation we control: empty files, pure holes, fallocate, a few written blocks."""
    d = tmp_path / "vm"
    d.mkdir()
    bs = fs_block(tmp_path)
    (d / "config.json").write_bytes(b"")                      # 0 blocks
    write_at(d / "memory-ranges", 0, b"", size=4 << 30)        # 4 GiB hole: 0 blocks
    write_at(d / "rootfs.cow", 1 << 30, b"x" * 8192, size=4 << 30)  # 8 KiB written at 1 GiB
    fd = os.open(d / "rootfs.ext4", os.O_CREAT | os.O_WRONLY)
    os.posix_fallocate(fd, 0, 64 * 1024)                      # 64 KiB reserved
    os.close(fd)
    expected = -(-8192 // bs) * bs + 64 * 1024
    assert snapshot.dir_size(tmp_path, "vm") == expected
    u = snapshot.usage(d)
    assert (u.allocated, u.apparent, u.files, u.dirs) == (expected, (8 << 30) + 64 * 1024, 4, 1)
    assert u.shared is u.exclusive is u.shared_physical is None


def test_matches_an_independent_lstat_count(tmp_path):
    d = tmp_path / "vm"
    (d / "a" / "b" / "c").mkdir(parents=True)
    (d / "empty").mkdir()
    for i, p in enumerate([d / "f1", d / "a" / "f2", d / "a" / "b" / "c" / "f3"]):
        p.write_bytes(os.urandom(1000 * (i + 1) ** 3))
    os.symlink("x" * 300, d / "long-symlink")  # a slow symlink has blocks of its own on ext4
    os.symlink("f1", d / "short-symlink")
    os.symlink(d / "a", d / "dirlink")
    os.mkfifo(d / "fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "sock"))
    s.close()
    os.link(d / "f1", d / "a" / "hardlink")
    alloc, app, files, dirs = lstat_oracle(d)
    assert snapshot.dir_size(tmp_path, "vm") == alloc
    u = snapshot.usage(d)
    assert (u.allocated, u.apparent, u.files, u.dirs) == (alloc, app, files, dirs)
    assert dirs == 5 and files == 9


def test_hard_links_counted_per_link_or_once(tmp_path):
    d = tmp_path / "vm"
    d.mkdir()
    (d / "f").write_bytes(os.urandom(BLOCK * 3))
    for i in range(4):
        os.link(d / "f", d / f"l{i}")
    one = os.lstat(d / "f").st_blocks * 512
    assert snapshot.dir_size(tmp_path, "vm") == 5 * one  # the seed counts each link
    assert snapshot.usage(d).allocated == 5 * one
    u = snapshot.usage(d, count_links=False)
    assert (u.allocated, u.apparent, u.files) == (one, BLOCK * 3, 1)


def test_directories_add_nothing(tmp_path):
    d = tmp_path / "vm"
    for i in range(50):
        (d / f"d{i}" / "x").mkdir(parents=True)
    assert snapshot.dir_size(tmp_path, "vm") == 0
    u = snapshot.usage(d)
    assert (u.allocated, u.apparent, u.files, u.dirs) == (0, 0, 0, 101)


def test_symlinks_are_not_followed(tmp_path):
    big = tmp_path / "big"
    big.mkdir()
    (big / "data").write_bytes(os.urandom(1 << 20))
    d = tmp_path / "vm"
    d.mkdir()
    os.symlink(big, d / "to-dir")
    os.symlink(big / "data", d / "to-file")
    os.symlink(tmp_path / "nowhere", d / "dangling")
    expected = sum(os.lstat(d / n).st_blocks * 512 for n in os.listdir(d))
    assert snapshot.dir_size(tmp_path, "vm") == expected < (1 << 20)


def test_snapshot_that_is_a_symlink_counts_the_link_itself(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "data").write_bytes(os.urandom(1 << 16))
    os.symlink(real, tmp_path / "vm")
    assert snapshot.dir_size(tmp_path, "vm") == os.lstat(tmp_path / "vm").st_blocks * 512


def test_a_name_that_is_a_file_counts_that_file(tmp_path):
    (tmp_path / "vm").write_bytes(os.urandom(10000))
    assert snapshot.dir_size(tmp_path, "vm") == os.lstat(tmp_path / "vm").st_blocks * 512 > 0
    u = snapshot.usage(tmp_path / "vm")
    assert (u.files, u.dirs, u.apparent) == (1, 0, 10000)


def test_huge_sparse_sums_do_not_wrap(tmpfs):
    """Four files of 2**63-1 bytes (tmpfs allows that): the sum needs more than 64 bits."""
    d = tmpfs / "vm"
    d.mkdir()
    for i in range(4):
        with open(d / f"s{i}", "wb") as f:
            f.truncate((1 << 63) - 1)
    u = snapshot.usage(d)
    assert u.apparent == 4 * ((1 << 63) - 1)
    assert u.allocated == 0


def test_missing_snapshot(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        snapshot.dir_size(tmp_path, "nope")
    assert e.value.filename == str(tmp_path / "nope")
    assert e.value.errno == 2
    with pytest.raises(FileNotFoundError) as e:
        snapshot.usage(tmp_path / "nope")
    assert e.value.filename == str(tmp_path / "nope")


def test_not_a_directory_in_base(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError) as e:
        snapshot.dir_size(tmp_path / "file", "vm")
    assert e.value.filename == str(tmp_path / "file" / "vm")


def _tree_with_unreadable_dir(base):
    d = base / "vm"
    (d / "ok").mkdir(parents=True)
    (d / "ok" / "f").write_text("x")
    (d / "locked").mkdir()
    (d / "locked" / "secret").write_text("x")
    os.chmod(d / "locked", 0)


def test_unreadable_directory_raises_permission_error_naming_it(arena):
    tmp_path, fd = arena
    _tree_with_unreadable_dir(tmp_path)
    try:
        with pytest.raises(PermissionError) as e:
            as_nobody(snapshot.dir_size, ".", "vm", cwd_fd=fd)
        assert e.value.filename == "./vm/locked"
        assert e.value.errno == 13
        with pytest.raises(PermissionError) as e:
            as_nobody(lambda: snapshot.usage("vm"), cwd_fd=fd)
        assert e.value.filename == "vm/locked"
        with pytest.raises(PermissionError) as e:
            as_nobody(snapshot.dir_sizes, ".", ["vm"], cwd_fd=fd)
        assert e.value.filename == "./vm/locked"
    finally:
        os.chmod(tmp_path / "vm" / "locked", 0o700)


def test_root_is_not_affected_by_permission_bits(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root: checks that root reads a 000 directory")
    _tree_with_unreadable_dir(tmp_path)
    assert snapshot.dir_size(tmp_path, "vm") == lstat_oracle(tmp_path / "vm")[0]


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/abs", "x\0y"])
def test_bad_names_raise_before_touching_anything(tmp_path, name):
    with pytest.raises(ValueError):
        snapshot.dir_size(tmp_path, name)
    with pytest.raises(ValueError):
        snapshot.dir_sizes(tmp_path, [name])


def test_nul_in_base_dir(tmp_path):
    with pytest.raises(ValueError):
        snapshot.dir_size(str(tmp_path) + "\0x", "vm")
    with pytest.raises(ValueError):
        snapshot.usage(str(tmp_path) + "\0x")


# ---- dir_sizes --------------------------------------------------------------------

def make_fleet(base, n):
    for i in range(n):
        d = base / f"vm{i:03d}"
        d.mkdir()
        (d / "config.json").write_bytes(os.urandom(100 * i))
        write_at(d / "memory-ranges", 4096 * i, b"m" * 4096 * (i % 3), size=1 << 30)
    return [f"vm{i:03d}" for i in range(n)]


@pytest.mark.parametrize("workers", [1, 2, 3, 64, None])
def test_dir_sizes_equals_a_loop_of_dir_size(tmp_path, workers):
    names = make_fleet(tmp_path, 40)
    (tmp_path / "a-file").write_text("not a snapshot")
    os.symlink(tmp_path / "vm001", tmp_path / "a-link")
    expected = {n: snapshot.dir_size(tmp_path, n) for n in names}
    got = snapshot.dir_sizes(tmp_path, workers=workers)
    assert got == expected and list(got) == sorted(names)
    some = ["vm007", "vm003", "a-file", "a-link"]
    assert snapshot.dir_sizes(tmp_path, some, workers=workers) == {n: snapshot.dir_size(tmp_path, n) for n in some}


def test_dir_sizes_empty(tmp_path):
    assert snapshot.dir_sizes(tmp_path) == {}
    assert snapshot.dir_sizes(tmp_path, []) == {}


def test_dir_sizes_first_error_in_order_wins(tmp_path):
    names = make_fleet(tmp_path, 30)
    order = names[:10] + ["missing-b"] + names[10:] + ["missing-a"]
    for workers in (1, 2, 4):
        with pytest.raises(FileNotFoundError) as e:
            snapshot.dir_sizes(tmp_path, order, workers=workers)
        assert e.value.filename == str(tmp_path / "missing-b")


def test_dir_sizes_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError):
        snapshot.dir_sizes(tmp_path / "no-base")
    for bad in (0, -1):
        with pytest.raises(ValueError):
            snapshot.dir_sizes(tmp_path, [], workers=bad)
        with pytest.raises(ValueError):
            snapshot.usage(tmp_path, workers=bad)


@pytest.mark.parametrize("bad", [1.5, 2.0, True, False, "2", b"2", [2]])
def test_workers_that_are_not_ints_are_type_errors(tmp_path, bad):
    with pytest.raises(TypeError):
        snapshot.dir_sizes(tmp_path, [], workers=bad)
    with pytest.raises(TypeError):
        snapshot.usage(tmp_path, workers=bad)


@pytest.mark.parametrize("names", ["vm1", b"vm1", bytearray(b"vm1")])
def test_names_given_as_one_string_are_a_type_error(tmp_path, names):
    for c in "vm1":
        (tmp_path / c).mkdir()
    with pytest.raises(TypeError):
        snapshot.dir_sizes(tmp_path, names)


def test_dir_sizes_fails_as_a_loop_of_dir_size_would(tmp_path):
    """The first failing name raises its own error: a walk error before a bad name wins."""
    make_fleet(tmp_path, 3)
    with pytest.raises(FileNotFoundError):
        snapshot.dir_sizes(tmp_path, ["vm000", "missing", ".."])
    with pytest.raises(ValueError):
        snapshot.dir_sizes(tmp_path, ["vm000", "..", "missing"])
    with pytest.raises(TypeError):
        snapshot.dir_sizes(tmp_path, ["vm000", None, "missing"])
    assert snapshot.dir_sizes(tmp_path, ["vm001"]) == {"vm001": snapshot.dir_size(tmp_path, "vm001")}


def test_bytes_and_pathlike_base_dirs_agree(tmp_path):
    names = make_fleet(tmp_path, 4)
    expected = {n: snapshot.dir_size(str(tmp_path), n) for n in names}
    assert snapshot.dir_sizes(os.fsencode(tmp_path)) == snapshot.dir_sizes(tmp_path) == expected
    assert snapshot.dir_size(os.fsencode(tmp_path), names[1]) == expected[names[1]]


@pytest.mark.usefixtures("walker")
@pytest.mark.parametrize("workers", [1, 2])
def test_one_file_system_stays_on_the_root_device(tmp_path, workers):
    d = tmp_path / "vm"
    (d / "mnt").mkdir(parents=True)
    (d / "f").write_bytes(os.urandom(10000))
    mount_tmpfs(d / "mnt")
    try:
        (d / "mnt" / "inner").mkdir()
        (d / "mnt" / "inner" / "g").write_bytes(os.urandom(100000))
        whole = snapshot.usage(d, workers=workers)
        local = snapshot.usage(d, one_file_system=True, workers=workers)
        assert whole.dirs == 3 and local.dirs == 1
        assert whole.files == 2 and local.files == 1
        assert local.allocated == os.lstat(d / "f").st_blocks * 512
        assert whole.allocated == local.allocated + os.lstat(d / "mnt" / "inner" / "g").st_blocks * 512
    finally:
        subprocess.run(["umount", "-l", str(d / "mnt")], check=True)


# ---- dir_sizes(errors="return"): a batch that never aborts ------------------------------------

def test_dir_sizes_errors_return_maps_every_name_in_order(tmp_path):
    names = make_fleet(tmp_path, 6)
    (tmp_path / "a-file").write_bytes(os.urandom(3000))
    order = ["vm003", "missing", "..", "vm000", "a/b", "a-file", "vm005", "gone"]
    for workers in (1, 2, 4):
        got = snapshot.dir_sizes(tmp_path, order, workers=workers, errors="return")
        assert list(got) == order
        for n in ("vm003", "vm000", "a-file", "vm005"):
            assert got[n] == snapshot.dir_size(tmp_path, n)
        for n in ("missing", "gone"):
            assert type(got[n]) is FileNotFoundError and got[n].filename == str(tmp_path / n)
        for n in ("..", "a/b"):
            assert type(got[n]) is ValueError
    assert snapshot.dir_sizes(tmp_path, errors="return") == {n: snapshot.dir_size(tmp_path, n) for n in names}
    with pytest.raises(FileNotFoundError):  # the default is unchanged
        snapshot.dir_sizes(tmp_path, order)


def test_dir_sizes_errors_return_keeps_an_unreadable_snapshot(arena):
    path, fd = arena
    make_fleet(path, 3)
    _tree_with_unreadable_dir(path)
    try:
        got = as_nobody(lambda: snapshot.dir_sizes(".", errors="return", workers=2), cwd_fd=fd)
    finally:
        os.chmod(path / "vm" / "locked", 0o700)
    assert list(got) == ["vm", "vm000", "vm001", "vm002"]
    assert type(got["vm"]) is PermissionError and got["vm"].filename == "./vm/locked"
    assert [got[n] for n in ("vm000", "vm001", "vm002")] == [snapshot.dir_size(path, n) for n in ("vm000", "vm001",
                                                                                                    "vm002")]


@pytest.mark.parametrize("errors", ["ignore", "RAISE", "", None, 1, True])
def test_dir_sizes_other_errors_values_are_value_errors(tmp_path, errors):
    make_fleet(tmp_path, 2)
    with pytest.raises(ValueError, match="errors"):
        snapshot.dir_sizes(tmp_path, errors=errors)


# ---- error filenames have the type of the path given --------------------------------------------

@pytest.mark.parametrize("kind", [str, os.fsencode, __import__("pathlib").Path])
def test_error_filenames_have_the_type_of_the_path_given(tmp_path, kind):
    want = bytes if kind is os.fsencode else str

    def check(call, where):
        with pytest.raises(OSError) as e:
            call()
        assert type(e.value.filename) is want and os.fsdecode(e.value.filename) == str(where), call
    base, missing = kind(tmp_path), kind(tmp_path / "missing")
    (tmp_path / "dir").mkdir()
    check(lambda: snapshot.dir_size(base, "missing"), tmp_path / "missing")
    check(lambda: snapshot.usage(missing), tmp_path / "missing")
    check(lambda: snapshot.dir_sizes(base, ["missing"]), tmp_path / "missing")
    got = snapshot.dir_sizes(base, ["missing"], errors="return")["missing"]
    assert type(got.filename) is want
    check(lambda: snapshot.scan_blocks(missing), tmp_path / "missing")
    check(lambda: snapshot.sparsify(missing), tmp_path / "missing")
    check(lambda: snapshot.data_ranges(missing), tmp_path / "missing")
    check(lambda: snapshot.data_ranges(kind(tmp_path / "dir")), tmp_path / "dir")
    check(lambda: snapshot.read_meta(base, "missing"), snapshot.meta_path(tmp_path, "missing"))
    check(lambda: snapshot.write_meta(base, "missing", snapshot.RootfsMeta("t")),
          snapshot.meta_path(tmp_path, "missing"))


def test_walk_errors_inside_the_tree_have_the_type_of_the_path_given(arena):
    tmp_path, fd = arena
    _tree_with_unreadable_dir(tmp_path)
    try:
        for call in (lambda: snapshot.dir_size(b".", "vm"), lambda: snapshot.usage(b"./vm"),
                     lambda: snapshot.dir_sizes(b".", ["vm"])):
            with pytest.raises(PermissionError) as e:
                as_nobody(call, cwd_fd=fd)
            assert e.value.filename == b"./vm/locked"
    finally:
        os.chmod(tmp_path / "vm" / "locked", 0o700)
