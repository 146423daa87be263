"""What each page and the sync endpoint need, as plain data: filtered, sorted, charted, masked.

Templates only lay it out. Charts are lists of bars (label, count, width in
percent) drawn as inline SVG by the templates; secrets are masked here (the
vault is read without ``reveal``, so a secret's value never leaves the
database).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ophelia_db.errors import ConfigError, OpheliaError
from ophelia_db.fleet import journal_read
from ophelia_db.fleet.config import Fleet, Target
from ophelia_db.fleet.connections import connect
from ophelia_db.instances.vault import read_fleet
from ophelia_db.redaction import redact
from ophelia_db.run.runs import show_run
from ophelia_db.run.status import history
from ophelia_db.run.sync import sync
from ophelia_db.serve.view import FleetView, InstanceRow, Snapshot

SORTS = {
    "name": lambda row: row.name,
    "state": lambda row: (row.status.state, row.name),
    "version": lambda row: (row.status.current or "", row.name),
    "last-run": lambda row: (row.last_run_at.isoformat() if row.last_run_at else "", row.name),
}


@dataclass(frozen=True)
class Bar:
    label: str
    count: int
    width: float


def bars(counts: Mapping[str, int] | Mapping[str, float]) -> list[Bar]:
    top = max(counts.values(), default=0) or 1
    return [Bar(label, int(count), round(100 * count / top, 1)) for label, count in counts.items()]


def fleet_context(snapshot: Snapshot, query: Mapping[str, str]) -> dict[str, Any]:
    state, tag, sort = query.get("state", ""), query.get("tag", ""), query.get("sort", "name")
    rows: list[InstanceRow] = list(snapshot.rows)
    if state:
        rows = [row for row in rows if row.status.state == state]
    if tag:
        rows = [row for row in rows if tag in row.tags]
    rows.sort(key=SORTS.get(sort, SORTS["name"]))  # type: ignore[arg-type]
    return {
        "snapshot": snapshot,
        "rows": rows,
        "summary": snapshot.summary(),
        "versions": bars(snapshot.by_version()),
        "states": bars(snapshot.by_state()),
        "filter_state": state,
        "filter_tag": tag,
        "sort": sort,
        "all_states": sorted({row.status.state for row in snapshot.rows}),
        "all_tags": sorted({t for row in snapshot.rows for t in row.tags}),
    }


def instance_context(fleet: Fleet, target: Target, view: FleetView) -> dict[str, Any]:
    row = next(r for r in view.snapshot().rows if r.name == target.name)
    details = view.detail(target.name, lambda: _instance_reads(fleet, target, view))
    return {"row": row, **details}


def _instance_reads(fleet: Fleet, target: Target, view: FleetView) -> dict[str, Any]:
    """What an instance page reads beyond the snapshot, each part failing on its own."""
    context: dict[str, Any] = {"history": None, "vault": None, "runs": [], "problems": []}
    try:
        context["history"] = history(target, chain=view.chain)
    except OpheliaError as exc:
        context["problems"].append(redact(exc.message))
    try:
        # Read without reveal: a secret's value never leaves the database, only its mask.
        (config,) = read_fleet([target])
        context["vault"] = config
    except OpheliaError as exc:
        context["problems"].append(redact(exc.message))
    try:
        with connect(fleet.hub, autocommit=True) as conn:
            context["runs"] = journal_read.runs_of(conn, target.name)
    except OpheliaError as exc:
        context["problems"].append(redact(exc.message))
    return context


def run_context(fleet: Fleet, run_id: str) -> dict[str, Any]:
    detail = show_run(fleet, run_id)
    durations = {e.instance: e.duration_ms or 0 for e in detail.instances if e.duration_ms is not None}
    return {"detail": detail, "durations": bars(durations)}


def sync_answer(fleet: Fleet, subdomain: str | None) -> tuple[dict[str, Any], int]:
    """The seed's ``/api/sync-schema-version`` answer: re-read, update the hub row, say what it holds."""
    if subdomain is None:
        targets = list(fleet.members)
    elif subdomain in {m.name for m in fleet.members}:
        targets = [fleet.get(subdomain)]
    else:
        raise ConfigError(f"no instance '{subdomain}' in the fleet")
    report = sync(fleet, targets)
    rows = [
        {
            "subdomain": row.name,
            "schema_version": row.current,
            "migrations_count": row.migrations_count,
            **({"error": redact(row.error)} if row.error else {}),
            **({"state": row.state} if row.state in ("unreachable", "error") else {}),
        }
        for row in report.instances
    ]
    failed = report.hub_report != "ok" or any(
        row.state in ("unreachable", "error") for row in report.instances
    )
    answer: dict[str, Any] = rows[0] if subdomain is not None else {"instances": rows}
    if report.hub_error:
        answer = {**answer, "hub_error": redact(report.hub_error)}
    return answer, 502 if failed else 200
