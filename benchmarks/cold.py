"""Cold caches: GNU du, snapshot-du, dir_sizes and the C reference (ftsdu.c -a) on an ext4 image,
unmounted, with the page, dentry and inode caches dropped, and remounted before every timed run.

    /work/shared/tools/jail .venv/bin/python benchmarks/cold.py [--rounds 3] [--work DIR] [--keep]
        [--only tree|fleet|sweep|inode]

Needs root (losetup, mount, /proc/sys/vm/drop_caches): without it, it says so and exits 0.

The image (an 8 GiB sparse file, ext4, WORK/cold.img) is built once and reused while the
parameters recorded beside it (WORK/cold.json) match; building took 20 s here. It holds:
- usr/: a replica of /usr: its directories, names and symlinks; hard links become separate files.
  Each regular file keeps its st_size, its first 4 KiB block written and the rest a hole
  (--data-blocks), so that the total all contenders must agree on counts every file. File data
  does not change what a cold walk reads: an all-holes replica (--data-blocks 0) cost the same
  read requests and bytes (about 17,000 and 97.5 MiB for 139,433 entries), mostly one
  directory block per directory plus the inode tables. Directories are made first, then files
  and symlinks in /usr's inode order, so that inode order within a directory follows /usr's
  install history instead of name order.
- fleet/: 3,000 snapshot directories as benchmarks/fleet.py makes them (rootfs.meta included).
- inode/nN/: for the inode-order experiment, 30,000 empty files per N in directories of N entries.

The image is attached with `losetup --direct-io=on` (no second copy of its blocks in the page
cache) and mounted read-only for timing (no atime writes). Before every timed run: umount,
`echo 3 > /proc/sys/vm/drop_caches`, mount, and the contender's program is run once on an empty
directory outside the image, so that its own executable and libraries are read back: only the
image is cold. Every run's output is checked against the byte total all contenders agreed on
first (GNU du's total less the directories' own blocks, which it counts and the others do not).
Cold tables also give the read requests the loop device served during the run and the bytes
read (medians, from /sys/block/loopN/stat): unlike the seconds, they do not depend on the load.

Groups (--only; the default is tree and fleet, then the "Done when" goals of issue 18):
- tree: the replica, cold: GNU du -s; snapshot-du -s with its defaults and -j 1/2/8; the C
  reference at 1, 2, 8, 32 threads in the one tree (ftsdu -a -t N);
- fleet: cold: GNU du -s BASE; snapshot-du --snapshots BASE (defaults and -j 8); dir_sizes(BASE)
  in a `python -c` (its own clock, and the whole process); the C reference -j 1/2/8/32 over the
  snapshot paths. tree and fleet are timed together, round-robin, the first contender rotating;
  then the warm figures the goals need (same image, caches kept);
- sweep: cold, usage(replica, workers=w) and the C reference at w = 1..64 threads (the library's
  cap of 4 threads per CPU lifted for the experiment);
- inode: cold, the C reference visiting a directory's entries in getdents order or in inode
  order (ftsdu -i MIN: directories of at least MIN entries), on the replica and on inode/nN.

--keep leaves the image attached and mounted; inside the jail the mount ends with it, so run
`jail sh` and the script in it to look around. Run it inside /work/shared/tools/jail, WORK under /tmp.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import snapshot  # noqa: E402
from compare import build_c, dir_blocks  # noqa: E402
from fleet import make_fleet  # noqa: E402

SOURCE = "/usr"
FLEET = 3000
SMALL_PATHS = 2000  # the "many small PATHs" goal
IMAGE_BYTES = 8 << 30
BLOCK = 4096
DATA_BLOCKS = 1  # written blocks per non-empty regular file of the replica (--data-blocks)
INODE_DIR_SIZES = (30, 100, 300, 1000, 3000, 10000, 30000)
INODE_GROUP_FILES = 30000  # files per size: 30000 // N directories of N entries
LAYOUT = 1  # bump when the image's contents change: an image with another layout is rebuilt
THREADS = (1, 2, 8, 32)
SWEEP = (1, 2, 4, 8, 16, 32, 64)
WARM_ROUNDS = 9
TARGETS = "<targets>"  # where a contender's command takes its paths

# A library call timed inside its process: prints the total and the call's seconds.  The
# modules are loaded first (snapshot loads them when a function is first used): the whole
# process is timed too, this is the call's own cost.
PY_DIR_SIZES = """import sys, time, snapshot
dir_sizes = snapshot.dir_sizes
t = time.perf_counter()
n = sum(dir_sizes(sys.argv[1]).values())
print(n, time.perf_counter() - t)"""
PY_USAGE = """import sys, time, snapshot
from snapshot import _du
w = None if sys.argv[2] == "default" else int(sys.argv[2])
if sys.argv[3] == "uncapped":
    _du.THREADS_PER_CPU = 64  # read on the first thread_cap() call: lifts the cap of 4 per CPU
    assert _du.thread_cap() >= (w or 1)
