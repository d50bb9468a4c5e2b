"""rootfs.meta: which base template a rootfs diff belongs to, and the VM's shape.

The file is shared with the Go package, so it is written and read with Go's
encoding/json rules (see _gojson).  Writes are atomic: readers see the old
file or the new one, never a torn one.  Reads never block and never read
without bound: only a regular file, at most MAX_META_SIZE bytes.
"""
from __future__ import annotations

import errno
import os
import re
import stat

from ._atomic import atomic_write
from ._errors import MetaError, os_error
from ._gojson import GO_UTF8, INT64_MAX, INT64_MIN, GoJSONError, GoStruct, decode_object, encode_string
from ._paths import ROOTFS_META_NAME, meta_path
from ._codes import META_READ_MAX

TYPE_CHECKING = False
if TYPE_CHECKING:  # StrPath is for type checkers only: typing costs start-up time (PEP 563)
    from ._paths import StrPath

# Temporary files are ".rootfs.meta.<random>": hidden, and never the name read_meta opens.
TEMP_PREFIX = "." + ROOTFS_META_NAME + "."

# What Go writes is under 200 bytes; a larger file is not one of ours, and reading
# it whole (a symlink to /dev/zero, a runaway writer) must not exhaust memory.
MAX_META_SIZE = META_READ_MAX

# The Go struct's fields, in declaration order (the order Marshal writes them).
_FIELDS = {"base_template": str, "template_id": str, "vcpus": int, "memory_mb": int}
_STRUCT = GoStruct(_FIELDS)
_READ_FLAGS = (os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
               | getattr(os, "O_NOCTTY", 0))


_set = object.__setattr__


class RootfsMeta:
    """The seed's RootfsMeta: the base template a rootfs diff belongs to, and the
    vCPUs and memory needed to restart the VM.

    ``RootfsMeta(base_template, template_id="", vcpus=0, memory_mb=0)`` is checked
    when made: TypeError unless the strings are str and the numbers int (not
    bool), ValueError for a number outside Go's int (64 bits).  Frozen and
    hashable, so it can be a dict key or a set member; equal when all fields are."""

    __slots__ = tuple(_FIELDS)
    base_template: str
    template_id: str
    vcpus: int
    memory_mb: int

    def __init__(self, base_template: str, template_id: str = "", vcpus: int = 0, memory_mb: int = 0) -> None:
        for key, value in zip(_FIELDS, (base_template, template_id, vcpus, memory_mb)):
            if _FIELDS[key] is str:
                if not isinstance(value, str):
                    raise TypeError(f"RootfsMeta.{key} must be str, not {type(value).__name__}")
                value = str.__str__(value)  # a subclass's own methods play no part later
            else:
                if not isinstance(value, int) or isinstance(value, bool):  # Go's int is not a bool
                    raise TypeError(f"RootfsMeta.{key} must be int, not {type(value).__name__}")
                value = int.__int__(value)
                if not INT64_MIN <= value <= INT64_MAX:
                    raise ValueError(f"RootfsMeta.{key} {value} does not fit Go's int (64 bits)")
            _set(self, key, value)

    @classmethod
    def _checked(cls, base_template: str, template_id: str, vcpus: int, memory_mb: int) -> "RootfsMeta":
        """Values the decoder has already checked: skip the checks."""
        self = object.__new__(cls)
        _set(self, "base_template", base_template)
        _set(self, "template_id", template_id)
        _set(self, "vcpus", vcpus)
        _set(self, "memory_mb", memory_mb)
        return self

    def _fields(self) -> tuple:
        return (self.base_template, self.template_id, self.vcpus, self.memory_mb)

    def __setattr__(self, key, value):
        raise AttributeError(f"RootfsMeta is frozen: cannot set {key}")

    def __delattr__(self, key):
        raise AttributeError(f"RootfsMeta is frozen: cannot delete {key}")

    def __eq__(self, other):
        if type(other) is not RootfsMeta:
            return NotImplemented
        return self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "RootfsMeta(" + ", ".join(f"{k}={v!r}" for k, v in zip(_FIELDS, self._fields())) + ")"

    def __reduce__(self):
        return (RootfsMeta, self._fields())


