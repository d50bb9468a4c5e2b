"""snapshot-du PATH... with du's options -d/--max-depth, -a/--all, --exclude, -t, -0, -c and the
units, and the partial total of a walk that met what it could not read, compared with GNU du on
the same trees.

Lines come in du's order.  A file's line is du's.  A directory's line is du's less the own size
of that directory and of every directory below it that du counted (st_blocks, or st_size with
--apparent-size): du counts directories, snapshot-du does not (see the README).  Those own sizes
are found here with os.lstat, independently of both programs, and du itself formats the sizes
that result (du --apparent-size on sparse files of exactly those sizes).  Each in-process test
runs against both walkers (the `walker` fixture); the console script runs the compiled one."""
import fnmatch
import io
import json
import os
import resource  # here: user nobody cannot import it (it lives below root's home)
import shutil
import stat
import subprocess
import sys
import time

import pytest

from conftest import as_nobody
from snapshot import cli


def _gnu_du():
    path = shutil.which("du")
    if path is None:
        return None
    r = subprocess.run([path, "--version"], capture_output=True, text=True)
    return path if "GNU coreutils" in r.stdout else None


DU = _gnu_du()
pytestmark = pytest.mark.skipif(DU is None, reason="GNU du (coreutils) is not installed: nothing to compare with")

# du's sizes and words must not depend on the caller's environment.
DU_ENV = {k: v for k, v in os.environ.items()
          if k not in ("BLOCK_SIZE", "BLOCKSIZE", "DU_BLOCK_SIZE", "POSIXLY_CORRECT")}
DU_ENV["LC_ALL"] = "C"

UNIT_FLAGS = ("-h", "--si", "-b", "-k", "-m")


# ---- the trees -------------------------------------------------------------------------------

