"""rootfs.meta: Go's json.Marshal bytes on write, Go's json.Unmarshal rules on read."""
import copy
import errno
import json
import os
import pathlib
import pickle
import stat
import subprocess
import sys
import textwrap

import pytest

import snapshot
from snapshot import MetaError, RootfsMeta, read_meta, write_meta
from snapshot._meta import TEMP_PREFIX, decode_meta, encode_meta

# The Go package's cases live in shared/ beside the checkout; tests/ keeps a copy
# (checked against the original below) for clones without shared/.
SHARED_GOLDEN = pathlib.Path(__file__).resolve().parents[2] / "shared/golden/rootfs-meta.json"
COPY_GOLDEN = pathlib.Path(__file__).parent / "golden-rootfs-meta.json"
GOLDEN = json.loads((SHARED_GOLDEN if SHARED_GOLDEN.exists() else COPY_GOLDEN).read_text("utf-8"))


@pytest.fixture
def snap(tmp_path):
    snapshot.ensure_dir(tmp_path, "vm")
    return tmp_path


def raw_write(base, data: bytes):
    pathlib.Path(snapshot.meta_path(base, "vm")).write_bytes(data)


# ---- golden cases from the Go package ----------------------------------------

@pytest.mark.parametrize("case", GOLDEN["write"], ids=lambda c: c["file_bytes_utf8"][:40])
def test_golden_write(snap, case):
    write_meta(snap, "vm", RootfsMeta(**case["meta"]))
    assert pathlib.Path(snapshot.meta_path(snap, "vm")).read_bytes() == case["file_bytes_utf8"].encode("utf-8")
    # and we read back what we wrote
    assert read_meta(snap, "vm") == RootfsMeta(**case["meta"])


@pytest.mark.parametrize("case", GOLDEN["read"], ids=lambda c: c["file_bytes_utf8"][:40])
def test_golden_read(snap, case):
    raw_write(snap, case["file_bytes_utf8"].encode("utf-8"))
    if case["result"] == "error":
        with pytest.raises(MetaError):
            read_meta(snap, "vm")
    else:
        assert read_meta(snap, "vm") == RootfsMeta(**case["result"])


def test_golden_copy_in_tests_matches_shared():
    if not SHARED_GOLDEN.exists():
        pytest.skip("shared/ is not beside this checkout")
    assert COPY_GOLDEN.read_bytes() == SHARED_GOLDEN.read_bytes()


# ---- writing ------------------------------------------------------------------

@pytest.mark.parametrize("value, encoded", [
    ("\b\f", r'"\b\f"'),
    ("\x00\x01\x1f", r'"\u0000\u0001\u001f"'),
    ("\x7f", '"\x7f"'),  # DEL is not escaped by Go
    ("\u2028\u2029", r'"\u2028\u2029"'),
    ("<>&", r'"\u003c\u003e\u0026"'),
    ("/", '"/"'),
    ("\U0001F600", '"\U0001F600"'),
    ("\udcff", '"\ufffd"'),  # a lone surrogate (undecodable byte) is invalid UTF-8: Go writes U+FFFD
    ("\r", r'"\r"'),
])
def test_go_string_escaping(value, encoded):
    assert encode_meta(RootfsMeta(value)) == ('{"base_template":' + encoded + "}").encode("utf-8")


def test_field_order_and_omitempty():
    assert encode_meta(RootfsMeta("b", memory_mb=5)) == b'{"base_template":"b","memory_mb":5}'
    assert encode_meta(RootfsMeta("b", template_id="t")) == b'{"base_template":"b","template_id":"t"}'
    assert encode_meta(RootfsMeta("", "", -1, -2)) == b'{"base_template":"","vcpus":-1,"memory_mb":-2}'
    assert RootfsMeta(base_template="x") == RootfsMeta("x", "", 0, 0)


@pytest.mark.parametrize("kwargs, error", [
    ({"base_template": 1}, TypeError), ({"base_template": b"a"}, TypeError),
    ({"base_template": "a", "template_id": None}, TypeError),
    ({"base_template": "a", "vcpus": True}, TypeError), ({"base_template": "a", "vcpus": 2.0}, TypeError),
    ({"base_template": "a", "vcpus": "2"}, TypeError),
    ({"base_template": "a", "memory_mb": 1 << 63}, ValueError),
    ({"base_template": "a", "memory_mb": -(1 << 63) - 1}, ValueError),
])
def test_rootfs_meta_is_checked_when_made(kwargs, error):
    with pytest.raises(error):
        RootfsMeta(**kwargs)


