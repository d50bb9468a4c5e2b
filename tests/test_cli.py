"""snapshot-du: every option and output format, checked against GNU du where the
counting rules match (on tmpfs, directories have no blocks, so du -s and
snapshot-du count the same bytes)."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

import snapshot
from snapshot import cli
from snapshot._report import human, printable

# Each test that sizes in this process runs against both walkers; those that only parse
# arguments, format numbers or run a subprocess do not take the fixture (they would only run twice).
WALKED = pytest.mark.usefixtures("walker")


def run(args, capsys):
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def du(*args):
    out = subprocess.run(["du", *map(str, args)], check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines()]


def make_tree(root):
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "a").write_bytes(os.urandom(5000))
    (root / "sub" / "b").write_bytes(os.urandom(70000))
    with open(root / "sub" / "deep" / "sparse", "wb") as f:
        f.truncate(10 << 20)
        f.seek(1 << 20)
        f.write(b"z" * 9000)
    os.link(root / "a", root / "sub" / "a-link")
    os.symlink("a", root / "sym")
    return root


@pytest.fixture
def trees(tmpfs):
    return [make_tree(tmpfs / "t1"), make_tree(tmpfs / "t2")]


def dir_sizes_of(root):
    """Directories' own st_size: du --apparent-size counts them, snapshot-du does not."""
    return sum(os.lstat(os.path.join(d, x)).st_size for d, ds, _ in os.walk(root) for x in ds) + os.lstat(root).st_size


@pytest.mark.parametrize("ours, theirs", [
    ([], ["-s"]),
    (["-l"], ["-s", "-l"]),
    (["-h"], ["-s", "-h"]),
    (["-h", "-l"], ["-s", "-h", "-l"]),
    (["-x"], ["-s", "-x"]),
    (["-c"], ["-s", "-c"]),
])
@WALKED
def test_matches_du_allocated(trees, capsys, ours, theirs):
    rc, out, err = run(ours + trees, capsys)
    assert rc == 0 and err == ""
    for t in trees:  # each PATH on its own, as our hard-link set is per PATH
        assert [line.split("\t") for line in out.splitlines()][trees.index(t)] == du(*theirs, t)[0]
    if "-c" in ours:
        rows = [line.split("\t") for line in out.splitlines()]
        assert rows[-1][1] == "total" and int(rows[-1][0]) == sum(int(r[0]) for r in rows[:-1])


@pytest.mark.parametrize("ours, theirs", [(["-b"], ["-sb"]), (["-b", "-l"], ["-sb", "-l"]),
                                         (["--apparent-size", "-b"], ["-s", "--apparent-size", "-B1"])])
@WALKED
def test_matches_du_apparent_less_directories(trees, capsys, ours, theirs):
    rc, out, _ = run(ours + [trees[0]], capsys)
    size, path = out.strip().split("\t")
    du_size, du_path = du(*theirs, trees[0])[0]
    assert rc == 0 and path == du_path
    assert int(size) == int(du_size) - dir_sizes_of(trees[0])


@WALKED
def test_apparent_size_in_kib_rounds_up(tmp_path, capsys):
    (tmp_path / "f").write_bytes(b"x" * 1025)
    rc, out, _ = run(["--apparent-size", tmp_path / "f"], capsys)
    assert out == f"2\t{tmp_path / 'f'}\n"


@pytest.mark.parametrize("size", [0, 1, 512, 1023, 1024, 1025, 1536, 10 * 1024 - 1, 10 * 1024, 10 * 1024 + 1,
                                  1023 * 1024 + 1, 1024 * 1024 - 1, 1024 * 1024, 1024 * 1024 + 1, 3 * 1024 ** 3 + 7,
                                  9 * 1024 ** 2 + 1, 99 * 1024 ** 2 + 1, 1024 ** 4 - 1])
def test_human_units_are_du_units(tmp_path, size):
    f = tmp_path / "f"
    with open(f, "wb") as fh:
        fh.truncate(size)
    assert human(size) == du("-h", "--apparent-size", f)[0][0]


@WALKED
def test_unreadable_path_reported_and_others_printed(tmp_path, capsys):
    (tmp_path / "ok").write_bytes(b"x" * 100)
    rc, out, err = run([tmp_path / "missing", tmp_path / "ok"], capsys)
    assert rc == 1
    assert err == f"snapshot-du: cannot access '{tmp_path / 'missing'}': No such file or directory\n"
    assert out.endswith(f"\t{tmp_path / 'ok'}\n")


@pytest.mark.parametrize("args", [["--snapshots"], ["--prometheus", "/"], ["--snapshots", "/", "/x"],
                                  ["--json", "--prometheus", "--snapshots", "/"], ["--bogus", "/"],
                                  ["-j", "0", "--snapshots", "/"], ["-o", "", "/"], ["--snapshots", "", "-o", "x"],
                                  ["--sort", "name", "/"], ["-r", "/"], ["--snapshots", "/", "--sort", "zero"],
                                  ["--snapshots", "/", "--sort", "exclusive"], ["--snapshots", "/", "--sort", "size"],
                                  ["-0", "--json", "/"], ["--snapshots", "/", "--prometheus", "-0"],
                                  ["--snapshots", "/", "--prometheus", "-t", "1M"], ["-B", "x", "/"],
                                  ["-B", "0", "/"], ["-t", "-0", "/"], ["-t", "1g", "/"]])