def _sparse(path, size: int, data_at: int, data: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(data_at)
        f.write(os.urandom(data))


def make_tree(root: str) -> None:
    """Nested directories (4 levels), sparse files, hard links within a directory, symlinks to a
    file, a directory and nowhere, a FIFO, empty directories, and names with a space, a newline
    and a byte that is not UTF-8."""
    r = os.fsencode(root)
    for d in (b"nested/deeper/deepest/empty2", b"empty", b"with space"):
        os.makedirs(os.path.join(r, d))
    files = {b"data": 5000, b"line\nbreak": 3000, b"caf\xe9": 700, b"with space/a b.img": 7000,
             b"nested/notes.txt": 100, b"nested/deeper/deepest/leaf": 20000}
    for name, n in files.items():
        with open(os.path.join(r, name), "wb") as f:
            f.write(os.urandom(n))
    _sparse(os.path.join(r, b"disk.img"), 8 << 20, 1 << 20, 12 << 10)
    _sparse(os.path.join(r, b"nested/deeper/x.img"), 1 << 20, (1 << 20) - 4096, 4096)
    os.link(os.path.join(r, b"data"), os.path.join(r, b"data-link"))
    os.link(os.path.join(r, b"nested/deeper/deepest/leaf"), os.path.join(r, b"nested/deeper/deepest/leaf-link"))
    os.symlink(b"data", os.path.join(r, b"sym"))
    os.symlink(b"nowhere", os.path.join(r, b"dangling"))
    os.symlink(b"nested", os.path.join(r, b"dirlink"))
    os.mkfifo(os.path.join(r, b"nested/fifo"))


def make_small_tree(root: str) -> None:
    os.makedirs(os.path.join(root, "d", "e"))
    for name, n in (("f", 3000), ("d/g", 6000), ("d/e/h", 9000)):
        with open(os.path.join(root, name), "wb") as f:
            f.write(os.urandom(n))


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A directory holding the trees t and u (sizes are only read: one per module)."""
    where = tmp_path_factory.mktemp("du-options")
    make_tree(str(where / "t"))
    make_small_tree(str(where / "u"))
    return where


@pytest.fixture
def here(place, monkeypatch):
    """The trees' directory as the working directory: PATHs are given relative, as typed."""
    monkeypatch.chdir(place)
    return place


# ---- running both programs -------------------------------------------------------------------

def du(args, cwd=None) -> tuple:
    r = subprocess.run(["du", *map(str, args)], executable=DU, cwd=cwd, env=DU_ENV, capture_output=True)
    return r.returncode, r.stdout, r.stderr.decode("utf-8", "surrogateescape")


def ours(args, capsysbinary) -> tuple:
    try:
        rc = cli.main([str(a) for a in args])
    except SystemExit as e:
        rc = e.code
    out, err = capsysbinary.readouterr()
    return rc, out, err.decode("utf-8", "surrogateescape")


def ours_captured(args) -> tuple:
    """cli.main(args) with stdout and stderr captured here (in a forked child: no capsys)."""
    saved = sys.stdout, sys.stderr
    out = io.BytesIO()
    sys.stdout = io.TextIOWrapper(out, encoding="utf-8", errors="surrogateescape", write_through=True)
    sys.stderr = io.StringIO()
    try:
        try:
            rc = cli.main([str(a) for a in args])
        except SystemExit as e:
            rc = e.code
        sys.stdout.flush()
        return rc, out.getvalue(), sys.stderr.getvalue()
    finally:
        sys.stdout, sys.stderr = saved


def records(out: bytes, end: bytes = b"\0") -> list:
    """[(size, path)] of du-style output whose lines end with *end*."""
    assert out == b"" or out.endswith(end), out[-40:]
    return [tuple(line.split(b"\t", 1)) for line in out.split(end)[:-1]]


# ---- what snapshot-du must print ---------------------------------------------------------------

def split_args(args) -> dict:
    """A command line of this file's cases, taken apart: what selects the lines (-d, -a,
    --exclude, -l, --apparent-size), the units, -t, -c."""
    parts = {"select": [], "units": [], "threshold": None, "total": False, "exclude": []}
    it = iter(args)
    for a in it:
        if a in UNIT_FLAGS:
            parts["units"].append(a)
        elif a == "-B":
            parts["units"] += [a, next(it)]
        elif a == "-t":
            parts["threshold"] = next(it)
        elif a == "-c":
            parts["total"] = True
        elif a in ("-d", "--exclude"):
            value = next(it)
            parts["select"] += [a, value]
            if a == "--exclude":
                parts["exclude"].append(os.fsencode(value))
        else:
            parts["select"].append(a)
    parts["apparent"] = "--apparent-size" in parts["select"] or "-b" in parts["units"]
    # Without -d or -a, snapshot-du prints one line per PATH: du -s.
    lines = any(a in ("-d", "-a", "--all") or a.startswith("--max-depth=") for a in parts["select"])
    parts["shape"] = parts["select"] if lines else ["-s", *parts["select"]]
    return parts


def excluded(path: bytes, patterns) -> bool:
    """du --exclude: the pattern against the path and each suffix that starts after a '/'
    (gnulib's exclude_fnmatch), here with Python's fnmatch, not fnmatch(3)."""
    starts = [0] + [i + 1 for i in range(len(path)) if path[i:i + 1] == b"/" and path[i + 1:i + 2] != b"/"]
    return any(fnmatch.fnmatchcase(path[s:], p) for p in patterns for s in starts)


def own_sizes(top: bytes, patterns, apparent: bool) -> dict:
    """{path: own size} of the directories du counts in *top*: top itself and every directory
    reached and lstat'ed below it, less those an --exclude pattern skips (and their subtrees).
    One du could not stat (in a directory it may list but not search) is not counted; one it
    could stat but not read is."""
    def own(st) -> int:
        return st.st_size if apparent else st.st_blocks * 512

    if excluded(top, patterns):
        return {}
    try:
        st = os.lstat(top)
    except OSError:
        return {}
    if not stat.S_ISDIR(st.st_mode):
        return {}
    sizes = {top: own(st)}
    for root, dirs, _ in os.walk(top, onerror=lambda e: None):
        kept = []
        for d in dirs:
            p = os.path.join(root, d)
            if excluded(p, patterns):
                continue
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):  # not a symlink to one
                sizes[p] = own(st)
                kept.append(d)
        dirs[:] = kept
    return sizes


def below(sizes: dict, path: bytes) -> int:
    """The own sizes of *path* and every counted directory below it."""
    prefix = path if path.endswith(b"/") else path + b"/"
    return sum(n for d, n in sizes.items() if d == path or d.startswith(prefix))


def is_dir(path: bytes) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def passes(n: int, threshold) -> bool:
    """du -t: at least SIZE bytes if SIZE is positive, at most -SIZE if negative."""
    if threshold is None:
        return True
    units = {"K": 1 << 10, "M": 1 << 20}
    t = int(threshold[:-1]) * units[threshold[-1]] if threshold[-1] in units else int(threshold)
    return n >= t if t >= 0 else n <= -t


