"""A prometheus_client collector for services that already export metrics.

    from prometheus_client import REGISTRY
    from snapshot.prometheus import SnapshotCollector
    REGISTRY.register(SnapshotCollector("/srv/snapshots", shared=True))

Each scrape sizes every snapshot directory in the base with one batched walk (the
fleet report's, on *workers* threads) and exposes the metrics that
``snapshot-du --snapshots BASE --prometheus`` writes, with the same names, help
and labels (_report.metric_families is the one list of them), but for
snapshot_collect_timestamp_seconds: a scrape has its own time.

Needs the ``prometheus`` extra: ``pip install 'cloudhv-snapshot[prometheus]'``.
"""
from __future__ import annotations

import logging
import os

try:
    from prometheus_client.core import GaugeMetricFamily
except ImportError as e:
    if not (e.name or "").startswith("prometheus_client"):
        raise  # it is installed, and broken: its own error says more
    raise ImportError("snapshot.prometheus needs prometheus_client: "
                      "pip install 'cloudhv-snapshot[prometheus]'", name="prometheus_client") from e

from . import _report
from ._size import _workers

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; annotations stay strings (PEP 563)
    from typing import Iterator, Optional

    from ._paths import StrPath

__all__ = ["SnapshotCollector"]

_log = logging.getLogger(__name__)


class SnapshotCollector:
    """Sizes the snapshots in *base_dir* at each scrape; see the module's docstring.

    *shared* (a bool) adds the reflink metrics (FIEMAP: snapshot_shared_bytes,
    snapshot_exclusive_bytes, snapshot_set_shared_bytes).  *workers*: threads, an
    int or None to let the walk start as many as help (one per CPU, more while they
    wait for the disk).  Wrong types are a TypeError when the collector is
    made, as the functions raise them, not at every scrape.  A base that cannot be
    listed fails the scrape (the OSError propagates, so Prometheus sees the target
    fail); a snapshot that cannot be read (its walk or its rootfs.meta) stays
    visible as snapshot_up 0, without sizes, and is logged on the
    ``snapshot.prometheus`` logger.  snapshot_collect_duration_seconds says how
    long the scrape's walk took."""

    def __init__(self, base_dir: StrPath, *, shared: bool = False, workers: Optional[int] = None) -> None:
        os.fspath(base_dir)  # TypeError unless str, bytes or os.PathLike, as os functions take it
        if not isinstance(shared, bool):
            raise TypeError(f"shared must be a bool, not {type(shared).__name__}")
        if workers is not None:
            _workers(workers)  # TypeError or ValueError now, not at every scrape
        self.base_dir = base_dir
        self.shared = shared
        self.workers = workers

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The metric names without sizing anything: registering does not walk the base."""
        empty = _report.Report("", self.shared)
        for name, doc, _, _ in _report.metric_families(empty):
            yield GaugeMetricFamily(name, doc)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        report = _report.build(self.base_dir, workers=self.workers, shared=self.shared)
        for msg in report.errors:
            _log.warning("%s", msg)
        for name, doc, labels, samples in _report.metric_families(report):
            if not labels:
                yield GaugeMetricFamily(name, doc, value=samples[0][1])
                continue
            family = GaugeMetricFamily(name, doc, labels=list(labels))
            for values, value in samples:
                family.add_metric(list(values), value)
            yield family

    def __repr__(self) -> str:
        return f"SnapshotCollector({self.base_dir!r}, shared={self.shared!r}, workers={self.workers!r})"
