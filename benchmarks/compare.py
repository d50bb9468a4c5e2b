"""Side by side, in one run, interleaved: snapshot.dir_size / dir_sizes / usage,
the pure-Python walker, GNU du and ftsdu.c (compiled here with the system
compiler): -a is the C reference for our walker (the same descriptor-relative
system calls, -t N threads sharing one tree), and without -a it is glibc fts(3),
the walker we replaced.  Prints a Markdown table of medians and ratios.

    python benchmarks/compare.py [--rounds 15] [--fleet 2000] [--tree /usr]

Every contender must agree on the byte totals before anything is timed.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import snapshot  # noqa: E402
from snapshot import _pydu  # noqa: E402
from fleet import make_fleet  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def build_c(tmp: str) -> str:
    exe = os.path.join(tmp, "ftsdu")
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", "-pthread", "-o", exe, os.path.join(HERE, "ftsdu.c")], check=True)
    return exe


def run_c(exe, paths, threads=1, at=False, tree_threads=1):
    """(total bytes, seconds measured inside the C program); at: the descriptor-relative
    reference instead of fts, with tree_threads threads inside each tree."""
    args = ["-a", "-t", str(tree_threads)] if at else []
    out = subprocess.run([exe, "-j", str(threads)] + args + paths, check=True,
                         capture_output=True, text=True).stdout
    hi, lo, ns = (int(x) for x in out.split())
    return (hi << 64) + lo, ns / 1e9


def run_du(paths):
    """(total bytes, wall seconds) of `du -s -B1 -l`; du counts directories' own blocks too."""
    t = time.perf_counter()
    out = subprocess.run(["du", "-s", "-B1", "-l"] + paths, check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t
    return sum(int(line.split("\t")[0]) for line in out.splitlines()), wall


def dir_blocks(paths):
    """Bytes of the directories' own blocks (du counts them, dir_size does not), by GNU find."""
    out = subprocess.run(["find"] + paths + ["-type", "d", "-printf", "%b\n"], check=True,
                         capture_output=True, text=True).stdout
    return sum(int(x) for x in out.split()) * 512


def timed(fn):
    t = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--fleet", type=int, default=2000, help="snapshot directories in the generated fleet")
    ap.add_argument("--tree", default="/usr", help="a large real tree")
    ap.add_argument("--calls", type=int, default=100_000, help="dir_size calls for the memory check")
    args = ap.parse_args(argv)
    if snapshot.BACKEND != "openat":
        print("the compiled walker is not in use; nothing to compare", file=sys.stderr)
        return 1
    tmp = tempfile.mkdtemp(prefix="snapshot-bench-")
    try:
        exe = build_c(tmp)
        base = os.path.join(tmp, "fleet")
        names = make_fleet(base, args.fleet)
        fleet_paths = [os.path.join(base, n) for n in names]
        tree = os.path.abspath(args.tree)
        tree_base, tree_name = os.path.split(tree)
        empty = os.path.join(tmp, "empty")
        os.mkdir(empty)

        def loop_dir_size():
            return sum(snapshot.dir_size(base, n) for n in names)

        def loop_py():
            return sum(_pydu.dir_size(base, n) for n in names)

        fleet = {
            "C reference (openat), 1 thread": lambda: run_c(exe, fleet_paths, 1, at=True),
            "C reference (openat), 2 threads": lambda: run_c(exe, fleet_paths, 2, at=True),
            "C fts, 1 thread": lambda: run_c(exe, fleet_paths, 1),
            "GNU du -s -B1 -l": lambda: run_du(fleet_paths),
            "dir_size loop": lambda: timed(loop_dir_size),
            "dir_sizes, 1 worker": lambda: timed(lambda: sum(snapshot.dir_sizes(base, names, workers=1).values())),
            "dir_sizes, 2 workers": lambda: timed(lambda: sum(snapshot.dir_sizes(base, names, workers=2).values())),
            "dir_sizes, defaults": lambda: timed(lambda: sum(snapshot.dir_sizes(base, names).values())),
            "pure-Python walker loop": lambda: timed(loop_py),
        }
        big = {
            "C reference (openat), 1 thread": lambda: run_c(exe, [tree], 1, at=True),
            "C reference (openat), 2 threads": lambda: run_c(exe, [tree], 1, at=True, tree_threads=2),
            "C fts, 1 thread": lambda: run_c(exe, [tree], 1),
            "GNU du -s -B1 -l": lambda: run_du([tree]),
            "dir_size": lambda: timed(lambda: snapshot.dir_size(tree_base, tree_name)),
            "usage, workers=1": lambda: timed(lambda: snapshot.usage(tree, workers=1).allocated),
            "usage, defaults": lambda: timed(lambda: snapshot.usage(tree).allocated),
            "usage, workers=2": lambda: timed(lambda: snapshot.usage(tree, workers=2).allocated),
            "pure-Python walker": lambda: timed(lambda: _pydu.dir_size(tree_base, tree_name)),
        }
        # Agreement first (this also warms the caches).
        du_dirs = {"fleet": dir_blocks(fleet_paths), "tree": dir_blocks([tree])}
        for label, group in (("fleet", fleet), ("tree", big)):
            totals = {}
            for name, fn in group.items():
                total = fn()[0]
                totals[name] = total - du_dirs[label] if name.startswith("GNU du") else total
            if len(set(totals.values())) != 1:
                print(f"DISAGREE on {label}: {totals}", file=sys.stderr)
                return 1
            print(f"{label}: all agree on {next(iter(totals.values()))} bytes "
                  f"(du's total less {du_dirs[label]} bytes of directory blocks)", file=sys.stderr)
        du_start = statistics.median(run_du([empty])[1] for _ in range(args.rounds))

        times = {("fleet", k): [] for k in fleet}
        times.update({("tree", k): [] for k in big})
        for r in range(args.rounds):
            for label, group in (("fleet", fleet), ("tree", big)):
                items = list(group.items())
                items = items[r % len(items):] + items[:r % len(items)]  # rotate who goes first
                for name, fn in items:
                    t = fn()[1]
                    if name.startswith("GNU du"):
                        t = max(t - du_start, 0.0)  # less process start-up, as C's own clock excludes it
                    times[(label, name)].append(t)
        med = {k: statistics.median(v) for k, v in times.items()}

        # Memory: resident set before and after many dir_size calls, some failing.
        def rss_kib():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
        for _ in range(2000):
            snapshot.dir_size(base, names[0])
        rss0 = rss_kib()
        for i in range(args.calls):
            try:
                snapshot.dir_size(base, names[i % len(names)] if i % 10 else "missing")
            except FileNotFoundError:
                pass
        rss1 = rss_kib()

        n = len(names)
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
        fstype = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "--target", base], capture_output=True,
                                text=True).stdout.strip() or "?"
        print(f"\nMachine: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python "
              f"{platform.python_version()}, filesystem {fstype}; {args.rounds} rounds, interleaved, medians; "
              f"warm caches. du's time is less its start-up ({du_start * 1e3:.2f} ms).\n")
        print(f"Fleet: {n} snapshot directories (5 files each, sparse memory-ranges and rootfs.cow)\n")
        print("| contender | total ms | µs per snapshot | vs C reference 1 thread |")
        print("| --- | ---: | ---: | ---: |")
        c1 = med[("fleet", "C reference (openat), 1 thread")]
        for name in fleet:
            t = med[("fleet", name)]
            print(f"| {name} | {t * 1e3:.2f} | {t / n * 1e6:.2f} | {t / c1:.2f}x |")
        tn = subprocess.run(["find", tree], capture_output=True, text=True).stdout.count("\n")
        print(f"\nLarge tree: {tree} ({tn} entries)\n")
        print("| contender | ms | vs C reference | vs GNU du |")
        print("| --- | ---: | ---: | ---: |")
        tc, td = med[("tree", "C reference (openat), 1 thread")], med[("tree", "GNU du -s -B1 -l")]
        for name in big:
            t = med[("tree", name)]
            print(f"| {name} | {t * 1e3:.1f} | {t / tc:.2f}x | {t / td:.2f}x |")
        c_fleet_speedup = c1 / med[("fleet", "C reference (openat), 2 threads")]
        our_fleet_speedup = med[("fleet", "dir_sizes, 1 worker")] / med[("fleet", "dir_sizes, 2 workers")]
        c_tree_speedup = tc / med[("tree", "C reference (openat), 2 threads")]
        our_tree_speedup = med[("tree", "usage, workers=1")] / med[("tree", "usage, workers=2")]
        print("\n| goal | measured | target | met |")
        print("| --- | ---: | ---: | --- |")
        goals = [
            (f"{tree}: dir_size / GNU du", med[("tree", "dir_size")] / td, "<= 0.85", lambda x: x <= 0.85),
            (f"{tree}: dir_size / C reference", med[("tree", "dir_size")] / tc, "<= 1.10", lambda x: x <= 1.10),
            ("fleet: dir_size per snapshot / C reference", med[("fleet", "dir_size loop")] / c1, "<= 1.15",
             lambda x: x <= 1.15),
            (f"{tree}: usage 2-worker speedup / C reference 2-thread speedup",
             our_tree_speedup / c_tree_speedup, ">= 0.90", lambda x: x >= 0.90),
            ("fleet: dir_sizes 2-worker speedup / C reference 2-thread speedup",
             our_fleet_speedup / c_fleet_speedup, ">= 0.90", lambda x: x >= 0.90),
            (f"{tree}: usage with the defaults / C reference's best", med[("tree", "usage, defaults")]
             / min(tc, med[("tree", "C reference (openat), 2 threads")]), "<= 1.10", lambda x: x <= 1.10),
            ("fleet: dir_sizes with the defaults / C reference's best", med[("fleet", "dir_sizes, defaults")]
             / min(c1, med[("fleet", "C reference (openat), 2 threads")]), "<= 1.15", lambda x: x <= 1.15),
            (f"RSS growth over {args.calls} dir_size calls (KiB)", rss1 - rss0, "<= 0", lambda x: x <= 0),
        ]
        for label, value, target, ok in goals:
            shown = f"{value:.2f}" if isinstance(value, float) else str(value)
            print(f"| {label} | {shown} | {target} | {'yes' if ok(value) else 'NO'} |")
        print(f"\n(2-thread speedups: C reference on {tree} {c_tree_speedup:.2f}x, usage {our_tree_speedup:.2f}x; "
              f"C reference on the fleet {c_fleet_speedup:.2f}x, dir_sizes {our_fleet_speedup:.2f}x; "
              f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} KiB; "
              f"load average before the run {os.getloadavg()[0]:.2f})")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
