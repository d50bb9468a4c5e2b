"""Smoke test of an installed wheel, run by .ci/matrix in a venv that has the wheel and
nothing else (no test dependencies): the compiled modules load, and the library and
both commands do their main job on a small snapshot base.  Run it outside the source tree."""
import os
import subprocess
import sys
import tempfile

import snapshot

assert snapshot.BACKEND == "openat", snapshot.BACKEND
from snapshot import _du  # noqa: E402  the compiled module, from the wheel

for m in (_du, snapshot):
    assert os.path.realpath(m.__file__).startswith(os.path.realpath(sys.prefix)), m.__file__
bindir = os.path.dirname(sys.executable)

with tempfile.TemporaryDirectory() as base:
    vm = snapshot.ensure_dir(base, "vm-1")
    with open(os.path.join(vm, snapshot.CH_MEM_RANGES_FILE), "wb") as f:
        f.truncate(1 << 30)  # sparse: 1 GiB apparent
        f.write(os.urandom(8192))
        f.write(bytes(8192))  # allocated zeros
    snapshot.write_meta(base, "vm-1", snapshot.RootfsMeta("debian-12", "tpl-1", 2, 2048))
    assert snapshot.read_meta(base, "vm-1") == snapshot.RootfsMeta("debian-12", "tpl-1", 2, 2048)
    want = sum(os.lstat(os.path.join(vm, n)).st_blocks * 512 for n in os.listdir(vm))
    assert snapshot.dir_size(base, "vm-1") == want == snapshot.dir_sizes(base)["vm-1"]
    assert snapshot.scan_blocks(vm).zero >= 8192
    out = subprocess.run([os.path.join(bindir, "snapshot-du"), "--snapshots", base, "-b"],
                         capture_output=True, text=True, check=True).stdout
    row = out.splitlines()[1].split()
    assert row[:2] == ["vm-1", str(want)] and "debian-12" in row, out
    dry = subprocess.run([os.path.join(bindir, "snapshot-sparsify"), "-n", vm],
                         capture_output=True, text=True, check=True)
    assert dry.returncode == 0
print(f"smoke test passed: snapshot {snapshot.__version__}, Python {sys.version.split()[0]}")
