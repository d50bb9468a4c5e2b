"""snapshot-du: every option and output format, checked against GNU du where the
counting rules match (on tmpfs, directories have no blocks, so du -s and
snapshot-du count the same bytes)."""
import json
import os
import subprocess
import sys

import pytest

import snapshot
from snapshot import cli
from snapshot._report import human

pytestmark = pytest.mark.usefixtures("walker")


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
def test_matches_du_apparent_less_directories(trees, capsys, ours, theirs):
    rc, out, _ = run(ours + [trees[0]], capsys)
    size, path = out.strip().split("\t")
    du_size, du_path = du(*theirs, trees[0])[0]
    assert rc == 0 and path == du_path
    assert int(size) == int(du_size) - dir_sizes_of(trees[0])


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


def test_unreadable_path_reported_and_others_printed(tmp_path, capsys):
    (tmp_path / "ok").write_bytes(b"x" * 100)
    rc, out, err = run([tmp_path / "missing", tmp_path / "ok"], capsys)
    assert rc == 1
    assert err == f"snapshot-du: cannot access '{tmp_path / 'missing'}': No such file or directory\n"
    assert out.endswith(f"\t{tmp_path / 'ok'}\n")


@pytest.mark.parametrize("args", [[], ["--snapshots"], ["--prometheus", "/"], ["--snapshots", "/", "/x"],
                                  ["--json", "--prometheus", "--snapshots", "/"], ["-h", "-b", "/"], ["--bogus", "/"],
                                  ["-j", "0", "--snapshots", "/"]])
def test_usage_errors_exit_2(capsys, args):
    rc, out, err = run(args, capsys)
    assert rc == 2 and out == "" and "usage:" in err


def test_help(capsys):
    rc, out, _ = run(["--help"], capsys)
    assert rc == 0 and "--snapshots" in out and "--human-readable" in out


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


def test_snapshots_corrupt_meta_is_reported_and_row_kept(tmp_path, capsys):
    base = make_fleet(tmp_path / "base")
    (base / "middle" / snapshot.ROOTFS_META_NAME).write_bytes(b'{"vcpus":"2"}')
    rc, out, err = run(["--snapshots", base], capsys)
    assert rc == 1
    assert "snapshot-du: bad metadata" in err and "middle" in err
    assert any(line.startswith("middle ") for line in out.splitlines())


def test_snapshots_units(tmp_path, capsys):
    base = make_fleet(tmp_path / "base")
    _, kib, _ = run(["--snapshots", base], capsys)
    _, h, _ = run(["--snapshots", base, "-h"], capsys)
    for name in ("big", "middle", "small"):
        n = snapshot.dir_size(base, name)
        assert [line.split()[1] for line in kib.splitlines() if line.startswith(name + " ")] == [str(-(-n // 1024))]
        assert [line.split()[1] for line in h.splitlines() if line.startswith(name + " ")] == [human(n)]


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
    assert alloc == {n: snapshot.dir_size(base, n) for n in ["small", "big", "middle", hostile]}
    apparent = {s.labels["snapshot"]: s.value for s in fams["snapshot_apparent_bytes"].samples}
    assert apparent[hostile] == 3000
    assert fams["snapshot_count"].samples[0].value == 4
    assert fams["snapshot_allocated_bytes"].type == "gauge"
    assert "snapshot_shared_bytes" not in fams


def test_output_file_is_replaced_atomically(tmp_path, capsys):
    base = make_fleet(tmp_path / "base")
    out_dir = tmp_path / "textfile"
    out_dir.mkdir()
    target = out_dir / "snapshots.prom"
    target.write_text("old\n")
    rc, out, _ = run(["--snapshots", base, "--prometheus", "-o", target], capsys)
    assert rc == 0 and out == ""
    assert target.read_text().startswith("# HELP snapshot_allocated_bytes")
    assert os.listdir(out_dir) == ["snapshots.prom"]
    rc, _, err = run(["--snapshots", base, "-o", tmp_path / "no-dir" / "x"], capsys)
    assert rc == 1 and "cannot write" in err


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
    assert out.splitlines()[-1].split("\t") == [str(8 << 20), str(6 << 20), str(2 << 20), "total"]


def test_console_script_and_module_entry_points(tmp_path):
    (tmp_path / "f").write_bytes(os.urandom(10000))
    exe = os.path.join(os.path.dirname(sys.executable), "snapshot-du")
    a = subprocess.run([exe, "-b", str(tmp_path)], capture_output=True, text=True)
    b = subprocess.run([sys.executable, "-m", "snapshot", "-b", str(tmp_path)], capture_output=True, text=True)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout == f"10000\t{tmp_path}\n"
    c = subprocess.run([exe, str(tmp_path / "missing")], capture_output=True, text=True)
    assert c.returncode == 1 and "cannot access" in c.stderr
