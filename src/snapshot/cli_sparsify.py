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
import time

from . import _pyblocks, _report, _sparse
from ._version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; annotations stay strings (PEP 563)
    from typing import List, Optional

PROG = "snapshot-sparsify"
PROGRESS_AFTER = 0.5  # seconds before a progress line appears (on a terminal only)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, add_help=False, description=__doc__.split("\n\n")[0])
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    p.add_argument("-n", "--dry-run", action="store_true", help="change nothing; print what would be freed")
    p.add_argument("--force", action="store_true",
                   help="punch files even where no lease can check that no other process has them open")
    p.add_argument("-j", "--workers", type=int, metavar="N", help="files sparsified at once (default: all CPUs)")
    p.add_argument("-h", "--human-readable", action="store_true", help="sizes in powers of 1024, as du -h")
    return p


class _Progress:
    """One line on stderr, rewritten, while a long run goes on: only on a terminal."""

    def __init__(self) -> None:
        self.on = sys.stderr is not None and sys.stderr.isatty()
        self.start = time.monotonic()
        self.shown = False

    def update(self, files: int, total: int, freed: int) -> None:
        if self.on and time.monotonic() - self.start >= PROGRESS_AFTER:
            sys.stderr.write(f"\r{PROG}: {files}/{total} files, {_report.human(freed)} freed\x1b[K")
            sys.stderr.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False


def _say(msg: str) -> None:
    try:
        print(f"{PROG}: {msg}", file=sys.stderr, flush=True)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Optional[List[str]] = None) -> int:
    """Run snapshot-sparsify with *argv* (default: sys.argv[1:]); returns the exit status."""
    progress = _Progress()
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


def _main(argv: Optional[List[str]], progress: _Progress) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    if "" in args.paths:
        parser.error("an empty PATH")
    workers = _sparse._workers(args.workers, 1 << 30)
    mode = _pyblocks.DRY_RUN if args.dry_run else _pyblocks.PUNCH
    unit = "h" if args.human_readable else "k"
    failed = False
    for path in args.paths:
        try:
            files, idents, _ = _sparse._files(os.fsencode(path))
        except OSError as e:
            _say(f"cannot access '{_report.printable(path)}': {e.strerror}")
            failed = True
            continue
        results: list = []
        for i in range(0, len(files), workers):  # a batch at a time, for the progress line
            results += _sparse._impl.run(files[i:i + workers], idents[i:i + workers], mode, 4096, workers,
                                         args.force)
            progress.update(len(results), len(files), sum(r[5] for r in results if r[0] == _pyblocks.DONE))
        progress.clear()
        try:
            done = _sparse.summarize(files, results, args.dry_run)
        except OSError as first:
            done = first.sparsified  # type: ignore[attr-defined]
            for p, r in zip(files, results):
                if r[0] != _pyblocks.DONE and not (r[0] == _pyblocks.FAILED and r[1] in _sparse.GONE):
                    why = _sparse._failure(r[0], r[1], p).strerror
                    _say(f"'{_report.printable(os.fsdecode(p))}': {why}")
            failed = True
        freed = done.punched if args.dry_run else done.allocated_before - done.allocated_after
        sys.stdout.write(f"{_report.format_size(freed, unit)}\t{path}\n")
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
