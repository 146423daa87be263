"""``/metrics``: the fleet snapshot in the Prometheus text format (``prometheus_client``).

Labels carry instance names, roles, revisions and drift groups only: never a
URL, a key or an error text, so nothing secret can reach a scraper.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ophelia_db.serve.view import FleetView, Snapshot

SUCCESS = frozenset({"ok", "noop"})


class FleetCollector(Collector):
    """Gauges read from the view's snapshot on each scrape (cached like the page)."""

    def __init__(self, view: FleetView) -> None:
        self.view = view

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from gauges(self.view.snapshot())


def gauges(snapshot: Snapshot) -> Iterator[GaugeMetricFamily]:
    labels = ["instance", "role"]
    behind = GaugeMetricFamily(
        "ophelia_schema_revisions_behind",
        "Revisions between the instance and the code's head.",
        labels=labels,
    )
    up = GaugeMetricFamily(
        "ophelia_instance_up", "1 when the instance answered the last probe.", labels=labels
    )
    success = GaugeMetricFamily(
        "ophelia_last_run_success",
        "1 when the instance's last journalled run ended ok or noop.",
        labels=labels,
    )
    when = GaugeMetricFamily(
        "ophelia_last_run_timestamp_seconds", "When the instance's last journalled run ended.", labels=labels
    )
    group = GaugeMetricFamily(
        "ophelia_drift_group",
        "1 for the instance's schema group (A: the most common schema fingerprint).",
        labels=[*labels, "group"],
    )
    for row in snapshot.rows:
        key = [row.name, row.status.role]
        up.add_metric(key, 1.0 if row.up else 0.0)
        if row.behind is not None:
            behind.add_metric(key, float(row.behind))
        if row.last_result is not None and row.last_run_at is not None:
            success.add_metric(key, 1.0 if row.last_result in SUCCESS else 0.0)
            when.add_metric(key, row.last_run_at.timestamp())
        if row.drift_group:
            group.add_metric([*key, row.drift_group], 1.0)
    yield from (behind, up, success, when, group)


def metrics_text(view: FleetView) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(view))
    return generate_latest(registry)
