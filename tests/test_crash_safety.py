"""write_meta under SIGKILL: after every kill, read_meta gives the old or the new value.
The values are large (hundreds of KiB, under read_meta's 1 MiB cap) so a write takes many system calls."""
import os
import random
import signal
import subprocess
import sys
import time

import snapshot
from snapshot._meta import TEMP_PREFIX

WRITER = r"""
import sys, snapshot
base = sys.argv[1]
a = snapshot.RootfsMeta("A" * 700_000, "tpl-a", 2, 2048)
b = snapshot.RootfsMeta("B" * 500_000 + "<&>", "tpl-b", 4, 4096)
print("ready", flush=True)
while True:
    snapshot.write_meta(base, "vm", a)
    snapshot.write_meta(base, "vm", b)
"""

A = snapshot.RootfsMeta("A" * 700_000, "tpl-a", 2, 2048)
B = snapshot.RootfsMeta("B" * 500_000 + "<&>", "tpl-b", 4, 4096)
OLD = snapshot.RootfsMeta("old")


def test_sigkill_never_tears_rootfs_meta(tmp_path):
    snapshot.ensure_dir(tmp_path, "vm")
    t = time.monotonic()
    snapshot.write_meta(tmp_path, "vm", A)  # how long one write takes on this disk
    one_write = time.monotonic() - t
    snapshot.write_meta(tmp_path, "vm", OLD)
    rng = random.Random(1234)
    seen = set()
    kills = 40
    for _ in range(kills):
        p = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path)], stdout=subprocess.PIPE)
        assert p.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0, 5 * one_write))  # anywhere in the first few writes
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
        got = snapshot.read_meta(tmp_path, "vm")  # never raises: the file is whole
        assert got in (OLD, A, B)
        seen.add(got.base_template[:1])
        for leftover in os.listdir(tmp_path / "vm"):
            assert leftover == "rootfs.meta" or leftover.startswith(TEMP_PREFIX)
    # The kills landed at different moments: both values were seen whole.
    assert {"A", "B"} <= seen
