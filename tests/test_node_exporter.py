"""snapshot-du --prometheus read by a real node_exporter (Debian's prometheus-node-exporter,
which .ci/run installs), the way users run it: a textfile written from cron or a
systemd timer, scraped over HTTP."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

import snapshot
from snapshot._report import printable
from conftest import as_nobody

NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
pytestmark = pytest.mark.skipif(NODE_EXPORTER is None,
                                reason="prometheus-node-exporter is not installed (.ci/run installs it)")
text_string_to_metric_families = pytest.importorskip(
    "prometheus_client.parser", reason="the [prometheus] extra is not installed").text_string_to_metric_families

NAMES = ["db-01", "web-01", 'quote"d', "back\\slash", os.fsdecode(b"vm-\xff")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode("utf-8")


@pytest.fixture
def node_exporter(tmp_path):
    """(textfile directory, /metrics URL) of a node_exporter on a free loopback port,
    with only the textfile collector; stopped afterwards."""
    textfiles = tmp_path / "textfile"
    textfiles.mkdir()
    for attempt in range(5):  # another process may take the port between our probe and its bind
        port = free_port()
        proc = subprocess.Popen([NODE_EXPORTER, f"--web.listen-address=127.0.0.1:{port}",
                                 "--collector.disable-defaults", "--collector.textfile",
                                 f"--collector.textfile.directory={textfiles}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}/metrics"
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                get(url)
                break
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            break
        proc.stderr.read()
    else:
        pytest.fail("node_exporter did not start")
    try:
        yield textfiles, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def make_base(base):
    for i, name in enumerate(NAMES):
        d = base / name
        d.mkdir(parents=True)
        with open(d / snapshot.CH_MEM_RANGES_FILE, "wb") as f:
            f.truncate(1 << 30)
            f.write(os.urandom(4096 * (i + 1)))
        (d / snapshot.ROOTFS_COW_NAME).write_bytes(os.urandom(8192 * (5 - i)))
    return base


def scraped(url: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(get(url))}


def test_node_exporter_serves_what_snapshot_du_wrote(tmp_path, node_exporter):
    textfiles, url = node_exporter
    base = make_base(tmp_path / "base")
    exe = os.path.join(os.path.dirname(sys.executable), "snapshot-du")
    # The README's cron line, verbatim but for the paths.
    subprocess.run([exe, "--snapshots", str(base), "--prometheus", "-o", str(textfiles / "snapshots.prom")],
                   check=True)
    fams = scraped(url)
    assert [s.value for s in fams["node_textfile_scrape_error"].samples] == [0]
    got = {s.labels["snapshot"]: s.value for s in fams["snapshot_allocated_bytes"].samples}
    assert got == {printable(n): v for n, v in snapshot.dir_sizes(base).items()}
    assert len(got) == len(NAMES)
    assert [s.value for s in fams["snapshot_directories"].samples] == [len(NAMES)]
    assert {s.labels["snapshot"]: s.value for s in fams["snapshot_up"].samples} == {printable(n): 1 for n in NAMES}
    assert {s.labels["snapshot"]: s.value for s in fams["snapshot_apparent_bytes"].samples} == \
        {printable(n): snapshot.usage(base / n).apparent for n in NAMES}

    # The next run replaces the file whole: node_exporter never reads half of it.
    snapshot.remove(base, "db-01")
    subprocess.run([exe, "--snapshots", str(base), "--prometheus", "-o", str(textfiles / "snapshots.prom")],
                   check=True)
    fams = scraped(url)
    assert [s.value for s in fams["node_textfile_scrape_error"].samples] == [0]
    assert {s.labels["snapshot"]: s.value for s in fams["snapshot_allocated_bytes"].samples} == \
        {printable(n): v for n, v in snapshot.dir_sizes(base).items()}
    assert sorted(os.listdir(textfiles)) == ["snapshots.prom"]  # no temporary file left for it to read


def test_node_exporter_reports_a_broken_textfile(node_exporter):
    """The control: node_textfile_scrape_error does turn 1 on a file it cannot parse,
    so the 0 above says something."""
    textfiles, url = node_exporter
    (textfiles / "snapshots.prom").write_text('snapshot_allocated_bytes{snapshot="a"b"} 1\n')
    fams = scraped(url)
    assert [s.value for s in fams["node_textfile_scrape_error"].samples] == [1]


def _write_as_nobody(out_name):
    import io
    from snapshot import cli
    sys.stderr = io.StringIO()
    return cli.main(["--snapshots", "base", "--prometheus", "-o", out_name])


def test_node_exporter_shows_a_failing_snapshot_as_up_0(tmp_path, node_exporter, arena):
    """A snapshot that could not be read was left out, with nothing to say it failed."""
    textfiles, url = node_exporter
    path, fd = arena
    base = make_base(path / "base")
    (base / "db-01" / snapshot.ROOTFS_META_NAME).write_bytes(b'{"vcpus":"4"}')  # Go would refuse it
    exe = os.path.join(os.path.dirname(sys.executable), "snapshot-du")
    r = subprocess.run([exe, "--snapshots", str(base), "--prometheus", "-o", str(textfiles / "snapshots.prom")],
                       capture_output=True)
    assert r.returncode == 1 and b"bad metadata" in r.stderr
    fams = scraped(url)
    assert [s.value for s in fams["node_textfile_scrape_error"].samples] == [0]
    up = {s.labels["snapshot"]: s.value for s in fams["snapshot_up"].samples}
    assert up == {printable(n): 0 if n == "db-01" else 1 for n in NAMES}
    assert "db-01" not in {s.labels["snapshot"] for s in fams["snapshot_allocated_bytes"].samples}

    # A walk that fails (an unreadable directory, for a run without root): the snapshot stays, as 0.
    (base / "locked" / "inner").mkdir(parents=True)
    os.chmod(base / "locked" / "inner", 0)
    try:
        rc = as_nobody(_write_as_nobody, "out.prom", cwd_fd=fd)
    finally:
        os.chmod(base / "locked" / "inner", 0o700)
    assert rc == 1
    os.replace(path / "out.prom", textfiles / "snapshots.prom")
    fams = scraped(url)
    assert [s.value for s in fams["node_textfile_scrape_error"].samples] == [0]
    up = {s.labels["snapshot"]: s.value for s in fams["snapshot_up"].samples}
    assert up["locked"] == 0 and up["db-01"] == 0 and sum(up.values()) == len(NAMES) - 1
    assert "locked" not in {s.labels["snapshot"] for s in fams["snapshot_allocated_bytes"].samples}
    assert [s.value for s in fams["snapshot_directories"].samples] == [len(NAMES) + 1]