def du_format(sizes, units) -> dict:
    """{bytes: what du prints for that size with *units*}: du --apparent-size on sparse files of
    those sizes, made in a scratch directory of the working directory."""
    # Relative: the process may be user nobody, who can reach "." (entered by descriptor) but not
    # pytest's 0700 directories above it, and tempfile.mkdtemp returns an absolute path (3.12+).
    scratch = f"fmt-{os.getpid()}-{time.monotonic_ns()}"
    os.mkdir(scratch, 0o700)
    try:
        wanted = sorted(set(sizes))
        for i, n in enumerate(wanted):
            with open(os.path.join(scratch, str(i)), "wb") as f:
                f.truncate(n)
        rc, out, err = du(["-0", "--apparent-size", *units, *(os.path.join(scratch, str(i))
                                                               for i in range(len(wanted)))])
        assert rc == 0, err
        return dict(zip(wanted, (size for size, _ in records(out))))
    finally:
        shutil.rmtree(scratch)


def expected(args, paths) -> tuple:
    """(du's exit status, du's stderr, [(size as du prints it, path)] that snapshot-du must
    print) for snapshot-du args + paths, from du -B1 on the same PATHs in the working directory."""
    p = split_args(args)
    apparent = ["--apparent-size"] if p["apparent"] else []
    rc, out, err = du(["-0", "-B1", *apparent, *p["shape"], *(["-c"] if p["total"] else []), *paths])
    sizes = {}
    for path in paths:
        top = os.fsencode(path)
        if len(top) > 2 and top.endswith(b"//"):  # du names "u//" and what is below it "u/", "u/d"
            top = top.rstrip(b"/") + b"/"
        sizes.update(own_sizes(top, p["exclude"], p["apparent"]))
    lines = records(out)
    total = lines.pop() if p["total"] else None
    shown = [(int(n) - (below(sizes, path) if is_dir(path) else 0), path) for n, path in lines]
    shown = [(n, path) for n, path in shown if passes(n, p["threshold"])]
    if total is not None:  # the total counts what -t leaves out, and is always shown
        shown.append((int(total[0]) - sum(sizes.values()), total[1]))
    fmt = du_format([n for n, _ in shown], p["units"])
    return rc, err, [(fmt[n], path) for n, path in shown]


def output(lines, end: bytes = b"\n") -> bytes:
    return b"".join(size + b"\t" + path + end for size, path in lines)


def du_file_lines(args, paths) -> list:
    """du's own lines for non-directories, run with exactly these options: equal to ours."""
    p = split_args(args)
    rc, out, err = du(["-0", *[a for a in args if a != "-c"], *(["-s"] if p["shape"][:1] == ["-s"] else []),
                       *paths])
    return [(n, path) for n, path in records(out) if not is_dir(path)]


def check(args, paths, capsysbinary) -> None:
    """snapshot-du args PATHs prints, with newlines and with -0, exactly what du's lines less
    the directories' own sizes say, in du's order; its file lines are du's own."""
    du_rc, du_err, want = expected(args, paths)
    assert (du_rc, du_err) == (0, "")
    rc, out, err = ours([*args, *paths], capsysbinary)
    assert (rc, err) == (0, "")
    assert out.split(b"\n") == output(want).split(b"\n")  # a list: readable diffs
    rc, out, err = ours(["-0", *args, *paths], capsysbinary)
    assert (rc, err) == (0, "")
    assert out.split(b"\0") == output(want, b"\0").split(b"\0")
    mine = [(n, path) for n, path in records(out) if not is_dir(path) and path != b"total"]
    assert mine == du_file_lines(args, paths)


PATHS = ["t", "u"]


# ---- -d/--max-depth -----------------------------------------------------------------------------

@pytest.mark.parametrize("depth", ["0", "1", "2", "3", "2147483648"])
def test_max_depth_prints_dus_directory_lines(walker, here, capsysbinary, depth):
    """A line for every directory down to the depth, each after those below it (du -d)."""
    check(["-d", depth], PATHS, capsysbinary)
    check([f"--max-depth={depth}"], PATHS, capsysbinary)


