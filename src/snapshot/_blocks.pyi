# Stubs for the compiled zero-block scan; _pyblocks.py has the same functions.
from typing import Sequence
# Per file: (status, errno, allocated, allocated_after, data, zero, calls).
_Result = tuple[int, int, int, int, int, int, int]

def run(paths: list[bytes], idents: Sequence[tuple[int, int] | None], mode: int, block: int, workers: int,
        force: bool) -> list[_Result]: ...
def range_batch(path: bytes, block: int, start: int, limit: int) -> tuple[list[tuple[int, int]], int]: ...
