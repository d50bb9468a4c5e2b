"""pytest-benchmark: dir_size and dir_sizes on the fleet and on /usr.

    python -m pytest benchmarks/ --benchmark-group-by=group

Every benchmark first checks that the implementations agree; the side-by-side
comparison with C and GNU du is benchmarks/compare.py.
"""
import os

import pytest

import snapshot
from snapshot import _pydu


def loop(fn, base, names):
    return sum(fn(base, n) for n in names)


@pytest.fixture(scope="module")
def fleet_total(fleet):
    base, names = fleet
    total = loop(snapshot.dir_size, base, names)
    assert total == loop(_pydu.dir_size, base, names)
    assert total == sum(snapshot.dir_sizes(base, names, workers=2).values())
    assert total == sum(snapshot.usage(f"{base}/{n}").allocated for n in names)
    return total


@pytest.mark.benchmark(group="fleet")
def test_fleet_dir_size_loop(benchmark, fleet, fleet_total):
    assert benchmark(loop, snapshot.dir_size, *fleet) == fleet_total


@pytest.mark.benchmark(group="fleet")
def test_fleet_pure_python_loop(benchmark, fleet, fleet_total):
    assert benchmark(loop, _pydu.dir_size, *fleet) == fleet_total


@pytest.mark.benchmark(group="fleet")
@pytest.mark.parametrize("workers", [1, 2])
def test_fleet_dir_sizes(benchmark, fleet, fleet_total, workers):
    base, names = fleet
    result = benchmark(snapshot.dir_sizes, base, names, workers=workers)
    assert sum(result.values()) == fleet_total


@pytest.mark.benchmark(group="usr")
@pytest.mark.parametrize("impl", ["openat", "openat, 2 workers", "python"])
def test_usr(benchmark, big_tree, impl):
    path = os.path.join(*big_tree)
    fn = {"openat": lambda: snapshot.dir_size(*big_tree),
          "openat, 2 workers": lambda: snapshot.usage(path, workers=2).allocated,
          "python": lambda: _pydu.dir_size(*big_tree)}[impl]
    expected = snapshot.dir_size(*big_tree)
    assert _pydu.dir_size(*big_tree) == snapshot.usage(path, workers=2).allocated == expected
    assert benchmark.pedantic(fn, rounds=5, iterations=1) == expected


@pytest.mark.benchmark(group="report")
@pytest.mark.parametrize("what", ["dir_sizes", "report"])
def test_fleet_report(benchmark, fleet, fleet_total, what):
    """The fleet report against dir_sizes on the same base (benchmarks/report.py compares them on 60,000)."""
    from snapshot import _report
    base, names = fleet
    report = _report.build(base)
    assert sum(r.totals[0] for r in report.rows) == fleet_total and not report.errors
    fn = {"dir_sizes": lambda: sum(snapshot.dir_sizes(base).values()),
          "report": lambda: len(_report.table(_report.build(base), "k"))}[what]
    benchmark(fn)


@pytest.fixture(scope="module")
def memory_file(tmp_path_factory):
    """A 1 GiB memory file, 5% allocated, half of that zeros (benchmarks/blocks.py's shape)."""
    from blocks import make_memory_file
    path = str(tmp_path_factory.mktemp("mem") / "memory-ranges")
    make_memory_file(path, size=1 << 30)
    return path


@pytest.mark.benchmark(group="zero blocks")
@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_scan_blocks(benchmark, memory_file, monkeypatch, impl):
    from snapshot import _blocks, _pyblocks, _sparse
    expected = snapshot.scan_blocks(memory_file)
    monkeypatch.setattr(_sparse, "_impl", {"compiled": _blocks, "python": _pyblocks}[impl])
    assert snapshot.scan_blocks(memory_file) == expected  # the implementations agree
    assert benchmark(snapshot.scan_blocks, memory_file) == expected