def encode_meta(meta: RootfsMeta) -> bytes:
    """The exact bytes Go's json.Marshal writes for the seed's RootfsMeta."""
    if not isinstance(meta, RootfsMeta):
        raise TypeError(f"expected RootfsMeta, not {type(meta).__name__}")
    parts = []
    for key, kind in _FIELDS.items():
        value = getattr(meta, key)
        if key != "base_template" and not value:
            continue  # omitempty
        encoded = encode_string(value) if kind is str else str(value).encode("ascii")
        parts.append(b'"' + key.encode("ascii") + b'":' + encoded)
    return b"{" + b",".join(parts) + b"}"


# What Go's json.Marshal writes for a RootfsMeta whose strings need no escapes: most
# files.  It is read here in one match; for such a document the full decoder gives
# the same values (tests/test_meta.py checks), and anything else goes to it.
_PLAIN_STR = rb'"([^"\\\x00-\x1f]*)"'
_GO_INT = rb"(-?(?:0|[1-9][0-9]{0,18}))"
_CANONICAL = re.compile(rb'\{"base_template":' + _PLAIN_STR + rb'(?:,"template_id":' + _PLAIN_STR
                        + rb')?(?:,"vcpus":' + _GO_INT + rb')?(?:,"memory_mb":' + _GO_INT + rb')?\}\Z')


def decode_meta(data: bytes, filename=None) -> RootfsMeta:
    """Parse rootfs.meta bytes exactly as Go's json.Unmarshal would; MetaError
    naming *filename* if Go would reject them."""
    return RootfsMeta._checked(*decode_fields(data, filename))


# A fleet's metadata files repeat (a few templates, a few VM shapes): the fleet report
# decodes each distinct content once.  Bounded, so unique contents cost no more memory.
_DECODED: dict = {}
_DECODED_MAX = 4096


def decode_fields(data: bytes, filename=None) -> tuple:
    """decode_meta's fields as a tuple, in declaration order (the fleet report's
    way: it needs no object per snapshot)."""
    fields = _DECODED.get(data)
    if fields is None:
        fields = _decode_fields(data, filename)
        if len(_DECODED) < _DECODED_MAX:
            _DECODED[data] = fields
    return fields


def _decode_fields(data: bytes, filename) -> tuple:
    m = _CANONICAL.match(data)
    if m is not None:
        base, tid, vcpus, memory = m.groups()
        v = int(vcpus) if vcpus else 0
        mem = int(memory) if memory else 0
        if INT64_MIN <= v <= INT64_MAX and INT64_MIN <= mem <= INT64_MAX:
            return base.decode("utf-8", GO_UTF8), tid.decode("utf-8", GO_UTF8) if tid else "", v, mem
    try:
        values = decode_object(data, _STRUCT)
    except GoJSONError as e:
        raise MetaError(filename, str(e)) from None
    return (values.get("base_template", ""), values.get("template_id", ""),
            values.get("vcpus", 0), values.get("memory_mb", 0))


def write_meta(base_dir: StrPath, name: str, meta: RootfsMeta) -> None:
    """Write *meta* as base_dir/name/rootfs.meta, with the bytes Go writes, atomically.

    The file is always replaced by a new regular file (mode 0644 before the umask):
    a symlink in its place is replaced, never followed.  TypeError if *meta* is
    not a RootfsMeta; MetaError, with nothing written, for what read_meta would
    refuse to read back (more than MAX_META_SIZE bytes once encoded); OSError
    subclasses naming the path if the write fails."""
    data = encode_meta(meta)
    path = meta_path(base_dir, name)
    if len(data) > MAX_META_SIZE:
        raise MetaError(path, f"would be {len(data)} bytes, more than the {MAX_META_SIZE} a rootfs.meta may have")
    decode_fields(data, path)  # whatever else read_meta would refuse, refused here: nothing is written
    atomic_write(path, data, TEMP_PREFIX, 0o644)


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


