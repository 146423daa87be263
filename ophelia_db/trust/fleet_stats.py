"""`lint --fleet-stats`: on which instances a flagged revision's risk is real.

A blocking index build or a rewrite costs nothing on an empty table and
minutes on a large one. For each table a finding names, this module reads,
on every selected instance that still has the revision pending, the table's
estimated rows (``pg_class.reltuples``) and size (``pg_total_relation_size``),
and the ``execution_time_ms`` each instance recorded for that revision once
applied. The instances that applied it give a cost per row; the others get
an expected duration from it (the median of the instances' recorded
durations when the table was empty there). One read-only round trip per
instance, all concurrently.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from ophelia_db.errors import OpheliaError
from ophelia_db.fleet.config import Target
from ophelia_db.fleet.connections import connect
from ophelia_db.results import Record
from ophelia_db.run.chain import Chain
from ophelia_db.run.state import InstanceState, read_state

DEFAULT_LARGE_ROWS = 1_000_000
_SIZES_SQL = """SELECT t.name, c.reltuples::bigint, pg_total_relation_size(c.oid)
FROM unnest(%s::text[]) AS t(name) JOIN pg_class c ON c.oid = to_regclass(t.name)"""
_HISTORY_SQL = "SELECT version, execution_time_ms FROM public.schema_migrations WHERE version = ANY(%s)"


class Flagged(Protocol):
    """What this module needs of a lint finding (``trust.lint.LintFinding`` has it)."""

    @property
    def revision(self) -> str: ...

    @property
    def rule(self) -> str: ...

    @property
    def table(self) -> str | None: ...


@dataclass(frozen=True)
class TableOnInstance(Record):
    """A flagged table on one instance: its estimated rows and size, and how long the revision
    took there (applied) or may take (pending)."""

    instance: str
    pending: bool
    rows: int | None
    bytes: int | None
    recorded_ms: int | None = None
    expected_ms: int | None = None


@dataclass(frozen=True)
class FleetRisk(Record):
    """A revision's flagged table across the fleet, and the instances where it is large."""

    revision: str
    table: str
    rules: tuple[str, ...]
    instances: tuple[TableOnInstance, ...]
    large: tuple[str, ...]
    large_rows: int


@dataclass(frozen=True)
class FleetStats(Record):
    risks: tuple[FleetRisk, ...]
    unreachable: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Read:
    state: InstanceState
    sizes: dict[str, tuple[int, int]]
    history: dict[str, int | None]


def _read(target: Target, tables: list[str], revisions: list[str]) -> _Read:
    with connect(target, autocommit=True) as conn:
        state = read_state(conn)
        sizes = {name: (max(rows, 0), size) for name, rows, size in conn.execute(_SIZES_SQL, (tables,))}
        history = dict(conn.execute(_HISTORY_SQL, (revisions,)).fetchall()) if state.has_mirror else {}
    return _Read(state, sizes, history)


def fleet_stats(
    targets: list[Target], findings: Iterable[Flagged], chain: Chain, *, large_rows: int = DEFAULT_LARGE_ROWS
) -> FleetStats:
    """Size each finding's table on every selected instance, and say where it is large."""
    by_table: dict[tuple[str, str], list[str]] = {}
    for finding in findings:
        if finding.table:
            rules = by_table.setdefault((finding.revision, finding.table), [])
            if finding.rule not in rules:
                rules.append(finding.rule)
    if not by_table:
        return FleetStats(risks=())
    tables = sorted({table for _, table in by_table})
    revisions = sorted({revision for revision, _ in by_table})

    def read(target: Target) -> _Read | OpheliaError:
        try:
            return _read(target, tables, revisions)
        except OpheliaError as error:
            return error

    with ThreadPoolExecutor(max_workers=min(16, len(targets) or 1)) as pool:
        reads = dict(zip((t.name for t in targets), pool.map(read, targets), strict=True))
    reachable = {name: found for name, found in reads.items() if isinstance(found, _Read)}
    risks = tuple(
        _risk(revision, table, tuple(rules), reachable, chain, large_rows)
        for (revision, table), rules in by_table.items()
    )
    unreachable = tuple(name for name, found in reads.items() if not isinstance(found, _Read))
    return FleetStats(risks=risks, unreachable=unreachable)


def _risk(
    revision: str, table: str, rules: tuple[str, ...], reads: dict[str, _Read], chain: Chain, large_rows: int
) -> FleetRisk:
    rows: list[TableOnInstance] = []
    for name, found in sorted(reads.items()):
        current = found.state.revision
        pending = current is None or (chain.knows(current) and chain.is_after(revision, current))
        size = found.sizes.get(table)
        recorded = None if pending else found.history.get(revision)
        rows.append(
            TableOnInstance(name, pending, size[0] if size else None, size[1] if size else None, recorded)
        )
    rows = [_with_expectation(row, rows) for row in rows]
    large = tuple(r.instance for r in rows if r.pending and (r.rows or 0) > large_rows)
    return FleetRisk(revision, table, rules, tuple(rows), large, large_rows)


def _with_expectation(row: TableOnInstance, fleet: list[TableOnInstance]) -> TableOnInstance:
    if not row.pending:
        return row
    done = [r for r in fleet if not r.pending and r.recorded_ms is not None]
    per_row = [r.recorded_ms / r.rows for r in done if r.rows and r.recorded_ms is not None]
    expected: Any = None
    if per_row and row.rows is not None:
        expected = int(statistics.median(per_row) * row.rows)
    elif done:
        expected = int(statistics.median(r.recorded_ms for r in done if r.recorded_ms is not None))
    return TableOnInstance(row.instance, True, row.rows, row.bytes, None, expected)
