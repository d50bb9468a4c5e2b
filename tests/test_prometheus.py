"""snapshot.prometheus.SnapshotCollector, read back through prometheus_client's own
exposition (generate_latest) and parser, against dir_sizes and snapshot-du --prometheus."""
import os
import subprocess

import pytest

import snapshot
from snapshot import _size, cli
from snapshot._report import printable
from conftest import as_nobody

prometheus_client = pytest.importorskip("prometheus_client", reason="the [prometheus] extra is not installed")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from snapshot.prometheus import SnapshotCollector  # noqa: E402

# Names a label must carry exactly: a quote, a backslash, a newline, a byte that is not UTF-8.
NAMES = ["db-01", 'quote"d', "back\\slash", "new\nline", os.fsdecode(b"vm-\xff"), "vm-\\xff"]


def make_base(base):
    for i, name in enumerate(NAMES):
        d = base / name
        d.mkdir(parents=True)
        with open(d / snapshot.CH_MEM_RANGES_FILE, "wb") as f:
            f.truncate(1 << 30)  # sparse: apparent size is not allocation
            f.write(os.urandom(4096 * (i + 1)))
        (d / snapshot.ROOTFS_COW_NAME).write_bytes(os.urandom(8192 * (6 - i)))
    snapshot.write_meta(base, "db-01", snapshot.RootfsMeta("debian-12", "tpl-1", 4, 8192))
    (base / "a-file").write_text("not a snapshot")
    return base


def families(text: str) -> dict:
    """{metric: (help, type, {key: value})} of an exposition; the key is the snapshot label
    (None without one), or the sorted (label, value) pairs where there are other labels."""
    out = {}
    for f in text_string_to_metric_families(text):
        out[f.name] = (f.documentation, f.type,
                       {s.labels.get("snapshot") if set(s.labels) <= {"snapshot"} else tuple(sorted(s.labels.items())):
                        s.value for s in f.samples})
    return out


# Their values differ from one collection to the next; the textfile alone has the timestamp.
TIMED = {"snapshot_collect_duration_seconds", "snapshot_collect_timestamp_seconds"}


def untimed(fams: dict) -> dict:
    return {k: v for k, v in fams.items() if k not in TIMED}


def scrape(collector) -> dict:
    registry = CollectorRegistry()
    registry.register(collector)
    return families(generate_latest(registry).decode("utf-8"))


class CountingWalker:
    """The walker in use, counting the walks (one call each, however many paths) made through it."""

    def __init__(self, impl) -> None:
        self.impl = impl
        self.batches = 0

    def walk(self, *args, **kwargs):
        self.batches += 1
        return self.impl.walk(*args, **kwargs)

    def walk_dirs(self, *args, **kwargs):
        self.batches += 1
        return self.impl.walk_dirs(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.impl, name)


def test_each_snapshot_is_its_dir_sizes_value(tmp_path, walker):
    base = make_base(tmp_path / "base")
    fams = scrape(SnapshotCollector(base))
    want = {printable(n): v for n, v in snapshot.dir_sizes(base).items()}
    assert len(want) == len(NAMES)
    assert fams["snapshot_allocated_bytes"][2] == want
    apparent = {printable(n): snapshot.usage(base / n).apparent for n in NAMES}
    assert fams["snapshot_apparent_bytes"][2] == apparent
    assert fams["snapshot_directories"][2] == {None: len(NAMES)}
    assert fams["snapshot_up"][2] == {printable(n): 1 for n in NAMES}
    assert all(t == "gauge" for _, t, _ in fams.values())
    assert "snapshot_shared_bytes" not in fams


def test_same_names_help_labels_and_values_as_snapshot_du(tmp_path, walker, capsys):
    base = make_base(tmp_path / "base")
    assert cli.main(["--snapshots", str(base), "--prometheus"]) == 0
    textfile = families(capsys.readouterr().out)
    scraped = scrape(SnapshotCollector(base))
    assert untimed(scraped) == untimed(textfile)
    assert set(textfile) - set(scraped) == {"snapshot_collect_timestamp_seconds"}
    assert scraped["snapshot_collect_duration_seconds"][:2] == textfile["snapshot_collect_duration_seconds"][:2]


