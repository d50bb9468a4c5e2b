"""How long another process's open() waits while snapshot-sparsify punches a 1 GiB run of
written zeros, on ext4 (this checkout's filesystem, or --dir) and on a tmpfs (root only).

    python benchmarks/lease_wait.py [--rounds 5] [--dir DIR]

The puncher holds a write lease; an opener's open() blocks until the lease is let go.
snapshot-sparsify confirms its lease after every 1 MiB read and before every punch of at
most 8 MiB (README, "Never race a writer"), so the open should return within one chunk's
read or one piece's punch.  Each round writes the file anew (1 GiB of zeros and 4 KiB of
data, page cache warm), starts `snapshot-sparsify -j 1 FILE`, waits until it has read 64 MiB
(/proc/PID/io), then times open(FILE, O_RDONLY) from this process.  The goal (issue 17): a
median wait of at most 5 ms on both filesystems.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

MIB = 1 << 20
SPARSIFY = os.path.join(os.path.dirname(sys.executable), "snapshot-sparsify")


def make(path: str, size: int = 1 << 30) -> None:
    buf = bytes(MIB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, size, MIB):
            os.pwrite(fd, buf, off)
        os.pwrite(fd, b"d" * 4096, size)
    finally:
        os.close(fd)


def rchar(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/io") as f:
            return int(f.read().split("rchar: ")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return -1


def one_wait(path: str) -> float:
    """Seconds an open() waited while the punching went on (None if it ended first)."""
    make(path)
    p = subprocess.Popen([SPARSIFY, "-j", "1", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while rchar(p.pid) < 64 * MIB and p.poll() is None:
            time.sleep(0.0001)
        if p.poll() is not None:
            return None
        t = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        waited = time.perf_counter() - t
        os.close(fd)
        return waited
    finally:
        p.wait()


def measure(where: str, rounds: int) -> list:
    path = os.path.join(where, "zeros")
    waits = [w for w in (one_wait(path) for _ in range(rounds)) if w is not None]
    os.unlink(path)
    return waits


def tmpfs(tmp: str):
    """A 1.2 GiB tmpfs inside *tmp*, or None (not root, or no mount)."""
    if os.geteuid() != 0:
        return None
    where = os.path.join(tmp, "tmpfs")
    os.mkdir(where)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200m", "tmpfs", where]).returncode != 0:
        return None
    return where


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", default=os.path.dirname(os.path.abspath(__file__)),
                    help="where the ext4 file goes (default: beside this script)")
    args = ap.parse_args()
    if not os.path.exists(SPARSIFY):
        print("snapshot-sparsify is not installed beside this Python", file=sys.stderr)
        return 1
    results = {}
    tmp = tempfile.mkdtemp(prefix="lease-wait-", dir=args.dir)
    try:
        results["ext4 (or --dir's filesystem)"] = measure(tmp, args.rounds)
        mounted = tmpfs(tmp)  # its mount point inside tmp: removed with it
        if mounted is None:
            print("tmpfs: skipped (needs root to mount one)")
        else:
            try:
                results["tmpfs"] = measure(mounted, args.rounds)
            finally:
                subprocess.run(["umount", mounted])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nopen() while snapshot-sparsify punches 1 GiB of zeros: {args.rounds} rounds\n")
    print("| filesystem | median ms | max ms | rounds caught | goal: median <= 5 ms |")
    print("| --- | ---: | ---: | ---: | --- |")
    for name, waits in results.items():
        if not waits:
            print(f"| {name} | - | - | 0 | - |")
            continue
        med = statistics.median(waits) * 1e3
        print(f"| {name} | {med:.2f} | {max(waits) * 1e3:.2f} | {len(waits)} | {'yes' if med <= 5 else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
