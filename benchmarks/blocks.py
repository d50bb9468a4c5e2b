"""Zero blocks, side by side in one run: scan_blocks against an origin-style full read
(benchmarks/zeroread.c, compiled here) and dd, sparsify against util-linux
`fallocate --dig-holes`.  Prints Markdown tables of medians and the goals.

    python benchmarks/blocks.py [--rounds 3] [--dir DIR]

The memory file is 8 GiB with 5% allocated (64 KiB regions, each 4 KiB block of
them data or zeros at random, seeded: about 200 MiB of each), as a paused VM's
memory-ranges; the dense file is 512 MiB of random bytes.  Both are in the page
cache when timed.  Every contender must agree first: the data bytes with the
full read, and after sparsify no zero block is left and the content is the same.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import snapshot

HERE = os.path.dirname(os.path.abspath(__file__))
GiB, MiB, K = 1 << 30, 1 << 20, 4096
REGION = 64 * 1024


def make_memory_file(path: str, size: int = 8 * GiB, share: float = 0.05, seed: int = 7) -> None:
    rng = random.Random(seed)
    regions = int(size // REGION * share)
    starts = sorted(rng.sample(range(size // REGION), regions))
    data_block = rng.randbytes(K)
    zero_block = bytes(K)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, size)
        for r in starts:
            chunk = b"".join(data_block if rng.random() < 0.5 else zero_block for _ in range(REGION // K))
            os.pwrite(fd, chunk, r * REGION)
        os.fsync(fd)
    finally:
        os.close(fd)


def build_c(tmp: str) -> str:
    exe = os.path.join(tmp, "zeroread")
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-o", exe, os.path.join(HERE, "zeroread.c")], check=True)
    return exe


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(MiB)
            if not b:
                return h.hexdigest()
            h.update(b)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", help="where to make the files (default: a temporary directory)")
    args = ap.parse_args(argv)
    dig = shutil.which("fallocate")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        exe = build_c(tmp)
        mem, dense = os.path.join(tmp, "memory-ranges"), os.path.join(tmp, "dense")
        make_memory_file(mem)
        with open(dense, "wb") as f:
            f.write(os.urandom(MiB) * 512)
        scan = snapshot.scan_blocks(mem)
        full = subprocess.run([exe, mem], check=True, capture_output=True, text=True).stdout.split()
        assert int(full[0]) == scan.data, (full, scan)  # the full read agrees on the data bytes
        sha_mem = sha(mem)
        t: dict = {k: [] for k in ("full read (C, origin-style)", "scan_blocks, 8 GiB sparse", "dd bs=1M, 512 MiB",
                                   "scan_blocks, 512 MiB dense", "fallocate --dig-holes", "sparsify",
                                   "sparsify(dry_run=True)")}
        punched = 0
        dry_vs_real: list = []  # (allocated_after the dry run predicted, what the real run left)
        freed: list = []  # (sparsify, dig-holes): bytes each freed of the same file
        for r in range(args.rounds):
            # The scan first, after an untimed one: the full read leaves 8 GiB of page-cache pages
            # of zeros (the holes) behind it, and the first call after that pays for their clean-up.
            snapshot.scan_blocks(mem)
            t["scan_blocks, 8 GiB sparse"].append(timed(lambda: snapshot.scan_blocks(mem))[0])
            t["full read (C, origin-style)"].append(int(subprocess.run(
                [exe, mem], check=True, capture_output=True, text=True).stdout.split()[1]) / 1e9)
            snapshot.scan_blocks(dense)
            t["dd bs=1M, 512 MiB"].append(timed(lambda: subprocess.run(
                ["dd", f"if={dense}", "of=/dev/null", "bs=1M"], check=True, capture_output=True))[0])
            t["scan_blocks, 512 MiB dense"].append(timed(lambda: snapshot.scan_blocks(dense))[0])
            snapshot.scan_blocks(mem)
            t["sparsify(dry_run=True)"].append(timed(lambda: snapshot.sparsify(mem, dry_run=True))[0])
            # Twin files made alike, synced, then punched back to back, in alternating order.
            twin, ours = os.path.join(tmp, "twin"), os.path.join(tmp, "ours")
            make_memory_file(twin)
            make_memory_file(ours)
            os.sync()
            predicted = snapshot.sparsify(ours, dry_run=True).allocated_after

            def ours_run():
                return snapshot.sparsify(ours, workers=1)

            def dig_run():
                return subprocess.run([dig, "--dig-holes", twin], check=True) if dig else None
            for name, fn in ((("sparsify", ours_run), ("fallocate --dig-holes", dig_run)) if r % 2 == 0
                             else (("fallocate --dig-holes", dig_run), ("sparsify", ours_run))):
                if fn is dig_run and not dig:
                    continue
                secs, res = timed(fn)
                t[name].append(secs)
                if name == "sparsify":
                    punched = res.punched
                    dry_vs_real.append((predicted, res.allocated_after))
            assert snapshot.scan_blocks(ours).zero == 0 and sha(ours) == sha_mem
            before = snapshot.scan_blocks(mem).allocated
            if dig:
                freed.append((before - os.lstat(ours).st_blocks * 512, before - os.lstat(twin).st_blocks * 512))
                assert os.lstat(ours).st_blocks <= os.lstat(twin).st_blocks, "sparsify freed less than dig-holes"
                os.unlink(twin)
            os.unlink(ours)
        med = {k: statistics.median(v) for k, v in t.items() if v}
        print(f"\n8 GiB memory file: {scan.allocated / MiB:.0f} MiB allocated, {scan.data / MiB:.0f} MiB data, "
              f"{scan.zero / MiB:.0f} MiB zero; {args.rounds} rounds, medians; sparsify punched {punched / MiB:.0f} MiB\n")
        print("| contender | seconds |")
        print("| --- | ---: |")
        for k, v in med.items():
            print(f"| {k} | {v:.4f} |")
        goals = [("full read / scan_blocks (sparse)", med["full read (C, origin-style)"]
                  / med["scan_blocks, 8 GiB sparse"], ">= 20", lambda x: x >= 20),
                 ("scan_blocks / dd (dense)", med["scan_blocks, 512 MiB dense"] / med["dd bs=1M, 512 MiB"], "<= 1.5",
                  lambda x: x <= 1.5)]
        if dig:
            goals += [("sparsify / fallocate --dig-holes", med["sparsify"] / med["fallocate --dig-holes"], "<= 1.10",
                       lambda x: x <= 1.10),
                      ("fallocate --dig-holes / sparsify(dry_run)", med["fallocate --dig-holes"]
                       / med["sparsify(dry_run=True)"], ">= 20", lambda x: x >= 20)]
        predicted, real = dry_vs_real[-1]
        print(f"\nThe dry run predicted allocated_after = {predicted:,} bytes; the real run left {real:,} "
              f"({real - predicted:+,} bytes, {(real - predicted) / max(predicted, 1):+.3%}: the extent tree grew)")
        if freed:
            ours_freed, dig_freed = freed[-1]
            print(f"sparsify freed {ours_freed:,} bytes; fallocate --dig-holes freed {dig_freed:,}")
        print("\n| goal | measured | target | met |")
        print("| --- | ---: | ---: | --- |")
        for label, value, target, ok in goals:
            print(f"| {label} | {value:.2f} | {target} | {'yes' if ok(value) else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