usage = snapshot.usage
t = time.perf_counter()
n = usage(sys.argv[1], **({} if w is None else {"workers": w})).allocated
print(n, time.perf_counter() - t)"""


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


# ---------------------------------------------------------------------------------------- the image

def image_params(data_blocks: int) -> dict:
    """What the image holds: an image recorded with other parameters is rebuilt."""
    return {"layout": LAYOUT, "source": SOURCE, "fleet": FLEET, "bytes": IMAGE_BYTES, "data_blocks": data_blocks,
            "inode_dir_sizes": list(INODE_DIR_SIZES), "inode_group_files": INODE_GROUP_FILES}


class Image:
    """WORK/cold.img on a loop device with direct I/O, mounted on WORK/mnt."""

    def __init__(self, work: str):
        self.path = os.path.join(work, "cold.img")
        self.record = os.path.join(work, "cold.json")
        self.mnt = os.path.join(work, "mnt")
        self.dev: Optional[str] = None
        os.makedirs(self.mnt, exist_ok=True)

    def attach(self) -> None:
        held = sh("losetup", "-j", self.path).strip()
        if held:  # a --keep run, or one killed: a second device on the same image could corrupt it
            sys.exit(f"{self.path} is attached already ({held.split(':')[0]}): umount it and losetup -d it first")
        self.dev = sh("losetup", "--direct-io=on", "--find", "--show", self.path).strip()

    def mount(self, read_only: bool = True) -> None:
        sh("mount", "-t", "ext4", "-o", "ro" if read_only else "rw", self.dev, self.mnt)

    def umount(self) -> None:
        if os.path.ismount(self.mnt):
            sh("umount", self.mnt)

    def io(self) -> Tuple[int, int]:
        """(reads completed, sectors read) by the loop device so far: /sys/block/loopN/stat."""
        with open(f"/sys/block/{os.path.basename(self.dev)}/stat") as f:
            fields = f.read().split()
        return int(fields[0]), int(fields[2])

    def remount_cold(self) -> None:
        self.umount()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
        self.mount()

    def release(self) -> None:
        self.umount()
        if self.dev:
            sh("losetup", "-d", self.dev)
            self.dev = None


def ready_image(image: Image, data_blocks: int) -> dict:
    """The image attached and mounted read-only, built first unless its record matches; returns the record."""
    params = image_params(data_blocks)
    try:
        with open(image.record) as f:
            record = json.load(f)
    except (OSError, ValueError):
        record = None
    if record is None or record.get("params") != params or not os.path.exists(image.path):
        record = build_image(image, params)
    else:
        image.attach()
    image.mount()
    return record


def build_image(image: Image, params: dict) -> dict:
    """mkfs, then the replica, the fleet and the inode-order directories; the record is written last,
    so that an interrupted build is not reused."""
    for stale in (image.record, image.path):
        if os.path.exists(stale):
            os.remove(stale)
    with open(image.path, "wb") as f:
        f.truncate(params["bytes"])
    # Inode tables and journal written now: lazy init would write them behind the timed runs.
    sh("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", image.path)
    image.attach()
    image.mount(read_only=False)
    t = time.perf_counter()
    print(f"building {image.path}: a replica of {SOURCE} ...", file=sys.stderr)
    replica = replicate(SOURCE, os.path.join(image.mnt, "usr"), params["data_blocks"])
    print(f"  {replica['entries']} entries; the fleet of {params['fleet']} ...", file=sys.stderr)
    make_fleet(os.path.join(image.mnt, "fleet"), params["fleet"])
    print("  the inode-order directories ...", file=sys.stderr)
    make_inode_dirs(os.path.join(image.mnt, "inode"), params["inode_dir_sizes"], params["inode_group_files"])
    image.umount()
    record = {"params": params, "replica": replica, "build_seconds": round(time.perf_counter() - t),
              "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(image.record, "w") as f:
        json.dump(record, f, indent=1)
    return record


def scan(src: bytes) -> Tuple[List[bytes], list, int]:
    """(directories in pre-order, [(st_ino, path, lstat)] of everything else, entries skipped),
    paths relative to src."""
    dirs, others, skipped = [], [], 0
    stack = [b""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(src, rel) if rel else src) as it:
            entries = sorted(it, key=lambda e: e.name, reverse=True)
        for e in entries:
            path = os.path.join(rel, e.name)
            st = e.stat(follow_symlinks=False)
            if e.is_dir(follow_symlinks=False):
                dirs.append(path)
                stack.append(path)
            elif e.is_file(follow_symlinks=False) or e.is_symlink():
                others.append((st.st_ino, path, st))
            else:
                skipped += 1  # sockets, FIFOs, devices: none in a usual /usr
    return dirs, others, skipped


def replicate(src: str, dst: str, data_blocks: int) -> dict:
    """dst: src's directories, symlinks and regular files (st_size kept, the first data_blocks blocks
    written, the rest a hole); files and symlinks made in src's inode order. Returns the counts."""
    src_b, dst_b = os.fsencode(src), os.fsencode(dst)
    dirs, others, skipped = scan(src_b)
    os.mkdir(dst_b)
    for rel in dirs:
        os.mkdir(os.path.join(dst_b, rel))
    data = b"\x5a" * (BLOCK * data_blocks)
    files = links = 0
    for _, rel, st in sorted(others, key=lambda o: o[0]):
        path = os.path.join(dst_b, rel)
        if os.path.islink(os.path.join(src_b, rel)):
            os.symlink(os.readlink(os.path.join(src_b, rel)), path)
            links += 1
            continue
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data[:st.st_size])
            os.ftruncate(fd, st.st_size)
        finally:
            os.close(fd)
        files += 1
    return {"entries": 1 + len(dirs) + files + links, "dirs": 1 + len(dirs), "files": files, "symlinks": links,
            "skipped": skipped}


