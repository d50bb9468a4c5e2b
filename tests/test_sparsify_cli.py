"""snapshot-sparsify and snapshot-du --zero, as commands."""
import filecmp
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

import snapshot
from snapshot import cli, cli_sparsify
from test_blocks import allocated, assert_same, mixed_file, once_punching_began, sha256, sparse_copy, zero_runs


def run(main, args, capsys):
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def fleet(tmp_path):
    base = tmp_path / "base"
    for i, name in enumerate(["vm1", "vm2"]):
        (base / name).mkdir(parents=True)
        mixed_file(base / name / snapshot.CH_MEM_RANGES_FILE, (8 + 4 * i) << 20)
        (base / name / snapshot.CH_CONFIG_FILE).write_text("{}")
    return base


def test_dry_run_then_real_run(fleet, tmp_path, capsys):
    f = fleet / "vm1" / snapshot.CH_MEM_RANGES_FILE
    g = fleet / "vm2" / snapshot.CH_MEM_RANGES_FILE
    copy_f, copy_g = sparse_copy(f, tmp_path / "copy-f"), sparse_copy(g, tmp_path / "copy-g")
    before, digest = allocated(f), sha256(f)
    zero = snapshot.scan_blocks(fleet / "vm1").zero
    rc, out, err = run(cli_sparsify.main, ["-n", fleet / "vm1"], capsys)
    assert (rc, err) == (0, "") and out == f"{-(-zero // 1024)}\t{fleet / 'vm1'}\n"
    assert (allocated(f), sha256(f)) == (before, digest)
    rc, out, err = run(cli_sparsify.main, ["-j", "2", fleet / "vm1", fleet / "vm2"], capsys)
    freed = int(out.splitlines()[0].split("\t")[0]) * 1024
    assert rc == 0 and 0 < before - allocated(f) <= freed < before - allocated(f) + 1024
    assert sha256(f) == digest and snapshot.scan_blocks(fleet).zero == 0
    rc, out, _ = run(cli_sparsify.main, ["-h", fleet], capsys)
    assert out == f"0\t{fleet}\n"
    assert_same(f, copy_f)
    assert_same(g, copy_g)


def test_a_refused_file_is_exit_1_and_the_others_are_done(fleet, tmp_path, capsys):
    held = fleet / "vm1" / snapshot.CH_MEM_RANGES_FILE
    done = fleet / "vm2" / snapshot.CH_MEM_RANGES_FILE
    copy_held, copy_done = sparse_copy(held, tmp_path / "copy-held"), sparse_copy(done, tmp_path / "copy-done")
    code = "import sys, time; f = open(sys.argv[1], 'rb'); print('ready', flush=True); time.sleep(600)"
    p = subprocess.Popen([sys.executable, "-c", code, str(held)], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    try:
        rc, out, err = run(cli_sparsify.main, [fleet], capsys)
    finally:
        p.kill()
        p.wait()
    assert rc == 1
    assert err == f"snapshot-sparsify: '{held}': another process has it open; not sparsified\n"
    assert snapshot.scan_blocks(fleet / "vm2").zero == 0 and snapshot.scan_blocks(held).zero > 0
    assert_same(held, copy_held)
    assert_same(done, copy_done)


def test_usage_errors(capsys):
    for args in ([], ["-j", "0", "/x"], [""], ["--bogus", "/x"]):
        rc, out, err = run(cli_sparsify.main, args, capsys)
        assert rc == 2 and "usage:" in err


def test_ctrl_c_exits_130_and_leaves_the_files_whole(tmp_path):
    """Interrupted while it punches (for real): exit 130, the file part punched and, byte for
    byte, what it was (a copy says so)."""
    f = zero_runs(tmp_path / "f", 10_000)  # 10,000 punches: a second or so
    copy = tmp_path / "copy"
    shutil.copyfile(f, copy)
    before = allocated(f)
    p = subprocess.Popen([sys.executable, "-m", "snapshot.cli_sparsify", str(f)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    once_punching_began(f, p, before)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 130, (out, err)
    assert err == b"snapshot-sparsify: interrupted (the files are whole: only zero blocks were punched)\n"
    assert before - 10_000 * 4096 < allocated(f) < before  # interrupted part way
    assert filecmp.cmp(f, copy, shallow=False)


def test_console_script(fleet, tmp_path):
    f = fleet / "vm1" / snapshot.CH_MEM_RANGES_FILE
    copy = sparse_copy(f, tmp_path / "copy")
    exe = os.path.join(os.path.dirname(sys.executable), "snapshot-sparsify")
    r = subprocess.run([exe, "-n", str(fleet)], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.endswith(f"\t{fleet}\n")
    assert_same(f, copy)


# ---- snapshot-du --zero -------------------------------------------------------------------------

def test_du_zero_column_in_both_modes(fleet, capsys):
    from prometheus_client.parser import text_string_to_metric_families
    zeros = {n: snapshot.scan_blocks(fleet / n).zero for n in ("vm1", "vm2")}
    rc, out, _ = run(cli.main, ["--zero", "-b", "-c", fleet / "vm1", fleet / "vm2"], capsys)
    rows = [line.split("\t") for line in out.splitlines()]
    assert rc == 0 and [r[1] for r in rows] == [str(zeros["vm1"]), str(zeros["vm2"]), str(sum(zeros.values()))]
    rc, out, _ = run(cli.main, ["--snapshots", fleet, "--zero", "-b"], capsys)
    lines = out.splitlines()
    assert lines[0].split()[-1] == "ZERO"
    assert {line.split()[0]: int(line.split()[-1]) for line in lines[1:-1]} == zeros
    assert int(lines[-1].split()[-1]) == sum(zeros.values())
    rc, out, _ = run(cli.main, ["--snapshots", fleet, "--zero", "--json"], capsys)
    doc = json.loads(out)
    assert {s["name"]: s["zero"] for s in doc["snapshots"]} == zeros and doc["total"]["zero"] == sum(zeros.values())
    rc, out, _ = run(cli.main, ["--snapshots", fleet, "--zero", "--prometheus"], capsys)
    fams = {f.name: f for f in text_string_to_metric_families(out)}
    assert {s.labels["snapshot"]: s.value for s in fams["snapshot_zero_bytes"].samples} == zeros
    rc, out, _ = run(cli.main, ["--snapshots", fleet, "-b"], capsys)
    assert "ZERO" not in out