def test_rootfs_meta_is_frozen_and_hashable():
    m = RootfsMeta("ubuntu", "t1", 2, 2048)
    with pytest.raises(AttributeError):
        m.vcpus = 4
    with pytest.raises(AttributeError):
        del m.vcpus
    assert m.vcpus == 2
    assert {m: 1}[RootfsMeta("ubuntu", "t1", 2, 2048)] == 1
    assert len({m, RootfsMeta("ubuntu", "t1", 2, 2048), RootfsMeta("ubuntu")}) == 2
    assert m != ("ubuntu", "t1", 2, 2048) and m != RootfsMeta("ubuntu", "t1", 2, 2049)
    assert copy.copy(m) == m and pickle.loads(pickle.dumps(m)) == m
    assert repr(m) == "RootfsMeta(base_template='ubuntu', template_id='t1', vcpus=2, memory_mb=2048)"


def test_rootfs_meta_keeps_plain_values_of_subclasses():
    class Lying(str):
        def __str__(self):
            return "lie"

    class Big(int):
        pass

    m = RootfsMeta(Lying("real"), vcpus=Big(3))
    assert type(m.base_template) is str and m.base_template == "real"
    assert type(m.vcpus) is int and m.vcpus == 3


@pytest.mark.parametrize("meta", ["not a meta", None, {"base_template": "a"}])
def test_write_meta_of_a_wrong_type_is_a_type_error(snap, meta):
    """A caller's mistake, not a corrupt file: no MetaError naming the path."""
    with pytest.raises(TypeError):
        write_meta(snap, "vm", meta)
    assert os.listdir(snapshot.dir_path(snap, "vm")) == []


def test_int64_limits_round_trip(snap):
    m = RootfsMeta("x", vcpus=-(1 << 63), memory_mb=(1 << 63) - 1)
    write_meta(snap, "vm", m)
    assert read_meta(snap, "vm") == m