@pytest.mark.parametrize("args", [["-d", "1", "-c"], ["-d", "0", "-c"], ["-d", "2", "-l"],
                                  ["-d", "1", "--apparent-size"], ["-d", "2", "-b"]],
                         ids=" ".join)
def test_max_depth_with_totals_links_and_apparent_sizes(walker, here, capsysbinary, args):
    check(args, PATHS, capsysbinary)


def deep_chain(root, levels: int) -> None:
    """root/1/2/.../levels, a 5000-byte file at each level."""
    d = root
    for i in range(1, levels + 1):
        d = os.path.join(d, str(i))
        os.makedirs(d)
        with open(os.path.join(d, "f"), "wb") as f:
            f.write(os.urandom(5000))


@pytest.mark.parametrize("depth", ["0x1", "010", "+1", " 2", "0"])
def test_max_depth_reads_numbers_as_du_does(walker, tmp_path, monkeypatch, capsysbinary, depth):
    """du reads N in C's syntax (0x1 is 1, 010 is 8) and takes a sign or leading blanks."""
    deep_chain(str(tmp_path / "c"), 10)
    monkeypatch.chdir(tmp_path)
    check(["-d", depth], ["c"], capsysbinary)


@pytest.mark.parametrize("depth", ["-1", "1x", "", "1.5", "0x", "99999999999999999999"])
def test_max_depth_refuses_what_du_refuses(capsys, depth):
    """A usage error (exit 2) in du's words, never a traceback."""
    rc, _, err = du(["-d", depth, "."])
    assert rc != 0 and f"invalid maximum depth '{depth}'" in err
    try:
        rc = cli.main(["-d", depth, "."])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    assert (rc, out) == (2, "")
    assert err.splitlines()[-1].endswith(f"invalid maximum depth '{depth}'")


# ---- -a/--all ----------------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["-a"], ["--all"], ["-a", "-d", "0"], ["-a", "-d", "1"], ["-a", "-d", "3"],
                                  ["-a", "-l"], ["-a", "-c"], ["-a", "--apparent-size"], ["-a", "-b", "-d", "2"]],
                         ids=" ".join)
def test_all_prints_dus_file_and_directory_lines(walker, here, capsysbinary, args):
    """Files too, each hard-linked inode once (its first name, as du meets them), symlinks and
    the FIFO as themselves; without -d at every depth."""
    check(args, PATHS, capsysbinary)


# ---- --exclude ---------------------------------------------------------------------------------

EXCLUDES = {
    "name": ["--exclude", "data"],  # data-link, the same inode, is then counted
    "glob": ["--exclude", "*.img"],
    "slash": ["--exclude", "nested/deeper"],
    "slash-glob": ["--exclude", "*/deeper/*"],  # deeper's entries, not deeper
    "directory": ["--exclude", "deepest"],  # its subtree is skipped
    "newline": ["--exclude", "line*"],
    "two": ["--exclude", "notes.txt", "--exclude", "with space"],
    "path": ["--exclude", "u"],  # a PATH itself: it prints nothing, the others go on
}


@pytest.mark.parametrize("mode", [[], ["-a"], ["-d", "1"], ["-c", "-d", "2"]], ids=" ".join)
@pytest.mark.parametrize("pattern", sorted(EXCLUDES))
def test_exclude_skips_what_du_skips(walker, here, capsysbinary, pattern, mode):
    check([*mode, *EXCLUDES[pattern]], PATHS, capsysbinary)


def test_exclude_with_a_whole_path(walker, here, capsysbinary):
    """A pattern naming the whole path, as du names it (the PATH as given, then /name...)."""
    t = str(here / "t")
    check(["-d", "3", "--exclude", f"{t}/nested/deeper"], [t], capsysbinary)
    check(["-d", "3", "--exclude", f"{here}/*/nested"], [t], capsysbinary)
    check(["-c", "-d", "1", "--exclude", t], [t, "u"], capsysbinary)


# ---- -t/--threshold, units, -0 ---------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ["-d", "1", "-t", "8K"], ["-a", "-t", "5000"], ["-a", "-t", "-4K"], ["-d", "3", "-t", "-1"],
    ["-a", "-t", "0"], ["-a", "-b", "-t", "5000"], ["-a", "--apparent-size", "-t", "-5000"],
    ["-c", "-d", "1", "-t", "1M"], ["-c", "-a", "-t", "-8K"], ["-d", "2", "-h", "-t", "8K"],
    ["-a", "-B", "M", "-t", "-1M"],
], ids=" ".join)
def test_threshold_applies_to_every_line(walker, here, capsysbinary, args):
    """Each line is kept or left out by its own size (at least SIZE, or at most -SIZE); the
    total still counts everything."""
    check(args, PATHS, capsysbinary)


