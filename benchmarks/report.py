"""The fleet report's own cost: `snapshot-du --snapshots BASE` against `dir_sizes(BASE)`
on the same base, side by side in one run, interleaved, warm cache.  Goal: at most 1.6x.

    python benchmarks/report.py [--snapshots 60000] [--rounds 9] [--base DIR]

Without --base, a fleet of --snapshots snapshot directories (benchmarks/fleet.py: six
files each, rootfs.meta included) is made in a temporary directory first (about a
minute for 60,000 here); with --base, an existing one is used as it is.

Two comparisons, both with the default workers (every CPU):
* in one process: report building and rendering (_report.build + table) against
  dir_sizes(BASE), which lists BASE and sizes every snapshot;
* whole commands: `snapshot-du --snapshots BASE` against a `python -c` that imports
  snapshot and calls dir_sizes(BASE), so start-up counts on both sides.

The report must agree with dir_sizes and read_meta before anything is timed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import snapshot  # noqa: E402
from snapshot import _meta, _report  # noqa: E402
from fleet import make_fleet  # noqa: E402


def check(base: str) -> None:
    sizes = snapshot.dir_sizes(base)
    report = _report.build(base)
    assert not report.errors, report.errors[:3]
    assert {r.name: r.totals[0] for r in report.rows} == sizes
    for r in report.rows[:: max(1, len(report.rows) // 50)]:
        m = snapshot.read_meta(base, r.name)
        assert (r.base_template, r.vcpus, r.memory_mb) == (m.base_template, m.vcpus, m.memory_mb)
        assert r.memory_ranges == os.lstat(os.path.join(base, r.name, snapshot.CH_MEM_RANGES_FILE)).st_blocks * 512


def without_reuse(fn):
    """fn as if every rootfs.meta were different: _meta's cache of decoded contents off."""
    def run():
        saved = _meta._DECODED_MAX
        _meta._DECODED.clear()
        _meta._DECODED_MAX = 0
        try:
            fn()
        finally:
            _meta._DECODED_MAX = saved
    return run


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--snapshots", type=int, default=60000)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--base", help="an existing fleet to use")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        base = args.base
        if base is None:
            base = os.path.join(tmp, "fleet")
            print(f"making {args.snapshots} snapshots in {base} ...", file=sys.stderr)
            make_fleet(base, args.snapshots)
        n = len(snapshot.dir_sizes(base))
        check(base)
        cli = [sys.executable, "-m", "snapshot", "--snapshots", base]
        sizes_cmd = [sys.executable, "-c", f"import snapshot; snapshot.dir_sizes({base!r})"]
        subprocess.run(cli, check=True, capture_output=True)  # warm the cache
        times: dict = {k: [] for k in ("dir_sizes", "report", "report, no metadata reuse", "cmd dir_sizes",
                                       "cmd snapshot-du")}
        for _ in range(args.rounds):
            times["dir_sizes"].append(timed(lambda: snapshot.dir_sizes(base)))
            times["report"].append(timed(lambda: _report.table(_report.build(base), "k")))
            times["report, no metadata reuse"].append(timed(without_reuse(lambda: _report.table(_report.build(base),
                                                                                                 "k"))))
            times["cmd dir_sizes"].append(timed(lambda: subprocess.run(sizes_cmd, check=True)))
            times["cmd snapshot-du"].append(timed(lambda: subprocess.run(cli, check=True, stdout=subprocess.DEVNULL)))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\n{n} snapshots, {args.rounds} rounds, medians, workers: the default (as many as help)\n")
        print("| what | seconds | per snapshot |")
        print("| --- | ---: | ---: |")
        for k, v in med.items():
            print(f"| {k} | {v:.3f} | {v / n * 1e6:.1f} µs |")
        inproc = med["report"] / med["dir_sizes"]
        cmd = med["cmd snapshot-du"] / med["cmd dir_sizes"]
        print("\n| goal | measured | target | met |")
        print("| --- | ---: | ---: | --- |")
        print(f"| report / dir_sizes, in one process | {inproc:.2f} | <= 1.6 | {'yes' if inproc <= 1.6 else 'NO'} |")
        print(f"| snapshot-du --snapshots / dir_sizes, whole commands | {cmd:.2f} | <= 1.6 | "
              f"{'yes' if cmd <= 1.6 else 'NO'} |")
        worst = med["report, no metadata reuse"] / med["dir_sizes"]
        print(f"| the same, every rootfs.meta different (no reuse) | {worst:.2f} | <= 1.6 | "
              f"{'yes' if worst <= 1.6 else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
