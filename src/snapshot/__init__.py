"""snapshot: Cloud Hypervisor snapshot layout, Go-compatible rootfs metadata,
and fast allocated-block sizing.

``BACKEND`` names the walker in use: "openat" (compiled, _du.pyx) or "python".
"""
from ._errors import MetaError
from ._paths import (CH_CONFIG_FILE, CH_MEM_RANGES_FILE, CH_STATE_FILE, ROOTFS_COW_NAME,
                     ROOTFS_FILE_NAME, ROOTFS_META_NAME, cow_path, dir_path, meta_path,
                     rootfs_path)
from ._version import __version__

# The rest is imported when first used (PEP 562), so that `import snapshot` and a
# small snapshot-du run do not pay for what they do not call (dataclasses, re, the
# extensions): see the README, "Start-up time".
_LAZY = {
    "BACKEND": "_size", "dir_size": "_size", "dir_sizes": "_size", "usage": "_size",
    "Usage": "_usage",
    "ensure_dir": "_dirs", "remove": "_dirs",
    "RootfsMeta": "_meta", "read_meta": "_meta", "write_meta": "_meta",
    "BlockUsage": "_sparse", "Sparsified": "_sparse", "data_ranges": "_sparse", "scan_blocks": "_sparse",
    "sparsify": "_sparse",
}
# What a name's first call would import: loaded with the name, so that the call costs what
# later ones do (usage() returns a Usage, a dataclass: 14 ms of imports on its first call).
_WITH = {"usage": "_usage"}

TYPE_CHECKING = False
if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported at once
    from ._dirs import ensure_dir, remove
    from ._meta import RootfsMeta, read_meta, write_meta
    from ._size import BACKEND, dir_size, dir_sizes, usage
    from ._sparse import BlockUsage, Sparsified, data_ranges, scan_blocks, sparsify
    from ._usage import Usage
del TYPE_CHECKING

__all__ = [
    "BACKEND", "BlockUsage", "CH_CONFIG_FILE", "CH_MEM_RANGES_FILE", "CH_STATE_FILE", "MetaError",
    "ROOTFS_COW_NAME", "ROOTFS_FILE_NAME", "ROOTFS_META_NAME", "RootfsMeta", "Sparsified", "Usage",
    "cow_path", "data_ranges", "dir_path", "dir_size", "dir_sizes", "ensure_dir", "meta_path", "read_meta",
    "remove", "rootfs_path", "scan_blocks", "sparsify", "usage", "write_meta", "__version__",
]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module
    value = getattr(import_module(f"{__name__}.{module}"), name)
    if name in _WITH:
        import_module(f"{__name__}.{_WITH[name]}")
    globals()[name] = value  # once: later lookups are plain attribute reads
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