def test_shared_metrics_match_snapshot_du_on_reflinks(xfs, capsys):
    base = xfs / "base"
    (base / "tpl").mkdir(parents=True)
    (base / "vm").mkdir()
    (base / "tpl" / "rootfs.ext4").write_bytes(os.urandom(4 << 20))
    subprocess.run(["cp", "--reflink=always", base / "tpl" / "rootfs.ext4", base / "vm" / "rootfs.ext4"], check=True)
    with open(base / "vm" / "rootfs.ext4", "r+b") as f:
        f.write(os.urandom(1 << 20))
    os.sync()
    fams = scrape(SnapshotCollector(base, shared=True, workers=2))
    assert fams["snapshot_shared_bytes"][2] == {"tpl": 3 << 20, "vm": 3 << 20}
    assert fams["snapshot_exclusive_bytes"][2] == {"tpl": 1 << 20, "vm": 1 << 20}
    assert fams["snapshot_set_shared_bytes"][2] == {None: 3 << 20}
    assert cli.main(["--snapshots", str(base), "--prometheus", "--shared"]) == 0
    assert untimed(fams) == untimed(families(capsys.readouterr().out))


def test_one_batched_walk_per_scrape_and_none_to_register(tmp_path, walker, monkeypatch):
    base = make_base(tmp_path / "base")
    counting = CountingWalker(walker)
    monkeypatch.setattr(_size, "_impl", counting)
    registry = CollectorRegistry(auto_describe=True)  # describes at registration, as the default REGISTRY does
    registry.register(SnapshotCollector(base, shared=True))
    assert counting.batches == 0
    for scrapes in (1, 2, 3):
        generate_latest(registry)
        assert counting.batches == scrapes


def test_describe_names_what_collect_yields(tmp_path):
    base = make_base(tmp_path / "base")
    for shared in (False, True):
        c = SnapshotCollector(base, shared=shared)
        assert [m.name for m in c.describe()] == [m.name for m in c.collect()]


def test_each_scrape_sees_the_base_as_it_is_now(tmp_path):
    base = make_base(tmp_path / "base")
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(base))
    before = families(generate_latest(registry).decode())
    snapshot.remove(base, "db-01")
    (base / "new").mkdir()
    (base / "new" / "f").write_bytes(os.urandom(12288))
    after = families(generate_latest(registry).decode())
    assert "db-01" in before["snapshot_allocated_bytes"][2]
    assert "db-01" not in after["snapshot_allocated_bytes"][2]
    assert after["snapshot_allocated_bytes"][2]["new"] == snapshot.dir_size(base, "new")


def test_a_base_that_cannot_be_listed_fails_the_scrape(tmp_path):
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError) as e:
        generate_latest(registry)
    assert e.value.filename == str(tmp_path / "missing")


def test_a_bad_snapshot_is_logged_and_the_rest_exposed(tmp_path, caplog):
    base = make_base(tmp_path / "base")
    (base / "db-01" / snapshot.ROOTFS_META_NAME).write_text("{not json")
    fams = scrape(SnapshotCollector(base))
    assert fams["snapshot_directories"][2] == {None: len(NAMES)}
    assert fams["snapshot_up"][2]["db-01"] == 0
    assert any("bad metadata" in r.getMessage() and r.name == "snapshot.prometheus" for r in caplog.records)


@pytest.mark.parametrize("workers, error", [(0, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)])
def test_bad_workers_are_refused_when_made(tmp_path, workers, error):
    with pytest.raises(error):
        SnapshotCollector(tmp_path, workers=workers)


def test_without_the_extra_the_import_error_names_it():
    """prometheus_client is optional: without it, importing the collector says what to install,
    and the rest of snapshot works."""
    import sys
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "import snapshot; assert snapshot.dir_sizes('.', []) == {}\n"
            "try:\n    import snapshot.prometheus\nexcept ImportError as e:\n    print(e, '|', e.name)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'cloudhv-snapshot[prometheus]'" in out and out.strip().endswith("| prometheus_client")


# ---- metrics that explain -------------------------------------------------------------------------

def _failing_base(base):
    """make_base, plus a snapshot whose walk fails for user nobody (an unreadable directory
    inside) and one whose rootfs.meta is corrupt."""
    make_base(base)
    (base / "locked" / "inner").mkdir(parents=True)
    (base / "locked" / "f").write_bytes(os.urandom(5000))
    os.chmod(base / "locked" / "inner", 0)
    (base / "back\\slash" / snapshot.ROOTFS_META_NAME).write_bytes(b'{"vcpus":')
    return base


def _scrape_and_write(out_name):
    """As user nobody: a scrape of base, and snapshot-du --prometheus into out_name."""
    import io
    import sys
    fams = scrape(SnapshotCollector("base"))
    sys.stderr = io.StringIO()
    rc = cli.main(["--snapshots", "base", "--prometheus", "-o", out_name])
    with open(out_name) as f:
        return fams, rc, f.read()


