"""What the fleet page, ``/api/status`` and ``/metrics`` show, read at most once per cache period.

A ``FleetView`` probes every instance of the fleet (concurrently, at most
``per_host`` of one server at a time: ``run.status.probe_all``) and reads the hub once
(the registry and the journal's last results) to build a ``Snapshot``. It keeps
that snapshot for ``cache_seconds``; concurrent requests wait for the one read
in progress rather than starting their own, so a burst of page loads costs the
fleet one probe per instance, not one per request.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from ophelia_db.errors import OpheliaError
from ophelia_db.fleet import journal_read
from ophelia_db.fleet.config import Fleet, Target
from ophelia_db.fleet.connections import connect, sqlstate_of
from ophelia_db.fleet.hub import RegistryRow, read_registry
from ophelia_db.results import InstanceStatus, StatusReport
from ophelia_db.run.chain import Chain, chain_for
from ophelia_db.run.status import probe_all, reconciled, status_of

T = TypeVar("T")
BEHIND_STATES = frozenset({"outdated", "unversioned"})


@dataclass(frozen=True)
class InstanceRow:
    """One instance as the fleet page shows it."""

    status: InstanceStatus
    community_name: str
    community_type: str | None
    tags: tuple[str, ...]
    lifecycle: str
    behind: int | None
    last_result: str | None = None
    last_run_at: datetime | None = None
    last_run_id: str | None = None
    drift_group: str | None = None

    @property
    def name(self) -> str:
        return self.status.name

    @property
    def up(self) -> bool:
        return self.status.state not in ("unreachable", "error")


@dataclass(frozen=True)
class Snapshot:
    """The fleet at one moment: each instance, the head, and when it was read."""

    head: str | None
    rows: tuple[InstanceRow, ...]
    taken_at: datetime
    hub_readable: bool

    @property
    def report(self) -> StatusReport:
        return StatusReport(head=self.head, instances=tuple(row.status for row in self.rows))

    def summary(self) -> dict[str, int]:
        """``{"at head": 47, "behind": 2, "unreachable": 1, "schemas differ": 3, ...}``, non-zero only."""
        counts: Counter[str] = Counter()
        for row in self.rows:
            state = row.status.state
            counts["at head" if state == "up-to-date" else "behind" if state in BEHIND_STATES else state] += 1
        counts["schemas differ"] = sum(1 for row in self.rows if row.drift_group not in (None, "A"))
        return {label: count for label, count in counts.items() if count}

    def by_version(self) -> dict[str, int]:
        counts = Counter(row.status.current or "base" for row in self.rows if row.up)
        return dict(sorted(counts.items()))

    def by_state(self) -> dict[str, int]:
        return dict(sorted(Counter(row.status.state for row in self.rows).items()))


class FleetView:
    """The fleet's snapshot, read again only when older than ``cache_seconds``."""

    def __init__(self, fleet: Fleet, *, cache_seconds: float = 5.0, chain: Chain | None = None) -> None:
        self.fleet = fleet
        self.cache_seconds = cache_seconds
        self.chain = chain or chain_for()
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._read_at = 0.0
        self._details: dict[str, tuple[float, Any]] = {}
        self._detail_locks: dict[str, threading.Lock] = {}

    def snapshot(self) -> Snapshot:
        with self._lock:  # one read at a time: the others wait for it and share it
            fresh = self._snapshot is not None and time.monotonic() - self._read_at < self.cache_seconds
            if not fresh:
                self._snapshot = self._read()
                self._read_at = time.monotonic()
            assert self._snapshot is not None
            return self._snapshot

    def invalidate(self) -> None:
        with self._lock:
            self._snapshot = None
            self._details.clear()

    def detail(self, name: str, read: Callable[[], T]) -> T:
        """An instance page's reads (history, vault), kept like the snapshot: one read per period."""
        with self._lock:
            lock = self._detail_locks.setdefault(name, threading.Lock())
        with lock:
            found = self._details.get(name)
            if found is None or time.monotonic() - found[0] >= self.cache_seconds:
                found = (time.monotonic(), read())
                self._details[name] = found
            return found[1]  # type: ignore[no-any-return]

    def _read(self) -> Snapshot:
        targets = list(self.fleet.members)
        states = probe_all(targets, per_host=self.fleet.defaults.per_host)
        read, last = _hub_reads(self.fleet.hub)
        registry = read or {}
        groups = _drift_groups(registry)
        rows = tuple(
            _row(
                target,
                reconciled(status_of(target, states[target.name], self.chain), registry),
                read,
                last,
                groups,
            )
            for target in targets
        )
        return Snapshot(self.chain.head, rows, datetime.now(UTC), read is not None)


def _hub_reads(hub: Target) -> tuple[dict[str, RegistryRow] | None, dict[str, tuple[str, datetime, str]]]:
    """The registry and the journal's last results, on one hub connection; what cannot be read is empty."""
    try:
        conn = connect(hub, autocommit=True)
    except OpheliaError:
        return None, {}
    with conn:
        registry = read_registry(conn)
        try:
            return registry, journal_read.last_results(conn)
        except Exception as exc:
            if sqlstate_of(exc) is None:
                raise
            return registry, {}


def _drift_groups(registry: dict[str, RegistryRow]) -> dict[str, str]:
    """Instances by schema fingerprint: ``A`` the most common schema, ``B`` the next, and so on."""
    counts = Counter(row.schema_fingerprint for row in registry.values() if row.schema_fingerprint)
    letters = {
        fingerprint: chr(ord("A") + index) for index, (fingerprint, _) in enumerate(counts.most_common())
    }
    return {name: letters[row.schema_fingerprint] for name, row in registry.items() if row.schema_fingerprint}


def _row(
    target: Target,
    status: InstanceStatus,
    registry: dict[str, RegistryRow] | None,
    last: dict[str, tuple[str, datetime, str]],
    groups: dict[str, str],
) -> InstanceRow:
    known = (registry or {}).get(target.name)
    lifecycle = known.status if known else ("unknown" if registry is None else "not registered")
    behind = (
        len(status.pending)
        if status.state in BEHIND_STATES
        else (0 if status.state == "up-to-date" else None)
    )
    row = InstanceRow(
        status=status,
        community_name=target.community_name,
        community_type=target.community_type,
        tags=target.tags,
        lifecycle=lifecycle,
        behind=behind,
        drift_group=groups.get(target.name),
    )
    if target.name in last:
        state, at, run_id = last[target.name]
        row = replace(row, last_result=state, last_run_at=at, last_run_id=run_id)
    return row
