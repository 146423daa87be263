"""Reading the run journal back: from the hub, or from a local journal folded the same way.

A run's outcome is derived here, never stored: ``unfinished`` while a shard
has not finished (running, stopped, or never started), else ``ok`` when every
instance ended ``ok``/``noop``, else ``failed``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from ophelia_db.fleet.connections import Connection
from ophelia_db.fleet.journal import FINISHED_STATES, Operation, has_journal
from ophelia_db.results import JournalEntry, JournalRun, JournalShard, RunDetail

_RUN_COLUMNS = "run_id, command, target, shard_count, resumes, started_by, git_sha, ci_job_url, started_at"
_SHARD_COLUMNS = "shard, started_by, started_at, finished_at, outcome, exit_code"
_ENTRY_COLUMNS = (
    "instance, state, shard, wave, from_revision, to_revision, applied, duration_ms, exit_code, error, "
    "updated_at"
)


def _dicts(conn: Connection, query: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
    cursor = conn.execute(query.encode(), params)
    names = [column.name for column in cursor.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def read_runs(conn: Connection, limit: int) -> list[JournalRun]:
    """The ``limit`` most recent runs of the hub's journal, newest first.

    Instances are counted by state in the database: a listing of runs over
    thousands of instances never fetches their rows.
    """
    headers = _dicts(
        conn, f"SELECT {_RUN_COLUMNS} FROM public.ophelia_runs ORDER BY started_at DESC LIMIT %s", (limit,)
    )
    ids = [header["run_id"] for header in headers]
    shards = _dicts(
        conn, f"SELECT run_id, {_SHARD_COLUMNS} FROM public.ophelia_run_shards WHERE run_id = ANY(%s)", (ids,)
    )
    counted = conn.execute(
        "SELECT run_id, state, count(*) FROM public.ophelia_run_instances WHERE run_id = ANY(%s) "
        "GROUP BY run_id, state",
        (ids,),
    ).fetchall()
    return [
        _detail(
            header,
            [s for s in shards if s["run_id"] == header["run_id"]],
            [],
            counts={state: n for run_id, state, n in counted if run_id == header["run_id"]},
        ).run
        for header in headers
    ]


def read_run(conn: Connection, run_id: str) -> RunDetail | None:
    """One run of the hub's journal, or ``None``."""
    headers = _dicts(conn, f"SELECT {_RUN_COLUMNS} FROM public.ophelia_runs WHERE run_id = %s", (run_id,))
    if not headers:
        return None
    shards = _dicts(
        conn,
        f"SELECT {_SHARD_COLUMNS} FROM public.ophelia_run_shards WHERE run_id = %s ORDER BY shard",
        (run_id,),
    )
    entries = _dicts(
        conn,
        f"SELECT {_ENTRY_COLUMNS} FROM public.ophelia_run_instances WHERE run_id = %s ORDER BY instance",
        (run_id,),
    )
    return _detail(headers[0], shards, entries)


def fold_local(operations: Iterable[Operation]) -> RunDetail | None:
    """A local journal as the hub would hold it once pushed; ``None`` without its header."""
    header: dict[str, Any] | None = None
    shards: dict[int, dict[str, Any]] = {}
    entries: dict[str, dict[str, Any]] = {}
    for operation in operations:
        values = dict(operation.values)
        at = datetime.fromisoformat(values.pop("at"))
        if operation.kind == "run":
            header = header or {**values, "started_at": at}
        elif operation.kind == "shard":
            shards[values["shard"]] = {**values, "started_at": at, "finished_at": None}
        elif operation.kind == "finish" and values["shard"] in shards:
            shards[values["shard"]].update(values, finished_at=at)
        elif operation.kind == "plan":
            entries.setdefault(values["instance"], {**values, "state": "planned", "updated_at": at})
        elif operation.kind == "entry":
            entries[values["instance"]] = {**values, "updated_at": at}
    if header is None:
        return None
    return _detail(header, sorted(shards.values(), key=lambda s: s["shard"]), list(entries.values()), "local")


_FIELDS_OF_ENTRY = _ENTRY_COLUMNS.split(", ")
_FIELDS_OF_SHARD = _SHARD_COLUMNS.split(", ")


def _entry_of(row: Mapping[str, Any]) -> JournalEntry:
    fields: dict[str, Any] = {k: row.get(k) for k in _FIELDS_OF_ENTRY}
    fields["applied"] = tuple(row.get("applied") or ())
    return JournalEntry(**fields)


def _detail(
    header: Mapping[str, Any],
    shard_rows: list[dict[str, Any]],
    entry_rows: list[dict[str, Any]],
    source: str = "hub",
    counts: dict[str, int] | None = None,
) -> RunDetail:
    entries = tuple(_entry_of(row) for row in sorted(entry_rows, key=lambda r: r["instance"]))
    started = {row["shard"]: row for row in shard_rows}
    shards = []
    for number in range(1, int(header["shard_count"]) + 1):
        row = started.get(number)
        if row is None:
            shards.append(JournalShard(number, "never-started"))
            continue
        state = "finished" if row.get("finished_at") else "unfinished"
        fields: dict[str, Any] = {k: row.get(k) for k in _FIELDS_OF_SHARD}
        shards.append(JournalShard(state=state, **fields))
    if counts is None:
        counts = dict(Counter(entry.state for entry in entries))
    if any(shard.state != "finished" for shard in shards):
        outcome = "unfinished"
    else:
        outcome = "ok" if set(counts) <= FINISHED_STATES else "failed"
    finished = [s.finished_at for s in shards if s.finished_at]
    run = JournalRun(
        run_id=header["run_id"],
        command=header["command"],
        target=header["target"],
        outcome=outcome,
        started_at=header.get("started_at"),
        finished_at=max(finished) if outcome != "unfinished" and finished else None,
        started_by=header.get("started_by"),
        git_sha=header.get("git_sha"),
        ci_job_url=header.get("ci_job_url"),
        shard_count=int(header["shard_count"]),
        resumes=header.get("resumes"),
        counts=counts,
        source=source,
    )
    return RunDetail(run=run, shards=tuple(shards), instances=entries)


_LAST_SQL = """SELECT DISTINCT ON (instance) instance, state, updated_at, run_id
FROM public.ophelia_run_instances WHERE state NOT IN ('planned', 'running')
ORDER BY instance, updated_at DESC"""
_OF_INSTANCE_SQL = f"""SELECT run_id, {_ENTRY_COLUMNS} FROM public.ophelia_run_instances
WHERE instance = %s ORDER BY updated_at DESC LIMIT %s"""


def last_results(conn: Connection) -> dict[str, tuple[str, datetime, str]]:
    """Each instance's last final result in the journal: ``{name: (state, when, run_id)}``."""
    if not has_journal(conn):
        return {}
    return {name: (state, at, run_id) for name, state, at, run_id in conn.execute(_LAST_SQL).fetchall()}


def runs_of(conn: Connection, instance: str, limit: int = 20) -> list[tuple[str, JournalEntry]]:
    """An instance's most recent lines in the journal, newest first: ``(run_id, entry)``."""
    if not has_journal(conn):
        return []
    rows = _dicts(conn, _OF_INSTANCE_SQL, (instance, limit))
    return [(row["run_id"], _entry_of(row)) for row in rows]