def test_a_failing_snapshot_stays_visible_as_up_0_without_sizes(arena):
    """It was left out: no series said it had failed."""
    path, fd = arena
    base = _failing_base(path / "base")
    try:
        scraped, rc, text = as_nobody(_scrape_and_write, "out.prom", cwd_fd=fd)
    finally:
        os.chmod(base / "locked" / "inner", 0o700)
    assert rc == 1
    written = families(text)
    assert untimed(scraped) == untimed(written)
    failing = {"locked", printable("back\\slash")}
    everything = {printable(n) for n in NAMES} | {"locked"}
    up = scraped["snapshot_up"][2]
    assert up == {n: 0 if n in failing else 1 for n in everything}
    assert scraped["snapshot_directories"][2] == {None: len(everything)}
    for metric in ("snapshot_allocated_bytes", "snapshot_apparent_bytes"):  # left out, never 0
        assert set(scraped[metric][2]) == everything - failing, metric
    for key in scraped["snapshot_file_allocated_bytes"][2]:
        assert dict(key)["snapshot"] not in failing
    good = [n for n in NAMES if printable(n) not in failing]
    assert scraped["snapshot_allocated_bytes"][2] == {printable(n): snapshot.dir_size(base, n) for n in good}


def test_each_big_file_and_the_meta_are_metrics(tmp_path):
    base = make_base(tmp_path / "base")
    (base / "db-01" / snapshot.ROOTFS_FILE_NAME).write_bytes(os.urandom(12345))
    fams = scrape(SnapshotCollector(base))
    files = fams["snapshot_file_allocated_bytes"][2]
    want = {}
    for n in NAMES:
        for f in (snapshot.CH_MEM_RANGES_FILE, snapshot.ROOTFS_COW_NAME, snapshot.ROOTFS_FILE_NAME):
            if (base / n / f).exists():  # present files only
                want[(("file", f), ("snapshot", printable(n)))] = os.lstat(base / n / f).st_blocks * 512
    assert files == want and len(want) == 2 * len(NAMES) + 1
    assert fams["snapshot_info"][2] == {(("base_template", "debian-12"), ("memory_mb", "8192"),
                                         ("snapshot", "db-01"), ("template_id", "tpl-1"), ("vcpus", "4")): 1}


def test_how_long_and_when_the_collection_ran(tmp_path, capsys):
    import time
    base = make_base(tmp_path / "base")
    t0 = time.monotonic()
    fams = scrape(SnapshotCollector(base))
    took = time.monotonic() - t0
    assert "snapshot_collect_timestamp_seconds" not in fams  # a scrape has its own time
    (duration,) = fams["snapshot_collect_duration_seconds"][2].values()
    assert 0 < duration <= took
    before, t0 = time.time(), time.monotonic()
    assert cli.main(["--snapshots", str(base), "--prometheus"]) == 0
    after, took = time.time(), time.monotonic() - t0
    text = families(capsys.readouterr().out)
    (stamp,) = text["snapshot_collect_timestamp_seconds"][2].values()
    (duration,) = text["snapshot_collect_duration_seconds"][2].values()
    assert before <= stamp <= after and 0 < duration <= took


PROMTOOL = __import__("shutil").which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: prometheus)")
def test_promtool_accepts_the_textfile_and_the_collector(arena):
    """snapshot_count did not pass: promtool reserves _count for histograms and summaries."""
    path, fd = arena
    base = _failing_base(path / "base")
    snapshot.write_meta(base, "db-01", snapshot.RootfsMeta('de"bi\\an\n', "t\u00e9", 4, 8192))

    def texts():
        import io
        import sys
        out = []
        sys.stderr = io.StringIO()
        for extra in ([], ["--zero", "--shared"]):
            cli.main(["--snapshots", "base", "--prometheus", "-o", "out.prom", *extra])
            with open("out.prom") as f:
                out.append(f.read())
        registry = CollectorRegistry()
        registry.register(SnapshotCollector("base", shared=True))
        out.append(generate_latest(registry).decode("utf-8"))
        return out
    try:
        outputs = as_nobody(texts, cwd_fd=fd)
    finally:
        os.chmod(base / "locked" / "inner", 0o700)
    for text in outputs:
        assert 'snapshot_up{snapshot="locked"} 0' in text
        r = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True)
        assert (r.returncode, r.stdout, r.stderr) == (0, b"", b""), text


@pytest.mark.parametrize("kwargs", [{"shared": "yes"}, {"shared": 1}, {"shared": None}])
def test_shared_must_be_a_bool(tmp_path, kwargs):
    """shared="yes" was accepted, where workers=True is a TypeError."""
    with pytest.raises(TypeError, match="shared"):
        SnapshotCollector(tmp_path, **kwargs)


@pytest.mark.parametrize("base", [3, None, ["/srv"]])
def test_base_dir_must_be_a_path(base):
    with pytest.raises(TypeError):
        SnapshotCollector(base)
