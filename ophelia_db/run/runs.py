"""`runs`, `runs show RUN` and `upgrade --resume RUN`: the run journal read back and acted on.

The hub's journal is the record; a journal the hub has not got yet (it could
not be reached during the run) is read from its local file, so that a run
can be shown and resumed whatever happened to the hub.
"""

from __future__ import annotations

from typing import Any

from ophelia_db.errors import ConfigError, OpheliaError
from ophelia_db.fleet import journal, journal_read
from ophelia_db.fleet.config import Fleet
from ophelia_db.fleet.connections import connect, describe_error, sqlstate_of
from ophelia_db.results import RunDetail, RunReport, RunsReport
from ophelia_db.run.upgrade import Progress, Resumption, upgrade


def _no_journal(fleet: Fleet) -> ConfigError:
    return ConfigError(
        f"the hub '{fleet.hub.name}' has no run journal yet (revision 0005); "
        f"run `ophelia-db upgrade --instance {fleet.hub.name}` first"
    )


def _local_runs(fleet: Fleet) -> dict[str, RunDetail]:
    found = {}
    for path in journal.local_journals(fleet.path):
        detail = journal_read.fold_local(journal.read_local(path))
        if detail is not None:
            found[detail.run.run_id] = detail
    return found


def runs(fleet: Fleet, *, limit: int = 20) -> RunsReport:
    """The most recent runs of the hub's journal, newest first, and the journals kept locally."""
    local = _local_runs(fleet)
    with connect(fleet.hub, autocommit=True) as conn:
        if not _has_journal(conn):
            raise _no_journal(fleet)
        found = journal_read.read_runs(conn, limit)
    return RunsReport(runs=tuple(found), local=tuple(d.run.run_id for d in local.values()))


def _has_journal(conn: Any) -> bool:
    try:
        return journal.has_journal(conn)
    except Exception as exc:
        if sqlstate_of(exc) is None:
            raise
        raise OpheliaError(f"cannot read the run journal: {describe_error(exc)}") from None


def show_run(fleet: Fleet, run_id: str) -> RunDetail:
    """One run across all its shards, per instance: from the hub, else from its local journal."""
    local = _local_runs(fleet).get(run_id)
    try:
        with connect(fleet.hub, autocommit=True) as conn:
            found = journal_read.read_run(conn, run_id) if _has_journal(conn) else None
    except OpheliaError:
        if local is None:
            raise
        return local  # the hub is away, but this run was kept here
    if found is None and local is None:
        raise ConfigError(
            f"no run '{run_id}' in the hub's journal or kept locally; `ophelia-db runs` lists them"
        )
    return found or local  # type: ignore[return-value]


def resume(
    fleet: Fleet,
    run_id: str,
    *,
    jobs: int | None = None,
    shard: str | None = None,
    progress: Progress | None = None,
) -> RunReport:
    """Redo what run ``run_id`` did not finish, with its target, as a new run linked to it.

    Only the instances it left failed, locked, refused, unreachable, skipped or
    never finished are run; each is read again under its lock, and one found at
    another revision than the run recorded has moved since: reported, not forced.
    """
    detail = show_run(fleet, run_id)
    if detail.run.command != "upgrade":
        raise ConfigError(f"run {run_id} was a {detail.run.command}: only an upgrade can be resumed")
    unfinished = [e for e in detail.instances if e.state not in journal.FINISHED_STATES]
    if not unfinished:
        return RunReport(run_id=run_id, target=detail.run.target, instances=())
    names = [e.instance for e in unfinished]
    gone = [name for name in names if name not in {m.name for m in fleet.members}]
    if gone:
        raise ConfigError(
            f"run {run_id} left {', '.join(gone)} unfinished, but fleet.toml no longer has them; "
            "put them back, or upgrade the others by name"
        )
    # A revision the run saw is a fact to check against; one it never read (a run killed
    # before the instance's result) is not.
    recorded = {e.instance: e.to_revision for e in unfinished if e.state not in ("planned", "running")}
    return upgrade(
        fleet,
        fleet.select(names),
        to=detail.run.target,
        jobs=jobs,
        skip_inactive=True,
        shard=shard,
        resuming=Resumption(run_id, recorded),
        progress=progress,
    )
