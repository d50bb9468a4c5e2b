"""The fleet report behind `snapshot-du --snapshots`: one row per snapshot,
rendered as a table, JSON or the Prometheus text format.

Its cost is the walk's: one batched walk (_size.snapshot_walks) sizes every
snapshot and, from each root directory's entries, notes the allocated size of
its big files and reads its rootfs.meta, on the walker's threads.  What is left
here is decoding the metadata and rendering, column by column.

Names reach every format losslessly and distinctly (see printable, and
as_json for names that are not UTF-8).
"""
from __future__ import annotations

import os
import time

from ._errors import MetaError, file_error, walk_error
from ._paths import CH_MEM_RANGES_FILE, ROOTFS_COW_NAME, ROOTFS_FILE_NAME, ROOTFS_META_NAME
from ._size import snapshot_walks, to_usage

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; annotations stay strings (PEP 563)
    from typing import Callable, Dict, List, Optional, Tuple
    from ._paths import StrPath
    from ._usage import Usage
    from ._walked import Walked

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


def _kib(n: int) -> str:
    return str(-(-n // 1024))


_UNITS: Dict[str, Callable[[int], str]] = {"h": human, "b": str, "k": _kib}


def format_size(n: Optional[int], unit) -> str:
    """du's units: 'k' 1024-byte blocks rounded up (du's default), 'b' bytes, 'h' human,
    or any other _units.Unit (-B SIZE, --si, -m)."""
    return "" if n is None else _formatter(unit)(n)


def _formatter(unit) -> Callable[[int], str]:
    return _UNITS[unit] if isinstance(unit, str) else unit


# ---- names ---------------------------------------------------------------------

_SHORT = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\"}


def printable(s: str) -> str:
    """A name as text that cannot forge a row and is distinct for distinct names.

    Printable characters stay as they are; a backslash is doubled; an undecodable
    byte (a surrogate from os.fsdecode) is \\xNN; any other unprintable character
    is \\n, \\t, \\r, \\uNNNN or \\UNNNNNNNN.  So the byte 0xFF and the text
    ``\\xff`` come out as ``\\xff`` and ``\\\\xff``, as Go's %q would tell them apart."""
    if s.isprintable() and "\\" not in s:
        return s
    return "".join(_escape_char(c) for c in s)


def _printable_all(values: list) -> list:
    """printable() of each, checked once for the whole column in the usual case."""
    joined = "".join(values)
    if joined.isprintable() and "\\" not in joined:
        return values
    return [printable(v) for v in values]


def _escape_char(c: str) -> str:
    short = _SHORT.get(c)
    if short is not None:
        return short
    if c.isprintable():
        return c
    o = ord(c)
    if 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8, from surrogateescape
        return f"\\x{o - 0xDC00:02x}"
    return f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}"


# ---- building -------------------------------------------------------------------

class Row:
    """One snapshot: its walk's Walked and its rootfs.meta fields.  Properties name what the
    walk holds; the renderers read it column by column."""

    __slots__ = ("name", "walked", "shared", "meta", "zero", "error")

    def __init__(self, name: str, walked: Walked, shared: bool, meta: Optional[tuple],
                 error: Optional[str] = None) -> None:
        self.name = name
        self.walked = walked
        self.shared = shared
        self.meta = meta  # (base_template, template_id, vcpus, memory_mb), or None without a readable file
        self.zero: Optional[int] = None  # with zero=True: allocated bytes in all-zero blocks (scan_blocks)
        self.error = error  # why its rootfs.meta could not be read, or None

    @property
    def usage(self) -> Usage:
        return to_usage(self.walked, self.shared)

    memory_ranges = property(lambda self: self.walked.named[0], doc="allocated bytes of memory-ranges, or None")
    rootfs_cow = property(lambda self: self.walked.named[1], doc="allocated bytes of rootfs.cow, or None")
    rootfs_ext4 = property(lambda self: self.walked.named[2], doc="allocated bytes of rootfs.ext4, or None")
    base_template = property(lambda self: None if self.meta is None else self.meta[0])
    vcpus = property(lambda self: None if self.meta is None else self.meta[2])
    memory_mb = property(lambda self: None if self.meta is None else self.meta[3])


class Report:
    """Rows sorted largest first, the problems met (one message each, for stderr),
    and with shared: the base's set-shared bytes (each shared disk byte once).

    No snapshot is dropped: one whose walk failed has no row but is in
    ``failed``, with the snapshots whose rootfs.meta could not be read (their
    rows are kept, with ``error`` set); ``unwalked`` names the former."""

    def __init__(self, base: str, shared: bool) -> None:
        self.base = base
        self.shared = shared
        self.rows: List[Row] = []
        self.errors: List[str] = []
        self.failed: List[Tuple[str, str]] = []  # (name, message) of every snapshot that failed, in name order
        self.unwalked: List[str] = []  # the names whose walk failed: they have no row
        self.shared_physical: Optional[int] = None
        self.zero = False  # rows carry .zero
        self.duration: Optional[float] = None  # seconds build() took: listing, walks, metadata, zero scan
        self.shown: Optional[List[Row]] = None  # the rows to show (select), or None for all

    def visible(self) -> List[Row]:
        """The rows to show: all, or those that select() kept."""
        return self.rows if self.shown is None else self.shown

    def select(self, threshold: int) -> None:
        """du's -t: show only the rows whose allocated bytes pass *threshold*; totals
        still count every row, as du -c's total counts what -t leaves out."""
        from ._units import shown
        self.shown = [r for r in self.rows if shown(r.walked.allocated, threshold)]

    def sort(self, key: str, reverse: bool = False) -> None:
        """Order the rows by *key* (a _SORT_KEYS name): sizes largest first, names in order,
        equal ones by name; *reverse* turns the whole order round."""
        self.rows.sort(key=_by_name)
        self.rows.sort(key=_SORT_KEYS[key])
        if reverse:
            self.rows.reverse()
        if self.shown is not None:
            keep = set(map(id, self.shown))
            self.shown = [r for r in self.rows if id(r) in keep]

    def column(self, attr: str, rows: Optional[List[Row]] = None) -> list:
        """One Usage field of every row (or of *rows*): allocated, apparent, shared or exclusive."""
        rows = self.rows if rows is None else rows
        if attr == "allocated":
            return [r.walked.allocated for r in rows]
        if attr == "apparent":
            return [r.walked.apparent for r in rows]
        if attr == "zero":
            return [r.zero for r in rows]
        if not self.shared:
            return [None] * len(rows)
        if attr == "shared":
            return [r.walked.shared for r in rows]
        return [r.walked.allocated - r.walked.shared for r in rows]  # exclusive

    def total(self, attr: str) -> Optional[int]:
        values = self.column(attr)
        return None if None in values else sum(values)


def _minus_allocated(row: Row) -> int:
    return -row.walked.allocated


def _by_name(row: Row) -> str:
    return row.name


# snapshot-du --sort: each key sorts largest first (names in order); a zero scan that failed sorts last.
_SORT_KEYS: Dict[str, Callable[[Row], object]] = {
    "allocated": _minus_allocated,
    "apparent": lambda r: -r.walked.apparent,
    "name": _by_name,
    "zero": lambda r: 1 if r.zero is None else -r.zero,
    "exclusive": lambda r: r.walked.shared - r.walked.allocated,
}
SORT_KEYS = tuple(_SORT_KEYS)


def build(base: StrPath, *, workers: Optional[int] = None, shared: bool = False,
          count_links: bool = True, one_file_system: bool = False, zero: bool = False, progress=None) -> Report:
    from ._meta import decode_fields, refusal  # only here: snapshot-du PATH... starts faster without re
    start = time.monotonic()
    report = Report(os.fsdecode(base), shared)
    names, results, physical = snapshot_walks(base, workers=workers, shared_extents=shared, count_links=count_links,
                                              one_file_system=one_file_system, zero=zero, progress=progress)
    if shared:
        report.shared_physical = physical
    report.zero = zero
    errors, rows, failed = report.errors, report.rows, report.failed
    prefix = os.path.join(report.base, "")  # ends with a separator
    for name, r in zip(names, results):
        if isinstance(r, Exception) or r.error is not None:  # a name's ValueError, or the walk's failure
            msg = _walk_failure(r if isinstance(r, Exception) else walk_error(*r.error), f"{prefix}{name}")
            errors.append(msg)
            failed.append((name, msg))
            report.unwalked.append(name)
            continue
        raw = r.meta
        meta = error = None
        if raw is not None:
            try:
                if type(raw) is not bytes:
                    raise refusal(f"{prefix}{name}/{ROOTFS_META_NAME}", raw)
                meta = decode_fields(raw)
            except MetaError as e:
                error = f"bad metadata '{printable(f'{prefix}{name}/{ROOTFS_META_NAME}')}': {e.reason}"
            except OSError as e:
                error = f"cannot read '{printable(os.fsdecode(e.filename))}': {e.strerror}"
            if error is not None:
                errors.append(error)
                failed.append((name, error))
        row = Row(name, r, shared, meta, error)
        if zero:
            row.zero = r.zero
            for status, err, where, fstype in r.failures:  # its zero figure would be wrong: left out
                e = file_error(status, err, where, fstype, force="--force")
                errors.append(f"cannot read '{printable(os.fsdecode(where))}': {e.strerror}")
                row.zero = None
        rows.append(row)
    # Names come sorted, and the sort is stable: equal sizes stay in name order.
    rows.sort(key=_minus_allocated)
    report.duration = time.monotonic() - start
    return report


def _walk_failure(e: Exception, path: str) -> str:
    """The message for a snapshot whose walk failed (or whose name is not one path component)."""
    if isinstance(e, OSError):
        shown = path if e.filename is None else os.fsdecode(e.filename)
        return f"cannot access '{printable(shown)}': {e.strerror}"
    return f"cannot access '{printable(path)}': {e}"


# ---- rendering ------------------------------------------------------------------

def _sum(values) -> int:
    return sum(v for v in values if v is not None)


def table(report: Report, unit, end: str = "\n") -> str:
    """The table: left-aligned names, right-aligned numbers, each line ending in *end*
    (NUL for -0).  Rows are report.visible(); the total row counts every row.  In the
    total row, SHARED is the base's set-shared bytes (each shared disk block once), so
    that SHARED + EXCLUSIVE there is what the snapshots really occupy."""
    rows = report.visible()
    fmt = _formatter(unit)
    text_cells = unit == "h" or (not isinstance(unit, str) and not unit.plain)

    def sizes(head: str, values: list, last: str) -> tuple:
        """(cells, width).  Cells may be ints: "%s" converts them in C, much cheaper
        than str() per value, and the widest int is the largest."""
        cells: list
        if text_cells:  # -h, --si, -B with a unit suffix
            cells = ["" if v is None else fmt(v) for v in values]
            return [head, *cells, last], max(map(len, [head, *cells, last]))
        if unit == "k":  # du's default unit, 1024-byte blocks rounded up
            cells = [-1 if v is None else (v + 1023) >> 10 for v in values]
        elif unit == "b":
            cells = [-1 if v is None else v for v in values]
        else:  # -B N, -m: N-byte blocks rounded up
            block = unit.block
            cells = [-1 if v is None else -(-v // block) for v in values]
        widest = max(len(head), len(last), len(str(max(cells, default=0))))
        if -1 in cells:  # a missing file: a blank cell
            cells = ["" if c == -1 else c for c in cells]
        return [head, *cells, last], widest

    def text(head: str, values: list, last: str) -> tuple:
        cells = [head, *values, last]
        return cells, max(map(len, cells))

    def number(head: str, values: list) -> tuple:
        """An int column ("" where there is no metadata), converted by "%s" in C."""
        ints = [v for v in values if v != ""] if "" in values else values
        widest = max([len(head), *(len(str(f(ints))) for f in (min, max) if ints)])
        return [head, *values, ""], widest

    def total(i: int) -> str:  # of every row, shown or not
        return fmt(sum(filter(None, (r.walked.named[i] for r in report.rows))))

    def column(attr: str) -> list:
        return report.column(attr, rows)

    metas = [r.meta or _NO_META for r in rows]
    files = [[r.walked.named[i] for r in rows] for i in range(3)]
    cols = [
        text("SNAPSHOT", _printable_all([r.name for r in rows]), f"total ({len(report.rows)})"),
        sizes("ALLOCATED", column("allocated"), format_size(report.total("allocated"), unit)),
        sizes("APPARENT", column("apparent"), format_size(report.total("apparent"), unit)),
        sizes("MEMORY", files[0], total(0)),
        sizes("COW", files[1], total(1)),
        sizes("ROOTFS", files[2], total(2)),
        text("BASE_TEMPLATE", _printable_all([m[0] for m in metas]), ""),
        number("VCPUS", [m[2] for m in metas]),
        number("MEMORY_MB", [m[3] for m in metas]),
    ]
    if report.shared:
        cols.append(sizes("SHARED", column("shared"), format_size(report.shared_physical, unit)))
        cols.append(sizes("EXCLUSIVE", column("exclusive"), format_size(report.total("exclusive"), unit)))
    if report.zero:
        cols.append(sizes("ZERO", [r.zero for r in rows], fmt(_sum(r.zero for r in report.rows))))
    line = "  ".join(f"%{'-' if i in (0, 6) else ''}{width}s" for i, (_, width) in enumerate(cols))
    # Only a row whose last cell is blank (no metadata, the total) would end in spaces.
    return "".join([line % cells + end if cells[-1] != "" else (line % cells).rstrip() + end
                    for cells in zip(*(cells for cells, _ in cols))])


_NO_META = ("", "", "", "")  # a snapshot without metadata: blank cells (str("") is "")


def _json_name(d: dict, key: str, s: str) -> None:
    """d[key] = s as Go's json.Marshal writes it (bytes that are not UTF-8 become
    U+FFFD), and, only if s is not UTF-8, d[key + "_bytes"] = its exact bytes in
    base64: every JSON reader accepts both, and nothing is lost."""
    try:
        s.encode("utf-8")
        d[key] = s
    except UnicodeEncodeError:
        raw = os.fsencode(s)
        d[key] = raw.decode("utf-8", "replace")
        import base64  # only here, as json below: start-up time
        d[key + "_bytes"] = base64.b64encode(raw).decode("ascii")


def as_json(report: Report) -> str:
    def row(r: Row) -> dict:
        u = r.usage
        d: dict = {}
        _json_name(d, "name", r.name)
        d.update(allocated=u.allocated, apparent=u.apparent, files=u.files, dirs=u.dirs,
                 memory_ranges=r.memory_ranges, rootfs_cow=r.rootfs_cow, rootfs_ext4=r.rootfs_ext4,
                 base_template=r.base_template, vcpus=r.vcpus, memory_mb=r.memory_mb)
        if report.shared:
            d.update(shared=u.shared, exclusive=u.exclusive, shared_physical=u.shared_physical)
        if report.zero:
            d["zero"] = r.zero
        return d
    total = {"snapshots": len(report.rows), "allocated": report.total("allocated"),
             "apparent": report.total("apparent")}
    if report.shared:
        total.update(shared=report.total("shared"), exclusive=report.total("exclusive"),
                     shared_physical=report.shared_physical)
    if report.zero:
        total["zero"] = _sum(r.zero for r in report.rows)
    doc: dict = {}
    _json_name(doc, "base", report.base)
    failed = []
    for name, msg in report.failed:
        f: dict = {}
        _json_name(f, "name", name)
        f["error"] = msg
        failed.append(f)
    doc.update(snapshots=[row(r) for r in report.visible()], total=total, failed=failed, errors=report.errors)
    import json
    return json.dumps(doc, indent=1) + "\n"


_FILES = ((0, CH_MEM_RANGES_FILE), (1, ROOTFS_COW_NAME), (2, ROOTFS_FILE_NAME))  # Walked.named index, file


def metric_families(report: Report, timestamp: Optional[float] = None) -> list:
    """The Prometheus metrics of a report, as (name, help, label names, samples); each
    sample is (label values, value).  Label values are names as printable() shows them,
    so distinct names stay distinct.  The one list that both snapshot-du --prometheus
    and snapshot.prometheus.SnapshotCollector expose (*timestamp*, when the collection
    ended, only for the textfile: a scrape has its own time).

    Every snapshot has snapshot_up: 1, or 0 when its walk or its rootfs.meta failed.
    Only a snapshot that is up has sizes, files and info: a failure is never a 0."""
    rows = report.rows
    labels = _printable_all([r.name for r in rows])
    up = [((label,), 0 if r.error is not None else 1) for label, r in zip(labels, rows)]
    up += [((label,), 0) for label in _printable_all(report.unwalked)]
    good = [(label, r) for label, r in zip(labels, rows) if r.error is None]
    snap = ("snapshot",)
    out = [("snapshot_up", "1 if the snapshot was read (its walk and its rootfs.meta), 0 if not.", snap, up)]
    sizes = [("snapshot_allocated_bytes", "allocated",
              "Bytes allocated to the snapshot's files (st_blocks * 512)."),
             ("snapshot_apparent_bytes", "apparent", "Apparent size of the snapshot's files (st_size).")]
    if report.shared:
        sizes += [("snapshot_shared_bytes", "shared", "Allocated bytes in extents shared with other files (reflinks)."),
                  ("snapshot_exclusive_bytes", "exclusive", "Allocated bytes in extents not shared.")]
    if report.zero:
        sizes.append(("snapshot_zero_bytes", "zero",
                      "Allocated bytes in blocks that hold only zeros (what sparsify frees)."))
    good_rows = [r for _, r in good]
    for metric, attr, doc in sizes:
        values = report.column(attr, good_rows)
        # a snapshot that could not be scanned has no zero figure
        out.append((metric, doc, snap, [((label,), v) for (label, _), v in zip(good, values) if v is not None]))
    files = [((label, file), r.walked.named[i]) for label, r in good for i, file in _FILES
             if r.walked.named[i] is not None]
    out.append(("snapshot_file_allocated_bytes",
                "Bytes allocated to the snapshot's memory-ranges, rootfs.cow and rootfs.ext4 (those present).",
                ("snapshot", "file"), files))
    info = [((label, *_printable_all([r.meta[0], r.meta[1]]), str(r.meta[2]), str(r.meta[3])), 1)
            for label, r in good if r.meta is not None]
    out.append(("snapshot_info", "The snapshot's rootfs.meta (those that have one), as labels; always 1.",
                ("snapshot", "base_template", "template_id", "vcpus", "memory_mb"), info))
    if report.shared:
        out.append(("snapshot_set_shared_bytes",
                    "Bytes on disk in shared extents of all snapshots, each counted once.",
                    (), [((), report.shared_physical)]))
    out.append(("snapshot_directories", "Snapshot directories in the base directory, failed ones included.",
                (), [((), len(rows) + len(report.unwalked))]))
    out.append(("snapshot_collect_duration_seconds",
                "Seconds the collection took: listing the base, the walks, rootfs.meta, the zero scan.",
                (), [((), report.duration or 0.0)]))
    if timestamp is not None:
        out.append(("snapshot_collect_timestamp_seconds", "When the collection ended, in seconds since the epoch.",
                    (), [((), timestamp)]))
    return out


def _label_value(v: str) -> str:
    """The exposition format's escapes: backslash, double quote (printable() left no newline)."""
    return v.replace("\\", "\\\\").replace('"', '\\"')


def prometheus(report: Report, timestamp: Optional[float] = None) -> str:
    """The text exposition format (what node_exporter's textfile collector reads)."""
    out = []
    for metric, doc, names, samples in metric_families(report, timestamp):
        out += [f"# HELP {metric} {doc}", f"# TYPE {metric} gauge"]
        for values, v in samples:
            if not names:
                out.append(f"{metric} {v}")
            else:
                labels = ",".join(f'{n}="{_label_value(x)}"' for n, x in zip(names, values))
                out.append(f"{metric}{{{labels}}} {v}")
    return "\n".join(out) + "\n"
