"""snapshot-du: du -s for snapshot directories, with a fleet report.

    snapshot-du [-s] [-h|-b|-k|-m|--si|-B SIZE] [--apparent-size] [-l] [-x] [-c] [-0] [-t SIZE]
                [--shared] [--zero] [--json] [-j N] [PATH...]
    snapshot-du --snapshots BASE [-h|-b|-k|-m|--si|-B SIZE] [-t SIZE] [-0] [--sort KEY] [-r]
                [--shared] [--zero] [--json|--prometheus] [-o FILE]

Sizes count non-directories only, as snapshot.dir_size does (du -s also counts
the directories' own blocks).  No PATH means ".".  Exit status: 0; 1 if
anything could not be read or written (the rest is still reported); 2 for a
usage error; 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import _output, _report, _size, _units
from ._codes import ALL_FILES, KEEP_GOING, NO_BLOCKS, RECORDS, SCAN
from ._errors import file_error, walk_error
from ._paths import CH_MEM_RANGES_FILE, ROOTFS_FILE_NAME, ROOTFS_META_NAME
from ._size import USAGE_FIELDS, flags, usage_values, walk_paths
from ._version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; annotations stay strings (PEP 563)
    from typing import List, Optional

PROG = "snapshot-du"
MAX_ERRORS = 20  # error lines printed in full; past them, one line gives the count


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, add_help=False, description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="*", metavar="PATH")
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("-s", "--summarize", action="store_true",
                   help="accepted for du's habit; each PATH already gives one line")
    # The last of -h, -b, -k, -m, --si, -B wins, as in du; -b also means --apparent-size.
    p.add_argument("-h", "--human-readable", action=_UnitAction, unit=_units.HUMAN,
                   help="print sizes in powers of 1024 (e.g. 1.5K 234M 2.0G), as du -h")
    p.add_argument("--si", action=_UnitAction, unit=_units.HUMAN_SI,
                   help="like -h, but in powers of 1000 (e.g. 1.6k 246M 2.2G)")
    p.add_argument("-b", "--bytes", action=_UnitAction, unit=_units.BYTES,
                   help="print sizes in bytes; with PATHs this is --apparent-size in bytes, as du -b")
    p.add_argument("-k", action=_UnitAction, unit=_units.KIB, help="like --block-size=1K (the default)")
    p.add_argument("-m", action=_UnitAction, unit=_units.MIB, help="like --block-size=1M")
    p.add_argument("-B", "--block-size", action=_UnitAction, metavar="SIZE",
                   help="print sizes in units of SIZE bytes, rounded up, as du -B: 1K, M, 4KiB, 1MB, "
                        "human-readable, si ... (a SIZE without a number, like M, is printed after each size)")
    p.add_argument("--apparent-size", action="store_true", help="print apparent sizes (st_size) for PATHs")
    p.add_argument("-t", "--threshold", action=_ThresholdAction, metavar="SIZE",
                   help="leave out sizes below SIZE bytes if positive, above -SIZE if negative (du -t); "
                        "with --snapshots, by allocated size")
    p.add_argument("-0", "--null", action="store_true", help="end each output line with NUL, not newline")
    p.add_argument("-d", "--max-depth", type=_depth, metavar="N",
                   help="with PATHs: a line for every directory N or fewer levels below PATH (du -d); "
                        "-d 0 is -s")
    p.add_argument("-a", "--all", action="store_true", help="with PATHs: a line for files too, as du -a")
    p.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                   help="skip files and directories whose path matches the shell PATTERN (du --exclude)")
    p.add_argument("--sort", choices=_report.SORT_KEYS,
                   help="with --snapshots: order rows by this column, largest first (name: A to Z); "
                        "default allocated")
    p.add_argument("-r", "--reverse", action="store_true", help="with --snapshots: reverse the order")
    p.add_argument("-l", "--count-links", action="store_true", help="count sizes many times if hard linked")
    p.add_argument("-x", "--one-file-system", action="store_true", help="skip directories on other file systems")
    p.add_argument("-c", "--total", action="store_true", help="produce a grand total for PATHs")
    p.add_argument("--snapshots", metavar="BASE", help="a table of every snapshot directory in BASE")
    p.add_argument("--shared", action="store_true",
                   help="also report bytes in shared (reflinked) extents and exclusive bytes, from FIEMAP")
    p.add_argument("--zero", action="store_true",
                   help="also report allocated bytes in blocks of only zeros (what snapshot-sparsify frees); "
                        "reads the data")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON document, sizes in bytes")
    fmt.add_argument("--prometheus", action="store_true",
                     help="with --snapshots: the Prometheus text format, for node_exporter's textfile collector")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write to FILE: a regular file is replaced atomically (temp file + rename)")
    p.add_argument("-j", "--workers", type=int, metavar="N",
                   help="threads: per snapshot with --snapshots, inside each tree with PATHs (default: as many as help, up to 8 per CPU)")
    return p


def _depth(text: str) -> int:
    """du -d N: a whole number, 0 or more, in C's syntax (strtoul's base 0: 010 is 8, 0x10 16)."""
    t = text.lstrip(" \t\n\v\f\r")
    sign, t = (t[0], t[1:]) if t[:1] and t[:1] in "+-" else ("+", t)
    base = 16 if t[:2].lower() == "0x" else 8 if t[:1] == "0" and len(t) > 1 else 10
    try:
        n = int(t[2:] if base == 16 else t, base)
    except ValueError:
        n = -1
    if sign == "-" or n < 0 or n >= 1 << 63:
        raise argparse.ArgumentTypeError(f"invalid maximum depth '{text}'")
    return n


class _UnitAction(argparse.Action):
    """-h, -b, -k, -m, --si, -B SIZE: the last one given sets the unit, as in du; -b also
    sets --apparent-size, which a later unit does not undo (du -b -h: apparent, human)."""

    def __init__(self, option_strings, dest, unit=None, **kw) -> None:
        super().__init__(option_strings, "unit", nargs=None if unit is None else 0, **kw)
        self.unit = unit

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        unit = self.unit
        if unit is None:
            try:
                unit = _units.parse_block_size(values)
            except _units.SizeError as e:
                parser.error(e.message(option_string or "-B", values))
        if self.unit is _units.BYTES:  # -b (not -B 1)
            namespace.apparent_size = True
        namespace.unit = unit


class _ThresholdAction(argparse.Action):
    """-t SIZE: bytes, negative too, in du's syntax."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        try:
            namespace.threshold = _units.parse_threshold(values)
        except _units.SizeError as e:
            if values.startswith("-") and e.kind == "invalid" and _is_minus_zero(values):
                parser.error("invalid --threshold argument '-0'")  # du's words, whatever the zero
            parser.error(e.message(option_string or "-t", values))