def test_usage_errors_exit_2(capsys, args):
    rc, out, err = run(args, capsys)
    assert rc == 2 and out == "" and "usage:" in err


def test_help(capsys):
    rc, out, _ = run(["--help"], capsys)
    assert rc == 0 and "--snapshots" in out and "--human-readable" in out


@WALKED
def test_json_paths(trees, capsys):
    rc, out, _ = run(["--json", "-c", *trees], capsys)
    doc = json.loads(out)
    assert [p["path"] for p in doc["paths"]] == [str(t) for t in trees]
    u = snapshot.usage(trees[0], count_links=False)
    assert doc["paths"][0]["allocated"] == u.allocated and doc["paths"][0]["files"] == u.files
    assert doc["total"] == sum(p["size"] for p in doc["paths"])


# ---- the fleet report ------------------------------------------------------------

def make_fleet(base):
    for name in ["small", "big", "middle"]:
        d = base / name
        d.mkdir(parents=True)
        with open(d / snapshot.CH_MEM_RANGES_FILE, "wb") as f:
            f.truncate(1 << 30)
            f.write(os.urandom(4096 * (1 + 10 * (name == "big"))))
        (d / snapshot.ROOTFS_COW_NAME).write_bytes(os.urandom(8192 * (1 + (name == "middle") * 20)))
        (d / snapshot.CH_CONFIG_FILE).write_text("{}")
    (base / "big" / snapshot.ROOTFS_FILE_NAME).write_bytes(os.urandom(4096))
    snapshot.write_meta(base, "big", snapshot.RootfsMeta("ubuntu-22.04", "tpl-1", 2, 2048))
    snapshot.write_meta(base, "small", snapshot.RootfsMeta("alpine"))
    (base / "not-a-snapshot").write_text("a file in BASE")
    return base


@WALKED
def test_snapshots_table(tmp_path, capsys):
    base = make_fleet(tmp_path / "base")
    rc, out, err = run(["--snapshots", base, "-b"], capsys)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["SNAPSHOT", "ALLOCATED", "APPARENT", "MEMORY", "COW", "ROOTFS", "BASE_TEMPLATE",
                                "VCPUS", "MEMORY_MB"]
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    sizes = {n: snapshot.dir_size(base, n) for n in ("small", "big", "middle")}
    assert [line.split()[0] for line in lines[1:-1]] == sorted(sizes, key=lambda n: -sizes[n])
    big = rows["big"]
    assert big[1] == str(sizes["big"]) and big[-3:] == ["ubuntu-22.04", "2", "2048"]
    assert big[3] == str(os.lstat(base / "big" / snapshot.CH_MEM_RANGES_FILE).st_blocks * 512)
    assert big[5] == str(os.lstat(base / "big" / snapshot.ROOTFS_FILE_NAME).st_blocks * 512)
    assert rows["small"][-3:] == ["alpine", "0", "0"]  # a meta file with zero fields: 0, not blank
    assert len(rows["middle"]) == 5  # no rootfs.ext4, no meta: blank cells
    assert lines[-1].split()[:3] == ["total", "(3)", str(sum(sizes.values()))]


@WALKED
def test_snapshots_corrupt_meta_is_reported_and_row_kept(tmp_path, capsys):
    base = make_fleet(tmp_path / "base")
    (base / "middle" / snapshot.ROOTFS_META_NAME).write_bytes(b'{"vcpus":"2"}')
    rc, out, err = run(["--snapshots", base], capsys)
    assert rc == 1
    assert "snapshot-du: bad metadata" in err and "middle" in err
    assert any(line.startswith("middle ") for line in out.splitlines())


