"""The commands' progress line: one line on stderr, rewritten while a long run goes on,
only on a terminal.  A thread reads the walk's counters (_du.Progress: bytes read, bytes
punched) twice a second; data flows one way, the walk never calls back."""
from __future__ import annotations

import contextlib
import sys
import threading
import time

from ._report import human

AFTER = 0.5  # seconds before the line appears: a short run shows none
EVERY = 0.25  # seconds between two updates


class ProgressLine:
    def __init__(self, prog: str) -> None:
        self.prog = prog
        self.on = sys.stderr is not None and sys.stderr.isatty()
        self.shown = False

    @contextlib.contextmanager
    def watching(self, counters, punched: str = ""):
        """Show *counters* while the block runs: bytes scanned and, if *punched* names it
        ("punched", "would punch"), bytes punched."""
        if not self.on:
            yield
            return
        stop = threading.Event()
        start = time.monotonic()

        def show() -> None:
            while not stop.wait(EVERY):
                if time.monotonic() - start >= AFTER:
                    read, done = counters.read()
                    text = f"{self.prog}: {human(read)} scanned"
                    if punched:
                        text += f", {human(done)} {punched}"
                    self._write(f"\r{text}\x1b[K")
        t = threading.Thread(target=show, name=f"{self.prog} progress", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()
            self.clear()

    def _write(self, text: str) -> None:
        try:
            sys.stderr.write(text)
            sys.stderr.flush()
            self.shown = True
        except (OSError, ValueError):
            self.on = False

    def clear(self) -> None:
        if self.shown:
            self._write("\r\x1b[K")
            self.shown = False
