"""rootfs.meta: which base template a rootfs diff belongs to, and the VM's shape.

The file is shared with the Go package, so it is written and read with Go's
encoding/json rules (see _gojson).  Writes are atomic: readers see the old
file or the new one, never a torn one.
"""
from __future__ import annotations

from dataclasses import dataclass

from ._atomic import atomic_write
from ._errors import MetaError
from ._gojson import INT64_MAX, INT64_MIN, GoJSONError, decode_object, encode_string
from ._paths import ROOTFS_META_NAME, StrPath, meta_path

# Temporary files are ".rootfs.meta.<random>": hidden, and never the name read_meta opens.
TEMP_PREFIX = "." + ROOTFS_META_NAME + "."

# The Go struct's fields, in declaration order (the order Marshal writes them).
_FIELDS = {"base_template": str, "template_id": str, "vcpus": int, "memory_mb": int}


@dataclass
class RootfsMeta:
    base_template: str
    template_id: str = ""
    vcpus: int = 0
    memory_mb: int = 0


def encode_meta(meta: RootfsMeta) -> bytes:
    """The exact bytes Go's json.Marshal writes for the seed's RootfsMeta."""
    if not isinstance(meta, RootfsMeta):
        raise MetaError(None, f"expected RootfsMeta, got {type(meta).__name__}")
    parts = []
    for key, kind in _FIELDS.items():
        value = getattr(meta, key)
        if kind is str:
            if not isinstance(value, str):
                raise MetaError(None, f"{key} must be str, not {type(value).__name__}")
        elif type(value) is not int:  # bool is an int subclass; Go's int is not a bool
            raise MetaError(None, f"{key} must be int, not {type(value).__name__}")
        elif not INT64_MIN <= value <= INT64_MAX:
            raise MetaError(None, f"{key} {value} does not fit Go's int (64 bits)")
        if key != "base_template" and not value:
            continue  # omitempty
        encoded = encode_string(value) if kind is str else str(value).encode("ascii")
        parts.append(b'"' + key.encode("ascii") + b'":' + encoded)
    return b"{" + b",".join(parts) + b"}"


def decode_meta(data: bytes, filename=None) -> RootfsMeta:
    """Parse rootfs.meta bytes exactly as Go's json.Unmarshal would."""
    try:
        values = decode_object(data, _FIELDS)
    except GoJSONError as e:
        raise MetaError(filename, str(e)) from None
    return RootfsMeta(**{"base_template": "", **values})


def write_meta(base_dir: StrPath, name: str, meta: RootfsMeta) -> None:
    path = meta_path(base_dir, name)
    try:
        data = encode_meta(meta)
    except MetaError as e:
        raise MetaError(path, e.reason) from None
    # 0644 before umask, as the seed's os.WriteFile; atomic, unlike it.
    atomic_write(path, data, TEMP_PREFIX, 0o644)


def read_meta(base_dir: StrPath, name: str) -> RootfsMeta:
    path = meta_path(base_dir, name)
    with open(path, "rb") as f:
        data = f.read()
    return decode_meta(data, path)