@pytest.mark.parametrize("args", [
    ["-d", "1", "-h"], ["-a", "-h"], ["-a", "--si"], ["-a", "-B", "M"], ["-a", "-B", "1K"], ["-d", "2", "-B", "KB"],
    ["-d", "2", "-m"], ["-a", "-k"], ["-a", "-B", "4KiB", "--apparent-size"], ["-d", "1", "-h", "-b"],
    ["-a", "-b", "-h"], ["-c", "-a", "-h", "--exclude", "*.img"],
], ids=" ".join)
def test_units_apply_to_every_line(walker, here, capsysbinary, args):
    check(args, PATHS, capsysbinary)


def test_the_console_script_prints_the_same(here):
    """The installed command (the compiled walker, its own threads), -0 split on NUL."""
    exe = os.path.join(os.path.dirname(sys.executable), "snapshot-du")
    args = ["-a", "-d", "3", "--exclude", "*.img", "-h", "-c"]
    r = subprocess.run([exe, "-0", *args, *PATHS], capture_output=True)
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout.split(b"\0") == output(expected(args, PATHS)[2], b"\0").split(b"\0")


# ---- what du and we do not agree on yet: PATHs as typed, and where a hard link counts -------------

@pytest.mark.parametrize("args", [["-d", "1"], ["-a"], ["-d", "0", "-c"], ["-a", "-c", "--exclude", "d"]],
                         ids=" ".join)
@pytest.mark.parametrize("paths", [["u/", "t"], ["u//", "t///"]], ids=" ".join)
def test_a_path_with_a_trailing_slash_is_named_as_du_names_it(walker, here, capsysbinary, args, paths):
    """du prints 'u/' for the PATH u/ (and for u//: fts trims trailing slashes to one) and 'u/d'
    below it; the -c total counts it."""
    check(args, paths, capsysbinary)


def test_a_summary_line_names_the_path_with_one_trailing_slash(walker, here, capsysbinary):
    """Without -d or -a a PATH's one line is named as du names it too."""
    rc, out, err = ours(["u//", "t///"], capsysbinary)
    assert (rc, err) == (0, "")
    assert [line.split(b"\t")[-1] for line in out.splitlines()] == [b"u/", b"t/"]


@pytest.mark.parametrize("args", [["-d", "0"], ["-d", "1"], ["-a"], ["-a", "-d", "0"], ["-c", "-d", "1"],
                                  ["--exclude", "x"]], ids=" ".join)
def test_a_path_that_is_not_a_directory_prints_its_line(walker, tmp_path, monkeypatch, capsysbinary, args):
    """du prints a line for every PATH, whatever -d says: a file, a symlink, a FIFO."""
    (tmp_path / "file").write_bytes(os.urandom(10000))
    os.symlink("file", tmp_path / "link")
    os.mkfifo(tmp_path / "fifo")
    make_small_tree(str(tmp_path / "u"))
    monkeypatch.chdir(tmp_path)
    check(args, ["file", "link", "fifo", "u"], capsysbinary)


def linked_across_directories(root) -> None:
    """h/p/x and h/q/x are one inode, and h/f and h/r/f another, with r listed before f in h:
    du counts each inode under the name it meets first, going down each directory as it lists
    it."""
    os.makedirs(os.path.join(root, "p"))
    os.makedirs(os.path.join(root, "q"))
    with open(os.path.join(root, "p", "x"), "wb") as f:
        f.write(os.urandom(30000))
    os.link(os.path.join(root, "p", "x"), os.path.join(root, "q", "x"))
    with open(os.path.join(root, "f"), "wb") as f:
        f.write(os.urandom(50000))
    for i in range(200):  # a name the directory lists before f (its order is the filesystem's)
        r = os.path.join(root, f"r{i}")
        os.makedirs(r)
        listing = os.listdir(root)
        if listing.index(f"r{i}") < listing.index("f"):
            os.link(os.path.join(root, "f"), os.path.join(r, "f"))
            return
        os.rmdir(r)
    pytest.fail("no name was listed before f in 200 tries")


