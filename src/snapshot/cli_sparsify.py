"""snapshot-sparsify: punch the all-zero blocks out of snapshot files.

    snapshot-sparsify [-n|--dry-run] [--force] [-j N] [-h] PATH...

Prints, per PATH, the bytes freed (with -n: that would be freed) in du's units,
then the path.  Only whole filesystem blocks of zeros are punched, so the content
stays the same byte for byte, even if the run is interrupted.  A file that
another process has open is refused (see snapshot.sparsify).  Exit status: 0; 1
if a file was refused or failed (the others are still done); 2 for a usage
error; 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import _report, _size, _sparse
from ._progress import ProgressLine
from ._codes import DRY_RUN, PUNCH
from ._errors import file_error, walk_error
from ._version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; annotations stay strings (PEP 563)
    from typing import List, Optional

PROG = "snapshot-sparsify"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, add_help=False, description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("-n", "--dry-run", action="store_true", help="change nothing; print what would be freed")
    p.add_argument("--force", action="store_true",
                   help="punch files even where no lease can check that no other process has them open")
    p.add_argument("-j", "--workers", type=int, metavar="N",
                   help="threads walking and sparsifying (default: as many as help, up to 8 per CPU)")
    p.add_argument("-h", "--human-readable", action="store_true", help="sizes in powers of 1024, as du -h")
    return p


def _say(msg: str) -> None:
    try:
        print(f"{PROG}: {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Optional[List[str]] = None) -> int:
    """Run snapshot-sparsify with *argv* (default: sys.argv[1:]); returns the exit status."""
    progress = ProgressLine(PROG)
    try:
        return _main(argv, progress)
    except KeyboardInterrupt:
        progress.clear()
        _say("interrupted (the files are whole: only zero blocks were punched)")
        return 130
    except BrokenPipeError:
        from ._output import quiet_stdout
        quiet_stdout()
        return 141


def _main(argv: Optional[List[str]], progress: ProgressLine) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    if "" in args.paths:
        parser.error("an empty PATH")
    mode = DRY_RUN if args.dry_run else PUNCH
    unit = "h" if args.human_readable else "k"
    failed = False
    for path in args.paths:
        counters = _size._impl.Progress()
        with progress.watching(counters, "would punch" if args.dry_run else "punched"):
            r = _sparse.walk_blocks(path, mode, workers=args.workers, force=args.force, progress=counters)
        if r.error is not None:
            e = walk_error(*r.error)
            _say(f"cannot access '{_report.printable(os.fsdecode(e.filename))}': {e.strerror}")
            failed = True
        for status, err, where, fstype in sorted(r.failures, key=lambda f: f[2]):
            why = file_error(status, err, where, fstype, force="--force").strerror
            _say(f"'{_report.printable(os.fsdecode(where))}': {why}")
            failed = True
        if r.error is not None and not r.block_files:
            continue
        freed = r.punched if args.dry_run else r.before - r.after
        sys.stdout.write(f"{_report.format_size(freed, unit)}\t{path}\n")
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
