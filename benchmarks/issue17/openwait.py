"""How long open(O_RDONLY) waits while snapshot-sparsify processes a 1 GiB run of written zeros."""
import os, statistics, subprocess, sys, time
SP = os.path.join(os.path.dirname(sys.executable), "snapshot-sparsify")

def make(path, size=1 << 30):
    buf = bytes(1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for off in range(0, size, len(buf)):
        os.pwrite(fd, buf, off)
    os.pwrite(fd, b"d" * 4096, size)
    os.fsync(fd)
    os.close(fd)

def rchar(pid):
    try:
        with open(f"/proc/{pid}/io") as f:
            return int(f.read().split("rchar: ")[1].split()[0])
    except (OSError, IndexError):
        return -1

def once(path, after):
    make(path)
    with open(path, "rb") as f:  # warm the cache, as a just-written file is
        while f.read(1 << 20):
            pass
    p = subprocess.Popen([SP, "-j", "1", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while rchar(p.pid) < after and p.poll() is None:
        pass
    t = time.monotonic()
    fd = os.open(path, os.O_RDONLY)
    waited = time.monotonic() - t
    os.close(fd)
    out, err = p.communicate()
    return waited, time.monotonic() - t0, p.returncode, out.decode().strip(), err.decode().strip()

path = sys.argv[1]
ws = []
for i in range(int(sys.argv[2])):
    w, total, rc, out, err = once(path, 64 << 20)
    ws.append(w)
    print(f"waited {w * 1e3:.1f} ms; run {total * 1e3:.0f} ms; rc {rc} out {out!r} err {err!r}", flush=True)
print(f"median wait {statistics.median(ws) * 1e3:.1f} ms over {len(ws)}")
os.unlink(path)