def make_inode_dirs(base: str, sizes, group_files: int) -> None:
    """base/nN/dK: group_files // N directories of N empty files each, made in name order (so inode
    order is name order, and getdents64's hash order is not)."""
    for n in sizes:
        for k in range(max(1, group_files // n)):
            d = os.path.join(base, f"n{n}", f"d{k:04d}")
            os.makedirs(d)
            for i in range(n):
                os.close(os.open(os.path.join(d, f"f{i:06d}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))


# ------------------------------------------------------------------------------------- contenders

@dataclass
class Contender:
    """One command; parse(stdout) gives (bytes, seconds by the program's own clock, or None)."""
    name: str
    argv: list  # TARGETS marks where targets go
    targets: List[str]
    parse: Callable[[str], Tuple[int, Optional[float]]]
    what: str  # contenders of the same `what` (and group) must agree on the total
    library: bool = False  # a library call: its own clock is the figure, beside the whole process
    group: str = ""  # tree, fleet, sweep or inode: set by benchmark()

    @property
    def key(self) -> str:
        return f"{self.group} {self.name}"

    def command(self, targets: Optional[List[str]] = None) -> List[str]:
        out: List[str] = []
        for a in self.argv:
            out += (self.targets if targets is None else targets) if a == TARGETS else [a]
        return out


def parse_c(out: str) -> Tuple[int, float]:
    hi, lo, ns = (int(x) for x in out.split())
    return (hi << 64) + lo, ns / 1e9


def parse_py(out: str) -> Tuple[int, float]:
    n, t = out.split()
    return int(n), float(t)


def parse_kib(out: str) -> Tuple[int, None]:
    """snapshot-du -s: KiB in the first column of every line (exact: ext4 blocks are 4 KiB)."""
    return sum(int(line.split("\t")[0]) for line in out.splitlines()) * 1024, None


def parse_report(out: str) -> Tuple[int, None]:
    """snapshot-du --snapshots: the ALLOCATED column of the "total (N)" row, in KiB."""
    total = next(line for line in out.splitlines() if line.startswith("total ("))
    return int(total.split()[2]) * 1024, None


def parse_du(dir_bytes: int) -> Callable[[str], Tuple[int, None]]:
    """du -s -B1: the bytes less the directories' own blocks, which du counts and the others do not."""
    return lambda out: (sum(int(line.split("\t")[0]) for line in out.splitlines()) - dir_bytes, None)


def snapshot_du() -> List[str]:
    script = os.path.join(os.path.dirname(sys.executable), "snapshot-du")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "snapshot"]


def threads_label(threads: int) -> str:
    return f"{threads} thread{'s' if threads > 1 else ''}"


def c_name(threads: int) -> str:
    return f"C reference, {threads_label(threads)}"


def c_ref(exe: str, name: str, targets, what: str, *flags: str) -> Contender:
    return Contender(name, [exe, "-a", *flags, TARGETS], list(targets), parse_c, what)


def py_usage(name: str, tree: str, workers="default", uncapped=False) -> Contender:
    return Contender(name, [sys.executable, "-c", PY_USAGE, TARGETS, str(workers), "uncapped" if uncapped else "-"],
                     [tree], parse_py, "tree", library=True)


def tree_cold(exe: str, tree: str) -> List[Contender]:
    sd = snapshot_du()
    return ([Contender("GNU du -s", ["du", "-s", "-B1", TARGETS], [tree], parse_du(dir_blocks([tree])), "tree"),
             Contender("snapshot-du -s (defaults)", sd + ["-s", TARGETS], [tree], parse_kib, "tree")]
            + [Contender(f"snapshot-du -s -j {j}", sd + ["-s", "-j", str(j), TARGETS], [tree], parse_kib, "tree")
               for j in (1, 2, 8)]
            + [c_ref(exe, c_name(t), [tree], "tree", "-t", str(t)) for t in THREADS])


def fleet_cold(exe: str, base: str, paths: List[str]) -> List[Contender]:
    sd = snapshot_du()
    return ([Contender("GNU du -s BASE", ["du", "-s", "-B1", TARGETS], [base], parse_du(dir_blocks([base])), "fleet"),
             Contender("snapshot-du --snapshots BASE (defaults)", sd + ["--snapshots", TARGETS], [base],
                       parse_report, "fleet"),
             Contender("snapshot-du -j 8 --snapshots BASE", sd + ["-j", "8", "--snapshots", TARGETS], [base],
                       parse_report, "fleet"),
             Contender("dir_sizes(BASE) (defaults)", [sys.executable, "-c", PY_DIR_SIZES, TARGETS], [base], parse_py,
                       "fleet", library=True)]
            + [c_ref(exe, c_name(t), paths, "fleet", "-j", str(t)) for t in THREADS])


def tree_warm(exe: str, tree: str) -> List[Contender]:
    sd = snapshot_du()
    return ([Contender("snapshot-du -s (defaults)", sd + ["-s", TARGETS], [tree], parse_kib, "tree"),
             py_usage("usage() (defaults)", tree), py_usage("usage(workers=1)", tree, 1),
             py_usage("usage(workers=2)", tree, 2)]
            + [c_ref(exe, c_name(t), [tree], "tree", "-t", str(t)) for t in THREADS])


def fleet_warm(exe: str, base: str, paths: List[str]) -> List[Contender]:
    sd, small = snapshot_du(), paths[:SMALL_PATHS]
    return ([Contender("dir_sizes(BASE) (defaults)", [sys.executable, "-c", PY_DIR_SIZES, TARGETS], [base],
                       parse_py, "fleet", library=True)]
            + [c_ref(exe, c_name(t), paths, "fleet", "-j", str(t)) for t in THREADS]
            + [Contender(f"snapshot-du -s, {len(small)} PATHs (defaults)", sd + ["-s", TARGETS], small, parse_kib,
                         "small"),
               Contender(f"snapshot-du -s -j 1, {len(small)} PATHs", sd + ["-s", "-j", "1", TARGETS], small,
                         parse_kib, "small")])


def sweep_cold(exe: str, tree: str) -> List[Contender]:
    return ([py_usage(f"usage(workers={w})", tree, w, uncapped=True) for w in SWEEP]
            + [c_ref(exe, c_name(w), [tree], "tree", "-t", str(w)) for w in SWEEP])


def inode_cold(exe: str, tree: str, inode_base: str) -> List[Contender]:
    out = []
    for t in (1, 8):
        out.append(c_ref(exe, f"replica, {threads_label(t)}, getdents order", [tree], "tree", "-t", str(t)))
        out += [c_ref(exe, f"replica, {threads_label(t)}, inode order from {m} entries", [tree], "tree", "-t",
                      str(t), "-i", str(m)) for m in (1, 1000, 10000)]
    for n in INODE_DIR_SIZES:
        d = os.path.join(inode_base, f"n{n}")
        out += [c_ref(exe, f"n{n}, getdents order", [d], f"n{n}"),
                c_ref(exe, f"n{n}, read whole, getdents order", [d], f"n{n}", "-i", str(1 << 30)),
                c_ref(exe, f"n{n}, inode order", [d], f"n{n}", "-i", "1")]
    return out


# ---------------------------------------------------------------------------------------- timing

def run(c: Contender, targets: Optional[List[str]] = None) -> Tuple[int, float, Optional[float]]:
    """(bytes, wall seconds of the whole process, seconds by its own clock or None)."""
    t = time.perf_counter()
    out = subprocess.run(c.command(targets), check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - t
    total, own = c.parse(out)
    return total, wall, own


def agree(contenders: List[Contender]) -> Dict[str, int]:
    """Every contender once; those with the same `what` must agree. Returns {what: bytes}."""
    totals: Dict[str, Dict[str, int]] = {}
    for c in contenders:
        totals.setdefault(f"{c.group}/{c.what}", {})[c.name] = run(c)[0]
    for what, by_name in totals.items():
        if len(set(by_name.values())) != 1:
            raise SystemExit(f"DISAGREE on {what}: {by_name}")
        print(f"{what}: {len(by_name)} contenders agree on {next(iter(by_name.values()))} bytes", file=sys.stderr)
    return {what: next(iter(v.values())) for what, v in totals.items()}


@dataclass
class Sample:
    wall: float  # seconds, the whole process
    own: Optional[float]  # seconds by the program's own clock
    reads: int = 0  # read requests the loop device completed during the run (cold runs)
    sectors: int = 0  # 512-byte sectors they read


def measure(contenders: List[Contender], rounds: int, expected: Dict[str, int], before=None,
            io=None) -> Dict[str, List[Sample]]:
    """rounds x every contender, round-robin, the first one rotating; before(c) runs before each,
    io() gives the device's (reads, sectors) counters. Returns {key: samples}."""
    times: Dict[str, List[Sample]] = {c.key: [] for c in contenders}
    for r in range(rounds):
        k = r % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            if before:
                before(c)
            io0 = io() if io else (0, 0)
            total, wall, own = run(c)
            io1 = io() if io else (0, 0)
            if total != expected[f"{c.group}/{c.what}"]:
                raise SystemExit(f"{c.key}: {total} bytes in round {r + 1}, {expected[f'{c.group}/{c.what}']} agreed")
            times[c.key].append(Sample(wall, own, io1[0] - io0[0], io1[1] - io0[1]))
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr)
    return times


def cold_before(image: Image, empty: str):
    """Before a cold run: remount with caches dropped, then c's program started once off the image."""
    def before(c: Contender) -> None:
        image.remount_cold()
        run(c, [empty])
    return before


@dataclass
class Med:
    """Medians of a contender's samples."""
    wall: float
    own: Optional[float]
    reads: float = 0
    mib: float = 0


def medians(times: Dict[str, List[Sample]], contenders: List[Contender]) -> Dict[str, Dict[str, Med]]:
    """{group: {name: Med}}; a program that is not a library call but has its own clock (the C
    reference) also gets a "NAME (own clock)" entry."""
    out: Dict[str, Dict[str, Med]] = {}
    for c in contenders:
        samples = times[c.key]
        own = statistics.median(x.own for x in samples) if samples[0].own is not None else None
        reads = statistics.median(x.reads for x in samples)
        mib = statistics.median(x.sectors for x in samples) * 512 / (1 << 20)
        group = out.setdefault(c.group, {})
        group[c.name] = Med(statistics.median(x.wall for x in samples), own if c.library else None, reads, mib)
        if not c.library and own is not None:
            group[c.name + " (own clock)"] = Med(own, None, reads, mib)
    return out


# ---------------------------------------------------------------------------------------- output

def c_best(med: Dict[str, Med], own: bool = False) -> Tuple[str, float]:
    """(name, seconds) of the fastest C reference row: whole process, or by its own clock."""
    rows = {k: v.wall for k, v in med.items() if k.startswith("C reference") and k.endswith("(own clock)") == own}
    name = min(rows, key=rows.get)
    return name, rows[name]


def rows(contenders: List[Contender], med: Dict[str, Med]):
    """(label, seconds, own clock?, Med) per table row: a library call gives two rows."""
    for c in contenders:
        m = med[c.name]
        if c.library:
            yield f"{c.name}, in-process", m.own, True, m
            yield f"{c.name}, whole process", m.wall, False, m
        else:
            yield c.name, m.wall, False, m


def print_table(title: str, contenders: List[Contender], med: Dict[str, Med], du: Optional[str]) -> None:
    best_name, best = c_best(med)
    _, best_own = c_best(med, own=True)
    print(f"\n{title}\n")
    if du:
        print("| contender | cold s | vs C best | vs GNU du | device reads | MiB read |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
    else:
        print("| contender | s | vs C best |")
        print("| --- | ---: | ---: |")
    for label, t, own, m in rows(contenders, med):
        vs_c = t / (best_own if own else best)
        tail = f" {t / med[du].wall:.2f}x | {m.reads:.0f} | {m.mib:.1f} |" if du else ""
        print(f"| {label} | {t:.3f} | {vs_c:.2f}x |{tail}")
    print(f"\nC best: {best_name.split(', ')[1]} ({best:.3f} s whole process, {best_own:.3f} s by its own clock). "
          "In-process rows are compared with the C reference's own clock, the rest with its whole process.")


def print_small_paths(med: Dict[str, Med]) -> None:
    default = med[f"snapshot-du -s, {SMALL_PATHS} PATHs (defaults)"].wall
    one = med[f"snapshot-du -s -j 1, {SMALL_PATHS} PATHs"].wall
    print(f"\nsnapshot-du -s over {SMALL_PATHS} snapshot directories as PATHs, warm: {default:.3f} s with the "
          f"defaults, {one:.3f} s with -j 1 ({default / one:.2f}x).")


def print_sweep(med: Dict[str, Med]) -> None:
    print("\nusage(replica, workers=w) and the C reference, cold (the cap of 4 threads per CPU lifted); "
          "seconds by their own clocks, and the loop device's read requests\n")
    print("| w | usage s | usage reads | C reference s | C reference reads | usage / C |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for w in SWEEP:
        u, c = med[f"usage(workers={w})"], med[f"{c_name(w)} (own clock)"]
        print(f"| {w} | {u.own:.3f} | {u.reads:.0f} | {c.wall:.3f} | {c.reads:.0f} | {u.own / c.wall:.2f}x |")


def inode_cell(m: Med, base: Med) -> str:
    return f"{m.wall:.3f} ({m.wall / base.wall:.2f}x, {m.reads:.0f} reads)"


def print_inode(med: Dict[str, Med]) -> None:
    print("\nThe C reference, cold, entries visited in getdents64 order or in inode order: seconds by its own "
          "clock (vs getdents order, the loop device's read requests)\n")
    print("| tree | threads | getdents order | inode order from 10,000 | from 1,000 | always |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for t in (1, 8):
        base = med[f"replica, {threads_label(t)}, getdents order (own clock)"]
        cells = [med[f"replica, {threads_label(t)}, inode order from {m} entries (own clock)"]
                 for m in (10000, 1000, 1)]
        print(f"| replica | {t} | {inode_cell(base, base)} | " + " | ".join(inode_cell(x, base) for x in cells) + " |")
    print("\n| directories of N entries (30,000 files) | getdents order | read whole, getdents order | inode order |")
    print("| ---: | ---: | ---: | ---: |")
    for n in INODE_DIR_SIZES:
        variants = ("getdents order", "read whole, getdents order", "inode order")
        a, b, c = (med[f"n{n}, {v} (own clock)"] for v in variants)
        print(f"| {n} | {inode_cell(a, a)} | {inode_cell(b, a)} | {inode_cell(c, a)} |")


def goals(cold: Dict[str, Dict[str, Med]], warm: Dict[str, Dict[str, Med]]) -> list:
    """Issue 18's "Done when", as (goal, measured, target, met); a goal whose figures were not taken is left out."""
    out = []

    def add(label, fn, target, ok):
        try:
            value = fn()
        except KeyError:  # its group was not run (--only)
            return
        out.append((label, value, target, ok(value)))

    def c(med, threads):
        return med[f"{c_name(threads)} (own clock)"].wall

    ct, cf, wt, wf = (d.get(g, {}) for d in (cold, warm) for g in ("tree", "fleet"))
    add("cold replica: snapshot-du -s (defaults) / C best", lambda: ct["snapshot-du -s (defaults)"].wall
        / c_best(ct)[1], "<= 1.15", lambda x: x <= 1.15)
    add("cold replica: GNU du / snapshot-du -s (defaults)", lambda: ct["GNU du -s"].wall
        / ct["snapshot-du -s (defaults)"].wall, ">= 2.50", lambda x: x >= 2.5)
    add("cold fleet: dir_sizes (defaults) / C best", lambda: cf["dir_sizes(BASE) (defaults)"].own
        / c_best(cf, own=True)[1], "<= 1.15", lambda x: x <= 1.15)
    add("cold fleet: snapshot-du --snapshots (defaults) / C best",
        lambda: cf["snapshot-du --snapshots BASE (defaults)"].wall / c_best(cf)[1], "<= 1.30", lambda x: x <= 1.3)
    add("warm replica: usage() (defaults) / C best", lambda: wt["usage() (defaults)"].own
        / c_best(wt, own=True)[1], "<= 1.10", lambda x: x <= 1.10)
    add("warm replica: snapshot-du -s (defaults) / C best", lambda: wt["snapshot-du -s (defaults)"].wall
        / c_best(wt)[1], "<= 1.10", lambda x: x <= 1.10)
    add("warm fleet: dir_sizes (defaults) / C best", lambda: wf["dir_sizes(BASE) (defaults)"].own
        / c_best(wf, own=True)[1], "<= 1.15", lambda x: x <= 1.15)
    add("warm replica: usage 2-worker speedup / C reference 2-thread speedup",
        lambda: (wt["usage(workers=1)"].own / wt["usage(workers=2)"].own) / (c(wt, 1) / c(wt, 2)),
        ">= 0.90", lambda x: x >= 0.9)
    add(f"warm, {SMALL_PATHS} small PATHs: snapshot-du -s (defaults) / -j 1",
        lambda: wf[f"snapshot-du -s, {SMALL_PATHS} PATHs (defaults)"].wall
        / wf[f"snapshot-du -s -j 1, {SMALL_PATHS} PATHs"].wall, "<= 1.10", lambda x: x <= 1.10)
    return out


def print_goals(rows_) -> None:
    print("\n| goal | measured | target | met |")
    print("| --- | ---: | ---: | --- |")
    for label, value, target, ok in rows_:
        print(f"| {label} | {value:.2f} | {target} | {'yes' if ok else 'NO'} |")
    print("\n(The goal that no warm figure of the README's tables gets worse by more than 5% is "
          "benchmarks/compare.py's to check.)")


def print_machine(record: dict, rounds: int, load_before: float) -> None:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    r = record["replica"]
    print(f"\nMachine: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, Python "
          f"{platform.python_version()}; ext4 image on a loop device (--direct-io=on), mounted read-only, "
          f"remounted and caches dropped before every cold run; {rounds} cold round(s), interleaved, medians. "
          f"Load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after.")
    print(f"Replica of {record['params']['source']}: {r['entries']} entries ({r['dirs']} directories, "
          f"{r['files']} files with {record['params']['data_blocks']} data block(s) written in each non-empty one, "
          f"{r['symlinks']} symlinks); fleet: {record['params']['fleet']} snapshots of 5 files.")


# ---------------------------------------------------------------------------------------- main

def benchmark(args, image: Image, exe: str, empty: str) -> None:
    tree = os.path.join(image.mnt, "usr")
    base = os.path.join(image.mnt, "fleet")
    paths = [os.path.join(base, n) for n in sorted(os.listdir(base))]
    groups = {"tree": (tree_cold(exe, tree), tree_warm(exe, tree)),
              "fleet": (fleet_cold(exe, base, paths), fleet_warm(exe, base, paths)),
              "sweep": (sweep_cold(exe, tree), []),
              "inode": (inode_cold(exe, tree, os.path.join(image.mnt, "inode")), [])}
    chosen = [args.only] if args.only else ["tree", "fleet"]
    for g in chosen:
        for c in groups[g][0] + groups[g][1]:
            c.group = g
    cold_all = [c for g in chosen for c in groups[g][0]]
    warm_all = [c for g in chosen for c in groups[g][1]]
    expected = agree(cold_all + warm_all)
    load = os.getloadavg()[0]
    print(f"cold: {len(cold_all)} contenders x {args.rounds} rounds ...", file=sys.stderr)
    cold = medians(measure(cold_all, args.rounds, expected, cold_before(image, empty), image.io), cold_all)
    warm: Dict[str, Dict[str, Med]] = {}
    if warm_all:
        print(f"warm: {len(warm_all)} contenders x {WARM_ROUNDS} rounds ...", file=sys.stderr)
        for c in warm_all:  # the last cold run left most of the image out of the caches
            run(c)
        warm = medians(measure(warm_all, WARM_ROUNDS, expected), warm_all)
    report(args, chosen, groups, cold, warm, load)


def report(args, chosen, groups, cold, warm, load) -> None:
    print_machine(args.record, args.rounds, load)
    titles = {"tree": ("Replica of /usr", "GNU du -s"), "fleet": (f"Fleet of {FLEET} snapshots", "GNU du -s BASE")}
    for g in chosen:
        if g in titles:
            print_table(f"{titles[g][0]}, cold", groups[g][0], cold[g], titles[g][1])
            same = [c for c in groups[g][1] if c.what == groups[g][0][0].what]
            print_table(f"{titles[g][0]}, warm ({WARM_ROUNDS} rounds)", same, warm[g], None)
            if g == "fleet":
                print_small_paths(warm[g])
        elif g == "sweep":
            print_sweep(cold[g])
        else:
            print_inode(cold[g])
    if set(chosen) & {"tree", "fleet"}:
        print_goals(goals(cold, warm))


def needs_root() -> Optional[str]:
    if os.geteuid() != 0:
        return "benchmarks/cold.py needs root (losetup, mount, drop_caches): skipped"
    missing = [t for t in ("losetup", "mount", "umount", "mkfs.ext4", "du", "find", os.environ.get("CC", "cc"))
               if not shutil.which(t)]
    return f"benchmarks/cold.py needs {', '.join(missing)}: skipped" if missing else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="cold runs of each contender (medians)")
    ap.add_argument("--work", default="/tmp/snapshot-cold", help="where the image lives (kept for reuse)")
    ap.add_argument("--keep", action="store_true", help="leave the image attached and mounted")
    ap.add_argument("--only", choices=("tree", "fleet", "sweep", "inode"))
    ap.add_argument("--data-blocks", type=int, default=DATA_BLOCKS, metavar="N",
                    help="blocks written in each non-empty file of the replica (0: all holes)")
    args = ap.parse_args(argv)
    why = needs_root()
    if why:
        print(why)
        return 0
    if snapshot.BACKEND != "openat":
        print("the compiled walker is not in use; nothing to compare", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # cleaned up as on Ctrl-C
    os.makedirs(args.work, exist_ok=True)
    empty = os.path.join(args.work, "empty")
    os.makedirs(empty, exist_ok=True)
    image = Image(args.work)
    try:
        args.record = ready_image(image, args.data_blocks)
        benchmark(args, image, build_c(args.work), empty)
    finally:
        if args.keep and image.dev:
            if not os.path.ismount(image.mnt):
                image.mount()
            print(f"kept: {image.dev} on {image.mnt}", file=sys.stderr)
        else:
            image.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
