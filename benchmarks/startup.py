"""Start-up time: `import snapshot`, and a whole snapshot-du run on a small directory
beside GNU du and a bare interpreter, in one run.

    python benchmarks/startup.py [--rounds N]

import: the cumulative microseconds that `python -X importtime -c "import snapshot"`
reports for snapshot (the figure issue 11 bounds at 8 ms), median of N fresh
interpreters.  Commands: wall time of each, interleaved, median of N.  The run is
checked first: snapshot-du must print what du -s -B1 does minus directory blocks.
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


def import_us(code: str) -> int:
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                         check=True).stderr
    # The last line is the outermost import: "import time: self | cumulative | name".
    return int(err.strip().splitlines()[-1].split("|")[1])


def wall(cmd: list) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=21)
    args = ap.parse_args()
    exe = os.path.join(os.path.dirname(sys.executable), "snapshot-du")
    with tempfile.TemporaryDirectory() as d:
        for i in range(20):  # a small snapshot: a few files, as scripts size them
            with open(os.path.join(d, f"f{i}"), "wb") as f:
                f.write(os.urandom(4096 * (i + 1)))
        ours = subprocess.run([exe, "-b", "--apparent-size", d], capture_output=True, text=True, check=True).stdout
        assert ours == f"{sum(4096 * (i + 1) for i in range(20))}\t{d}\n", ours

        imports = {"import snapshot": [], "import snapshot.cli": []}
        for _ in range(args.rounds):
            for code, times in imports.items():
                times.append(import_us(code))
        print("-X importtime, cumulative, median of", args.rounds)
        for code, times in imports.items():
            print(f"  {code:<22} {statistics.median(times) / 1000:6.2f} ms")

        cmds = {"python -c pass": [sys.executable, "-c", "pass"],
                "snapshot-du -s DIR": [exe, "-s", d]}
        du = shutil.which("du")
        if du:
            cmds["du -s DIR"] = [du, "-s", d]
        times = {name: [] for name in cmds}
        for _ in range(args.rounds):
            for name, cmd in cmds.items():
                times[name].append(wall(cmd))
        print("wall time of a whole run, median of", args.rounds)
        med = {name: statistics.median(t) for name, t in times.items()}
        for name, m in med.items():
            print(f"  {name:<22} {m * 1000:6.2f} ms")
        extra = med["snapshot-du -s DIR"] - med["python -c pass"]
        print(f"  snapshot-du over python -c pass: +{extra * 1000:.2f} ms")


if __name__ == "__main__":
    main()