@WALKED
def test_snapshots_units(tmp_path, capsys):
    base = make_fleet(tmp_path / "base")
    _, kib, _ = run(["--snapshots", base], capsys)
    _, h, _ = run(["--snapshots", base, "-h"], capsys)
    for name in ("big", "middle", "small"):
        n = snapshot.dir_size(base, name)
        assert [line.split()[1] for line in kib.splitlines() if line.startswith(name + " ")] == [str(-(-n // 1024))]
        assert [line.split()[1] for line in h.splitlines() if line.startswith(name + " ")] == [human(n)]


@WALKED
def test_snapshots_json(tmp_path, capsys):
    base = make_fleet(tmp_path / "base")
    rc, out, _ = run(["--snapshots", base, "--json"], capsys)
    doc = json.loads(out)
    assert rc == 0 and doc["base"] == str(base)
    by = {s["name"]: s for s in doc["snapshots"]}
    assert set(by) == {"small", "big", "middle"}
    for name, s in by.items():
        u = snapshot.usage(base / name)
        assert (s["allocated"], s["apparent"], s["files"], s["dirs"]) == (u.allocated, u.apparent, u.files, u.dirs)
    assert by["big"]["base_template"] == "ubuntu-22.04" and by["big"]["memory_mb"] == 2048
    assert by["middle"]["base_template"] is None and by["middle"]["rootfs_ext4"] is None
    assert doc["total"]["allocated"] == sum(s["allocated"] for s in doc["snapshots"])
    assert "shared" not in by["big"]


@WALKED
def test_snapshots_prometheus_parses_back(tmp_path, capsys):
    from prometheus_client.parser import text_string_to_metric_families
    base = make_fleet(tmp_path / "base")
    hostile = 'we"ird\\na\nme'
    (base / hostile).mkdir()
    (base / hostile / "f").write_bytes(os.urandom(3000))
    rc, out, _ = run(["--snapshots", base, "--prometheus"], capsys)
    assert rc == 0
    fams = {f.name: f for f in text_string_to_metric_families(out)}
    alloc = {s.labels["snapshot"]: s.value for s in fams["snapshot_allocated_bytes"].samples}
    # Label values are names as the table shows them (printable): here backslash doubled, newline as \n.
    assert alloc == {printable(n): snapshot.dir_size(base, n) for n in ["small", "big", "middle", hostile]}
    assert printable(hostile) == 'we"ird' + "\\\\" + "na" + "\\n" + "me"  # a backslash doubled, a newline as \n
    hostile = printable(hostile)
    apparent = {s.labels["snapshot"]: s.value for s in fams["snapshot_apparent_bytes"].samples}
    assert apparent[hostile] == 3000
    assert fams["snapshot_directories"].samples[0].value == 4
    assert fams["snapshot_allocated_bytes"].type == "gauge"
    assert "snapshot_shared_bytes" not in fams


@WALKED
def test_output_file_is_replaced_atomically(tmp_path, capsys):
    base = make_fleet(tmp_path / "base")
    out_dir = tmp_path / "textfile"
    out_dir.mkdir()
    target = out_dir / "snapshots.prom"
    target.write_text("old\n")
    rc, out, _ = run(["--snapshots", base, "--prometheus", "-o", target], capsys)
    assert rc == 0 and out == ""
    assert target.read_text().startswith("# HELP snapshot_up")
    assert os.listdir(out_dir) == ["snapshots.prom"]
    rc, _, err = run(["--snapshots", base, "-o", tmp_path / "no-dir" / "x"], capsys)
    assert rc == 1 and "cannot write" in err


@WALKED
def test_snapshots_shared_columns_on_reflink_fs(xfs, capsys):
    from prometheus_client.parser import text_string_to_metric_families
    (xfs / "base" / "tpl").mkdir(parents=True)
    (xfs / "base" / "vm").mkdir()
    with open(xfs / "base" / "tpl" / "rootfs.ext4", "wb") as f:
        f.write(os.urandom(4 << 20))
    subprocess.run(["cp", "--reflink=always", xfs / "base" / "tpl" / "rootfs.ext4",
                    xfs / "base" / "vm" / "rootfs.ext4"], check=True)
    with open(xfs / "base" / "vm" / "rootfs.ext4", "r+b") as f:
        f.write(os.urandom(1 << 20))
    os.sync()
    rc, out, _ = run(["--snapshots", xfs / "base", "--shared", "-b"], capsys)
    lines = out.splitlines()
    assert rc == 0 and lines[0].split()[-2:] == ["SHARED", "EXCLUSIVE"]
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert rows["vm"][-2:] == [str(3 << 20), str(1 << 20)]
    assert rows["tpl"][-2:] == [str(3 << 20), str(1 << 20)]
    rc, out, _ = run(["--snapshots", xfs / "base", "--shared", "--prometheus"], capsys)
    fams = {f.name: f for f in text_string_to_metric_families(out)}
    assert {s.labels["snapshot"]: s.value for s in fams["snapshot_shared_bytes"].samples} == \
        {"vm": 3 << 20, "tpl": 3 << 20}
    rc, out, _ = run(["--shared", "-c", "-b", "--apparent-size", xfs / "base" / "vm", xfs / "base" / "tpl"], capsys)
    rows = [line.split("\t") for line in out.splitlines()]
    assert rows[-1] == [str(8 << 20), str(6 << 20), str(2 << 20), "total"]
    assert [sum(int(r[i]) for r in rows[:-1]) for i in (0, 1, 2)] == [8 << 20, 6 << 20, 2 << 20]


def test_console_script_and_module_entry_points(tmp_path):
    (tmp_path / "f").write_bytes(os.urandom(10000))
    exe = os.path.join(os.path.dirname(sys.executable), "snapshot-du")
    a = subprocess.run([exe, "-b", str(tmp_path)], capture_output=True, text=True)
    b = subprocess.run([sys.executable, "-m", "snapshot", "-b", str(tmp_path)], capture_output=True, text=True)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout == f"10000\t{tmp_path}\n"
    c = subprocess.run([exe, str(tmp_path / "missing")], capture_output=True, text=True)
    assert c.returncode == 1 and "cannot access" in c.stderr


# ---- du's habits --------------------------------------------------------------------

@WALKED
def test_summarize_is_accepted_as_du_takes_it(trees, capsys):
    rc, out, err = run(["-sh", *trees], capsys)
    assert (rc, err) == (0, "")
    assert out == run(["-h", *trees], capsys)[1]
    assert run(["--summarize", trees[0]], capsys)[1] == run([trees[0]], capsys)[1]


def test_version(capsys):
    rc, out, _ = run(["--version"], capsys)
    assert rc == 0 and out == f"snapshot-du {snapshot.__version__}\n"
    import importlib.metadata
    assert snapshot.__version__ == importlib.metadata.version(DISTRIBUTION)


DISTRIBUTION = "cloudhv-snapshot"  # the PyPI name ("snapshot" is another project's); README's install line


def test_the_distribution_installs_the_snapshot_package_and_both_commands():
    import importlib.metadata
    dist = importlib.metadata.distribution(DISTRIBUTION)
    assert dist.read_text("top_level.txt").split() == ["snapshot"]
    scripts = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
    assert scripts == {"snapshot-du": "snapshot.cli:main", "snapshot-sparsify": "snapshot.cli_sparsify:main"}
    assert dist.metadata["Requires-Python"] == ">=3.9"
    classifiers = dist.metadata.get_all("Classifier")
    assert [c.rsplit(" ", 1)[1] for c in classifiers if c.startswith("Programming Language :: Python :: 3.")] == \
        ["3.9", "3.10", "3.11", "3.12", "3.13"]
    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text("utf-8")
    assert f"pip install {DISTRIBUTION}" in readme and f"pip install '{DISTRIBUTION}[prometheus]'" in readme


@WALKED
def test_no_path_means_the_working_directory(tmp_path, capsys, monkeypatch):
    (tmp_path / "f").write_bytes(os.urandom(9000))
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run(["-b"], capsys)
    assert (rc, out) == (0, "9000\t.\n")


# ---- totals that add up -----------------------------------------------------------------

def sparse_tree(root, holes):
    root.mkdir()
    for i, hole in enumerate(holes):
        with open(root / f"f{i}", "wb") as f:
            f.truncate(hole)
            f.write(os.urandom(5000 + i))
    return root


@pytest.mark.parametrize("unit", [["-b"], ["--apparent-size", "-b"], ["--apparent-size"], []])
@WALKED
def test_shared_totals_are_the_sums_of_the_rows(tmp_path, capsys, unit):
    """With sparse files, apparent and allocated differ: the total's exclusive was total
    apparent minus total shared (1,074,790,518 where the rows summed to 5,251,072)."""
    a = sparse_tree(tmp_path / "a", [1 << 30, 0])
    b = sparse_tree(tmp_path / "b", [1 << 20])
    rc, out, _ = run(["-c", "--shared", *unit, a, b], capsys)
    rows = [line.split("\t") for line in out.splitlines()]
    assert rc == 0 and rows[-1][-1] == "total"
    for col in (0, 1, 2):
        assert int(rows[-1][col]) == sum(int(r[col]) for r in rows[:-1]), (col, rows)
    assert int(rows[-1][2]) < 1 << 20  # exclusive is allocated bytes, whatever the size column shows
    rc, out, _ = run(["-c", "--shared", "--json", *unit, a, b], capsys)
    doc = json.loads(out)
    assert doc["total_exclusive"] == sum(p["exclusive"] for p in doc["paths"])
    assert doc["total_shared"] == sum(p["shared"] for p in doc["paths"])


@WALKED
def test_fleet_shared_total_counts_each_disk_byte_once(xfs, capsys):
    """Three snapshots share one 4 MiB template: the rows say 4 MiB shared each, the total
    says 4 MiB (the set-shared bytes), and total exclusive + set-shared is the real footprint."""
    base = xfs / "base"
    template = xfs / "template.ext4"
    template.write_bytes(os.urandom(4 << 20))
    for i, name in enumerate(["a", "b", "c"]):
        (base / name).mkdir(parents=True)
        subprocess.run(["cp", "--reflink=always", template, base / name / "rootfs.ext4"], check=True)
        (base / name / "memory-ranges").write_bytes(os.urandom((i + 1) << 16))
    os.unlink(template)
    os.sync()
    rc, out, _ = run(["--snapshots", base, "--shared", "-b"], capsys)
    lines = out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert rc == 0 and all(rows[n][-2] == str(4 << 20) for n in "abc")
    total = lines[-1].split()
    exclusive = sum(i << 16 for i in (1, 2, 3))
    assert total[-2:] == [str(4 << 20), str(exclusive)]
    rc, out, _ = run(["--snapshots", base, "--shared", "--json"], capsys)
    t = json.loads(out)["total"]
    assert (t["shared"], t["shared_physical"], t["exclusive"]) == (12 << 20, 4 << 20, exclusive)
    assert t["exclusive"] + t["shared_physical"] == t["allocated"] - t["shared"] + t["shared_physical"]
    from prometheus_client.parser import text_string_to_metric_families
    rc, out, _ = run(["--snapshots", base, "--shared", "--prometheus"], capsys)
    fams = {f.name: f for f in text_string_to_metric_families(out)}
    assert fams["snapshot_set_shared_bytes"].samples[0].value == 4 << 20


# ---- names in every format --------------------------------------------------------------

TWINS = [os.fsdecode(b"vm-\xff"), "vm-\\xff"]  # the byte 0xFF, and the text backslash-x-f-f


@pytest.fixture
def twins(tmp_path):
    base = tmp_path / "base"
    for i, n in enumerate(TWINS):
        (base / n).mkdir(parents=True)
        (base / n / "f").write_bytes(os.urandom(5000 * (i + 1)))
    return base


@WALKED
def test_table_tells_a_byte_from_its_escape(twins, capsys):
    rc, out, _ = run(["--snapshots", twins, "-b"], capsys)
    names = [line.split()[0] for line in out.splitlines()[1:-1]]
    assert rc == 0 and sorted(names) == ["vm-\\\\xff", "vm-\\xff"]


@WALKED
def test_prometheus_gives_distinct_names_distinct_labels(twins, capsys):
    from prometheus_client.parser import text_string_to_metric_families
    rc, out, _ = run(["--snapshots", twins, "--prometheus"], capsys)
    fams = {f.name: f for f in text_string_to_metric_families(out)}
    labels = [s.labels["snapshot"] for s in fams["snapshot_allocated_bytes"].samples]
    assert len(set(labels)) == 2 and sorted(labels) == sorted(printable(n) for n in TWINS)


@WALKED
def test_json_carries_names_that_are_not_utf8_losslessly(twins, capsys):
    import base64
    rc, out, _ = run(["--snapshots", twins, "--json"], capsys)
    out.encode("utf-8")  # no lone surrogates: any JSON reader takes it
    assert "\\udc" not in out
    doc = json.loads(out)
    exact = {os.fsdecode(base64.b64decode(s["name_bytes"])) if "name_bytes" in s else s["name"]
             for s in doc["snapshots"]}
    assert exact == set(TWINS)
    assert {s["name"] for s in doc["snapshots"]} == {"vm-\ufffd", "vm-\\xff"}
    assert "name_bytes" not in [s for s in doc["snapshots"] if s["name"] == "vm-\\xff"][0]
    rc, out, _ = run(["--json", *(twins / n for n in TWINS)], capsys)
    out.encode("utf-8")
    paths = json.loads(out)["paths"]
    assert os.fsdecode(base64.b64decode(paths[0]["path_bytes"])) == str(twins / TWINS[0])


# ---- the report's own cost, and its errors ---------------------------------------------------

@WALKED
def test_repeated_errors_are_capped(tmp_path, capsys):
    base = tmp_path / "base"
    for i in range(45):
        (base / f"vm{i:02d}").mkdir(parents=True)
        (base / f"vm{i:02d}" / snapshot.ROOTFS_META_NAME).write_bytes(b"{")
    rc, out, err = run(["--snapshots", base], capsys)
    lines = err.splitlines()
    assert rc == 1 and len(lines) == 21
    assert all(line.startswith("snapshot-du: bad metadata") for line in lines[:20])
    assert lines[20] == "snapshot-du: 25 more errors not shown (45 in all)"
    assert len(out.splitlines()) == 47  # every row is still there


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory", "huge", "huge-int"])
@WALKED
def test_report_refuses_what_read_meta_refuses(tmp_path, capsys, kind):
    base = make_fleet(tmp_path / "base")
    meta = base / "middle" / snapshot.ROOTFS_META_NAME
    (tmp_path / "target").write_bytes(b'{"base_template":"followed"}')
    if kind == "symlink":
        os.symlink(tmp_path / "target", meta)
    elif kind == "fifo":
        os.mkfifo(meta)
    elif kind == "directory":
        meta.mkdir()
    elif kind == "huge":
        meta.write_bytes(b"{}" + b" " * (1 << 20))
    else:
        meta.write_bytes(b'{"vcpus":' + b"9" * 5000 + b"}")
    try:
        expected = snapshot.read_meta(base, "middle")
    except Exception as e:  # what the library says, the report says
        expected = e
    assert isinstance(expected, (snapshot.MetaError, OSError))
    rc, out, err = run(["--snapshots", base], capsys)
    assert rc == 1
    reason = expected.reason if isinstance(expected, snapshot.MetaError) else expected.strerror
    assert err.splitlines()[0].endswith(f"'{meta}': {reason}")
    assert [line.split()[-1] for line in out.splitlines() if line.startswith("middle ")] != ["followed"]
    assert len(out.splitlines()) == 5


def test_report_with_a_fifo_meta_does_not_hang(tmp_path):
    base = make_fleet(tmp_path / "base")
    os.mkfifo(base / "middle" / snapshot.ROOTFS_META_NAME)
    try:
        r = subprocess.run([sys.executable, "-m", "snapshot", "--snapshots", str(base)], capture_output=True,
                           text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("snapshot-du --snapshots hung on a FIFO rootfs.meta")
    assert r.returncode == 1 and "is a FIFO, not a regular file" in r.stderr


@WALKED
def test_report_columns_come_from_the_walk(tmp_path, capsys):
    """MEMORY, COW and ROOTFS are each file's own allocated bytes (lstat), a hard link
    counted once or not, and None for a directory of that name."""
    base = make_fleet(tmp_path / "base")
    os.link(base / "big" / snapshot.CH_MEM_RANGES_FILE, base / "big" / "memory-copy")
    (base / "small" / snapshot.ROOTFS_FILE_NAME).mkdir()
    for links in ([], ["-l"]):
        rc, out, _ = run(["--snapshots", base, "--json", *links], capsys)
        by = {s["name"]: s for s in json.loads(out)["snapshots"]}
        for name in ("big", "small", "middle"):
            for key, file in (("memory_ranges", snapshot.CH_MEM_RANGES_FILE), ("rootfs_cow", snapshot.ROOTFS_COW_NAME),
                              ("rootfs_ext4", snapshot.ROOTFS_FILE_NAME)):
                p = base / name / file
                want = None if not p.exists() or p.is_dir() else os.lstat(p).st_blocks * 512
                assert by[name][key] == want, (name, key)


def _report_as_nobody(args):
    import io
    sys.stderr = io.StringIO()
    rc = cli.main(args + ["-o", "out"])
    with open("out") as f:
        return rc, f.read(), sys.stderr.getvalue()


def test_snapshots_json_names_every_failed_snapshot(arena):
    """A snapshot whose walk failed was only a line in "errors"; now "failed" names it, with
    those whose rootfs.meta could not be read (their rows stay), in name order."""
    from conftest import as_nobody
    path, fd = arena
    base = make_fleet(path / "base")
    (base / "middle" / snapshot.ROOTFS_META_NAME).write_bytes(b"{")
    (base / "locked" / "inner").mkdir(parents=True)
    os.chmod(base / "locked" / "inner", 0)
    try:
        rc, out, err = as_nobody(_report_as_nobody, ["--snapshots", "base", "--json"], cwd_fd=fd)
        rc2, table, _ = as_nobody(_report_as_nobody, ["--snapshots", "base"], cwd_fd=fd)
    finally:
        os.chmod(base / "locked" / "inner", 0o700)
    doc = json.loads(out)
    assert rc == rc2 == 1
    assert doc["failed"] == [
        {"name": "locked", "error": "cannot access 'base/locked/inner': Permission denied"},
        {"name": "middle", "error": "bad metadata 'base/middle/rootfs.meta': unexpected end of JSON input"}]
    assert doc["errors"] == [f["error"] for f in doc["failed"]]
    assert err.splitlines() == [f"snapshot-du: {e}" for e in doc["errors"]]
    assert sorted(s["name"] for s in doc["snapshots"]) == ["big", "middle", "small"]
    assert [line.split()[0] for line in table.splitlines()[1:-1]] == [s["name"] for s in doc["snapshots"]]



# ---- du's everyday options: -B, -k, -m, --si, the last unit wins, -t, -0 ----------------------------

def sized_files(root):
    """Sparse files of chosen apparent sizes (apparent sizes are what -B must print exactly)."""
    root.mkdir()
    sizes = [0, 1, 511, 512, 1000, 1023, 1024, 1025, 1536, 9999, 10239, 10240, 10241, 999999, 1000000, 1000001,
             1048575, 1048576, 1048577, 5000000, 3 * 1024 ** 3 + 7, 99 * 1024 ** 2 + 1, 10 ** 12 + 1, 1023 * 1024 ** 3]
    paths = []
    for n in sizes:
        with open(root / str(n), "wb") as f:
            f.truncate(n)
        paths.append(root / str(n))
    return paths


BLOCK_SIZES = ["1", "512", "1K", "K", "1k", "KiB", "KB", "kB", "1KB", "1KiB", "M", "1M", "MB", "MiB", "3M", "G", "GB",
               "T", "E", "2E", "MD", "1MD", "010", "0x10", "+5", " 5", "'1", "'K", "human-readable", "si", "h", "hum",
               "s", "18446744073709551615"]


@pytest.mark.parametrize("spec", BLOCK_SIZES)
def test_block_size_prints_what_du_prints(trees, tmp_path, capsys, spec):
    """-B was a usage error.  du -B M rounds up and prints "5M"; -B 1M prints "5"; -B KB "5000kB"."""
    files = sized_files(tmp_path / "sized")
    for extra, paths in ((["--apparent-size"], files), ([], trees)):
        for form in (["-B", spec], [f"--block-size={spec}"]):
            rc, out, err = run([*extra, *form, *paths], capsys)
            assert (rc, err) == (0, "")
            assert [line.split("\t") for line in out.splitlines()] == du("-s", *extra, *form, *paths), form


@pytest.mark.parametrize("spec", ["x", "0", "-1", "08", "0x", "K2", "1.5", "1B", "B", "b", "1e", "e", "1Ki", "1 ", "",
                                  "''1", "Human", "1Z", "Y", "16E", "18446744073709551616", "R"])
def test_bad_block_sizes_are_refused_in_dus_words(capsys, spec):
    r = subprocess.run(["du", "-B", spec, "/"], capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.startswith("du: ")
    rc, out, err = run(["-B", spec, "/"], capsys)
    assert (rc, out) == (2, "")
    assert err.splitlines()[-1] == "snapshot-du: error: " + r.stderr.strip()[len("du: "):]


@pytest.mark.parametrize("units", [["-h", "-b"], ["-b", "-h"], ["-k", "-b"], ["-b", "-k"], ["-m"], ["-b", "-m"],
                                   ["--si"], ["-b", "--si"], ["-B", "K", "-k"], ["-k", "-B", "K"], ["-h", "-B", "1"],
                                   ["-b", "-B", "M"], ["-B", "M", "-h"], ["-m", "-k"], ["-h", "-m", "--si"]])
def test_the_last_unit_wins_as_in_du(trees, tmp_path, capsys, units):
    """-h -b was a usage error; du takes the last, and -b keeps meaning --apparent-size."""
    paths = sized_files(tmp_path / "sized")[::4] + trees
    rc, out, err = run([*units, *paths], capsys)
    assert (rc, err) == (0, "")
    want = du("-s", *units, *paths)
    got = [line.split("\t") for line in out.splitlines()]
    if "-b" in units:  # apparent sizes: du also counts the directories' own st_size
        files = len(paths) - len(trees)
        assert got[:files] == want[:files]
        assert "--apparent-size" in _parsed(units)
    else:
        assert got == want


def _parsed(units):
    args = cli._parser().parse_args(units)
    return ["--apparent-size"] if args.apparent_size else []


THRESHOLDS = ["0", "1", "1K", "K", "1M", "-1M", "-1", "1000000", "1000001", "-1000000", "-999999", "1KB", "1MiB",
              "1MD", "0x100", "+5", " -5", "-9223372036854775808", "-8E", "7E", "9223372036854775807"]


@pytest.mark.parametrize("spec", THRESHOLDS)
def test_threshold_leaves_out_what_du_leaves_out(tmp_path, capsys, spec):
    """-t was a usage error.  The total (-c) still counts what is left out, as du's does."""
    files = sized_files(tmp_path / "sized")
    for form in (["-t", spec], [f"-t{spec}"], [f"--threshold={spec}"], ["--threshold", spec]):
        rc, out, err = run(["-c", "-b", *form, *files], capsys)
        assert (rc, err) == (0, ""), form
        assert [line.split("\t") for line in out.splitlines()] == du("-c", "-b", *form, *files), form
    rc, out, _ = run(["-c", "-b", "--json", "-t", spec, *files], capsys)
    doc = json.loads(out)
    assert [p["path"] for p in doc["paths"]] == [r[1] for r in du("-b", "-t", spec, *files)]
    assert doc["total"] == sum(os.lstat(f).st_size for f in files)


@pytest.mark.parametrize("spec", ["-0", "-00", "1g", "1t", "1b", "x", "-K", "", "9223372036854775808", "8E", "1.5"])
def test_bad_thresholds_are_refused_in_dus_words(capsys, spec):
    r = subprocess.run(["du", "-t", spec, "/"], capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.startswith("du: ")
    rc, out, err = run(["-t", spec, "/"], capsys)
    assert (rc, out) == (2, "")
    assert err.splitlines()[-1] == "snapshot-du: error: " + r.stderr.strip()[len("du: "):]


def test_null_ends_each_line_with_nul_as_du_does(tmp_path, capsys):
    """A name holding a newline broke line-based output; -0 is what it is for."""
    odd = tmp_path / "two\nlines"
    odd.mkdir()
    (odd / "f").write_bytes(os.urandom(5000))
    (tmp_path / "plain").write_bytes(os.urandom(9000))
    args = ["-b", "-c", odd, tmp_path / "plain"]
    for null in ("-0", "--null"):
        rc, out, _ = run([null, *args], capsys)
        want = subprocess.run(["du", "-s", null, *map(str, args)], capture_output=True, check=True).stdout
        # du counts the directory's own st_size in -b: compare the lines' ends and names only
        assert rc == 0 and out.count("\0") == 3 and "\n" not in out.replace(str(odd), "")
        assert [line.split("\t")[1] for line in out.split("\0")[:-1]] == \
            [line.split(b"\t")[1].decode() for line in want.split(b"\0")[:-1]]


# ---- --snapshots: --sort, -r, -t, -B, -0 --------------------------------------------------------------

def _table_names(out, end="\n"):
    return [line.split()[0] for line in out.split(end)[1:-2]]


def test_snapshots_sort_and_reverse(tmp_path, capsys):
    """The table had one order only."""
    base = make_fleet(tmp_path / "base")
    (base / "empty").mkdir()
    sizes = {n: snapshot.usage(base / n) for n in ("small", "big", "middle", "empty")}
    by = {"allocated": lambda n: (-sizes[n].allocated, n), "apparent": lambda n: (-sizes[n].apparent, n),
          "name": lambda n: n}
    for key, order in by.items():
        want = sorted(sizes, key=order)
        assert len({order(n) for n in sizes}) == 4  # no ties: the order says something
        rc, out, err = run(["--snapshots", base, "--sort", key], capsys)
        assert (rc, err) == (0, "") and _table_names(out) == want, key
        rc, out, _ = run(["--snapshots", base, "--sort", key, "-r"], capsys)
        assert _table_names(out) == want[::-1], key
        rc, out, _ = run(["--snapshots", base, "--sort", key, "--json"], capsys)
        assert [s["name"] for s in json.loads(out)["snapshots"]] == want
    rc, out, _ = run(["--snapshots", base], capsys)
    assert _table_names(out) == sorted(sizes, key=by["allocated"])  # the default
    rc, out, _ = run(["--snapshots", base, "--zero", "--sort", "zero"], capsys)
    zeros = {n: snapshot.scan_blocks(base / n).zero for n in sizes}
    assert _table_names(out) == sorted(sizes, key=lambda n: (-zeros[n], n))


def test_snapshots_sort_exclusive(xfs, capsys):
    base = xfs / "base"
    for name in ("a", "b", "c"):
        (base / name).mkdir(parents=True)
    (base / "a" / "rootfs.ext4").write_bytes(os.urandom(1 << 20))
    subprocess.run(["cp", "--reflink=always", base / "a" / "rootfs.ext4", base / "b" / "rootfs.ext4"], check=True)
    (base / "b" / "memory-ranges").write_bytes(os.urandom(64 << 10))
    (base / "c" / "memory-ranges").write_bytes(os.urandom(256 << 10))
    os.sync()
    rc, out, _ = run(["--snapshots", base, "--shared", "--sort", "exclusive"], capsys)
    assert rc == 0 and _table_names(out) == ["c", "b", "a"]  # allocated would say b, a, c
    rc, out, _ = run(["--snapshots", base, "--shared"], capsys)
    assert _table_names(out) == ["b", "a", "c"]


def test_snapshots_threshold_block_size_and_null(tmp_path, capsys):
    base = make_fleet(tmp_path / "base")
    sizes = {n: snapshot.dir_size(base, n) for n in ("small", "big", "middle")}
    cut = sorted(sizes.values())[1]
    rc, all_rows, _ = run(["--snapshots", base, "-b"], capsys)
    for spec, keep in ((str(cut), lambda v: v >= cut), (f"-{cut}", lambda v: v <= cut)):
        rc, out, _ = run(["--snapshots", base, "-b", "-t", spec], capsys)
        assert rc == 0 and _table_names(out) == [n for n in _table_names(all_rows) if keep(sizes[n])]
        assert out.splitlines()[-1] == all_rows.splitlines()[-1]  # the total counts every snapshot, as du -c
        rc, out, _ = run(["--snapshots", base, "--json", "-t", spec], capsys)
        doc = json.loads(out)
        assert {s["name"] for s in doc["snapshots"]} == {n for n in sizes if keep(sizes[n])}
        assert doc["total"]["allocated"] == sum(sizes.values())
    rc, out, _ = run(["--snapshots", base, "-B", "KiB"], capsys)
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:-1]}
    assert rows["big"][1] == f"{-(-sizes['big'] // 1024)}KiB"
    rc, out, _ = run(["--snapshots", base, "-m", "-h", "-b"], capsys)  # the last wins
    assert out == all_rows
    rc, out, _ = run(["--snapshots", base, "-b", "-0"], capsys)
    assert "\n" not in out and out.split("\0") == all_rows.split("\n")


@pytest.mark.parametrize("file", [snapshot.ROOTFS_FILE_NAME, snapshot.ROOTFS_META_NAME, snapshot.CH_MEM_RANGES_FILE])
def test_snapshots_warns_when_base_is_itself_a_snapshot(tmp_path, capsys, file):
    """--snapshots pointed at one snapshot printed "total (0)" and exited 0, with no hint."""
    vm = tmp_path / "vm"
    (vm / "sub").mkdir(parents=True)
    (vm / file).write_bytes(b"{}")
    rc, out, err = run(["--snapshots", vm], capsys)
    assert rc == 0 and out.splitlines()[-1].split()[:2] == ["total", "(1)"]
    assert err == (f"snapshot-du: warning: '{vm}' holds {file}: it looks like a snapshot itself; "
                   f"--snapshots sizes the snapshots in BASE, each of its directories\n")
    rc, out, err = run(["--snapshots", tmp_path], capsys)
    assert (rc, err) == (0, "")