def _is_minus_zero(s: str) -> bool:
    try:
        return _units.parse_threshold(s[1:]) == 0
    except _units.SizeError:
        return False


# Options that take a value.  argparse reads a value that starts with "-" as an option
# (-t -1M, -B -1): _attach_values joins such a value to its option first, as getopt would
# take it.
_VALUE_SHORT = "tBjod"
_VALUE_LONG = ("--threshold", "--block-size", "--workers", "--output", "--snapshots", "--sort", "--max-depth",
               "--exclude")
_FLAG_SHORT = "sblxchkm0ra"


def _attach_values(argv: List[str]) -> List[str]:
    out: List[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            out += argv[i:]
            break
        if i + 1 < len(argv) and argv[i + 1].startswith("-") and _takes_value(a):
            out.append(a + ("=" if a.startswith("--") else "") + argv[i + 1])
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _takes_value(a: str) -> bool:
    """Whether *a* is an option that takes the next argument as its value (-t, -ct, --threshold)."""
    if a.startswith("--"):
        return a in _VALUE_LONG
    return (len(a) >= 2 and a[0] == "-" and a[-1] in _VALUE_SHORT
            and all(c in _FLAG_SHORT for c in a[1:-1]))


class _OutputFailed(Exception):
    """Writing the output failed (not a broken pipe): the OSError is its cause."""


class _Errors:
    """stderr messages: the first MAX_ERRORS in full, then only counted."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, msg: str) -> None:
        self.count += 1
        if self.count <= MAX_ERRORS:
            _say(msg)

    def close(self) -> None:
        if self.count > MAX_ERRORS:
            _say(f"{self.count - MAX_ERRORS} more errors not shown ({self.count} in all)")


def _say(msg: str) -> None:
    try:
        print(f"{PROG}: {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass  # no stderr to report on: the exit status still tells


def _paths_mode(args, warn, emit) -> bool:
    """du over PATHs, each PATH's lines emitted as soon as its walk is done; True if one
    failed.  As du, a directory that cannot be read is reported and the rest still counted:
    the lines show what could be read."""
    apparent = args.apparent_size
    unit = _unit_key(args.unit)
    end = "\0" if args.null else "\n"
    lines = args.max_depth is not None or args.all or args.exclude  # du's lines, from the walk's records
    walk_flags = flags(args.count_links, args.one_file_system, args.shared) | KEEP_GOING
    if lines:
        walk_flags |= RECORDS | (ALL_FILES if args.all else 0)
    depth = args.max_depth if args.max_depth is not None else (1 << 62 if args.all else 0)
    exclude = [os.fsencode(p) for p in args.exclude]
    failed = False
    records = []
    total = total_shared = total_exclusive = total_zero = 0
    progress = _zero_progress(args)
    for path in args.paths:
        path = _trailing_slashes(path)
        counters = _size._impl.Progress() if progress else None
        with progress.watching(counters) if progress else _nothing():
            # The walk's sums, not a Usage: dataclasses would cost more start-up time than the walk.
            r = walk_paths([os.fsencode(path)], walk_flags, args.workers, blocks=SCAN if args.zero else NO_BLOCKS,
                           max_depth=depth, exclude=exclude, progress=counters)[0][0]
        problems = _problems(r, path)
        for msg in problems:
            warn(msg)
        failed = failed or bool(problems)
        if r.error is not None:
            continue
        if lines:
            shown = _du_lines(r, path, apparent, depth if args.all else -1)
            total += shown[-1][1] if shown and shown[-1][0] == path else 0
            for where, size in shown:
                if args.threshold is None or _units.shown(size, args.threshold):
                    if args.json:
                        records.append({**_named_path(where), "size": size})
                    else:
                        emit(f"{_report.format_size(size, unit)}\t{where}{end}")
            continue
        u = dict(zip(USAGE_FIELDS, usage_values(r, args.shared)))
        size = u["apparent"] if apparent else u["allocated"]
        total += size
        cols = [_report.format_size(size, unit)]
        if args.shared:
            total_shared += u["shared"] or 0
            total_exclusive += u["exclusive"] or 0
            cols += [_report.format_size(u["shared"], unit), _report.format_size(u["exclusive"], unit)]
        zero = None
        if args.zero:
            zero = None if r.failures else r.zero  # a file that could not be read: no figure
            total_zero += zero or 0
            cols.append(_report.format_size(zero, unit))
        if args.threshold is not None and not _units.shown(size, args.threshold):
            continue  # left out, as du -t leaves it out; the total still counts it
        if args.json:
            record = _named_path(path)
            record.update(size=size, **u)
            if args.zero:
                record["zero"] = zero
            if problems:
                record["errors"] = problems  # and size is what could be read, as du prints it
            records.append(record)
        else:
            emit("\t".join(cols + [path]) + end)  # as du prints it: the caller's own text
    if args.json:
        doc = {"size": "apparent" if apparent else "allocated", "paths": records, "total": total}
        if args.shared:
            doc.update(total_shared=total_shared, total_exclusive=total_exclusive)
        if args.zero:
            doc["total_zero"] = total_zero
        import json  # only here: start-up time
        emit(json.dumps(doc, indent=1) + "\n")
    elif args.total:
        cols = [_report.format_size(total, unit)]
        if args.shared:  # each column's total is the sum of the rows above it
            cols += [_report.format_size(total_shared, unit), _report.format_size(total_exclusive, unit)]
        if args.zero:
            cols.append(_report.format_size(total_zero, unit))
        emit("\t".join(cols + ["total"]) + end)
    return failed


def _trailing_slashes(path: str) -> str:
    """*path* as du names it: two or more trailing slashes trimmed to one (gnulib's fts_open
    does this for paths longer than two characters, so "//" stays and "///" is "/")."""
    end = len(path)
    if end > 2 and path[-1] == "/":
        while end > 1 and path[end - 2] == "/":
            end -= 1
    return path[:end]


def _named_path(path: str) -> dict:
    record: dict = {}
    _report._json_name(record, "path", path)
    return record


def _problems(r, path: str) -> list:
    """du's messages for what the walk could not read (it went on), or for why it failed."""
    out = [f"cannot {'read directory' if is_dir else 'access'} '{_report.printable(os.fsdecode(where))}': "
           f"{os.strerror(err)}" for err, where, is_dir in r.errors]
    for status, err, where, fstype in r.failures:
        e = file_error(status, err, where, fstype, force="--force")
        out.append(f"cannot read '{_report.printable(os.fsdecode(where))}': {e.strerror}")
    if r.error is not None:
        e = walk_error(*r.error)
        shown = path if e.filename is None else os.fsdecode(e.filename)
        out.append(f"cannot access '{_report.printable(shown)}': {e.strerror}")
    return out


def _du_lines(r, path: str, apparent: bool, file_depth: int) -> list:
    """[(path, size)] as du prints them, from the walk's records: each entry after what is
    below it, a directory's entries in their listing order, directories' sizes the sums of
    everything below them (not their own blocks: see the README).  A file with several links
    counts once, at its first name in du's order; with -a it has a line there if it is at
    most *file_depth* deep."""
    recs = r.records
    if not recs:
        return []  # the path itself was excluded: du prints nothing for it
    recs = _with_links(recs, r.links, file_depth)
    size = 4 if apparent else 3
    kids: dict = {}
    for rec in recs:
        kids.setdefault(rec[0], []).append(rec)
    for group in kids.values():
        group.sort(key=lambda rec: rec[1])
    base = path.rstrip("/") or "/"  # as fts names what is below "dir/": "dir/x"
    out: list = []

    def visit(rec, where: str, below: str) -> int:
        """Append rec's subtree, rec last; returns its size (a directory's record holds its own
        files already; its subdirectories' sizes are added).  Recursion as deep as -d asks."""
        total = rec[size]
        if rec[5] >= 0:  # a directory: its entries first, in listing order
            for kid in kids.get(rec[5], ()):
                kid_size = visit(kid, f"{below}/{os.fsdecode(kid[2])}", f"{below}/{os.fsdecode(kid[2])}")
                if kid[5] >= 0:
                    total += kid_size
        out.append((where, total))
        return total

    visit(kids[-1][0], path, base if base != "/" else "")
    return out


def _with_links(recs: list, links: list, file_depth: int) -> list:
    """*recs* with each file that has several links counted at its first name in du's order
    (the least listing places from the root down, as du's depth-first walk meets them)."""
    if not links:
        return recs
    first: dict = {}
    for link in links:
        key = link[:2]
        if key not in first or link[2] < first[key][2]:
            first[key] = link
    by_id = {rec[5]: list(rec) for rec in recs if rec[5] >= 0}
    out = [rec for rec in recs if rec[5] < 0]
    for _, _, places, allocated, apparent, rec, index, name in first.values():
        by_id[rec][3] += allocated
        by_id[rec][4] += apparent
        if len(places) <= file_depth:
            out.append((rec, index, name, allocated, apparent, -1))
    return [tuple(rec) for rec in by_id.values()] + out


def _unit_key(unit) -> object:
    """The unit as _report names its fast cases ("k", "b", "h"), else the _units.Unit."""
    if unit is None or unit == _units.KIB:
        return "k"
    return {_units.BYTES: "b", _units.HUMAN: "h"}.get(unit, unit)


def _zero_progress(args):
    """--zero reads the data: on a terminal, a progress line (None otherwise)."""
    if not args.zero:
        return None
    from ._progress import ProgressLine  # only here: most runs read no data
    line = ProgressLine(PROG)
    return line if line.on else None


def _nothing():
    import contextlib
    return contextlib.nullcontext()


def _snapshots_mode(args, warn, emit) -> bool:
    progress = _zero_progress(args)
    counters = _size._impl.Progress() if progress else None
    try:
        with progress.watching(counters) if progress else _nothing():
            report = _report.build(args.snapshots, workers=args.workers, shared=args.shared,
                                   count_links=args.count_links, one_file_system=args.one_file_system,
                                   zero=args.zero, progress=counters)
    except OSError as e:
        warn(f"cannot access '{_report.printable(args.snapshots)}': {e.strerror}")
        return True
    _warn_if_a_snapshot(args.snapshots)
    for msg in report.errors:
        warn(msg)
    if args.sort is not None or args.reverse:
        report.sort(args.sort or "allocated", args.reverse)
    if args.threshold is not None:
        report.select(args.threshold)
    if args.json:
        emit(_report.as_json(report))
    elif args.prometheus:
        import time
        emit(_report.prometheus(report, timestamp=time.time()))
    else:
        emit(_report.table(report, _unit_key(args.unit), "\0" if args.null else "\n"))
    return bool(report.errors)


def _warn_if_a_snapshot(base: str) -> None:
    """--snapshots given one snapshot, not the directory of them: say so (a warning only:
    the exit status is the report's)."""
    for file in (ROOTFS_FILE_NAME, ROOTFS_META_NAME, CH_MEM_RANGES_FILE):
        try:
            os.lstat(os.path.join(base, file))
        except OSError:
            continue
        _say(f"warning: '{_report.printable(base)}' holds {file}: it looks like a snapshot itself; "
             "--snapshots sizes the snapshots in BASE, each of its directories")
        return


def main(argv: Optional[List[str]] = None) -> int:
    """Run snapshot-du with *argv* (default: sys.argv[1:]); returns the exit status."""
    errors = _Errors()
    try:
        return _main(argv, errors)
    except KeyboardInterrupt:
        _say("interrupted")
        return 130
    except BrokenPipeError:  # the reader went away (| head): stop quietly, as du does
        _output.quiet_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for du
    finally:
        errors.close()


def _main(argv: Optional[List[str]], warn) -> int:
    parser = _parser()
    args = parser.parse_args(_attach_values(sys.argv[1:] if argv is None else list(argv)))
    if args.snapshots is not None and args.paths:
        parser.error("--snapshots BASE takes no PATHs")
    if args.snapshots is not None and (args.max_depth is not None or args.all or args.exclude):
        parser.error("-d, -a and --exclude go with PATHs")
    if (args.max_depth is not None or args.all or args.exclude) and (args.shared or args.zero):
        parser.error("--shared and --zero give one line per PATH: not with -d, -a or --exclude")
    if args.summarize and args.all:
        parser.error("cannot both summarize and show all entries")
    if args.summarize and args.max_depth:
        parser.error(f"summarizing conflicts with --max-depth={args.max_depth}")
    if args.snapshots == "":
        parser.error("--snapshots needs a directory")
    if args.prometheus and args.snapshots is None:
        parser.error("--prometheus goes with --snapshots BASE")
    if (args.sort is not None or args.reverse) and args.snapshots is None:
        parser.error("--sort and --reverse go with --snapshots BASE")
    if args.sort == "zero" and not args.zero:
        parser.error("--sort zero needs --zero")
    if args.sort == "exclusive" and not args.shared:
        parser.error("--sort exclusive needs --shared")
    if args.null and (args.json or args.prometheus):
        parser.error("-0 ends lines of the table or of PATH lines, not --json or --prometheus")
    if args.threshold is not None and args.prometheus:
        parser.error("--threshold would drop series from --prometheus")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.output == "":
        parser.error("-o needs a file name")
    if args.snapshots is None and not args.paths:
        args.paths = ["."]
    if args.output is not None:  # all at once, then one atomic write
        chunks: List[str] = []
        emit = chunks.append
    else:
        try:
            out = _output.Stdout()
        except OSError as e:
            warn(f"cannot write to standard output: {e.strerror}")
            return 1

        def emit(text: str) -> None:
            try:
                out.write(text.encode("utf-8", "surrogateescape"))
                out.flush()
            except BrokenPipeError:
                raise
            except (OSError, ValueError) as e:  # ValueError: stdout was closed
                raise _OutputFailed("standard output") from e
    try:
        mode = _snapshots_mode if args.snapshots is not None else _paths_mode
        failed = mode(args, warn, emit)
        if args.output is not None:
            try:
                _output.write_file(args.output, "".join(chunks).encode("utf-8", "surrogateescape"))
            except OSError as e:
                raise _OutputFailed(f"'{_report.printable(args.output)}'") from e
    except _OutputFailed as f:
        cause = f.__cause__
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        warn(f"cannot write to {f}: {reason}")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
