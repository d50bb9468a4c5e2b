"""The fleet report behind `snapshot-du --snapshots`: one row per snapshot,
rendered as a table, JSON or the Prometheus text format."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import List, Optional

from ._errors import MetaError
from ._meta import read_meta
from ._paths import CH_MEM_RANGES_FILE, ROOTFS_COW_NAME, ROOTFS_FILE_NAME, StrPath
from ._size import Usage, snapshot_names, usages

_SUFFIXES = "KMGTPEZYRQ"


def human(n: int) -> str:
    """GNU du -h: powers of 1024, rounded up, one decimal below 10."""
    if n < 1024:
        return str(n)
    e, scale = 0, 1
    while n >= scale * 1024 and e < len(_SUFFIXES):
        e, scale = e + 1, scale * 1024
    if n * 10 < scale * 100:  # below 10 units: tenths, rounded up
        tenths = -(-n * 10 // scale)
        if tenths < 100:
            return f"{tenths // 10}.{tenths % 10}{_SUFFIXES[e - 1]}"
        return f"10{_SUFFIXES[e - 1]}"
    whole = -(-n // scale)
    if whole == 1024 and e < len(_SUFFIXES):
        return f"1.0{_SUFFIXES[e]}"
    return f"{whole}{_SUFFIXES[e - 1]}"


def format_size(n: Optional[int], unit: str) -> str:
    """du's units: 'k' 1024-byte blocks rounded up (du's default), 'b' bytes, 'h' human."""
    if n is None:
        return ""
    if unit == "h":
        return human(n)
    if unit == "b":
        return str(n)
    return str(-(-n // 1024))


def printable(s: str) -> str:
    """A name or template as one table cell: control characters and undecodable
    bytes shown escaped, so a hostile name cannot forge rows."""
    return s if s.isprintable() else "".join(_escape_char(c) for c in s)


def _undecodable(c: str) -> bool:
    return "\udc80" <= c <= "\udcff"  # a byte that was not UTF-8, from surrogateescape


def _escape_char(c: str) -> str:
    if c.isprintable():
        return c
    if _undecodable(c):
        return f"\\x{ord(c) - 0xdc00:02x}"
    return c.encode("unicode_escape").decode("ascii")


@dataclass
class Row:
    name: str
    usage: Usage
    memory_ranges: Optional[int] = None  # allocated bytes of each file, None when missing
    rootfs_cow: Optional[int] = None
    rootfs_ext4: Optional[int] = None
    base_template: Optional[str] = None
    vcpus: Optional[int] = None
    memory_mb: Optional[int] = None


@dataclass
class Report:
    base: str
    rows: List[Row] = field(default_factory=list)
    errors: List[str] = field(default_factory=list)  # one message per problem, for stderr
    shared: bool = False

    def total(self, attr: str) -> Optional[int]:
        values = [getattr(r.usage, attr) for r in self.rows]
        return None if any(v is None for v in values) else sum(values)


def _allocated(path: str) -> Optional[int]:
    try:
        return os.lstat(path).st_blocks * 512
    except FileNotFoundError:
        return None


def build(base: StrPath, *, workers: Optional[int] = None, shared: bool = False,
          count_links: bool = True, one_file_system: bool = False) -> Report:
    base = os.fspath(base)
    report = Report(base, shared=shared)
    names = snapshot_names(base)
    results = usages(base, names, workers=workers, shared_extents=shared,
                     count_links=count_links, one_file_system=one_file_system)
    for name, u in zip(names, results):
        d = os.path.join(base, name)
        if isinstance(u, OSError):
            report.errors.append(f"cannot access '{u.filename}': {u.strerror}")
            continue
        row = Row(name, u)
        try:
            row.memory_ranges = _allocated(os.path.join(d, CH_MEM_RANGES_FILE))
            row.rootfs_cow = _allocated(os.path.join(d, ROOTFS_COW_NAME))
            row.rootfs_ext4 = _allocated(os.path.join(d, ROOTFS_FILE_NAME))
        except OSError as e:
            report.errors.append(f"cannot access '{e.filename}': {e.strerror}")
        try:
            meta = read_meta(base, name)
            row.base_template, row.vcpus, row.memory_mb = meta.base_template, meta.vcpus, meta.memory_mb
        except FileNotFoundError:
            pass
        except MetaError as e:
            report.errors.append(f"bad metadata {e.filename!r}: {e.reason}")
        except OSError as e:
            report.errors.append(f"cannot read '{e.filename}': {e.strerror}")
        report.rows.append(row)
    report.rows.sort(key=lambda r: (-r.usage.allocated, r.name))
    return report


def table(report: Report, unit: str) -> str:
    head = ["SNAPSHOT", "ALLOCATED", "APPARENT", "MEMORY", "COW", "ROOTFS", "BASE_TEMPLATE", "VCPUS", "MEMORY_MB"]
    if report.shared:
        head += ["SHARED", "EXCLUSIVE"]
    lines = [head]
    for r in report.rows:
        cells = [printable(r.name), format_size(r.usage.allocated, unit), format_size(r.usage.apparent, unit),
                 format_size(r.memory_ranges, unit), format_size(r.rootfs_cow, unit),
                 format_size(r.rootfs_ext4, unit), printable(r.base_template or ""),
                 "" if r.vcpus is None else str(r.vcpus), "" if r.memory_mb is None else str(r.memory_mb)]
        if report.shared:
            cells += [format_size(r.usage.shared, unit), format_size(r.usage.exclusive, unit)]
        lines.append(cells)
    total = [f"total ({len(report.rows)})", format_size(report.total("allocated"), unit),
             format_size(report.total("apparent"), unit), format_size(_sum(r.memory_ranges for r in report.rows), unit),
             format_size(_sum(r.rootfs_cow for r in report.rows), unit),
             format_size(_sum(r.rootfs_ext4 for r in report.rows), unit), "", "", ""]
    if report.shared:
        total += [format_size(report.total("shared"), unit), format_size(report.total("exclusive"), unit)]
    lines.append(total)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    numeric = {1, 2, 3, 4, 5, 7, 8, 9, 10}
    out = []
    for line in lines:
        out.append("  ".join(c.rjust(w) if i in numeric else c.ljust(w)
                             for i, (c, w) in enumerate(zip(line, widths))).rstrip())
    return "\n".join(out) + "\n"


def _sum(values) -> int:
    return sum(v for v in values if v is not None)


def as_json(report: Report) -> str:
    def row(r: Row) -> dict:
        u = r.usage
        d = {"name": r.name, "allocated": u.allocated, "apparent": u.apparent, "files": u.files, "dirs": u.dirs,
             "memory_ranges": r.memory_ranges, "rootfs_cow": r.rootfs_cow, "rootfs_ext4": r.rootfs_ext4,
             "base_template": r.base_template, "vcpus": r.vcpus, "memory_mb": r.memory_mb}
        if report.shared:
            d.update(shared=u.shared, exclusive=u.exclusive, shared_physical=u.shared_physical)
        return d
    total = {"snapshots": len(report.rows), "allocated": report.total("allocated"),
             "apparent": report.total("apparent")}
    if report.shared:
        total.update(shared=report.total("shared"), exclusive=report.total("exclusive"))
    return json.dumps({"base": report.base, "snapshots": [row(r) for r in report.rows], "total": total,
                       "errors": report.errors}, indent=1) + "\n"


def _label(value: str) -> str:
    # The exposition format escapes backslash, double quote and newline in label values.
    # Undecodable bytes (surrogateescape) are written as \xNN text, since the format is UTF-8.
    value = "".join(_escape_char(c) if _undecodable(c) else c for c in value)
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus(report: Report) -> str:
    metrics = [("snapshot_allocated_bytes", "allocated", "Bytes allocated to the snapshot's files (st_blocks * 512)."),
               ("snapshot_apparent_bytes", "apparent", "Apparent size of the snapshot's files (st_size).")]
    if report.shared:
        metrics += [("snapshot_shared_bytes", "shared",
                     "Allocated bytes in extents shared with other files (reflinks)."),
                    ("snapshot_exclusive_bytes", "exclusive", "Allocated bytes in extents not shared.")]
    out = []
    for metric, attr, doc in metrics:
        out += [f"# HELP {metric} {doc}", f"# TYPE {metric} gauge"]
        out += [f'{metric}{{snapshot="{_label(r.name)}"}} {getattr(r.usage, attr)}' for r in report.rows]
    out += ["# HELP snapshot_count Snapshots sized in the base directory.", "# TYPE snapshot_count gauge",
            f"snapshot_count {len(report.rows)}"]
    return "\n".join(out) + "\n"