def read_meta(base_dir: StrPath, name: str) -> RootfsMeta:
    """Read base_dir/name/rootfs.meta as Go's json.Unmarshal would.

    FileNotFoundError if there is none, other OSError subclasses naming the path
    if it cannot be read.  MetaError (naming the file) for anything Go would
    reject, and for what we refuse to read, unlike Go: a symlink, a FIFO, a
    device or a socket (they could block or never end), a file over
    MAX_META_SIZE bytes."""
    path = meta_path(base_dir, name)
    return from_raw(path, read_raw(path))


def read_raw(name, dir_fd=None):
    """rootfs.meta's bytes, read by the rules above but raising nothing: bytes,
    or (errno, 0, 0) if it cannot be read, or (0, st_mode, st_size) if it is
    refused.  The compiled fleet walk (_du.read_meta_file) gives the same."""
    try:
        fd = _open_regular(name, dir_fd)
    except OSError as e:
        return (e.errno or errno.EIO, 0, 0)
    if isinstance(fd, os.stat_result):
        return (0, fd.st_mode, fd.st_size)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_META_SIZE:
            return (0, st.st_mode, st.st_size)
        data = _read_at_most(fd, MAX_META_SIZE + 1, st.st_size)
        if len(data) > MAX_META_SIZE:  # it grew while we read
            return (0, st.st_mode, len(data))
        return data
    except OSError as e:
        return (e.errno or errno.EIO, 0, 0)
    finally:
        os.close(fd)


def _open_regular(name, dir_fd):
    """The file opened for reading if it is a regular file, else its stat: a device is
    never opened (its driver's open could act: rewind a tape, hang up a line).  It is
    looked at through an O_PATH descriptor, which opens nothing, and that very inode is
    then opened through /proc/self/fd; without /proc, by its name again, refused unless
    it is still the same file."""
    path_fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(path_fd)
        if not stat.S_ISREG(st.st_mode):
            return st
        try:
            return os.open(f"/proc/self/fd/{path_fd}", _READ_FLAGS & ~os.O_NOFOLLOW)
        except FileNotFoundError:
            if os.path.isdir("/proc/self/fd"):
                raise
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
        now = os.fstat(fd)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)  # replaced meanwhile
        return fd
    finally:
        os.close(path_fd)


def from_raw(path, raw) -> RootfsMeta:
    """The RootfsMeta that read_raw's (or the fleet walk's) result holds, or the
    exception read_meta raises for it; *path* names the file in errors."""
    if isinstance(raw, bytes):
        return decode_meta(raw, path)
    raise refusal(path, raw)


def refusal(path, raw: tuple) -> Exception:
    """The exception for read_raw's (errno, st_mode, st_size): an OSError subclass
    for a failure, IsADirectoryError or MetaError for a refusal."""
    err, mode, size = raw
    if err:
        return os_error(err, path)
    if stat.S_ISDIR(mode):
        return IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
    if stat.S_ISREG(mode):
        return MetaError(path, f"is {size} bytes, more than the {MAX_META_SIZE} a rootfs.meta may have")
    kind = next((what for test, what in _KINDS if test(mode)), "not a regular file")
    return MetaError(path, f"is {kind}, not a regular file")


def _read_at_most(fd: int, limit: int, size_hint: int) -> bytes:
    """Read to the end of the file, or *limit* bytes; the first read asks for one byte
    more than the file's size, so a file that does not change is read in one call."""
    chunks = []
    n = 0
    want = size_hint + 1
    while n < limit:
        chunk = os.read(fd, min(want, limit - n))
        if not chunk:
            break
        chunks.append(chunk)
        n += len(chunk)
        if n == size_hint and len(chunk) < want:
            break  # all of it, as fstat said: a short read of a regular file is its end
        want = 1 << 16
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