@pytest.mark.parametrize("args", [["-a"], ["-d", "1"], ["-a", "--apparent-size"]], ids=" ".join)
def test_a_hard_link_counts_where_du_meets_it_first(walker, tmp_path, monkeypatch, capsysbinary, args):
    linked_across_directories(str(tmp_path / "h"))
    monkeypatch.chdir(tmp_path)
    check(args, ["h"], capsysbinary)


# ---- what cannot be read: du's messages, the partial total, exit 1 ------------------------------

def _in_arena(args, paths) -> tuple:
    """As the caller (user nobody, in the arena): our (rc, out, err), and du's (rc, err, out
    wanted), the own sizes found as this user."""
    return ours_captured([*args, *paths]), expected(args, paths)


def _json_in_arena(paths) -> tuple:
    """As the caller: our --json (rc, out, err), and the PATHs' lines in bytes (du -B1, less
    directories' own blocks)."""
    return ours_captured(["--json", *paths]), expected(["-B", "1"], paths)[2]


def _errors_as_du(err: str) -> list:
    """du's stderr lines in our words: 'du: ' is 'snapshot-du: ', nothing else differs."""
    return sorted("snapshot-du: " + line[len("du: "):] for line in err.splitlines())


def locked_tree(root) -> list:
    """p/ holds files, ok/ and two directories that user nobody cannot read: locked/ (one level
    down) and deep/er/locked2/ (three levels down), each with files in it.  Returns them."""
    make_small_tree(os.path.join(root, "p", "ok"))
    for d in ("locked/in", "deep/er/locked2/x"):
        os.makedirs(os.path.join(root, "p", d))
        with open(os.path.join(root, "p", d, "data"), "wb") as f:
            f.write(os.urandom(40000))
    with open(os.path.join(root, "p", "f"), "wb") as f:
        f.write(os.urandom(8000))
    return [os.path.join(root, "p", d) for d in ("locked", "deep/er/locked2")]


def _chmod_all(dirs, mode: int) -> None:
    for d in dirs:
        os.chmod(d, mode)


@pytest.mark.parametrize("args", [[], ["-d", "1"], ["-d", "3"], ["-a"], ["-c", "-b", "-d", "2"]], ids=" ".join)
def test_unreadable_directories_give_dus_messages_and_partial_totals(walker, arena, args):
    """Each directory that cannot be read is reported in du's words (in any order), the walk goes
    on, every line shows what could be read (du's less directories' own blocks), exit 1.  In
    JSON the PATH's record carries the messages and the partial size."""
    path, fd = arena
    locked = locked_tree(str(path))
    _chmod_all(locked, 0)
    try:
        (rc, out, err), (du_rc, du_err, want) = as_nobody(_in_arena, args, ["p"], cwd_fd=fd)
        if not args:
            (jrc, jout, jerr), sized = as_nobody(_json_in_arena, ["p"], cwd_fd=fd)
    finally:
        _chmod_all(locked, 0o755)
    assert du_rc == 1 and du_err.count("cannot read directory") == 2
    assert (rc, sorted(err.splitlines())) == (1, _errors_as_du(du_err))
    assert out.split(b"\n") == output(want).split(b"\n")
    if not args:
        record, = json.loads(jout)["paths"]
        assert jrc == 1 and record["path"] == "p"
        assert record["errors"] == [line[len("snapshot-du: "):] for line in jerr.splitlines()]
        assert sorted(record["errors"]) == [line[len("snapshot-du: "):] for line in _errors_as_du(du_err)]
        assert sized == [(b"%d" % record["size"], b"p")] and record["allocated"] == record["size"]


@pytest.mark.parametrize("args", [[], ["-a"], ["-d", "1"]], ids=" ".join)
def test_entries_that_cannot_be_stated_give_dus_messages(walker, arena, args):
    """A directory nobody may list but not search (r--): each entry in it cannot be stat'ed,
    a subdirectory included, and du says 'cannot access' for each and prints no line for them."""
    path, fd = arena
    make_small_tree(str(path / "p"))
    listed = path / "p" / "listed"
    (listed / "sub").mkdir(parents=True)
    (listed / "file").write_bytes(os.urandom(6000))
    os.chmod(listed, 0o444)
    try:
        (rc, out, err), (du_rc, du_err, want) = as_nobody(_in_arena, args, ["p"], cwd_fd=fd)
    finally:
        os.chmod(listed, 0o755)
    assert du_rc == 1 and du_err.count("cannot access") == 2
    assert (rc, sorted(err.splitlines())) == (1, _errors_as_du(du_err))
    assert out.split(b"\n") == output(want).split(b"\n")


