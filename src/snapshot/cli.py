"""snapshot-du: du -s for snapshot directories, with a fleet report.

    snapshot-du [-h|-b] [--apparent-size] [-l] [-x] [-c] [--shared] [--json] [-j N] PATH...
    snapshot-du --snapshots BASE [-h|-b] [--shared] [--json|--prometheus] [-o FILE]

Sizes count non-directories only, as snapshot.dir_size does (du -s also counts
the directories' own blocks).  Exit status: 0, 1 if anything could not be
read (the rest is still reported), 2 for a usage error.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from . import _report
from ._atomic import atomic_write
from ._size import default_workers, usage

PROG = "snapshot-du"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, add_help=False, description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument("--help", action="help", help="show this help and exit")
    units = p.add_mutually_exclusive_group()
    units.add_argument("-h", "--human-readable", action="store_const", const="h", dest="unit",
                       help="print sizes in powers of 1024 (e.g. 1.5K 234M 2.0G), as du -h")
    units.add_argument("-b", "--bytes", action="store_const", const="b", dest="unit",
                       help="print sizes in bytes; with PATHs this is --apparent-size in bytes, as du -b")
    p.add_argument("--apparent-size", action="store_true", help="print apparent sizes (st_size) for PATHs")
    p.add_argument("-l", "--count-links", action="store_true", help="count sizes many times if hard linked")
    p.add_argument("-x", "--one-file-system", action="store_true", help="skip directories on other file systems")
    p.add_argument("-c", "--total", action="store_true", help="produce a grand total for PATHs")
    p.add_argument("--snapshots", metavar="BASE", help="a table of every snapshot directory in BASE")
    p.add_argument("--shared", action="store_true",
                   help="also report bytes in shared (reflinked) extents and exclusive bytes, from FIEMAP")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON document, sizes in bytes")
    fmt.add_argument("--prometheus", action="store_true",
                     help="with --snapshots: the Prometheus text format, for node_exporter's textfile collector")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE atomically (temp file + rename)")
    p.add_argument("-j", "--workers", type=int, metavar="N",
                   help="threads: per snapshot with --snapshots, inside each tree with PATHs (default: all CPUs)")
    return p


def _warn(msg: str) -> None:
    print(f"{PROG}: {msg}", file=sys.stderr)


def _paths_mode(args) -> tuple:
    """du -s over PATHs: (text, failed)."""
    apparent = args.apparent_size or args.unit == "b"
    unit = args.unit or "k"
    failed = False
    lines, records = [], []
    total = total_shared = 0
    workers = default_workers() if args.workers is None else args.workers
    for path in args.paths:
        try:
            u = usage(path, workers=workers, count_links=args.count_links,
                      one_file_system=args.one_file_system, shared_extents=args.shared)
        except OSError as e:
            _warn(f"cannot access '{path if e.filename is None else e.filename}': {e.strerror}")
            failed = True
            continue
        size = u.apparent if apparent else u.allocated
        total += size
        cols = [_report.format_size(size, unit)]
        if args.shared:
            total_shared += u.shared or 0
            cols += [_report.format_size(u.shared, unit), _report.format_size(u.exclusive, unit)]
        lines.append("\t".join(cols + [path]))
        records.append({"path": path, "size": size, **vars(u)})
    if args.total:
        cols = [_report.format_size(total, unit)]
        if args.shared:
            cols += [_report.format_size(total_shared, unit), _report.format_size(total - total_shared, unit)]
        lines.append("\t".join(cols + ["total"]))
    if args.json:
        doc = {"size": "apparent" if apparent else "allocated", "paths": records, "total": total}
        return json.dumps(doc, indent=1) + "\n", failed
    return "".join(line + "\n" for line in lines), failed


def _snapshots_mode(args) -> tuple:
    try:
        report = _report.build(args.snapshots, workers=args.workers, shared=args.shared,
                               count_links=args.count_links, one_file_system=args.one_file_system)
    except OSError as e:
        _warn(f"cannot access '{args.snapshots}': {e.strerror}")
        return "", True
    for msg in report.errors:
        _warn(msg)
    if args.json:
        text = _report.as_json(report)
    elif args.prometheus:
        text = _report.prometheus(report)
    else:
        text = _report.table(report, args.unit or "k")
    return text, bool(report.errors)


def main(argv: Optional[List[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.snapshots is None and not args.paths:
        parser.error("give PATHs or --snapshots BASE")
    if args.snapshots is not None and args.paths:
        parser.error("--snapshots BASE takes no PATHs")
    if args.prometheus and args.snapshots is None:
        parser.error("--prometheus goes with --snapshots BASE")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    text, failed = _snapshots_mode(args) if args.snapshots is not None else _paths_mode(args)
    if args.output:
        try:
            atomic_write(args.output, text.encode("utf-8", "surrogateescape"),
                         "." + os.path.basename(args.output) + ".tmp.")
        except OSError as e:
            _warn(f"cannot write '{args.output}': {e.strerror}")
            return 1
    else:
        sys.stdout.buffer.write(text.encode("utf-8", "surrogateescape"))
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