def test_write_mode_is_0644_before_umask_and_kept_on_rewrite(snap):
    old = os.umask(0)
    try:
        write_meta(snap, "vm", RootfsMeta("a"))
    finally:
        os.umask(old)
    path = snapshot.meta_path(snap, "vm")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    os.chmod(path, 0o600)
    old = os.umask(0)
    try:
        write_meta(snap, "vm", RootfsMeta("b"))  # Go's os.WriteFile keeps an existing file's mode
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    os.unlink(path)
    old = os.umask(0o077)
    try:
        write_meta(snap, "vm", RootfsMeta("c"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_write_replaces_a_symlink_never_follows_it(snap, tmp_path):
    """Go's os.WriteFile would write through the link; we replace it with a regular file."""
    target = tmp_path / "elsewhere"
    target.write_bytes(b"keep")
    os.symlink(target, snapshot.meta_path(snap, "vm"))
    write_meta(snap, "vm", RootfsMeta("new"))
    assert target.read_bytes() == b"keep"
    assert not os.path.islink(snapshot.meta_path(snap, "vm"))
    assert read_meta(snap, "vm") == RootfsMeta("new")


def test_write_replaces_and_leaves_no_temp_file(snap):
    write_meta(snap, "vm", RootfsMeta("a", vcpus=1))
    write_meta(snap, "vm", RootfsMeta("b"))
    assert read_meta(snap, "vm") == RootfsMeta("b")
    assert os.listdir(snapshot.dir_path(snap, "vm")) == ["rootfs.meta"]


def test_write_needs_the_snapshot_dir(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        write_meta(tmp_path, "missing", RootfsMeta("a"))
    assert e.value.filename == snapshot.meta_path(tmp_path, "missing")
    assert not (tmp_path / "missing").exists()


def test_temp_prefix():
    assert TEMP_PREFIX == ".rootfs.meta."


# ---- reading --------------------------------------------------------------------

OK_CASES = [
    (b'{"base_template":"a","vcpus":2}', RootfsMeta("a", vcpus=2)),
    (b' \t\r\n{"base_template":"a"} \n', RootfsMeta("a")),
    (b"null", RootfsMeta("")),
    (b" null ", RootfsMeta("")),
    (b'{"BASE_TEMPLATE":"a","Vcpus":3}', RootfsMeta("a", vcpus=3)),  # case-insensitive
    (b'{"vcpus":1,"VCPUS":2}', RootfsMeta("", vcpus=2)),  # last wins
    (b'{"VCPUS":2,"vcpus":1}', RootfsMeta("", vcpus=1)),
    (b'{"vcpus":2,"vcpus":null}', RootfsMeta("", vcpus=2)),  # null is a no-op
    (b'{"base_template":null,"template_id":null,"vcpus":null,"memory_mb":null}', RootfsMeta("")),
    (b'{"vcpu\xc5\xbf":4}', RootfsMeta("", vcpus=4)),  # U+017F folds to S, as in Go
    (b'{"templ\\u0061te_id":"t"}', RootfsMeta("", template_id="t")),  # keys are unescaped first
    (b'{"template_\xc4\xb1d":"t"}', RootfsMeta("", template_id="t")),  # U+0131 folds to I
    (b'{"vcpus":-0}', RootfsMeta("")),
    (b'{"memory_mb":9223372036854775807}', RootfsMeta("", memory_mb=(1 << 63) - 1)),
    (b'{"memory_mb":-9223372036854775808}', RootfsMeta("", memory_mb=-(1 << 63))),
    (b'{"x":{"y":[1,2.5e3,true,false,null,"s",{}]},"base_template":"k"}', RootfsMeta("k")),
    (b'{"x":1e400}', RootfsMeta("")),  # unknown keys are only validated
    (b'{"base_template":"\\ud83d\\ude00"}', RootfsMeta("\U0001F600")),
    (b'{"base_template":"\\ud83d"}', RootfsMeta("\ufffd")),
    (b'{"base_template":"\\ude00\\ud83d"}', RootfsMeta("\ufffd\ufffd")),
    (b'{"base_template":"\\ud800\\ud800\\udc00"}', RootfsMeta("\ufffd\U00010000")),
    (b'{"base_template":"\\ud83dx"}', RootfsMeta("\ufffdx")),
    (b'{"base_template":"\xff\xfe"}', RootfsMeta("\ufffd\ufffd")),
    (b'{"base_template":"\xe2\x82"}', RootfsMeta("\ufffd\ufffd")),  # Go replaces byte by byte
    (b'{"base_template":"\xed\xa0\x80"}', RootfsMeta("\ufffd\ufffd\ufffd")),  # UTF-8-encoded surrogate
    (b'{"base_template":"caf\xc3\xa9 \\u4e2d\\/\\b\\f\\n\\r\\t\\"\\\\"}', RootfsMeta('café 中/\b\f\n\r\t"\\')),
    (b'{"base_template":"\x7f"}', RootfsMeta("\x7f")),
    (b"[" * 0 + b'{"x":' + b"[" * 9999 + b"]" * 9999 + b"}", RootfsMeta("")),  # depth 10000: Go's limit
]

ERROR_CASES = [
    b"", b" ", b"\xef\xbb\xbf{}", b"{", b"}", b'{"a"}', b'{"a":}', b'{"a":1,}', b"{,}", b'{"a":1 "b":2}',
    b"[]", b'"x"', b"1", b"true", b"false", b"nul", b"NULL", b"NaN", b'{"vcpus":NaN}', b'{"vcpus":Infinity}',
    b'{"vcpus":"2"}', b'{"vcpus":2.0}', b'{"vcpus":1e2}', b'{"vcpus":2.5}', b'{"vcpus":true}',
    b'{"vcpus":[]}', b'{"vcpus":{}}', b'{"base_template":1}', b'{"base_template":true}',
    b'{"base_template":["a"]}', b'{"base_template":{}}',
    b'{"memory_mb":9223372036854775808}', b'{"memory_mb":-9223372036854775809}',
    b'{"vcpus":01}', b'{"vcpus":-}', b'{"vcpus":1.}', b'{"vcpus":1e}', b'{"vcpus":+1}', b'{"vcpus":.5}',
    b'{"base_template":"a"} trailing', b'{}{}', b'{} x', b"{}\x00",
    b'{"base_template":"a\nb"}', b'{"base_template":"\x00"}', b'{"base_template":"\\x"}',
    b'{"base_template":"\\u12"}', b'{"base_template":"\\u12g4"}', b'{"base_template":"abc',
    b"{'base_template':'a'}", b'{base_template:"a"}', b'{"a":1}\xff', b"\xff",
    b'{"x":' + b"[" * 10000 + b"]" * 10000 + b"}",  # depth 10001
    b'{"vcpus":2,"vcpus":"x"}', b'{"vcpus":"x","vcpus":2}',  # a type error anywhere fails the whole read
]


@pytest.mark.parametrize("data, meta", OK_CASES, ids=lambda x: repr(x)[:50] if isinstance(x, bytes) else "")
def test_read_accepts_what_go_accepts(snap, data, meta):
    raw_write(snap, data)
    assert read_meta(snap, "vm") == meta


@pytest.mark.parametrize("data", ERROR_CASES, ids=lambda x: repr(x)[:50])
def test_read_rejects_what_go_rejects(snap, data):
    raw_write(snap, data)
    with pytest.raises(MetaError) as e:
        read_meta(snap, "vm")
    assert isinstance(e.value, ValueError)
    assert e.value.filename == snapshot.meta_path(snap, "vm")
    assert snapshot.meta_path(snap, "vm") in str(e.value) and e.value.reason


def test_missing_meta_is_file_not_found(snap):
    with pytest.raises(FileNotFoundError) as e:
        read_meta(snap, "vm")
    assert e.value.filename == snapshot.meta_path(snap, "vm")


def test_meta_that_is_a_directory(snap):
    os.mkdir(snapshot.meta_path(snap, "vm"))
    with pytest.raises(IsADirectoryError):
        read_meta(snap, "vm")


def test_temp_files_are_not_read(snap):
    (pathlib.Path(snapshot.dir_path(snap, "vm")) / (TEMP_PREFIX + "abc")).write_bytes(b'{"base_template":"tmp"}')
    with pytest.raises(FileNotFoundError):
        read_meta(snap, "vm")
    write_meta(snap, "vm", RootfsMeta("real"))
    assert read_meta(snap, "vm") == RootfsMeta("real")


def test_deep_nesting_is_not_a_recursion_error():
    with pytest.raises(MetaError):
        decode_meta(b"[" * 200000)
    with pytest.raises(MetaError):
        decode_meta(b'{"x":' + b"{\"a\":" * 200000)


# ---- reading never hangs and never reads without bound ----------------------------

def _in_child(code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run *code* in a fresh interpreter: a call that hangs fails the test, not the suite."""
    try:
        return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for {timeout} s")


def test_fifo_meta_does_not_hang(snap):
    os.mkfifo(snapshot.meta_path(snap, "vm"))
    r = _in_child(f"""
        import snapshot
        try:
            snapshot.read_meta({str(snap)!r}, "vm")
        except snapshot.MetaError as e:
            print("MetaError", e.reason)
    """, timeout=10)
    assert r.stdout == "MetaError is a FIFO, not a regular file\n", r.stderr


def test_symlink_to_a_zero_device_is_refused_not_read(snap, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mknod a character device")
    zero = tmp_path / "zero"
    os.mknod(zero, stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero's numbers, inside tmp_path
    os.symlink(zero, snapshot.meta_path(snap, "vm"))
    r = _in_child(f"""
        import resource, snapshot
        snapshot.read_meta  # loaded (it is lazy) before the limit: under ASan no new mapping fits below it
        resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))  # 2 GiB: reading /dev/zero would exhaust it
        try:
            snapshot.read_meta({str(snap)!r}, "vm")
        except snapshot.MetaError as e:
            print("MetaError", e.reason)
    """)
    assert r.stdout == "MetaError is a symbolic link, not a regular file\n", r.stderr[-500:]
    os.unlink(snapshot.meta_path(snap, "vm"))
    os.mknod(snapshot.meta_path(snap, "vm"), stat.S_IFCHR | 0o666, os.makedev(1, 5))
    with pytest.raises(MetaError, match="is a character device, not a regular file"):
        read_meta(snap, "vm")


def unregistered_char_major() -> int:
    """A character device major number no driver has registered here: opening such a node fails with
    ENXIO, so a refusal that names its type proves it was never opened."""
    with open("/proc/devices") as f:
        text = f.read().split("Block devices:")[0]
    used = {int(line.split()[0]) for line in text.splitlines() if line.strip()[:1].isdigit()}
    return next(m for m in range(254, 199, -1) if m not in used)


def test_a_device_node_is_refused_without_being_opened(snap):
    """Opening a device runs its driver (a tape rewinds, a modem hangs up): read_meta must look first."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mknod a character device")
    os.mknod(snapshot.meta_path(snap, "vm"), stat.S_IFCHR | 0o600, os.makedev(unregistered_char_major(), 0))
    with pytest.raises(OSError) as e:
        os.close(os.open(snapshot.meta_path(snap, "vm"), os.O_RDONLY | os.O_NONBLOCK))
    assert e.value.errno == errno.ENXIO  # the premise: opening it reaches the (missing) driver
    with pytest.raises(MetaError, match="is a character device, not a regular file"):
        read_meta(snap, "vm")


def test_a_meta_over_one_mib_is_a_meta_error_naming_its_size(snap):
    raw_write(snap, b'{"base_template":"a"}' + b" " * (1 << 20))
    with pytest.raises(MetaError) as e:
        read_meta(snap, "vm")
    assert str((1 << 20) + 21) in e.value.reason and e.value.filename == snapshot.meta_path(snap, "vm")
    raw_write(snap, b'{"base_template":"a"}'.ljust(1 << 20))  # exactly the limit is fine
    assert read_meta(snap, "vm") == RootfsMeta("a")


@pytest.mark.parametrize("digits", [20, 4300, 4301, 100000])
def test_huge_integers_are_meta_errors_as_in_go(snap, digits):
    raw_write(snap, b'{"vcpus":' + b"7" * digits + b"}")
    with pytest.raises(MetaError) as e:
        read_meta(snap, "vm")
    assert "cannot unmarshal number" in e.value.reason and len(e.value.reason) < 200
    raw_write(snap, b'{"x":' + b"7" * digits + b',"vcpus":1}')  # unknown keys are only validated
    assert read_meta(snap, "vm") == RootfsMeta("", vcpus=1)


def test_meta_error_survives_pickle_and_copy(snap):
    raw_write(snap, b'{"vcpus":"2"}')
    with pytest.raises(MetaError) as e:
        read_meta(snap, "vm")
    for clone in (pickle.loads(pickle.dumps(e.value)), copy.copy(e.value), copy.deepcopy(e.value)):
        assert type(clone) is MetaError
        assert (clone.filename, clone.reason, str(clone)) == (e.value.filename, e.value.reason, str(e.value))
    bare = MetaError(None, "why")
    assert (pickle.loads(pickle.dumps(bare)).filename, pickle.loads(pickle.dumps(bare)).reason) == (None, "why")


def test_meta_error_crosses_a_process_pool(snap):
    import concurrent.futures
    raw_write(snap, b"{")
    with concurrent.futures.ProcessPoolExecutor(1) as pool:
        with pytest.raises(MetaError) as e:
            pool.submit(read_meta, str(snap), "vm").result()
    assert e.value.filename == snapshot.meta_path(snap, "vm") and e.value.reason == "unexpected end of JSON input"


def test_bytes_base_dir_everywhere(snap):
    base = os.fsencode(snap)
    assert snapshot.dir_path(base, "vm") == os.fsencode(snapshot.dir_path(snap, "vm"))
    assert snapshot.meta_path(base, "vm") == os.fsencode(snapshot.meta_path(snap, "vm"))
    assert snapshot.ensure_dir(base, "vm2") == os.path.join(base, b"vm2")
    write_meta(base, "vm2", RootfsMeta("b"))
    assert read_meta(base, "vm2") == RootfsMeta("b")
    snapshot.remove(base, "vm2")
    assert not os.path.exists(os.path.join(snap, "vm2"))
    assert snapshot.dir_sizes(base) == snapshot.dir_sizes(snap) == {"vm": 0}


@pytest.mark.parametrize("meta", [RootfsMeta("x" * (10 << 20)), RootfsMeta("t", "y" * (1 << 20)),
                                  RootfsMeta("<" * 200_000)])  # escaped as \u003c: six bytes each
def test_write_meta_refuses_what_read_meta_would_refuse(snap, meta):
    """A 10 MiB base_template was written, then refused by read_meta's 1 MiB cap."""
    write_meta(snap, "vm", RootfsMeta("old"))
    before = pathlib.Path(snapshot.meta_path(snap, "vm")).read_bytes()
    with pytest.raises(MetaError) as e:
        write_meta(snap, "vm", meta)
    assert e.value.filename == snapshot.meta_path(snap, "vm") and "1048576" in e.value.reason
    assert os.listdir(snapshot.dir_path(snap, "vm")) == ["rootfs.meta"]
    assert pathlib.Path(snapshot.meta_path(snap, "vm")).read_bytes() == before
    with pytest.raises(MetaError):
        write_meta(snap, "new-vm", meta)
    assert not os.path.exists(snapshot.dir_path(snap, "new-vm"))


def test_write_meta_writes_right_up_to_the_cap(snap):
    overhead = len(encode_meta(RootfsMeta("")))
    meta = RootfsMeta("x" * ((1 << 20) - overhead))
    write_meta(snap, "vm", meta)
    assert os.path.getsize(snapshot.meta_path(snap, "vm")) == 1 << 20 and read_meta(snap, "vm") == meta