def _low_nofile_in_arena(args, paths) -> tuple:
    """_in_arena with RLIMIT_NOFILE 12 above the descriptors open now (pytest's, inherited): the walk's
    budget is a few descriptors, so most directories are opened late, by the thread that takes them,
    not by the parent's reader."""
    limit = len(os.listdir("/proc/self/fd")) + 12
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    return (ours_captured([*args, *paths]),)


def test_directories_opened_late_that_cannot_be_accessed_have_no_line(walker, arena):
    """As the test above, where the walk runs out of its descriptor budget: 100 directories in 20
    listed-but-not-searchable ones, which hold the budget while they are read, so that their
    subdirectories are opened late.  Still du's 'cannot access' for each and no line."""
    path, fd = arena
    for top in range(20):
        for i in range(5):
            (path / "u" / f"ns{top}" / f"d{i}" / "x").mkdir(parents=True)
    shut = [path / "u" / f"ns{top}" for top in range(20)]
    _chmod_all(shut, 0o644)
    try:
        (_, _, want) = as_nobody(expected, ["-d", "5"], ["u"], cwd_fd=fd)
        ((rc, out, err),) = as_nobody(_low_nofile_in_arena, ["-j", "2", "-d", "5"], ["u"], cwd_fd=fd)
    finally:
        _chmod_all(shut, 0o755)
    assert rc == 1 and "cannot read" not in err and "(100 in all)" in err, err  # the first 20 shown
    assert err.count("cannot access") == 20, err
    assert sorted(out.split(b"\n")) == sorted(output(want).split(b"\n"))


@pytest.mark.parametrize("args", [[], ["-d", "1"], ["-a"]], ids=" ".join)
def test_a_path_that_cannot_be_read_still_prints_its_line(walker, arena, args):
    """du: 'cannot read directory' and the PATH's line (its own blocks: 0 here), exit 1; the
    other PATHs are still reported."""
    path, fd = arena
    (path / "locked" / "in").mkdir(parents=True)
    (path / "locked" / "in" / "f").write_bytes(os.urandom(9000))
    make_small_tree(str(path / "u"))
    os.chmod(path / "locked", 0)
    try:
        (rc, out, err), (du_rc, du_err, want) = as_nobody(_in_arena, args, ["locked", "u"], cwd_fd=fd)
    finally:
        os.chmod(path / "locked", 0o755)
    assert (du_rc, du_err) == (1, "du: cannot read directory 'locked': Permission denied\n")
    assert (rc, sorted(err.splitlines())) == (1, _errors_as_du(du_err))
    assert out.split(b"\n") == output(want).split(b"\n")


# ---- usage errors ------------------------------------------------------------------------------

@pytest.mark.parametrize("args, named", [
    (["--snapshots", ".", "-d", "1"], "-d"),
    (["--snapshots", ".", "-a"], "-a"),
    (["--snapshots", ".", "--exclude", "x"], "--exclude"),
    (["--shared", "-d", "1", "."], "--shared"),
    (["--shared", "-a", "."], "--shared"),
    (["--zero", "--exclude", "x", "."], "--zero"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_options_that_do_not_go_together(capsys, args, named):
    """Exit 2, a message that names what does not go with what (not an unknown option)."""
    try:
        rc = cli.main(args)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    last = err.splitlines()[-1]
    assert (rc, out) == (2, "") and "usage:" in err
    assert last.startswith("snapshot-du: error: ") and "unrecognized" not in last and named in last


@pytest.mark.parametrize("args", [["-a", "-s"], ["-s", "--all"], ["-s", "-d", "1"], ["--max-depth=2", "-s"]],
                         ids=" ".join)
def test_du_conflicts_are_usage_errors_in_dus_words(capsys, args):
    rc, _, du_err = du([*args, "."])
    words = du_err.splitlines()[0][len("du: "):].replace("warning: ", "")
    assert rc != 0
    try:
        rc = cli.main([*args, "."])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    assert (rc, out) == (2, "")
    assert err.splitlines()[-1] == f"snapshot-du: error: {words}"
