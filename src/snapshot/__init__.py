"""snapshot: Cloud Hypervisor snapshot layout, Go-compatible rootfs metadata,
and fast allocated-block sizing.

``BACKEND`` names the walker in use: "openat" (compiled, _du.pyx) or "python".
"""
from ._dirs import ensure_dir, remove
from ._errors import MetaError
from ._meta import RootfsMeta, read_meta, write_meta
from ._paths import (CH_CONFIG_FILE, CH_MEM_RANGES_FILE, CH_STATE_FILE, ROOTFS_COW_NAME,
                     ROOTFS_FILE_NAME, ROOTFS_META_NAME, cow_path, dir_path, meta_path,
                     rootfs_path)
from ._size import BACKEND, Usage, dir_size, dir_sizes, usage
from ._sparse import BlockUsage, Sparsified, data_ranges, scan_blocks, sparsify
from ._version import __version__

__all__ = [
    "BACKEND", "BlockUsage", "CH_CONFIG_FILE", "CH_MEM_RANGES_FILE", "CH_STATE_FILE", "MetaError",
    "ROOTFS_COW_NAME", "ROOTFS_FILE_NAME", "ROOTFS_META_NAME", "RootfsMeta", "Sparsified", "Usage",
    "cow_path", "data_ranges", "dir_path", "dir_size", "dir_sizes", "ensure_dir", "meta_path", "read_meta",
    "remove", "rootfs_path", "scan_blocks", "sparsify", "usage", "write_meta", "__version__",
]
